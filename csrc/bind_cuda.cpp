// bind_cuda.cpp: the GPU backend's binding, fastconv._cuda. The twin of bind_cpu.cpp:
// pointers arrive as integers, params as the dicts fastconv/_shapes.py builds, plus
// the device the arrays live on and the caller's stream (a cudaStream_t as an
// integer; 0 is the legacy default stream). Outputs are allocated by the Python layer
// through the caller's array library. float32, and float16 / bfloat16 for conv2d's
// forward (the Python layer refuses them elsewhere, with the op's name, before any call).
#include <cstdint>
#include <string>

#include <pybind11/pybind11.h>

#include "bind_common.h"
#include "common/check.h"
#include "cuda/cuda_ops.h"

namespace py = pybind11;
using namespace fastconv;
using fastconv::bind::ptr;
using U = std::uintptr_t;

namespace {

// Makes `device` current for one launch and puts the previous device back.
class DeviceGuard {
  public:
    explicit DeviceGuard(int device) {
        FC_CUDA_CHECK(cudaGetDevice(&previous_));
        if (device != previous_) FC_CUDA_CHECK(cudaSetDevice(device));
    }
    ~DeviceGuard() { cudaSetDevice(previous_); }

  private:
    int previous_ = 0;
};

cudaStream_t stream_of(U s) { return reinterpret_cast<cudaStream_t>(s); }

void require_float32(const std::string& dtype) {
    if (dtype != "float32")
        throw std::invalid_argument("fastconv._cuda: the GPU backend computes float32, got " + dtype);
}

cuda::ConvVariant conv_variant(const std::string& name) {
    if (name == "auto") return cuda::ConvVariant::Auto;
    if (name == "direct") return cuda::ConvVariant::Direct;
    if (name == "implicit_gemm") return cuda::ConvVariant::ImplicitGemm;
    if (name == "depthwise") return cuda::ConvVariant::Depthwise;
    if (name == "fused") return cuda::ConvVariant::Fused;
    if (name == "winograd2") return cuda::ConvVariant::Winograd2;
    if (name == "winograd4") return cuda::ConvVariant::Winograd4;
    throw std::invalid_argument("fastconv._cuda: unknown conv2d variant " + name);
}

// Runs f() with the GIL released on `device`.
template <typename F>
void launch(int device, const std::string& dtype, F&& f) {
    require_float32(dtype);
    py::gil_scoped_release release;
    DeviceGuard guard(device);
    f();
}

template <typename T>
struct Type {
    using type = T;
};

// Runs f(Type<T>{}) with the GIL released on `device`, T the element type dtype names:
// float, __half or __nv_bfloat16 (the ops with half-precision kernels).
template <typename F>
void launch_any_float(int device, const std::string& dtype, F&& f) {
    if (dtype != "float32" && dtype != "float16" && dtype != "bfloat16")
        throw std::invalid_argument("fastconv._cuda: the GPU backend takes float32, float16 or "
                                    "bfloat16 here, got " + dtype);
    py::gil_scoped_release release;
    DeviceGuard guard(device);
    if (dtype == "float32") return f(Type<float>{});
    if (dtype == "float16") return f(Type<__half>{});
    f(Type<__nv_bfloat16>{});
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "fastconv GPU backend (CUDA)";
    bind::register_params(m);
    m.attr("conv2d_variants") =
        py::make_tuple("direct", "implicit_gemm", "depthwise", "winograd2", "winograd4");
    m.attr("conv2d_avgpool_variants") =
        py::make_tuple("fused", "direct", "implicit_gemm", "depthwise");

    // Never throws: 0 where there is no driver or no device.
    m.def("device_count", [] {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) {
            cudaGetLastError();  // clear the sticky-free error so later calls start clean
            return 0;
        }
        return n;
    });
    // (device count, "") or (0, the driver's error name and string): why no device, for
    // `fastconv info` and the GPU check, where device_count only says 0.
    m.def("device_status", []() -> py::tuple {
        int n = 0;
        const cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess) {
            cudaGetLastError();
            return py::make_tuple(0, std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
        }
        return py::make_tuple(n, std::string());
    });
#ifdef FASTCONV_CUDA_ARCHS
    m.attr("built_archs") = FASTCONV_CUDA_ARCHS;  // setup.py's FASTCONV_CUDA_ARCHS, e.g. "80;90"
#endif
    m.def("device_info", [](int device) {
        cudaDeviceProp prop{};
        FC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
        int driver = 0, runtime = 0;
        FC_CUDA_CHECK(cudaDriverGetVersion(&driver));
        FC_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
        py::dict d;
        d["name"] = std::string(prop.name);
        d["capability"] = py::make_tuple(prop.major, prop.minor);
        d["multiprocessors"] = prop.multiProcessorCount;
        d["memory_bytes"] = prop.totalGlobalMem;
        d["driver_api_version"] = driver;
        d["runtime_version"] = runtime;
        return d;
    });
    m.def("synchronize", [](int device) {
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        FC_CUDA_CHECK(cudaDeviceSynchronize());
    });

    // r: the residual added before the activation, or 0 for none.
    m.def("conv2d_fwd", [](const Conv2dParams& p, std::string variant, std::string dtype, int device, U stream,
                           U x, U w, U b, U y, U r) {
        const cuda::ConvVariant v = conv_variant(variant);
        launch_any_float(device, dtype, [&](auto t) {
            using T = typename decltype(t)::type;
            cuda::conv2d_fwd(p, v, ptr<T>(x), ptr<T>(w), ptr<T>(b), ptr<T>(y), stream_of(stream),
                             ptr<T>(r));
        });
    });
    m.def("conv2d_avgpool_fwd", [](const Conv2dPoolParams& p, std::string variant, std::string dtype, int device,
                                   U stream, U x, U w, U b, U y, U a) {
        const cuda::ConvVariant v = conv_variant(variant);
        launch(device, dtype, [&] {
            cuda::conv2d_avgpool_fwd(p, v, ptr<float>(x), ptr<float>(w), ptr<float>(b),
                                     ptr<float>(y), ptr<float>(a), stream_of(stream));
        });
    });
    m.def("avgpool_act_bwd", [](const Conv2dPoolParams& p, std::string dtype, int device, U stream, U dy, U a,
                                U dz) {
        launch(device, dtype, [&] {
            cuda::avgpool_act_bwd(p, ptr<float>(dy), ptr<float>(a), ptr<float>(dz),
                                  stream_of(stream));
        });
    });
    m.def("activation_bwd", [](int act, int64_t count, std::string dtype, int device, U stream,
                               U y, U dy, U dz) {
        launch(device, dtype, [&] {
            cuda::activation_bwd(Activation(act), count, ptr<float>(y), ptr<float>(dy),
                                 ptr<float>(dz), stream_of(stream));
        });
    });
    m.def("conv2d_bwd_data", [](const Conv2dParams& p, std::string variant, std::string dtype, int device,
                                U stream, U dy, U w, U dx) {
        const cuda::ConvVariant v = conv_variant(variant);
        launch(device, dtype, [&] {
            cuda::conv2d_bwd_data(p, v, ptr<float>(dy), ptr<float>(w), ptr<float>(dx),
                                  stream_of(stream));
        });
    });
    m.def("conv2d_bwd_filter_workspace", [](const Conv2dParams& p, std::string variant) {
        return cuda::conv2d_bwd_filter_workspace(p, conv_variant(variant));
    });
    // ws: conv2d_bwd_filter_workspace bytes from the caller's allocator, or 0.
    m.def("conv2d_bwd_filter", [](const Conv2dParams& p, std::string variant, std::string dtype, int device,
                                  U stream, U dy, U x, U dw, U ws) {
        const cuda::ConvVariant v = conv_variant(variant);
        launch(device, dtype, [&] {
            cuda::conv2d_bwd_filter(p, v, ptr<float>(dy), ptr<float>(x), ptr<float>(dw),
                                    stream_of(stream), ptr<float>(ws));
        });
    });
    m.def("conv2d_bwd_bias", [](const Conv2dParams& p, std::string dtype, int device, U stream, U dy, U db) {
        launch(device, dtype, [&] {
            cuda::conv2d_bwd_bias(p, ptr<float>(dy), ptr<float>(db), stream_of(stream));
        });
    });

    m.def("max_pool_fwd", [](const Pool2dParams& p, std::string dtype, int device, U stream, U x, U y, U idx) {
        launch(device, dtype, [&] {
            cuda::max_pool_fwd(p, ptr<float>(x), ptr<float>(y), ptr<int64_t>(idx), stream_of(stream));
        });
    });
    m.def("max_pool_bad_indices", [](const Pool2dParams& p, std::string dtype, int device, U stream, U idx) {
        int64_t bad = 0;
        launch(device, dtype, [&] {
            bad = cuda::max_pool_bad_indices(p, ptr<int64_t>(idx), stream_of(stream));
        });
        return bad;
    });
    m.def("max_pool_bwd", [](const Pool2dParams& p, std::string dtype, int device, U stream, U dy, U idx, U dx) {
        launch(device, dtype, [&] {
            cuda::max_pool_bwd(p, ptr<float>(dy), ptr<int64_t>(idx), ptr<float>(dx), stream_of(stream));
        });
    });
    m.def("avg_pool_fwd", [](const Pool2dParams& p, std::string dtype, int device, U stream, U x, U y) {
        launch(device, dtype, [&] { cuda::avg_pool_fwd(p, ptr<float>(x), ptr<float>(y), stream_of(stream)); });
    });
    m.def("avg_pool_bwd", [](const Pool2dParams& p, std::string dtype, int device, U stream, U dy, U dx) {
        launch(device, dtype, [&] { cuda::avg_pool_bwd(p, ptr<float>(dy), ptr<float>(dx), stream_of(stream)); });
    });
    m.def("global_avg_pool_fwd", [](py::dict d, std::string dtype, int device, U stream, U x, U y) {
        const GlobalPoolParams p = bind::global_pool_params(d);
        launch(device, dtype, [&] {
            cuda::global_avg_pool_fwd(p, ptr<float>(x), ptr<float>(y), stream_of(stream));
        });
    });
    m.def("global_avg_pool_bwd", [](py::dict d, std::string dtype, int device, U stream, U dy, U dx) {
        const GlobalPoolParams p = bind::global_pool_params(d);
        launch(device, dtype, [&] {
            cuda::global_avg_pool_bwd(p, ptr<float>(dy), ptr<float>(dx), stream_of(stream));
        });
    });

    // dtype names the image; a uint8 image is filtered in float32 (kernel and output).
    m.def("sobel", [](py::dict d, std::string dtype, int device, U stream, U x, U y) {
        const Filter2dParams p = bind::filter2d_params(d);
        const bool u8 = dtype == "uint8";
        launch(device, u8 ? "float32" : dtype, [&] {
            if (u8)
                cuda::sobel(p, ptr<uint8_t>(x), ptr<float>(y), stream_of(stream));
            else
                cuda::sobel(p, ptr<float>(x), ptr<float>(y), stream_of(stream));
        });
    });
    m.def("filter2d", [](py::dict d, std::string dtype, int device, U stream, U x, U k, U y) {
        const Filter2dParams p = bind::filter2d_params(d);
        const bool u8 = dtype == "uint8";
        launch(device, u8 ? "float32" : dtype, [&] {
            if (u8)
                cuda::filter2d(p, ptr<uint8_t>(x), ptr<float>(k), ptr<float>(y), stream_of(stream));
            else
                cuda::filter2d(p, ptr<float>(x), ptr<float>(k), ptr<float>(y), stream_of(stream));
        });
    });
    m.def("conv1d", [](py::dict d, std::string dtype, int device, U stream, U x, U w, U y) {
        const Conv1dParams p = bind::conv1d_params(d);
        launch(device, dtype, [&] {
            cuda::conv1d(p, ptr<float>(x), ptr<float>(w), ptr<float>(y), stream_of(stream));
        });
    });
}

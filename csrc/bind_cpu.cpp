// bind_cpu.cpp: the CPU backend's binding, fastconv._cpu. Pointers arrive as integers,
// params as the dicts fastconv/_shapes.py builds; outputs are allocated by the Python
// layer. Kernels run with the GIL released. The shape helpers of common/shapes.h are
// exported too, so tests/test_shapes.py can check the Python mirror against them, and so
// is the GEMM, so tests/test_isa.py can drive its edge cases on every ISA path.
#include <cstdint>
#include <string>

#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bind_common.h"
#include "common/shapes.h"
#include "common/winograd.h"
#include "cpu/cpu_ops.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"
#include "cpu/isa.h"
#include "cpu/output_cache.h"
#include "cpu/workspace.h"

namespace py = pybind11;
using namespace fastconv;
using fastconv::bind::ptr;
using U = std::uintptr_t;

namespace {

// A winograd.h table as nested lists.
template <size_t R, size_t C>
py::list table(const double (&t)[R][C]) {
    py::list rows;
    for (size_t i = 0; i < R; ++i) {
        py::list row;
        for (size_t j = 0; j < C; ++j) row.append(t[i][j]);
        rows.append(row);
    }
    return rows;
}

template <int m>
py::tuple winograd_tables() {
    using W = winograd::Tables<m>;
    return py::make_tuple(table(W::BT), table(W::G), table(W::AT));
}

// Calls f.template operator()<T>() for T = float or double, by dtype name.
template <typename F>
void with_dtype(const std::string& dtype, F&& f) {
    py::gil_scoped_release release;
    if (dtype == "float32") return f(float{});
    if (dtype == "float64") return f(double{});
    throw std::invalid_argument("fastconv._cpu: unsupported dtype " + dtype);
}

cpu::ConvVariant conv_variant(const std::string& name) {
    if (name == "auto") return cpu::ConvVariant::Auto;
    if (name == "direct") return cpu::ConvVariant::Direct;
    if (name == "gemm") return cpu::ConvVariant::Gemm;
    if (name == "depthwise") return cpu::ConvVariant::Depthwise;
    if (name == "blocked") return cpu::ConvVariant::Blocked;
    if (name == "winograd2") return cpu::ConvVariant::Winograd2;
    if (name == "winograd4") return cpu::ConvVariant::Winograd4;
    throw std::invalid_argument("fastconv._cpu: unknown conv2d variant " + name);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
    m.doc() = "fastconv CPU backend (C++17, OpenMP)";
    // FASTCONV_CPU_ISA is read here, once (csrc/cpu/isa.h): a value that names no path, or
    // one this CPU lacks, fails the import with a message that says which and why.
    cpu::isa();
    m.def("isa", [] { return std::string(cpu::isa_name(cpu::isa())); },
          "The instruction-set path the CPU kernels use: 'avx512', 'avx2' or 'portable'.");
    m.def("supported_isas", [] {
        py::list out;
        for (cpu::Isa path : cpu::supported_isas()) out.append(cpu::isa_name(path));
        return py::tuple(out);
    }, "The paths this CPU supports, best first (FASTCONV_CPU_ISA may choose any of them).");
    bind::register_params(m);
    m.attr("conv2d_variants") =
        py::make_tuple("direct", "gemm", "depthwise", "blocked", "winograd2", "winograd4");
    // The block runs any conv variant, then the average pool (no fused variant here).
    m.attr("conv2d_avgpool_variants") = m.attr("conv2d_variants");
    m.def("num_threads", [] { return omp_get_max_threads(); });
    m.def("core_round_trip_ns", [](int rounds) { return cpu::core_round_trip_ns(rounds); },
          py::arg("rounds") = 20000, py::call_guard<py::gil_scoped_release>(),
          "One cache line's round trip between the first two threads of the pool (ns): "
          "~100 where they share an L3, several hundred where they do not (cpu/parallel.h).");

    // Output memory (cpu/output_cache.h): a uint8 array of `nbytes` whose block goes back to
    // the cache when the last view of it dies. FASTCONV_CPU_CACHE_MIB is read here, once.
    cpu::output_cache_stats();
    m.attr("output_cache_min_bytes") = cpu::kMinCachedBytes;
    m.def("empty", [](size_t nbytes) {
        struct Owned {
            void* block;
            size_t size;
        };
        Owned* owned = new Owned{nullptr, 0};
        try {
            owned->block = cpu::output_take(nbytes, &owned->size);
        } catch (...) {
            delete owned;
            throw;
        }
        py::capsule owner(owned, [](void* o) {
            Owned* done = static_cast<Owned*>(o);
            cpu::output_give(done->block, done->size);
            delete done;
        });
        return py::array_t<uint8_t>({py::ssize_t(nbytes)}, {py::ssize_t(1)},
                                    static_cast<uint8_t*>(owned->block), owner);
    }, "A uint8 array of nbytes, page-aligned, its memory from the output cache.");
    // What the CPU backend holds between calls, and a way to give it back.
    m.def("memory", [] {
        const cpu::OutputCacheStats c = cpu::output_cache_stats();
        size_t scratch = 0;
#pragma omp parallel reduction(+ : scratch)
        scratch += cpu::workspace_held() + cpu::gemm_scratch_held();
        py::dict d;
        d["output_cache_bytes"] = c.held_bytes;
        d["output_cache_blocks"] = c.held_blocks;
        d["output_cache_limit"] = c.limit_bytes;
        d["output_cache_hits"] = c.hits;
        d["output_cache_misses"] = c.misses;
        d["scratch_bytes"] = scratch;
        return d;
    });
    m.def("empty_cache", [] {
        size_t freed = cpu::output_cache_release();
        py::gil_scoped_release release;
#pragma omp parallel reduction(+ : freed)
        freed += cpu::workspace_release() + cpu::gemm_scratch_release();
        return freed;
    });
    m.def("set_output_cache_limit", [](size_t bytes) { cpu::output_cache_set_limit(bytes); });

    // r: the residual added before the activation, or 0 for none.
    m.def("conv2d_fwd", [](const Conv2dParams& p, std::string variant, std::string dtype, U x, U w, U b, U y,
                           U r) {
        const cpu::ConvVariant v = conv_variant(variant);
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::conv2d_fwd<T>(p, v, ptr<T>(x), ptr<T>(w), ptr<T>(b), ptr<T>(y), ptr<T>(r));
        });
    });
    m.def("conv2d_avgpool_fwd", [](const Conv2dPoolParams& p, std::string variant, std::string dtype, U x, U w,
                                   U b, U y, U a) {
        const cpu::ConvVariant v = conv_variant(variant);
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::conv2d_avgpool_fwd<T>(p, v, ptr<T>(x), ptr<T>(w), ptr<T>(b), ptr<T>(y), ptr<T>(a));
        });
    });
    m.def("avgpool_act_bwd", [](const Conv2dPoolParams& p, std::string dtype, U dy, U a, U dz) {
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::avgpool_act_bwd<T>(p, ptr<T>(dy), ptr<T>(a), ptr<T>(dz));
        });
    });
    m.def("activation_bwd", [](int act, int64_t count, std::string dtype, U y, U dy, U dz) {
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::activation_bwd<T>(Activation(act), count, ptr<T>(y), ptr<T>(dy), ptr<T>(dz));
        });
    });
    m.def("conv2d_bwd_data", [](const Conv2dParams& p, std::string variant, std::string dtype, U dy, U w, U dx) {
        const cpu::ConvVariant v = conv_variant(variant);
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::conv2d_bwd_data<T>(p, v, ptr<T>(dy), ptr<T>(w), ptr<T>(dx));
        });
    });
    m.def("conv2d_bwd_filter", [](const Conv2dParams& p, std::string variant, std::string dtype, U dy, U x, U dw) {
        const cpu::ConvVariant v = conv_variant(variant);
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::conv2d_bwd_filter<T>(p, v, ptr<T>(dy), ptr<T>(x), ptr<T>(dw));
        });
    });
    m.def("conv2d_bwd_bias", [](const Conv2dParams& p, std::string dtype, U dy, U db) {
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::conv2d_bwd_bias<T>(p, ptr<T>(dy), ptr<T>(db));
        });
    });

    m.def("max_pool_fwd", [](const Pool2dParams& p, std::string dtype, U x, U y, U idx) {
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::max_pool_fwd<T>(p, ptr<T>(x), ptr<T>(y), ptr<int64_t>(idx));
        });
    });
    m.def("max_pool_bwd", [](const Pool2dParams& p, std::string dtype, U dy, U idx, U dx) {
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::max_pool_bwd<T>(p, ptr<T>(dy), ptr<int64_t>(idx), ptr<T>(dx));
        });
    });
    m.def("avg_pool_fwd", [](const Pool2dParams& p, std::string dtype, U x, U y) {
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::avg_pool_fwd<T>(p, ptr<T>(x), ptr<T>(y));
        });
    });
    m.def("avg_pool_bwd", [](const Pool2dParams& p, std::string dtype, U dy, U dx) {
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::avg_pool_bwd<T>(p, ptr<T>(dy), ptr<T>(dx));
        });
    });
    m.def("global_avg_pool_fwd", [](py::dict d, std::string dtype, U x, U y) {
        const GlobalPoolParams p = bind::global_pool_params(d);
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::global_avg_pool_fwd<T>(p, ptr<T>(x), ptr<T>(y));
        });
    });
    m.def("global_avg_pool_bwd", [](py::dict d, std::string dtype, U dy, U dx) {
        const GlobalPoolParams p = bind::global_pool_params(d);
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::global_avg_pool_bwd<T>(p, ptr<T>(dy), ptr<T>(dx));
        });
    });

    // dtype names the image; a uint8 image is filtered in float32 (kernel and output).
    m.def("sobel", [](py::dict d, std::string dtype, U x, U y) {
        const Filter2dParams p = bind::filter2d_params(d);
        if (dtype == "uint8") {
            py::gil_scoped_release release;
            return cpu::sobel(p, ptr<uint8_t>(x), ptr<float>(y));
        }
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::sobel(p, ptr<T>(x), ptr<T>(y));
        });
    });
    m.def("filter2d", [](py::dict d, std::string dtype, U x, U k, U y) {
        const Filter2dParams p = bind::filter2d_params(d);
        if (dtype == "uint8") {
            py::gil_scoped_release release;
            return cpu::filter2d(p, ptr<uint8_t>(x), ptr<float>(k), ptr<float>(y));
        }
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::filter2d(p, ptr<T>(x), ptr<T>(k), ptr<T>(y));
        });
    });
    m.def("conv1d", [](py::dict d, std::string dtype, U x, U w, U y) {
        const Conv1dParams p = bind::conv1d_params(d);
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::conv1d<T>(p, ptr<T>(x), ptr<T>(w), ptr<T>(y));
        });
    });

    // csrc/cpu/gemm.h, for tests/test_isa.py: C = op(A) . op(B) + beta C, row-major.
    m.def("gemm", [](bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, std::string dtype,
                     U a, int64_t lda, U b, int64_t ldb, double beta, U c, int64_t ldc) {
        if (beta != 0 && beta != 1)
            throw std::invalid_argument("fastconv._cpu.gemm: beta must be 0 or 1, got " + std::to_string(beta));
        with_dtype(dtype, [&](auto t) {
            using T = decltype(t);
            cpu::gemm<T>(trans_a, trans_b, M, N, K, ptr<T>(a), lda, ptr<T>(b), ldb, T(beta), ptr<T>(c), ldc);
        });
    });

    // common/shapes.h, for tests/test_shapes.py.
    py::module_ s = m.def_submodule("shapes", "common/shapes.h, exported for the mirror test");
    s.def("conv_out_size", &conv_out_size);
    s.def("pool_out_size", &pool_out_size);
    s.def("same_out_size", &same_out_size);
    s.def("same_pad_begin", &same_pad_begin);
    s.def("same_pad_total", &same_pad_total);
    s.def("border_index", [](int64_t i, int64_t n, int mode) { return border_index(i, n, Border(mode)); });
    s.def("border_index1", [](int64_t i, int64_t n, int mode) { return border_index1(i, n, Border(mode)); });
    s.def("valid_out_begin", &valid_out_begin);
    s.def("valid_out_end", &valid_out_end);
    s.def("first_out_reaching", &first_out_reaching);
    s.def("last_out_reaching", &last_out_reaching);
    // common/winograd.h, for tests/test_winograd.py.
    s.def("winograd_applies", &winograd::applies);
    s.def("winograd_tile_count", &winograd::tile_count);
    s.def("winograd_tile_origin", &winograd::tile_origin);
    s.def("winograd_tables", [](int m) {
        if (m == 2) return winograd_tables<2>();
        if (m == 4) return winograd_tables<4>();
        throw std::invalid_argument("winograd_tables: m must be 2 or 4");
    });
}

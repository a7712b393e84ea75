// bind_common.h: what the two bindings (bind_cpu.cpp, bind_cuda.cpp) share: filling
// the params structs from the dict that fastconv/_shapes.py builds, by name, so no
// call passes eighteen positional ints, and reading array pointers. Only the binding
// files include pybind11.
#pragma once
#include <cstdint>
#include <string>

#include <pybind11/pybind11.h>

#include "common/params.h"

namespace fastconv {
namespace bind {

namespace py = pybind11;

template <typename T>
T field(const py::dict& d, const char* name) {
    if (!d.contains(name)) throw std::invalid_argument(std::string("fastconv: params lack ") + name);
    return d[name].cast<T>();
}

inline Conv2dParams conv2d_params(const py::dict& d) {
    Conv2dParams p{};
    p.N = field<int64_t>(d, "N"), p.C = field<int64_t>(d, "C");
    p.H = field<int64_t>(d, "H"), p.W = field<int64_t>(d, "W");
    p.K = field<int64_t>(d, "K"), p.R = field<int64_t>(d, "R"), p.S = field<int64_t>(d, "S");
    p.P = field<int64_t>(d, "P"), p.Q = field<int64_t>(d, "Q");
    p.stride_h = field<int64_t>(d, "stride_h"), p.stride_w = field<int64_t>(d, "stride_w");
    p.pad_h = field<int64_t>(d, "pad_h"), p.pad_w = field<int64_t>(d, "pad_w");
    p.dil_h = field<int64_t>(d, "dil_h"), p.dil_w = field<int64_t>(d, "dil_w");
    p.groups = field<int64_t>(d, "groups");
    p.layout = Layout(field<int>(d, "layout"));
    p.act = Activation(field<int>(d, "act"));
    p.has_bias = field<bool>(d, "has_bias");
    p.precision = Precision(field<int>(d, "precision"));
    return p;
}

inline Conv2dPoolParams conv2d_pool_params(const py::dict& d) {
    Conv2dPoolParams p{};
    p.conv = conv2d_params(d);
    p.pool_h = field<int64_t>(d, "pool_h"), p.pool_w = field<int64_t>(d, "pool_w");
    p.save_activation = field<bool>(d, "save_activation");
    return p;
}

inline Pool2dParams pool2d_params(const py::dict& d) {
    Pool2dParams p{};
    p.N = field<int64_t>(d, "N"), p.C = field<int64_t>(d, "C");
    p.H = field<int64_t>(d, "H"), p.W = field<int64_t>(d, "W");
    p.P = field<int64_t>(d, "P"), p.Q = field<int64_t>(d, "Q");
    p.kh = field<int64_t>(d, "kh"), p.kw = field<int64_t>(d, "kw");
    p.stride_h = field<int64_t>(d, "stride_h"), p.stride_w = field<int64_t>(d, "stride_w");
    p.pad_h = field<int64_t>(d, "pad_h"), p.pad_w = field<int64_t>(d, "pad_w");
    p.pad_h_end = field<int64_t>(d, "pad_h_end"), p.pad_w_end = field<int64_t>(d, "pad_w_end");
    p.dil_h = field<int64_t>(d, "dil_h"), p.dil_w = field<int64_t>(d, "dil_w");
    p.count_include_pad = field<bool>(d, "count_include_pad");
    p.divisor = field<int64_t>(d, "divisor");
    p.layout = Layout(field<int>(d, "layout"));
    return p;
}

inline GlobalPoolParams global_pool_params(const py::dict& d) {
    GlobalPoolParams p{};
    p.N = field<int64_t>(d, "N"), p.C = field<int64_t>(d, "C");
    p.H = field<int64_t>(d, "H"), p.W = field<int64_t>(d, "W");
    p.layout = Layout(field<int>(d, "layout"));
    return p;
}

inline Filter2dParams filter2d_params(const py::dict& d) {
    Filter2dParams p{};
    p.N = field<int64_t>(d, "N"), p.C = field<int64_t>(d, "C");
    p.H = field<int64_t>(d, "H"), p.W = field<int64_t>(d, "W");
    p.kh = field<int64_t>(d, "kh"), p.kw = field<int64_t>(d, "kw");
    p.mode = Border(field<int>(d, "mode"));
    p.cval = field<double>(d, "cval");
    p.layout = Layout(field<int>(d, "layout"));
    p.axis = field<int>(d, "axis");
    return p;
}

inline Conv1dParams conv1d_params(const py::dict& d) {
    Conv1dParams p{};
    p.B = field<int64_t>(d, "B"), p.M = field<int64_t>(d, "M"), p.n = field<int64_t>(d, "n");
    return p;
}

// The params structs as Python classes, so the Python layer's call plans build each
// one once (parsing the dict by name costs microseconds a call, a LeNet layer's kernel
// on the GPU about ten). Module-local: each backend registers its own. A dict still
// converts implicitly wherever a struct is expected.
inline void register_params(py::module_& m) {
    py::class_<Conv2dParams>(m, "Conv2dParams", py::module_local())
        .def(py::init([](const py::dict& d) { return conv2d_params(d); }));
    py::class_<Conv2dPoolParams>(m, "Conv2dPoolParams", py::module_local())
        .def(py::init([](const py::dict& d) { return conv2d_pool_params(d); }));
    py::class_<Pool2dParams>(m, "Pool2dParams", py::module_local())
        .def(py::init([](const py::dict& d) { return pool2d_params(d); }));
    py::implicitly_convertible<py::dict, Conv2dParams>();
    py::implicitly_convertible<py::dict, Conv2dPoolParams>();
    py::implicitly_convertible<py::dict, Pool2dParams>();
}

// Array pointers travel from Python as integers (NumPy's, CuPy's or torch's data pointer).
template <typename T>
T* ptr(std::uintptr_t address) { return reinterpret_cast<T*>(address); }

}  // namespace bind
}  // namespace fastconv

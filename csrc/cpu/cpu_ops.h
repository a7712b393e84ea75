// cpu_ops.h: the entry points of the CPU backend, one group per kernel file. The
// binding (csrc/bind_cpu.cpp) fills the params struct and calls these; every pointer
// is to a dense (C-contiguous) array of the shape the params describe.
//
// Variants: each op family keeps its simple, obviously correct variant beside the
// fast ones, and the tests run them all. `Variant::Auto` lets the file's dispatcher
// choose by shape.
#pragma once
#include <cstdint>

#include "../common/params.h"

namespace fastconv {
namespace cpu {

enum class ConvVariant : int {
    Auto = 0, Direct = 1, Gemm = 2, Depthwise = 3, Blocked = 4, Winograd2 = 5, Winograd4 = 6
};

// conv2d_fwd.cpp. bias may be null (p.has_bias false). residual, of y's shape and layout,
// may be null; it is added before the activation (a ResNet block's last convolution and
// its skip add): y = act(conv2d(x, w) + b + residual), in every variant's epilogue.
template <typename T>
void conv2d_fwd(const Conv2dParams& p, ConvVariant v, const T* x, const T* w, const T* b, T* y,
                const T* residual = nullptr);
// The LeNet-5 block: y = avg_pool(a), a = act(conv2d(x)) written in full (N, K, P, Q).
template <typename T>
void conv2d_avgpool_fwd(const Conv2dPoolParams& p, ConvVariant v, const T* x, const T* w,
                        const T* b, T* y, T* a);

// conv2d_bwd.cpp. dy is the gradient of the convolution's output before the
// activation: activation_bwd turns the gradient of act(z) into that of z.
template <typename T>
void activation_bwd(Activation act, int64_t count, const T* y, const T* dy, T* dz);
// The block's backward, first step: dz (N, K, P, Q), the gradient of the convolution
// before the activation, from dy (the pooled output's gradient) and a (null when
// p.conv.act is None); zero on the rows and columns the pooling's floor left out.
template <typename T>
void avgpool_act_bwd(const Conv2dPoolParams& p, const T* dy, const T* a, T* dz);
template <typename T>
void conv2d_bwd_data(const Conv2dParams& p, ConvVariant v, const T* dy, const T* w, T* dx);
template <typename T>
void conv2d_bwd_filter(const Conv2dParams& p, ConvVariant v, const T* dy, const T* x, T* dw);
template <typename T>
void conv2d_bwd_bias(const Conv2dParams& p, const T* dy, T* db);

// pool.cpp. Indices are flat h * W + w positions in each input plane (PyTorch's).
template <typename T>
void max_pool_fwd(const Pool2dParams& p, const T* x, T* y, int64_t* idx);
template <typename T>
void max_pool_bwd(const Pool2dParams& p, const T* dy, const int64_t* idx, T* dx);
template <typename T>
void avg_pool_fwd(const Pool2dParams& p, const T* x, T* y);
template <typename T>
void avg_pool_bwd(const Pool2dParams& p, const T* dy, T* dx);
template <typename T>
void global_avg_pool_fwd(const GlobalPoolParams& p, const T* x, T* y);
template <typename T>
void global_avg_pool_bwd(const GlobalPoolParams& p, const T* dy, T* dx);

// sobel.cpp: sobel (one axis or the magnitude) and filter2d.
// In is T, or uint8_t with T float (8-bit images).
template <typename In, typename T>
void sobel(const Filter2dParams& p, const In* x, T* y);
template <typename In, typename T>
void filter2d(const Filter2dParams& p, const In* x, const T* k, T* y);

// conv1d.cpp
template <typename T>
void conv1d(const Conv1dParams& p, const T* x, const T* w, T* y);

}  // namespace cpu
}  // namespace fastconv

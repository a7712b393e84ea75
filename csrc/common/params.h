// params.h: one parameter struct per op family, filled once in the binding
// (csrc/bind_cpu.cpp, csrc/bind_cuda.cpp) and passed by value to the kernels of
// both backends. Plain integers and enums only, so the same header compiles in
// g++ and nvcc translation units and no Python type ever reaches a kernel.
//
// Every size is int64_t: index products of large tensors never wrap around.
#pragma once
#include <cstdint>

namespace fastconv {

// Activation layout of 4-D tensors. NCHW: (N, C, H, W). NHWC: (N, H, W, C).
enum class Layout : int { NCHW = 0, NHWC = 1 };

// Activation fused into the conv2d epilogue.
enum class Activation : int { None = 0, Relu = 1, Tanh = 2, Sigmoid = 3 };

// The arithmetic of a float32 convolution on the GPU (PyTorch's torch.backends.cudnn.allow_tf32
// is the same choice): Strict, float32 fused multiply-adds (the SIMT kernels); TF32, tensor
// cores on inputs rounded to TF32 (10 mantissa bits) with float32 accumulation; TF32x3, the
// error-compensated split a = big + small (both TF32) on tensor cores, big*big + big*small +
// small*big, which keeps float32 accuracy. float16 and bfloat16 inputs always run on tensor
// cores in their own type (float32 accumulation) and ignore it. The CPU computes float32 (or
// float64) FMAs whatever is asked: PyTorch's flag does not touch its CPU convolutions either.
enum class Precision : int { Strict = 0, TF32 = 1, TF32x3 = 2 };

// Border modes for filter2d/sobel, named as scipy.ndimage names them.
enum class Border : int { Reflect = 0, Mirror = 1, Nearest = 2, Constant = 3, Wrap = 4 };

// conv2d, forward and backward. Cross-correlation:
//   y[n,k,p,q] = act(b[k] + sum_{c,r,s} x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//                                        * w[k, c, r, s])
// with g = k / Kg, Cg = C / groups, Kg = K / groups.
// Weight layout: NCHW -> (K, Cg, R, S) as torch; NHWC -> (R, S, Cg, K) as Keras (HWIO).
// pad_h / pad_w are the top / left padding; the bottom / right padding is implied by
// P and Q (it may differ by one for Keras' "same").
struct Conv2dParams {
    int64_t N, C, H, W;   // input
    int64_t K, R, S;      // K filters of R x S
    int64_t P, Q;         // output height and width
    int64_t stride_h, stride_w;
    int64_t pad_h, pad_w;
    int64_t dil_h, dil_w;
    int64_t groups;
    Layout layout;
    Activation act;
    bool has_bias;
    Precision precision;  // the GPU's float32 arithmetic; see Precision
};

// conv2d_avgpool, the LeNet-5 block: y = avg_pool(act(conv2d(x))) with a pool_h x pool_w
// window moved by its own size, no padding, floor (PyTorch's AvgPool2d(k), Keras'
// AveragePooling2D(k)): y is (N, K, P / pool_h, Q / pool_w) in conv.layout. The
// full-resolution a = act(conv2d(x)), (N, K, P, Q), is what the backward needs; the
// fused GPU kernel writes it only when save_activation, the composed paths always.
struct Conv2dPoolParams {
    Conv2dParams conv;
    int64_t pool_h, pool_w;
    bool save_activation;
};

// max / average pooling over each channel.
// pad_h / pad_w are top / left; pad_h_end / pad_w_end bottom / right. Windows are
// clipped to [-pad_h, H + pad_h_end) for the average's count_include_pad divisor
// (PyTorch semantics) and to the real image for everything else.
struct Pool2dParams {
    int64_t N, C, H, W;
    int64_t P, Q;
    int64_t kh, kw;
    int64_t stride_h, stride_w;
    int64_t pad_h, pad_w, pad_h_end, pad_w_end;
    int64_t dil_h, dil_w;           // max pooling only; 1 for average
    bool count_include_pad;         // average only
    int64_t divisor;                // average only; 0 = no override
    Layout layout;
};

// Global average pooling: (N, C, H, W) -> (N, C) or (N, H, W, C) -> (N, C).
struct GlobalPoolParams {
    int64_t N, C, H, W;
    Layout layout;
};

// filter2d and sobel over a batch of 2-D planes. A 2-D image is one plane; a 3-D
// (N, H, W) stack is N planes; a 4-D tensor has N * C planes, laid out by `layout`.
// The correlation is centred at (kh / 2, kw / 2), as scipy.ndimage.correlate.
struct Filter2dParams {
    int64_t N, C, H, W;    // C == 1 for 2-D and 3-D inputs
    int64_t kh, kw;        // filter2d only
    Border mode;
    double cval;
    Layout layout;
    int axis;              // sobel only: 0 = rows (d/dy), 1 = columns (d/dx), -1 = magnitude
};

// conv1d: valid cross-correlation of B sequences of length M with n weights:
//   y[b, k] = sum_t x[b, k + t] * w[t],  k in [0, M - n].
struct Conv1dParams {
    int64_t B, M, n;
};

}  // namespace fastconv

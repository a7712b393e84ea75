// activation_cpu.h: the CPU backend's fused epilogue, y = act(y + bias) over a span.
//
// common/activation.h is the specification (std::tanh, std::exp), shared with the CUDA
// kernels. Here float tanh and sigmoid are computed from an exp written to vectorise:
// glibc's tanhf is a scalar call of ~15 ns, so LeNet C1 (1.2 M outputs) spent 17.5 ms in
// tanh against 4.4 ms in the convolution (2-core EPYC). Double keeps the libm calls.
//
// Accuracy (float): exp within 2 ulp over [-87, 88]; tanh within 4e-7 relative, exact
// at 0 and +-inf (+-1), NaN in -> NaN out; sigmoid within 3e-7 relative for z > -87
// (below, the result is clamped near 1e-38 instead of underflowing further).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../common/activation.h"

namespace fastconv {
namespace cpu {

// e^x by x = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial for e^r and 2^n built in the
// exponent bits. Branch-free (selects only), so loops over it vectorise. NaN passes.
inline float vexp(float x) {
    x = x < -87.0f ? -87.0f : x;  // NaN compares false and passes through
    x = x > 88.0f ? 88.0f : x;
    const float round = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float n = (x * 1.44269504088896341f + round) - round;
    const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (int32_t(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// tanh: an odd Taylor polynomial below |x| = 0.25 (error < 3e-11), 1 - 2 / (e^2|x| + 1)
// above, with x's sign.
inline float vtanh(float x) {
    const float a = x < 0 ? -x : x;
    const float x2 = x * x;
    float p = -1382.0f / 155925;
    p = p * x2 + 62.0f / 2835;
    p = p * x2 - 17.0f / 315;
    p = p * x2 + 2.0f / 15;
    p = p * x2 - 1.0f / 3;
    const float small = a + a * x2 * p;
    const float big = 1.0f - 2.0f / (vexp(2.0f * a) + 1.0f);
    return std::copysign(a < 0.25f ? small : big, x);
}

inline float vsigmoid(float z) { return 1.0f / (1.0f + vexp(-z)); }

template <typename T>
inline T bias_at(T b, int64_t) { return b; }
template <typename T>
inline T bias_at(const T* b, int64_t j) { return b[j]; }

// Float tanh / sigmoid spans, built for each ISA path and chosen through isa.h
// (activation_cpu.cpp). They are called, not inlined, from inside OpenMP regions:
// an attribute on the function around `#pragma omp parallel` never reaches the loop.
void tanh_span(float* y, int64_t n, float bias);
void tanh_span(float* y, int64_t n, const float* bias);
void sigmoid_span(float* y, int64_t n, float bias);
void sigmoid_span(float* y, int64_t n, const float* bias);

template <typename Bias>
inline void tanh_span(double* y, int64_t n, Bias bias) {
    for (int64_t j = 0; j < n; ++j) y[j] = std::tanh(y[j] + bias_at(bias, j));
}
template <typename Bias>
inline void sigmoid_span(double* y, int64_t n, Bias bias) {
    for (int64_t j = 0; j < n; ++j) y[j] = activate(Activation::Sigmoid, y[j] + bias_at(bias, j));
}

// y[j] = act(y[j] + bias) for j < n; bias is one value (NCHW plane) or a pointer to n
// values (an NHWC pixel's K channels). The switch sits outside the loops so each loop
// vectorises.
template <typename T, typename Bias>
inline void activate_span(Activation act, T* y, int64_t n, Bias bias) {
    switch (act) {
        case Activation::Relu:
            for (int64_t j = 0; j < n; ++j) y[j] = activate(Activation::Relu, y[j] + bias_at(bias, j));
            break;
        case Activation::Tanh: tanh_span(y, n, bias); break;
        case Activation::Sigmoid: sigmoid_span(y, n, bias); break;
        default:
            for (int64_t j = 0; j < n; ++j) y[j] = y[j] + bias_at(bias, j);
    }
}

}  // namespace cpu
}  // namespace fastconv

// activation_cpu.cpp: the float tanh / sigmoid spans of the fused epilogue. One loop, built
// once per ISA path (portable: baseline x86-64, 4-wide SSE; avx2: 8-wide; avx512: 16-wide)
// and chosen through isa.h. LeNet C1 + tanh (256 x 6 x 28 x 28, 2-core EPYC): glibc tanhf
// 22.0 ms; vtanh 4-wide 6.4 ms; the convolution alone 3.5 ms.
#include "activation_cpu.h"

#include "isa.h"

namespace fastconv {
namespace cpu {

namespace {

template <Activation A, typename Bias>
__attribute__((always_inline)) inline void span(float* y, int64_t n, Bias bias) {
    for (int64_t j = 0; j < n; ++j)
        y[j] = A == Activation::Tanh ? vtanh(y[j] + bias_at(bias, j)) : vsigmoid(y[j] + bias_at(bias, j));
}

// Not inlined into the callers, which sit inside OpenMP regions: an attribute on the
// function around `#pragma omp parallel` never reaches the outlined loop.
template <Activation A, typename Bias>
void span_portable(float* y, int64_t n, Bias bias) { span<A>(y, n, bias); }
#if FC_X86_ISA
template <Activation A, typename Bias>
FC_TARGET_AVX2 void span_avx2(float* y, int64_t n, Bias bias) { span<A>(y, n, bias); }
template <Activation A, typename Bias>
FC_TARGET_AVX512 void span_avx512(float* y, int64_t n, Bias bias) { span<A>(y, n, bias); }
#endif

template <Activation A, typename Bias>
void span_any(float* y, int64_t n, Bias bias) {
#if FC_X86_ISA
    if (isa() == Isa::Avx512) return span_avx512<A>(y, n, bias);
    if (isa() == Isa::Avx2) return span_avx2<A>(y, n, bias);
#endif
    span_portable<A>(y, n, bias);
}

}  // namespace

void tanh_span(float* y, int64_t n, float bias) { span_any<Activation::Tanh>(y, n, bias); }
void tanh_span(float* y, int64_t n, const float* bias) { span_any<Activation::Tanh>(y, n, bias); }
void sigmoid_span(float* y, int64_t n, float bias) { span_any<Activation::Sigmoid>(y, n, bias); }
void sigmoid_span(float* y, int64_t n, const float* bias) {
    span_any<Activation::Sigmoid>(y, n, bias);
}

}  // namespace cpu
}  // namespace fastconv

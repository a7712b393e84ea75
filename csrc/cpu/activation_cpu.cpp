// activation_cpu.cpp: the float tanh / sigmoid spans of the fused epilogue, each built
// for AVX2 (8-wide) and for baseline x86-64 (4-wide SSE), chosen at run time. LeNet C1
// + tanh (256 x 6 x 28 x 28, 2-core EPYC): glibc tanhf 22.0 ms; vtanh 4-wide 6.4 ms;
// the convolution alone 3.5 ms.
#include "activation_cpu.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FC_CLONES
#endif

namespace fastconv {
namespace cpu {

FC_CLONES void tanh_span(float* y, int64_t n, float bias) {
    for (int64_t j = 0; j < n; ++j) y[j] = vtanh(y[j] + bias);
}
FC_CLONES void tanh_span(float* y, int64_t n, const float* bias) {
    for (int64_t j = 0; j < n; ++j) y[j] = vtanh(y[j] + bias[j]);
}
FC_CLONES void sigmoid_span(float* y, int64_t n, float bias) {
    for (int64_t j = 0; j < n; ++j) y[j] = vsigmoid(y[j] + bias);
}
FC_CLONES void sigmoid_span(float* y, int64_t n, const float* bias) {
    for (int64_t j = 0; j < n; ++j) y[j] = vsigmoid(y[j] + bias[j]);
}

}  // namespace cpu
}  // namespace fastconv

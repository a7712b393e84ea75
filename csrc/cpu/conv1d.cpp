// conv1d.cpp: valid 1-D cross-correlation on the CPU, float and double (the course
// notes' `convolve`):  y[b, k] = sum_t x[b, k + t] * w[t],  k in [0, M - n].
// The CUDA twin is csrc/cuda/conv1d.cu.
// One variant: each output is a dot product of n contiguous samples; the loop over
// outputs is parallel and the inner loop vectorises across taps.
#include "cpu_ops.h"

namespace fastconv {
namespace cpu {

template <typename T>
void conv1d(const Conv1dParams& p, const T* x, const T* w, T* y) {
    const int64_t out = p.M - p.n + 1;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < p.B; ++b)
        for (int64_t k = 0; k < out; ++k) {
            const T* s = x + b * p.M + k;
            T acc = T(0);
            for (int64_t t = 0; t < p.n; ++t) acc += s[t] * w[t];
            y[b * out + k] = acc;
        }
}

template void conv1d<float>(const Conv1dParams&, const float*, const float*, float*);
template void conv1d<double>(const Conv1dParams&, const double*, const double*, double*);

}  // namespace cpu
}  // namespace fastconv

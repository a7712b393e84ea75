// conv1d.cu: valid 1-D cross-correlation on the GPU, float32 (the course notes'
// `convolve`):  y[b, k] = sum_t x[b, k + t] * w[t],  k in [0, M - n].
// x is (B, M), w is (n,), y is (B, M - n + 1), all dense. The CPU twin is
// csrc/cpu/conv1d.cpp.
//
// One variant: one thread per output, in y's memory order, summing its n taps in order
// as the CPU does. A warp reads 32 neighbouring windows, so each x load is shared through
// L1 by up to n threads, and every thread of a warp reads the same w[t] (one broadcast).
#include "../common/check.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

namespace fastconv {
namespace cuda {

namespace {

__global__ void __launch_bounds__(kThreads)
    conv1d_kernel(Conv1dParams p, const float* __restrict__ x, const float* __restrict__ w,
                  float* __restrict__ y) {
    const int64_t out = p.M - p.n + 1, count = p.B * out;
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const float* s = x + (i / out) * p.M + i % out;
        float acc = 0.f;
        for (int64_t t = 0; t < p.n; ++t) acc += s[t] * w[t];
        y[i] = acc;
    }
}

}  // namespace

void conv1d(const Conv1dParams& p, const float* x, const float* w, float* y, cudaStream_t stream) {
    const int64_t out = p.M - p.n + 1;
    if (p.B <= 0 || out <= 0) return;
    conv1d_kernel<<<blocks_for(p.B * out, kThreads), kThreads, 0, stream>>>(p, x, w, y);
    FC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace fastconv

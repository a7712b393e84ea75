// conv1d.cu: valid 1-D cross-correlation on the GPU, float32 (the course notes'
// `convolve`):  y[b, k] = sum_t x[b, k + t] * w[t],  k in [0, M - n].
// x is (B, M), w is (n,), y is (B, M - n + 1), all dense. The CPU twin is
// csrc/cpu/conv1d.cpp.
//
// One variant: one thread per output, in y's memory order, summing its n taps in order
// as the CPU does. A warp reads 32 neighbouring windows, so each x load is shared through
// L1 by up to n threads, and every thread of a warp reads the same w[t] (one broadcast).
// Two index types (cuda_common.cuh): int32_t where B * M fits, int64_t otherwise; an
// output's (row, column) by one multiply-high (DivMod).
#include "../common/check.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

namespace fastconv {
namespace cuda {

namespace {

// by_out divides by the outputs per row, M - n + 1.
template <typename I>
__global__ void __launch_bounds__(kThreads)
    conv1d_kernel(Conv1dParams p, DivMod<I> by_out, const float* __restrict__ x,
                  const float* __restrict__ w, float* __restrict__ y) {
    const I M = I(p.M), n = I(p.n), count = I(p.B) * by_out.d;
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        I row;
        const I col = by_out.divmod(i, row);
        const float* s = x + row * M + col;
        float acc = 0.f;
        for (I t = 0; t < n; ++t) acc += s[t] * w[t];
        y[i] = acc;
    }
}

}  // namespace

void conv1d(const Conv1dParams& p, const float* x, const float* w, float* y, cudaStream_t stream) {
    const int64_t out = p.M - p.n + 1;
    if (p.B <= 0 || out <= 0) return;
    // Every offset into x, y and w is below B * M.
    with_index_type(p.B * p.M, [&](auto index) {
        using I = decltype(index);
        conv1d_kernel<I><<<blocks_for(p.B * out, kThreads), kThreads, 0, stream>>>(
            p, DivMod<I>(out), x, w, y);
    });
    FC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace fastconv

// cuda_common.cuh: what the CUDA kernel files share and nothing else: the launch
// arithmetic of grid-stride kernels, the inverse of offset4 (a flat element index back
// to (n, c, h, w)), and the fixed-order block reduction the deterministic reductions
// use. Private to csrc/cuda/.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "../common/params.h"
#include "../common/shapes.h"

namespace fastconv {
namespace cuda {

// Threads per block of the element-wise and one-thread-per-output kernels.
constexpr int kThreads = 256;

// Grid-stride kernels never launch more blocks than this: an H100 holds about 1 000
// blocks of 256 threads at once, so 65 536 still fill it many times over, and grid.x
// stays far below its 2^31 - 1 limit whatever the tensor size.
constexpr int64_t kMaxBlocks = 65536;

// Blocks of a grid-stride loop over `items` work items, per_block of them per block:
// the thread count for one-thread-per-item kernels, 1 for one-block-per-item kernels.
// items > 0.
inline unsigned int blocks_for(int64_t items, int64_t per_block) {
    return static_cast<unsigned int>(min64(ceil_div(items, per_block), kMaxBlocks));
}

__device__ __forceinline__ int64_t thread_index() {
    return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t thread_count() { return int64_t(gridDim.x) * blockDim.x; }

// (n, c, h, w) of flat element i of a dense 4-D tensor: the inverse of offset4, so
// offset4(layout, n, c, h, w, C, H, W) == i. Kernels walk their output in memory order,
// so neighbouring threads write neighbouring addresses in either layout.
struct Coord4 {
    int64_t n, c, h, w;
};

__device__ __forceinline__ Coord4 unravel4(Layout layout, int64_t i, int64_t C, int64_t H,
                                           int64_t W) {
    Coord4 at;
    if (layout == Layout::NCHW) {
        at.w = i % W, i /= W;
        at.h = i % H, i /= H;
        at.c = i % C, at.n = i / C;
    } else {
        at.c = i % C, i /= C;
        at.w = i % W, i /= W;
        at.h = i % H, at.n = i / H;
    }
    return at;
}

// Threads of the reduction kernels; block_sum's tree needs a power of two.
constexpr int kReduceThreads = 256;

// Sum of v over the block, returned to every thread. The tree has the same shape on
// every run (pairs (t, t + s) for s = 128, 64, ..., 1), so the rounding, and hence the
// result, depends on the shapes alone: the backward passes stay deterministic without
// atomics. sh holds kReduceThreads values; blockDim.x == kReduceThreads. Every thread of
// the block must call it.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
    const int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
#pragma unroll
    for (int s = kReduceThreads / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    const T total = sh[0];
    __syncthreads();  // sh is free again for the caller's next block of work
    return total;
}

}  // namespace cuda
}  // namespace fastconv

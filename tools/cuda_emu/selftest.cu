// selftest.cu: kernels that hold csrc/cuda's shared device helpers to the parts of their
// contracts that today's kernels do not exercise, translated and run like the kernels
// (test.cpp checks their outputs; the race detector watches their shared memory).
#include "cuda_common.cuh"

namespace fastconv {
namespace cuda {

// block_sum: the total is "returned to every thread", and sh is free again on return.
// Every thread keeps each of several consecutive totals (the library's callers read
// it in thread 0 only, so they would not notice a block_sum that broke either part).
__global__ void block_sum_every_thread(int64_t items, int rounds, float* out) {
    __shared__ float sh[kReduceThreads];
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x)
        for (int r = 0; r < rounds; ++r)
            out[(item * rounds + r) * kReduceThreads + threadIdx.x] =
                block_sum(float(threadIdx.x + r + item), sh);
}

void selftest_block_sum(int64_t items, int rounds, float* out) {
    block_sum_every_thread<<<blocks_for(items, 1), kReduceThreads, 0, nullptr>>>(items, rounds, out);
}

}  // namespace cuda
}  // namespace fastconv

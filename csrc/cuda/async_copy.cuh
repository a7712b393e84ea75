// async_copy.cuh: asynchronous global -> shared copies (sm_80's cp.async), the only
// way the kernels issue them, so the emulator (tools/cuda_emu) can model them.
//
//   async_copy_cg16(smem, gmem[, src_bytes])  16 bytes, cached in L2 only (.cg); with
//                                             src_bytes < 16 only those bytes are read
//                                             and the rest of the 16 is zero-filled
//                                             (src_bytes 0: gmem is not read at all;
//                                             the halo of a tile past the image edge)
//   async_copy_ca<4|8|16>(smem, gmem)        4, 8 or 16 bytes, cached in L1 too (.ca)
//   async_commit()                           closes this thread's group of copies
//   async_wait<N>()                          waits until at most N of this thread's
//                                            committed groups are still in flight
//
// Both addresses aligned to the copy's size. A copy's destination is undefined until
// the wait that covers its group, and a wait covers only this thread's copies: other
// threads see the data after the wait *and* a __syncthreads(). Before sm_80 the copies
// are plain synchronous loads and stores, and commit and wait do nothing. In the
// emulator each copy is queued, its destination filled with NaN bytes, and made only at
// the wait that covers it, so a missing or too-weak wait shows.
#pragma once
#include <cuda_runtime.h>

namespace fastconv {
namespace cuda {

#ifdef FASTCONV_CUDA_EMU
__device__ __forceinline__ void async_copy_cg16(void* smem, const void* gmem, int src_bytes = 16) {
    emu::async_copy(smem, gmem, 16, unsigned(src_bytes));
}
template <int Bytes>
__device__ __forceinline__ void async_copy_ca(void* smem, const void* gmem) {
    static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
    emu::async_copy(smem, gmem, Bytes, Bytes);
}
__device__ __forceinline__ void async_commit() { emu::async_commit(); }
template <int N>
__device__ __forceinline__ void async_wait() { emu::async_wait(N); }
#else
__device__ __forceinline__ void async_copy_cg16(void* smem, const void* gmem, int src_bytes = 16) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#else
    unsigned char* d = static_cast<unsigned char*>(smem);
    const unsigned char* g = static_cast<const unsigned char*>(gmem);
    for (int i = 0; i < 16; ++i) d[i] = i < src_bytes ? g[i] : 0;
#endif
}
template <int Bytes>
__device__ __forceinline__ void async_copy_ca(void* smem, const void* gmem) {
    static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
#if __CUDA_ARCH__ >= 800
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(s), "l"(gmem), "n"(Bytes));
#else
    unsigned char* d = static_cast<unsigned char*>(smem);
    const unsigned char* g = static_cast<const unsigned char*>(gmem);
    for (int i = 0; i < Bytes; ++i) d[i] = g[i];
#endif
}
__device__ __forceinline__ void async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}
#endif

}  // namespace cuda
}  // namespace fastconv

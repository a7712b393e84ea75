// The CUDA runtime surface the fastconv kernels use, emulated on the host (tools/cuda_emu).
#pragma once
#include <math.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
typedef struct CUstream_st* cudaStream_t;
typedef int cudaError_t;
enum { cudaSuccess = 0 };
inline cudaError_t cudaGetLastError() { return 0; }
inline const char* cudaGetErrorString(cudaError_t) { return "emu"; }
// Memory and stream calls: host memory, and a stream is always done (every launch runs
// to completion before the call returns). Fresh allocations hold 0xFF bytes (NaN as
// float or double), so a kernel that reads scratch it never wrote shows.
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
inline cudaError_t cudaMalloc(void** p, size_t n) {
    *p = std::malloc(n);
    if (*p) std::memset(*p, 0xFF, n);
    return *p ? 0 : 2;
}
inline cudaError_t cudaFree(void* p) { std::free(p); return 0; }
inline cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) { return cudaMalloc(p, n); }
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return 0; }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
    std::memcpy(d, s, n);
    return 0;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return 0; }
// Emulated threads are coroutines on one OS thread: a plain add is atomic here.
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    const unsigned long long old = *p;
    *p += v;
    return old;
}
struct dim3 { unsigned x = 1, y = 1, z = 1; };
// The vector types the kernels load and store, with CUDA's alignment.
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) longlong2 { long long x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline longlong2 make_longlong2(long long x, long long y) { return {x, y}; }
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
void __syncthreads();
// translate.py turns `kernel<<<grid, block, 0, stream>>>(args)` into this.
void emu_launch(const char* kernel, unsigned grid, unsigned block, std::function<void()> body);
// EMU_SEED (default 1): the seed of every random choice of the emulator.
uint64_t emu_seed();

// translate.py turns `__shared__ T name[dims];` into
//   static emu::SharedSlot emu_slot_name; auto& name = emu::shared<T[dims]>(emu_slot_name, ...);
// The first thread of a block to reach the declaration places the array in the block's
// shared arena (filled with 0xFF bytes); the others find it in the slot.
extern unsigned long emu_block_serial;
namespace emu {
struct SharedSlot {
    unsigned long serial = 0;
    void* ptr = nullptr;
};
void* shared_alloc(size_t bytes, size_t align, const char* name, int line, unsigned long* serial);
template <typename T>
inline T& shared(SharedSlot& s, const char* name, int line) {
    if (s.serial != emu_block_serial) s.ptr = shared_alloc(sizeof(T), alignof(T), name, line, &s.serial);
    return *static_cast<T*>(s.ptr);
}
}  // namespace emu
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __restrict__

// The CUDA runtime surface the fastconv kernels use, emulated on the host (tools/cuda_emu).
#pragma once
#include <math.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
// Project headers with a device and an emulated side (async_copy.cuh) test this.
#define FASTCONV_CUDA_EMU 1
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
// Only the dynamic shared-memory opt-in is modelled (up to 227 KiB, an H100's limit).
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
constexpr int warpSize = 32;
// The vector types the kernels load and store, with CUDA's alignment.
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) longlong2 { long long x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline longlong2 make_longlong2(long long x, long long y) { return {x, y}; }
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
// Device intrinsics of integer and float bits.
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(unsigned v) { return v ? __builtin_clz(v) : 32; }
inline int __ffs(unsigned v) { return __builtin_ffs(int(v)); }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
// CUDA's integer min/max of device code.
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
void __syncthreads();
// translate.py turns `kernel<<<grid, block, shmem, stream>>>(args)` into this.
void emu_launch(const char* kernel, const void* func, dim3 grid, dim3 block, size_t shmem,
                std::function<void()> body);
// EMU_SEED (default 1): the seed of every random choice of the emulator.
uint64_t emu_seed();

// translate.py turns `__shared__ T name[dims];` into
//   static emu::SharedSlot emu_slot_name; auto& name = emu::shared<T[dims]>(emu_slot_name, ...);
// The first thread of a block to reach the declaration places the array in the block's
// shared arena (filled with 0xFF bytes); the others find it in the slot. And
// `extern __shared__ T name[];` into `T* const name = emu::dynamic<T>(...)`: the
// launch's dynamic shared memory, the same region for every such declaration.
extern unsigned long emu_block_serial;
namespace emu {
struct SharedSlot {
    unsigned long serial = 0;
    void* ptr = nullptr;
};
void* shared_alloc(size_t bytes, size_t align, const char* name, int line, unsigned long* serial);
void* dynamic_shared(size_t align, const char* name, int line);
template <typename T, size_t Align = alignof(T)>
inline T& shared(SharedSlot& s, const char* name, int line) {
    if (s.serial != emu_block_serial) s.ptr = shared_alloc(sizeof(T), Align, name, line, &s.serial);
    return *static_cast<T*>(s.ptr);
}
template <typename T>
inline T* dynamic(size_t align, const char* name, int line) {
    return static_cast<T*>(dynamic_shared(align, name, line));
}
// A race-detector note of an access made on a lane's behalf (warp collectives, WMMA).
void note_shared(const void* addr, size_t n, bool write, unsigned thread);

// ---- warp collectives (emu.cpp): a meeting point of the lanes the mask names.
enum class WarpKind : int {
    Sync, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All,
    ReduceAdd, ReduceMin, ReduceMax, ReduceAnd, ReduceOr, ReduceXor, Wmma
};
struct WarpOp {
    WarpKind kind;
    unsigned mask;
    const char* name;
    uint64_t value = 0;      // this lane's input
    int arg = 0;             // shuffles: source lane, delta or lane mask
    uint64_t uniform[4] = {};  // must be equal in every lane (width, pointer, ldm, ...)
    void (*exec)(WarpOp** lanes) = nullptr;  // WMMA: completes the op for all lanes
    void* self[4] = {};      // WMMA: this lane's fragments
    uint64_t result = 0;
    const void* pc = nullptr;
    unsigned thread = 0;     // the calling thread (set by warp_collective)
};
void warp_collective(WarpOp& op);
unsigned active_mask();
template <typename T>
inline uint64_t bits_of(T v) {
    static_assert(sizeof(T) <= 8, "a warp collective on a value over 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof v);
    return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof v);
    return v;
}
template <typename T>
inline T shuffle(WarpKind k, const char* name, unsigned mask, T var, int arg, int width) {
    WarpOp op{k, mask, name};
    op.value = bits_of(var), op.arg = arg, op.uniform[0] = unsigned(width);
    warp_collective(op);
    return from_bits<T>(op.result);
}
inline uint64_t vote(WarpKind k, const char* name, unsigned mask, uint64_t v, bool is_signed = false) {
    WarpOp op{k, mask, name};
    op.value = v, op.uniform[0] = is_signed;
    warp_collective(op);
    return op.result;
}
void atomic_point(void* p, size_t n, const void* pc);
// async_copy.cuh's emulated side
void async_copy(void* dst, const void* src, unsigned bytes, unsigned src_bytes);
void async_commit();
void async_wait(int pending);
}  // namespace emu

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = warpSize) {
    return emu::shuffle(emu::WarpKind::Shfl, "__shfl_sync", mask, var, src, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu::shuffle(emu::WarpKind::ShflUp, "__shfl_up_sync", mask, var, int(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu::shuffle(emu::WarpKind::ShflDown, "__shfl_down_sync", mask, var, int(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    return emu::shuffle(emu::WarpKind::ShflXor, "__shfl_xor_sync", mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int p) {
    return unsigned(emu::vote(emu::WarpKind::Ballot, "__ballot_sync", mask, p != 0));
}
inline int __any_sync(unsigned mask, int p) { return int(emu::vote(emu::WarpKind::Any, "__any_sync", mask, p != 0)); }
inline int __all_sync(unsigned mask, int p) { return int(emu::vote(emu::WarpKind::All, "__all_sync", mask, p != 0)); }
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) { emu::vote(emu::WarpKind::Sync, "__syncwarp", mask, 0); }
inline unsigned __activemask() { return emu::active_mask(); }
#define EMU_REDUCE(fn, kind)                                                                  \
    inline unsigned fn(unsigned mask, unsigned v) {                                           \
        return unsigned(emu::vote(emu::WarpKind::kind, #fn, mask, v, false));                 \
    }                                                                                         \
    inline int fn(unsigned mask, int v) {                                                     \
        return int(unsigned(emu::vote(emu::WarpKind::kind, #fn, mask, unsigned(v), true)));   \
    }
EMU_REDUCE(__reduce_add_sync, ReduceAdd)
EMU_REDUCE(__reduce_min_sync, ReduceMin)
EMU_REDUCE(__reduce_max_sync, ReduceMax)
#undef EMU_REDUCE
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return unsigned(emu::vote(emu::WarpKind::ReduceAnd, "__reduce_and_sync", mask, v)); }
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return unsigned(emu::vote(emu::WarpKind::ReduceOr, "__reduce_or_sync", mask, v)); }
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return unsigned(emu::vote(emu::WarpKind::ReduceXor, "__reduce_xor_sync", mask, v)); }

// Atomics (emu.cpp): a scheduling point, then a plain read-modify-write; on shared
// memory the race detector lets atomics meet atomics, not plain accesses.
#define EMU_ATOMIC_INT(T)                                                                     \
    T atomicAdd(T*, T); T atomicExch(T*, T); T atomicMin(T*, T); T atomicMax(T*, T);          \
    T atomicAnd(T*, T); T atomicOr(T*, T); T atomicXor(T*, T); T atomicCAS(T*, T, T);
EMU_ATOMIC_INT(int)
EMU_ATOMIC_INT(unsigned)
EMU_ATOMIC_INT(unsigned long long)
#undef EMU_ATOMIC_INT
int atomicSub(int*, int);
unsigned atomicSub(unsigned*, unsigned);
long long atomicMin(long long*, long long);
long long atomicMax(long long*, long long);
float atomicAdd(float*, float);
float atomicExch(float*, float);
double atomicAdd(double*, double);
unsigned atomicInc(unsigned*, unsigned);
unsigned atomicDec(unsigned*, unsigned);

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __restrict__
#define __align__(n) alignas(n)

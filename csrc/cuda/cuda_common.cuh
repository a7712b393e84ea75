// cuda_common.cuh: what the CUDA kernel files share and nothing else: the launch
// arithmetic of grid-stride kernels, the index type a kernel is instantiated on and the
// divisions by run-time constants it does, the inverse of offset4 (a flat element index
// back to (n, c, h, w)), and the fixed-order block reduction the deterministic
// reductions use. Private to csrc/cuda/.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <type_traits>

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

template <typename I = int64_t>
__device__ __forceinline__ I thread_index() {
    return I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x);
}

template <typename I = int64_t>
__device__ __forceinline__ I thread_count() { return I(gridDim.x) * I(blockDim.x); }

// ------------------------------------------------------------------ index type
// The kernels that take an index type I do their index math in I: int32_t when the host
// has checked that every index and offset the kernel forms fits (index32), int64_t for
// the rest. A 64-bit division is a ~20-instruction sequence with a slow path, its
// multiplies twice the 32-bit ones, and 64-bit indices hold two registers each.
//
// The largest extent a kernel may be given in int32_t: room is left for one grid-stride
// step past the end (at most kMaxBlocks blocks of 1024 threads), so the loop counter
// never wraps.
constexpr int64_t kIndex32Max = INT32_MAX - kMaxBlocks * 1024;

// FASTCONV_INDEX64=1 makes every launcher take the int64_t instantiation whatever the
// sizes: how the tests (tools/cuda_emu, a GPU run) reach the 64-bit kernels without
// tensors of 2^31 elements.
// (Read once at load, not in a function-local static: that one's thread-safe guard is
// an atomic the emulator's instrumented build has no runtime for.)
inline const bool kForceIndex64 = [] {
    const char* e = std::getenv("FASTCONV_INDEX64");
    return e != nullptr && e[0] != '\0' && e[0] != '0';
}();
inline bool force_index64() { return kForceIndex64; }

// Whether a kernel whose indices and offsets all lie in [-extent, extent] runs in 32 bits.
inline bool index32(int64_t extent) { return extent <= kIndex32Max && !force_index64(); }

// Calls f(int32_t()) or f(int64_t()) as index32(extent) says; f launches the kernel
// instantiated on decltype of its argument.
template <typename F>
inline void with_index_type(int64_t extent, F&& f) {
    if (index32(extent))
        f(int32_t(0));
    else
        f(int64_t(0));
}

FC_HD uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
    return __umulhi(a, b);
#else
    return uint32_t((uint64_t(a) * b) >> 32);
#endif
}

FC_HD uint64_t mulhi(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
    return __umul64hi(a, b);
#else
    return uint64_t((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// Division of a non-negative index by a divisor fixed for the whole launch, built on the
// host and passed to the kernel: a multiply-high, an add and a shift (the round-up
// method). For a B-bit index type, l = ceil(log2 d) and m = floor(2^B (2^l - d) / d) + 1,
// which fits in B bits; then n / d = (mulhi(n, m) + n) >> l for every 0 <= n < 2^(B-1)
// (mulhi(n, m) < n, so the sum stays below 2^B). tools/divmod_check.cpp checks it.
template <typename I>
struct DivMod {
    using U = typename std::conditional<sizeof(I) == 4, uint32_t, uint64_t>::type;
    I d;
    U m;
    uint32_t l;
    DivMod() = default;
    // 1 <= d_ <= the largest I (a 0 is kept as a divisor that must not be used).
    explicit DivMod(int64_t d_) : d(I(d_)), m(0), l(0) {
        if (d_ < 1) return;
        while ((uint64_t(1) << l) < uint64_t(d_)) ++l;
        constexpr int B = 8 * sizeof(I);
        const unsigned __int128 num = (static_cast<unsigned __int128>(1) << B) *
                                      ((static_cast<unsigned __int128>(1) << l) - uint64_t(d_));
        m = U(num / uint64_t(d_) + 1);
    }
    FC_HD I div(I n) const {
        const U u = U(n);
        return I((mulhi(u, m) + u) >> l);
    }
    // q = n / d, returns n % d.
    FC_HD I divmod(I n, I& q) const {
        q = div(n);
        return n - q * d;
    }
};

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

// unravel4 for kernels on index type I, its three divisors built once on the host:
// unravel(i) == unravel4(layout, i, C, H, W).
template <typename I>
struct Coord4I {
    I n, c, h, w;
};

template <typename I>
struct Unravel4 {
    Layout layout;
    DivMod<I> d0, d1, d2;  // innermost extent first: (W, H, C) for NCHW, (C, W, H) for NHWC
    Unravel4() = default;
    Unravel4(Layout L, int64_t C, int64_t H, int64_t W)
        : layout(L),
          d0(L == Layout::NCHW ? W : C),
          d1(L == Layout::NCHW ? H : W),
          d2(L == Layout::NCHW ? C : H) {}
    __device__ __forceinline__ Coord4I<I> operator()(I i) const {
        I r0, r1, r2, q;
        r0 = d0.divmod(i, q);
        r1 = d1.divmod(q, q);
        r2 = d2.divmod(q, q);
        if (layout == Layout::NCHW) return {q, r2, r1, r0};
        return {q, r0, r2, r1};
    }
};

// offset4 in the kernel's index type.
template <typename I>
__device__ __forceinline__ I offset4i(Layout layout, I n, I c, I h, I w, I C, I H, I W) {
    return layout == Layout::NCHW ? ((n * C + c) * H + h) * W + w : ((n * H + h) * W + w) * C + c;
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

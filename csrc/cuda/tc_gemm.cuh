// tc_gemm.cuh: the tensor-core GEMM tile that the implicit-GEMM convolutions share: a
// block tile of C (kTcBM x kTcBN, float accumulators) = A (kTcBM x red) . B (red x kTcBN),
// reduced kTcBK at a time through a kTcStages-deep pipeline of shared-memory stages, on
// tensor cores through WMMA (nvcuda::wmma). Private to csrc/cuda/.
//
// What a kernel supplies: the two tile loads, each a functor that fills one stage's A
// (kTcBM x kTcBK) or B (kTcBK x kTcBN) tile for reduction offset k0 (asynchronous copies
// through async_copy.cuh, or plain element stores), and its epilogue, which reads the
// accumulators back from a float staging tile in shared memory. The pipeline, the
// fragment loop and the precision policy live here, so conv2d_fwd_tc.cu's gathers and
// the grad-input / grad-weight gathers to come plug into the same main loop.
//
// Tile: 128 x 64 x 32, 256 threads = 8 warps of 32 x 32 (2 x 2 fragments of 16 x 16),
// warps 4 (rows) x 2 (columns). Why this one (benchmarks/NOTES.md, "Tensor-core implicit
// GEMM"): each k-step of a warp loads 2 A and 2 B fragments for 4 mma_sync, and a block
// moves (128 + 64) x 32 elements a tile for 128 x 64 x 32 multiply-adds; three float
// stages take 76.5-79.5 KiB of shared memory, so two blocks (16 warps) fit an H100 SM, and
// three half ones (40.5-43.5 KiB, 80 registers).
//
// Precision policies (the Policy parameter):
//   TcTf32     float in shared memory, every loaded fragment element rounded by
//              __float_to_tf32 (nearest, ties away), m16n16k8: one mma per product.
//   TcTf32x3   float split a = big + small, both TF32 (small = tf32(a - big)); three
//              mma per product, smaller terms first: small*big, big*small, big*big (the
//              dropped small*small is ~2^-22 relative): float32 accuracy at 3x the MMAs.
//   TcHalf<T>  __half or __nv_bfloat16 in shared memory, m16n16k16, float accumulators.
//
// Shared-memory layouts: A row-major (As[m][k], the NHWC gather runs along k) or
// column-major (As[k][m], the NCHW gather runs along pixels); B row-major (Bs[k][n], the
// (R, S, Cg, K) weight runs along filters) or column-major (Bs[n][k], (K, Cg, R, S) runs
// along k). Each row is padded by 16 bytes: WMMA's ldm stays a multiple of 16 bytes, every
// fragment pointer stays 32-byte aligned, and consecutive rows start 4 banks apart.
#pragma once
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "async_copy.cuh"
#include "cuda_common.cuh"

namespace fastconv {
namespace cuda {

constexpr int kTcBM = 128, kTcBN = 64, kTcBK = 32;  // block tile: pixels x filters x reduction
constexpr int kTcThreads = 256;                     // 8 warps
constexpr int kTcWarpsM = 4;                        // warps along M (2 along N)
constexpr int kTcWarpTile = 32;                     // each warp: 32 x 32 of C
constexpr int kTcStages = 3;
static_assert(kTcWarpsM * kTcWarpTile == kTcBM && (kTcThreads / 32 / kTcWarpsM) * kTcWarpTile == kTcBN,
              "the warps tile the block tile");

// Elements in one 16-byte copy, and whether a pointer allows such copies.
template <typename T>
constexpr int kVec = 16 / int(sizeof(T));
inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Conversions between the storage types and float.
__device__ __forceinline__ float tc_to_float(float v) { return v; }
__device__ __forceinline__ float tc_to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float tc_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T tc_from_float(float v);
template <>
__device__ __forceinline__ float tc_from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half tc_from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 tc_from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// ------------------------------------------------------------------ precision policies
// Each names its storage type T, WMMA's element type Prec and k-step kK, and mma(acc,
// a, b): acc[i][j] += a[i] . b[j] for the warp's 2 x 2 fragments, from fragments loaded
// straight from shared memory.

template <class F>
__device__ __forceinline__ void tc_round_tf32(F& f) {
#pragma unroll
    for (int e = 0; e < F::num_elements; ++e) f.x[e] = nvcuda::wmma::__float_to_tf32(f.x[e]);
}

struct TcTf32 {
    using T = float;
    using Prec = nvcuda::wmma::precision::tf32;
    static constexpr int kK = 8;
    template <class FC, class FA, class FB>
    __device__ __forceinline__ static void mma(FC (&acc)[2][2], FA (&a)[2], FB (&b)[2]) {
#pragma unroll
        for (int i = 0; i < 2; ++i) tc_round_tf32(a[i]);
#pragma unroll
        for (int j = 0; j < 2; ++j) tc_round_tf32(b[j]);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
};

// big = tf32(v) in f, small = tf32(v - big) in lo.
template <class F>
__device__ __forceinline__ void tc_split_tf32(F& f, F& lo) {
#pragma unroll
    for (int e = 0; e < F::num_elements; ++e) {
        const float v = f.x[e], big = nvcuda::wmma::__float_to_tf32(v);
        f.x[e] = big;
        lo.x[e] = nvcuda::wmma::__float_to_tf32(v - big);
    }
}

struct TcTf32x3 {
    using T = float;
    using Prec = nvcuda::wmma::precision::tf32;
    static constexpr int kK = 8;
    template <class FC, class FA, class FB>
    __device__ __forceinline__ static void mma(FC (&acc)[2][2], FA (&a)[2], FB (&b)[2]) {
        FA a_lo[2];
        FB b_lo[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) tc_split_tf32(a[i], a_lo[i]);
#pragma unroll
        for (int j = 0; j < 2; ++j) tc_split_tf32(b[j], b_lo[j]);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                nvcuda::wmma::mma_sync(acc[i][j], a_lo[i], b[j], acc[i][j]);
                nvcuda::wmma::mma_sync(acc[i][j], a[i], b_lo[j], acc[i][j]);
                nvcuda::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
            }
    }
};

template <typename H>
struct TcHalf {
    using T = H;
    using Prec = H;
    static constexpr int kK = 16;
    template <class FC, class FA, class FB>
    __device__ __forceinline__ static void mma(FC (&acc)[2][2], FA (&a)[2], FB (&b)[2]) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
};

// ------------------------------------------------------------------ the tile
// Shared-memory geometry and fragment types for a policy and the two operands' layouts.
// The staging tile of the epilogue (kTcBM x kTcBN floats) reuses the pipeline's buffers.
template <class Policy, bool kAColMajor, bool kBColMajor>
struct TcTile {
    using T = typename Policy::T;
    static constexpr int kPad = 16 / int(sizeof(T));  // 16 bytes
    static constexpr int kLda = kAColMajor ? kTcBM + kPad : kTcBK + kPad;
    static constexpr int kLdb = kBColMajor ? kTcBK + kPad : kTcBN + kPad;
    static constexpr int kAElems = (kAColMajor ? kTcBK : kTcBM) * kLda;
    static constexpr int kBElems = (kBColMajor ? kTcBN : kTcBK) * kLdb;
    static constexpr int kStageElems = kAElems + kBElems;
    // The staging tile: C row-major (ldc kTcBN + 4) or, with A, column-major (kTcBM + 4).
    static constexpr bool kCColMajor = kAColMajor;
    static constexpr int kLdc = kAColMajor ? kTcBM + 4 : kTcBN + 4;
    static constexpr int kStagingBytes = (kAColMajor ? kTcBN : kTcBM) * kLdc * 4;
    static constexpr int kPipelineBytes = kTcStages * kStageElems * int(sizeof(T));
    static constexpr int kSmemBytes = kPipelineBytes > kStagingBytes ? kPipelineBytes : kStagingBytes;
    static_assert(kAElems * sizeof(T) % 32 == 0 && kBElems * sizeof(T) % 32 == 0,
                  "every stage and operand starts 32-byte aligned (WMMA's pointers)");

    using ALayout = typename std::conditional<kAColMajor, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type;
    using BLayout = typename std::conditional<kBColMajor, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type;
    using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, Policy::kK, typename Policy::Prec, ALayout>;
    using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, Policy::kK, typename Policy::Prec, BLayout>;
    using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, Policy::kK, float>;

    __device__ __forceinline__ static T* a_stage(T* smem, int s) { return smem + s * kStageElems; }
    __device__ __forceinline__ static T* b_stage(T* smem, int s) { return smem + s * kStageElems + kAElems; }
    // Where element (m, k) of A and (k, n) of B sit in their stage.
    __device__ __forceinline__ static int a_index(int m, int k) { return kAColMajor ? k * kLda + m : m * kLda + k; }
    __device__ __forceinline__ static int b_index(int k, int n) { return kBColMajor ? n * kLdb + k : k * kLdb + n; }
    // Where element (m, n) of C sits in the staging tile.
    __device__ __forceinline__ static int c_index(int m, int n) { return kAColMajor ? n * kLdc + m : m * kLdc + n; }
};

// The main loop: acc = A . B over k_tiles tiles of kTcBK. load_a(As, k0) and
// load_b(Bs, k0) fill one stage's tiles for reduction offset k0 (zeros past the
// reduction's end and in padding), through asynchronous copies, element stores or both;
// every thread of the block calls this, and each thread's copies are its own (it waits
// for them here). Each loader is called exactly once per tile, in the order k0 = 0,
// kTcBK, 2 kTcBK, ..., so a loader may keep a cursor it advances per call instead of
// dividing k0 (the grad input's tap walk, conv2d_bwd_tc.cu). Each iteration: wait for tile kt, one barrier (tile kt visible to all,
// and the stage that held tile kt - 1 free), issue tile kt + kTcStages - 1 into that
// stage, then the warp's fragments over tile kt. Returns after a barrier, with no copy in
// flight: the pipeline's buffers are free for the staging tile.
template <class Policy, class Tile, typename I, class LoadA, class LoadB>
__device__ __forceinline__ void tc_mainloop(typename Tile::Acc (&acc)[2][2], typename Policy::T* smem,
                                            I k_tiles, LoadA& load_a, LoadB& load_b) {
    using namespace nvcuda;
    using T = typename Policy::T;
    const int warp = threadIdx.x / 32;
    const int wm = warp % kTcWarpsM * kTcWarpTile, wn = warp / kTcWarpsM * kTcWarpTile;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    // Prologue: the first kTcStages - 1 tiles in flight, one commit group each (empty past
    // the end: every iteration then finds the same number of groups behind its own).
#pragma unroll
    for (int s = 0; s < kTcStages - 1; ++s) {
        if (I(s) < k_tiles) {
            load_a(Tile::a_stage(smem, s), I(s * kTcBK));
            load_b(Tile::b_stage(smem, s), I(s * kTcBK));
        }
        async_commit();
    }
    int read = 0, write = kTcStages - 1;
    for (I kt = 0; kt < k_tiles; ++kt) {
        async_wait<kTcStages - 2>();  // this thread's copies of tile kt have landed
        __syncthreads();              // everyone's; and no warp still reads stage `write`
        const I next = kt + I(kTcStages - 1);
        if (next < k_tiles) {
            load_a(Tile::a_stage(smem, write), next * I(kTcBK));
            load_b(Tile::b_stage(smem, write), next * I(kTcBK));
        }
        async_commit();
        const T* As = Tile::a_stage(smem, read);
        const T* Bs = Tile::b_stage(smem, read);
        // Unrolled twice, not fully: with TF32's four k-steps unrolled ptxas hoisted every
        // step's fragment loads and spilled (4-44 B) at the 128-register cap that two
        // blocks an SM need; two steps keep one step's loads ahead of the other's MMAs.
#pragma unroll 2
        for (int ks = 0; ks < kTcBK; ks += Policy::kK) {
            typename Tile::FragA a[2];
            typename Tile::FragB b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + Tile::a_index(wm + 16 * i, ks), Tile::kLda);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + Tile::b_index(ks, wn + 16 * j), Tile::kLdb);
            Policy::mma(acc, a, b);
        }
        read = read == kTcStages - 1 ? 0 : read + 1;
        write = write == kTcStages - 1 ? 0 : write + 1;
    }
    async_wait<0>();  // (only empty groups are left)
    __syncthreads();  // every warp is done with the stages: the staging tile reuses them
}

// The epilogue's first half: the warps' accumulators into the float staging tile c
// (Tile::c_index's layout), then a barrier, so any thread may read any element.
template <class Tile>
__device__ __forceinline__ void tc_stage_acc(const typename Tile::Acc (&acc)[2][2], float* c) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32;
    const int wm = warp % kTcWarpsM * kTcWarpTile, wn = warp / kTcWarpsM * kTcWarpTile;
    constexpr wmma::layout_t kLayout = Tile::kCColMajor ? wmma::mem_col_major : wmma::mem_row_major;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(c + Tile::c_index(wm + 16 * i, wn + 16 * j), acc[i][j], Tile::kLdc, kLayout);
    __syncthreads();  // the whole tile is staged before any thread reads another warp's part
}

}  // namespace cuda
}  // namespace fastconv

// conv2d_fwd_tc.cu: conv2d forward on tensor cores, the implicit GEMM of conv2d_fwd.cu
// through WMMA: per group g,
//
//   y_g (M x Kg) = act(col (M x Cg*R*S) . w_g (Cg*R*S x Kg) + b + residual),  M = N*P*Q
//
// with the im2col matrix col gathered from x tile by tile into shared memory, never
// built. float32 (p.precision TF32 or TF32x3), float16 and bfloat16, float accumulation;
// NCHW and NHWC (weights (K, Cg, R, S) and (R, S, Cg, K)), any stride, padding, dilation
// and group count. The tile machinery (3-stage pipeline, 128 x 64 x 32 block tile, 8 warps
// of 32 x 32, the precision policies) is tc_gemm.cuh's; this file supplies the gathers of
// the A (col) and B (weight) tiles and the epilogue. Called from conv2d_fwd.cu.
//
// Variants (one kernel template, chosen on the host; per precision and layout, on int32_t
// or int64_t indices):
//   NHWC, 16-byte copies  Cg and Kg multiples of 16 bytes' worth of elements (4 floats, 8
//                         halves) and 16-byte aligned x and w: each tap's channels are
//                         contiguous, so A and B move as cp.async 16-byte copies straight
//                         into shared memory (zero-filled for padding taps and ragged
//                         edges), 3 stages in flight: no register staging, the loads of
//                         tile k + 2 overlap the MMAs of tile k.
//   NHWC, element loads   the same tiles where Cg or Kg is not a multiple (RGB's C = 3,
//                         a stem) or a pointer is misaligned: each thread loads the same
//                         chunks element by element (A and B choose independently).
//   NCHW                  A runs along pixels in x, so it is gathered element by element
//                         into a column-major tile (threads along pixels: coalesced where
//                         the stride is 1); B, contiguous along the reduction in
//                         (K, Cg, R, S), moves by 16-byte copies into a column-major tile
//                         where Cg*R*S is a multiple of 4 floats / 8 halves and w is
//                         aligned, by element loads otherwise.
// Epilogue (all): the accumulators through a float staging tile in shared memory (the
// pipeline's buffers), then y = act(acc + b + residual) in float, converted once to the
// output type, each thread storing along y's contiguous axis (filters in NHWC, pixels in
// NCHW) so a warp's stores coalesce.
#include <cstdint>
#include <type_traits>

#include "../common/activation.h"
#include "../common/check.h"
#include "../common/shapes.h"
#include "conv2d_fwd_tc.cuh"
#include "cuda_common.cuh"
#include "implicit_gemm.cuh"
#include "tc_gemm.cuh"

namespace fastconv {
namespace cuda {

namespace {

// x[n, g*Cg + c, h0 + r*dh, w0 + s*dw] of pixel px (xg at channel g*Cg of image 0), 0 in
// the padding and past the last pixel.
template <Layout L, typename T, typename I>
__device__ __forceinline__ T tc_gather(const Conv2dParams& p, const T* __restrict__ xg,
                                       const Pixel<I>& px, I c, I r, I s) {
    const I H = I(p.H), W = I(p.W);
    const I h = px.h0 + r * I(p.dil_h), w = px.w0 + s * I(p.dil_w);
    if (!px.valid || h < 0 || h >= H || w < 0 || w >= W) return tc_from_float<T>(0.f);
    return L == Layout::NCHW ? xg[px.base + (c * H + h) * W + w] : xg[px.base + (h * W + w) * I(p.C) + c];
}

// ------------------------------------------------------------------------ tile loads
// Each is built once per output tile (its pixels and filters) and called once per
// reduction tile k0 with the stage to fill.

// NHWC A, As[m][k] with kk = (r*S + s)*Cg + c: kTcBM rows of kTcBK / V chunks of V
// elements (16 bytes). Thread t takes chunk column t % kCols of rows t / kCols + kStep*i
// and keeps those rows' pixels for the whole reduction.
template <class Tile, typename I>
struct LoadA_NHWC {
    using T = typename Tile::T;
    static constexpr int V = kVec<T>, kCols = kTcBK / V, kStep = kTcThreads / kCols, kRows = kTcBM / kStep;
    const Conv2dParams& p;
    const GemmDiv<I>& dv;
    const T* xg;
    I red;
    int col, row;
    bool vec;
    Pixel<I> px[kRows];

    __device__ __forceinline__ LoadA_NHWC(const Conv2dParams& p_, const GemmShape& gs, const GemmDiv<I>& dv_,
                                          const T* x, I g, I m0, bool vec_)
        : p(p_), dv(dv_), xg(x + g * I(gs.Cg)), red(I(gs.red)), col(threadIdx.x % kCols),
          row(threadIdx.x / kCols), vec(vec_) {
#pragma unroll
        for (int i = 0; i < kRows; ++i) px[i] = pixel_of(p, gs, dv, I(m0 + row + kStep * i));
    }

    __device__ __forceinline__ void operator()(T* As, I k0) const {
        const I kk = k0 + I(col * V);
        I rs, r;
        I c = dv.cg.divmod(kk, rs);
        I s = dv.s.divmod(rs, r);
        if (vec) {
            // Cg % V == 0: the chunk's V channels lie in one tap, all inside the reduction
            // or all past it. Padding taps and rows past M copy 0 bytes (zero-filled).
            const I H = I(p.H), W = I(p.W);
#pragma unroll
            for (int i = 0; i < kRows; ++i) {
                const I h = px[i].h0 + r * I(p.dil_h), w = px[i].w0 + s * I(p.dil_w);
                const bool in = kk < red && px[i].valid && h >= 0 && h < H && w >= 0 && w < W;
                async_copy_cg16(As + Tile::a_index(row + kStep * i, col * V),
                                in ? xg + px[i].base + (h * W + w) * I(p.C) + c : xg, in ? 16 : 0);
            }
            return;
        }
        // Element by element: (c, s, r) counted on from the chunk's first index. Not
        // unrolled: V x kRows loads in flight would hold registers the copies never need.
        const I Cg = dv.cg.d, S = dv.s.d;
#pragma unroll 1
        for (int e = 0; e < V; ++e) {
            const bool in = kk + I(e) < red;
#pragma unroll
            for (int i = 0; i < kRows; ++i)
                As[Tile::a_index(row + kStep * i, col * V + e)] =
                    in ? tc_gather<Layout::NHWC>(p, xg, px[i], c, r, s) : tc_from_float<T>(0.f);
            if (++c == Cg) {
                c = 0;
                if (++s == S) s = 0, ++r;
            }
        }
    }
};

// NCHW A, As[k][m] (column-major) with kk = (c*R + r)*S + s: threads run along pixels
// (contiguous in x at stride 1), each taking kPix neighbouring pixels (one 4-byte word
// of a column: two halves are never written by two threads) of rows t / kCols + kStep*i.
template <class Tile, typename I>
struct LoadA_NCHW {
    using T = typename Tile::T;
    static constexpr int kPix = 4 / int(sizeof(T)), kCols = kTcBM / kPix, kStep = kTcThreads / kCols;
    static constexpr int kRows = kTcBK / kStep;
    const Conv2dParams& p;
    const GemmDiv<I>& dv;
    const T* xg;
    I red;
    int m, row;
    Pixel<I> px[kPix];

    __device__ __forceinline__ LoadA_NCHW(const Conv2dParams& p_, const GemmShape& gs, const GemmDiv<I>& dv_,
                                          const T* x, I g, I m0, bool)
        : p(p_), dv(dv_), xg(x + g * I(gs.Cg) * I(p.H) * I(p.W)), red(I(gs.red)),
          m(threadIdx.x % kCols * kPix), row(threadIdx.x / kCols) {
#pragma unroll
        for (int q = 0; q < kPix; ++q) px[q] = pixel_of(p, gs, dv, I(m0 + m + q));
    }

    __device__ __forceinline__ void operator()(T* As, I k0) const {
#pragma unroll 2
        for (int i = 0; i < kRows; ++i) {
            const int k = row + kStep * i;
            const I kk = k0 + I(k);
            I c = 0, r = 0, s = 0;
            if (kk < red) {
                const I rs = dv.rs.divmod(kk, c);
                s = dv.s.divmod(rs, r);
            }
#pragma unroll
            for (int q = 0; q < kPix; ++q)
                As[Tile::a_index(m + q, k)] =
                    kk < red ? tc_gather<Layout::NCHW>(p, xg, px[q], c, r, s) : tc_from_float<T>(0.f);
        }
    }
};

// B, the weight: kTcBK x kTcBN of reduction rows kk and filters j of group g, as chunks
// of V elements along the weight's contiguous axis: filters in NHWC's (R, S, Cg, K), Bs
// row-major (Bs[k][n]); the reduction in NCHW's (K, Cg, R, S), Bs column-major
// (Bs[n][k]). Thread t takes chunk column t % kCols of lines t / kCols + kStep*i. With
// vec (that axis' extent a multiple of V, w aligned) each chunk is one 16-byte copy,
// inside or past the edge as a whole.
template <class Tile, Layout L, typename I>
struct LoadB {
    using T = typename Tile::T;
    static constexpr bool nchw = L == Layout::NCHW;
    static constexpr int V = kVec<T>;
    static constexpr int kCols = (nchw ? kTcBK : kTcBN) / V, kStep = kTcThreads / kCols;
    static constexpr int kRows = (nchw ? kTcBN : kTcBK) / kStep;
    const T* wg;
    I red, Kg, ld;  // ld: elements between consecutive lines in w
    I j0;
    int col, row;
    bool vec;

    __device__ __forceinline__ LoadB(const Conv2dParams& p, const GemmShape& gs, const T* w, I g, I j0_, bool vec_)
        : wg(w + g * I(gs.Kg) * (nchw ? I(gs.red) : I(1))), red(I(gs.red)), Kg(I(gs.Kg)),
          ld(nchw ? I(gs.red) : I(p.K)), j0(j0_), col(threadIdx.x % kCols), row(threadIdx.x / kCols),
          vec(vec_) {}

    __device__ __forceinline__ void operator()(T* Bs, I k0) const {
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
            const int line = row + kStep * i;  // a filter (NCHW) or a reduction row (NHWC)
            // The chunk's first element: reduction index kk, filter j; it runs along e.
            const I kk = k0 + I(nchw ? col * V : line), j = j0 + I(nchw ? line : col * V);
            T* dst = Bs + (nchw ? Tile::b_index(col * V, line) : Tile::b_index(line, col * V));
            if (vec) {
                const bool in = kk < red && j < Kg;
                async_copy_cg16(dst, in ? wg + (nchw ? j * ld + kk : kk * ld + j) : wg, in ? 16 : 0);
                continue;
            }
#pragma unroll 1
            for (int e = 0; e < V; ++e) {
                const I ke = nchw ? kk + I(e) : kk, je = nchw ? j : j + I(e);
                dst[e] = ke < red && je < Kg ? wg[nchw ? je * ld + ke : ke * ld + je] : tc_from_float<T>(0.f);
            }
        }
    }
};

// ------------------------------------------------------------------------ the kernel
// Blocks per SM that __launch_bounds__ asks ptxas to fit (its register cap): shared memory
// allows 2 float blocks (76.5-79.5 KiB each) and 5 half ones (40.5-43.5 KiB), registers
// 3 of those at 80 (benchmarks/NOTES.md, "Tensor-core implicit GEMM forward").
template <class Policy>
constexpr int kTcMinBlocks = sizeof(typename Policy::T) == 4 ? 2 : 3;

// One block per output tile (kTcBM pixels x kTcBN filters of one group) in a grid-stride
// loop, pixels fastest (neighbouring blocks share the weight tile in L2). vec_a / vec_b:
// the tile loads may use 16-byte copies (see the loaders).
template <class Policy, Layout L, typename I>
__global__ void __launch_bounds__(kTcThreads, kTcMinBlocks<Policy>)
    conv2d_implicit_gemm_tc(Conv2dParams p, GemmShape gs, GemmDiv<I> dv, bool vec_a, bool vec_b,
                            const typename Policy::T* __restrict__ x, const typename Policy::T* __restrict__ w,
                            const typename Policy::T* __restrict__ b,
                            const typename Policy::T* __restrict__ residual, typename Policy::T* __restrict__ y) {
    using T = typename Policy::T;
    constexpr bool nchw = L == Layout::NCHW;
    using Tile = TcTile<Policy, nchw, nchw>;
    using LoadA = typename std::conditional<nchw, LoadA_NCHW<Tile, I>, LoadA_NHWC<Tile, I>>::type;
    extern __shared__ __align__(128) unsigned char tc_smem[];
    T* const stages = reinterpret_cast<T*>(tc_smem);
    float* const staging = reinterpret_cast<float*>(tc_smem);

    const I Kg = I(gs.Kg), K = I(p.K), M = I(gs.M), PQ = I(gs.PQ);
    const I m_tiles = I(gs.m_tiles), n_tiles = I(gs.n_tiles), tiles = I(gs.tiles);
    const I k_tiles = (I(gs.red) + I(kTcBK - 1)) / I(kTcBK);
    for (I tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        // Once per tile: plain divisions.
        const I m0 = (tile % m_tiles) * I(kTcBM);
        const I j0 = (tile / m_tiles % n_tiles) * I(kTcBN);
        const I g = tile / (m_tiles * n_tiles);

        LoadA load_a(p, gs, dv, x, g, m0, vec_a);
        LoadB<Tile, L, I> load_b(p, gs, w, g, j0, vec_b);
        typename Tile::Acc acc[2][2];
        tc_mainloop<Policy, Tile>(acc, stages, k_tiles, load_a, load_b);
        tc_stage_acc<Tile>(acc, staging);

        // y = act(acc + b + residual), converted once to T.
        if (nchw) {
            // Thread t: pixel t % kTcBM, filters t / kTcBM + 2i (y runs along pixels).
            const int ml = threadIdx.x % kTcBM;
            const I m = m0 + I(ml);
            if (m < M) {
                I n;
                const I pq = dv.pq.divmod(m, n);
                for (int jl = threadIdx.x / kTcBM; jl < kTcBN; jl += kTcThreads / kTcBM) {
                    const I j = j0 + I(jl);
                    if (j >= Kg) break;
                    const I k = g * Kg + j, o = (n * K + k) * PQ + pq;
                    float z = staging[Tile::c_index(ml, jl)];
                    if (p.has_bias) z += tc_to_float(b[k]);
                    if (residual != nullptr) z += tc_to_float(residual[o]);
                    y[o] = tc_from_float<T>(activate(p.act, z));
                }
            }
        } else {
            // Thread t: filter t % kTcBN, pixels t / kTcBN + 4i (y runs along filters).
            const int jl = threadIdx.x % kTcBN;
            const I j = j0 + I(jl);
            if (j < Kg) {
                const I k = g * Kg + j;
                const float bias = p.has_bias ? tc_to_float(b[k]) : 0.f;
                for (int ml = threadIdx.x / kTcBN; ml < kTcBM; ml += kTcThreads / kTcBN) {
                    const I m = m0 + I(ml);
                    if (m >= M) break;
                    const I o = m * K + k;
                    float z = staging[Tile::c_index(ml, jl)] + bias;
                    if (residual != nullptr) z += tc_to_float(residual[o]);
                    y[o] = tc_from_float<T>(activate(p.act, z));
                }
            }
        }
        __syncthreads();  // the staging tile is the next tile's pipeline
    }
}

template <class Policy, Layout L, typename I>
void launch_tc(const Conv2dParams& p, const GemmShape& gs, bool vec_a, bool vec_b,
               const typename Policy::T* x, const typename Policy::T* w, const typename Policy::T* b,
               const typename Policy::T* residual, typename Policy::T* y, cudaStream_t stream) {
    constexpr int smem = TcTile<Policy, L == Layout::NCHW, L == Layout::NCHW>::kSmemBytes;
    // Above 48 KiB of dynamic shared memory a kernel must opt in (float's 3 stages take
    // 76.5-79.5 KiB). Set at every launch: the attribute is per device (a flag set once
    // would miss a second GPU).
    FC_CUDA_CHECK(cudaFuncSetAttribute(conv2d_implicit_gemm_tc<Policy, L, I>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    conv2d_implicit_gemm_tc<Policy, L, I><<<blocks_for(gs.tiles, 1), kTcThreads, smem, stream>>>(
        p, gs, GemmDiv<I>(p, gs), vec_a, vec_b, x, w, b, residual, y);
    FC_CUDA_CHECK_LAUNCH();
}

template <class Policy>
void launch_tc(const Conv2dParams& p, const typename Policy::T* x, const typename Policy::T* w,
               const typename Policy::T* b, const typename Policy::T* residual, typename Policy::T* y,
               cudaStream_t stream) {
    constexpr int V = kVec<typename Policy::T>;
    const GemmShape gs = gemm_shape(p, kTcBM, kTcBN);
    const bool nchw = p.layout == Layout::NCHW;
    const bool vec_a = !nchw && gs.Cg % V == 0 && aligned16(x);
    const bool vec_b = (nchw ? gs.red : gs.Kg) % V == 0 && aligned16(w);
    // + the tiles' overhang past M, Kg and the reduction.
    const int64_t extent = max64(conv_extent(p), gs.tiles + gs.M + gs.Kg + gs.red + kTcBM + kTcBN + kTcBK);
    with_index_type(extent, [&](auto index) {
        using I = decltype(index);
        if (nchw)
            launch_tc<Policy, Layout::NCHW, I>(p, gs, vec_a, vec_b, x, w, b, residual, y, stream);
        else
            launch_tc<Policy, Layout::NHWC, I>(p, gs, vec_a, vec_b, x, w, b, residual, y, stream);
    });
}

}  // namespace

void implicit_gemm_tc_fwd(const Conv2dParams& p, const float* x, const float* w, const float* b,
                          const float* residual, float* y, cudaStream_t stream) {
    FC_CHECK(p.precision != Precision::Strict, "the tensor-core GEMM computes in TF32, not strict float32");
    if (p.precision == Precision::TF32x3)
        launch_tc<TcTf32x3>(p, x, w, b, residual, y, stream);
    else
        launch_tc<TcTf32>(p, x, w, b, residual, y, stream);
}

void implicit_gemm_tc_fwd(const Conv2dParams& p, const __half* x, const __half* w, const __half* b,
                          const __half* residual, __half* y, cudaStream_t stream) {
    launch_tc<TcHalf<__half>>(p, x, w, b, residual, y, stream);
}

void implicit_gemm_tc_fwd(const Conv2dParams& p, const __nv_bfloat16* x, const __nv_bfloat16* w,
                          const __nv_bfloat16* b, const __nv_bfloat16* residual, __nv_bfloat16* y,
                          cudaStream_t stream) {
    launch_tc<TcHalf<__nv_bfloat16>>(p, x, w, b, residual, y, stream);
}

}  // namespace cuda
}  // namespace fastconv

// conv2d_bwd_tc.cu: conv2d grad input and grad weight on tensor cores, float32 with
// p.precision TF32 or TF32x3: the SIMT GEMMs of conv2d_bwd.cu (bwd_data_gemm,
// bwd_filter_gemm) through tc_gemm.cuh's main loop (3-stage pipeline, 128 x 64 x 32 block
// tile, 8 warps of 32 x 32, the TcTf32 / TcTf32x3 policies). This file supplies the tile
// loads and the epilogues; NCHW and NHWC, any stride, padding, dilation and group count.
// Called from conv2d_bwd.cu.
//
// Grad input, per stride phase and group (implicit_gemm.cuh's transposed problem):
//   dx_g (M pixels of the phase x Cg) = A (M x taps*Kpad, dy gathered) . B (taps*Kpad x Cg)
// The reduction runs tap by tap and, within a tap, over Kpad = Kg rounded up to the 32-deep
// k-tile (zeros past Kg), so every k-tile lies in one tap: the loaders walk the taps with a
// cursor (tc_mainloop calls them in order), no division and no divisibility test.
// Deterministic as the SIMT GEMM: each dx element written once, by one thread, after a sum
// in a fixed order; a phase without taps writes zeros.
//   NHWC, 16-byte copies  Kg a multiple of 4 and dy, w 16-byte aligned: dy and the weight
//                         (R, S, Cg, K) are both contiguous along k, so A (row-major) and B
//                         (column-major) move as cp.async copies, zero-filled where a tap
//                         misses dy and past Kg: the loads of tile k + 2 overlap the MMAs
//                         of tile k, no register staging.
//   NHWC, element loads   the same chunks element by element (Kg not a multiple of 4, or a
//                         pointer misaligned).
//   NCHW                  dy runs along the pixels of a phase row: A column-major, threads
//                         along pixels (coalesced at stride 1 of the phase grid); the weight
//                         (K, Cg, R, S) at a tap is nearest to contiguous along c: B
//                         row-major, threads along channels; element loads.
// Epilogue: the staging tile, each thread storing along dx's contiguous axis (channels in
// NHWC, pixels in NCHW).
//
// Grad weight, per group and pixel chunk (split-K):
//   dW_g (Kg x Cg*R*S) = dy_g^T (Kg x M) . col (M x Cg*R*S),  M = N*P*Q
// each block summing one chunk of split_pixels pixels (conv2d_bwd.cu's kSplitPixels) for
// a 128-filter x 64-column tile; the partials go to the workspace and conv2d_bwd.cu's
// bwd_filter_sum_splits adds them in chunk order (the bits depend on the shapes only).
//   NHWC, 16-byte copies  Kg and Cg multiples of 4, dy and x aligned: A = dy^T moves as
//                         copies of 4 filters of a pixel (column-major tile), B = the
//                         forward's im2col gather as copies of 4 channels of a tap (the
//                         forward's NHWC A load, with pixels as the reduction).
//   NHWC, element loads   the same chunks element by element.
//   NCHW                  dy and x run along pixels, the reduction: A row-major and B
//                         column-major, threads along pixels, element loads.
//
// Why these are faster than the SIMT GEMMs: a k-step of a warp loads 2 A and 2 B fragments
// for 4 (TF32) or 12 (TF32x3) m16n16k8 MMAs, against 64 FMAs for 8 shared loads a thread
// in the SIMT tile; see benchmarks/NOTES.md, "Tensor-core grad input and grad weight".
#include <cstdint>
#include <type_traits>

#include "../common/check.h"
#include "../common/shapes.h"
#include "conv2d_bwd_tc.cuh"
#include "cuda_common.cuh"
#include "implicit_gemm.cuh"
#include "tc_gemm.cuh"

namespace fastconv {
namespace cuda {

namespace {

constexpr int V = kVec<float>;  // floats in one 16-byte copy

// ------------------------------------------------------------------ grad input loads

// The phase's taps as a walk over k-tiles: tap (tr, ts) (ts fastest) and the tile's first
// filter k within it, advanced once per call of the loader that owns it.
template <typename I>
struct TapCursor {
    I tr, ts, k;
    __device__ __forceinline__ void advance(I kpad, I taps_w) {
        k += I(kTcBK);
        if (k == kpad) {
            k = 0;
            if (++ts == taps_w) ts = 0, ++tr;
        }
    }
};

// What both grad-input loaders of a tile see: the problem, its phase and group.
template <typename I>
struct DgradTileCtx {
    const Conv2dParams& p;
    const DgradShape& ds;
    const DgradPhase<I>& ph;
    I kpad;
};

// NHWC A, As[m][k]: kTcBM pixels x kTcBK / V chunks of V filters (16 bytes). Thread t takes
// chunk column t % kCols of pixels t / kCols + kStep*i for the whole tile.
template <class Tile, typename I>
struct DgradLoadA_NHWC {
    static constexpr int kCols = kTcBK / V, kStep = kTcThreads / kCols, kRows = kTcBM / kStep;
    const DgradTileCtx<I>& cx;
    const float* dyg;
    I Kg;
    int col, row;
    bool vec;
    TapCursor<I> cur;
    DgradPixel<I> px[kRows];

    __device__ __forceinline__ DgradLoadA_NHWC(const DgradTileCtx<I>& cx_, const DgradDiv<I>& dv,
                                               const float* dy, I g, I m0, bool vec_)
        : cx(cx_), dyg(dy + g * I(cx_.ds.Kg)), Kg(I(cx_.ds.Kg)), col(threadIdx.x % kCols),
          row(threadIdx.x / kCols), vec(vec_), cur{0, 0, 0} {
#pragma unroll
        for (int i = 0; i < kRows; ++i) px[i] = dgrad_pixel(cx.p, cx.ds, dv, cx.ph, I(m0 + row + kStep * i));
    }

    __device__ __forceinline__ void operator()(float* As, I) {
        const DgradTap<I> tap = dgrad_tap(cx.ds, cx.ph, cur.tr, cur.ts);
        const I k = cur.k + I(col * V);
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
            const I at = dgrad_row<Layout::NHWC>(cx.p, px[i], tap);
            float* dst = As + Tile::a_index(row + kStep * i, col * V);
            if (vec) {
                // Kg % V == 0: the chunk's filters are all inside the group or all past it.
                const bool in = at >= 0 && k < Kg;
                async_copy_cg16(dst, in ? dyg + at + k : dyg, in ? 16 : 0);
                continue;
            }
#pragma unroll 1
            for (int e = 0; e < V; ++e)
                dst[e] = k + I(e) < Kg ? dgrad_gather<Layout::NHWC>(cx.p, dyg, at, I(k + I(e))) : 0.f;
        }
        cur.advance(cx.kpad, cx.ph.w.taps);
    }
};

// NCHW A, As[k][m] (column-major): thread t takes pixel t % kTcBM (consecutive pixels of a
// phase row read consecutive outputs of dy) and filters t / kTcBM + kStep*i.
template <class Tile, typename I>
struct DgradLoadA_NCHW {
    static constexpr int kStep = kTcThreads / kTcBM, kRows = kTcBK / kStep;
    const DgradTileCtx<I>& cx;
    const float* dyg;
    I Kg;
    int m, row;
    TapCursor<I> cur;
    DgradPixel<I> px;

    __device__ __forceinline__ DgradLoadA_NCHW(const DgradTileCtx<I>& cx_, const DgradDiv<I>& dv,
                                               const float* dy, I g, I m0, bool)
        : cx(cx_), dyg(dy + g * I(cx_.ds.Kg) * I(cx_.p.P) * I(cx_.p.Q)), Kg(I(cx_.ds.Kg)),
          m(threadIdx.x % kTcBM), row(threadIdx.x / kTcBM), cur{0, 0, 0},
          px(dgrad_pixel(cx_.p, cx_.ds, dv, cx_.ph, I(m0 + I(threadIdx.x % kTcBM)))) {}

    __device__ __forceinline__ void operator()(float* As, I) {
        const I at = dgrad_row<Layout::NCHW>(cx.p, px, dgrad_tap(cx.ds, cx.ph, cur.tr, cur.ts));
#pragma unroll 4
        for (int i = 0; i < kRows; ++i) {
            const int kl = row + kStep * i;
            const I k = cur.k + I(kl);
            As[Tile::a_index(m, kl)] = k < Kg ? dgrad_gather<Layout::NCHW>(cx.p, dyg, at, k) : 0.f;
        }
        cur.advance(cx.kpad, cx.ph.w.taps);
    }
};

// B, the weight at the tap: kTcBK filters x kTcBN channels. NHWC (R, S, Cg, K) runs along
// k: Bs column-major (Bs[c][k]), chunks of V filters, thread t chunk column t % kCols of
// channels t / kCols + kStep*i; 16-byte copies with vec. NCHW (K, Cg, R, S): Bs row-major
// (Bs[k][c]), thread t channel t % kTcBN of filters t / kTcBN + kStep*i, element loads.
template <class Tile, Layout L, typename I>
struct DgradLoadB {
    static constexpr bool nchw = L == Layout::NCHW;
    static constexpr int kCols = nchw ? kTcBN : kTcBK / V, kStep = kTcThreads / kCols;
    static constexpr int kRows = (nchw ? kTcBK : kTcBN) / kStep;
    const DgradTileCtx<I>& cx;
    const float* wg;
    I Kg, Cg, c0;
    int col, row;
    bool vec;
    TapCursor<I> cur;

    __device__ __forceinline__ DgradLoadB(const DgradTileCtx<I>& cx_, const float* w, I g, I c0_, bool vec_)
        : cx(cx_), wg(w + g * I(cx_.ds.Kg) * (nchw ? I(cx_.ds.Cg) * I(cx_.p.R) * I(cx_.p.S) : I(1))),
          Kg(I(cx_.ds.Kg)), Cg(I(cx_.ds.Cg)), c0(c0_), col(threadIdx.x % kCols), row(threadIdx.x / kCols),
          vec(vec_), cur{0, 0, 0} {}

    __device__ __forceinline__ void operator()(float* Bs, I) {
        const DgradTap<I> tap = dgrad_tap(cx.ds, cx.ph, cur.tr, cur.ts);
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
            const int line = row + kStep * i;  // a channel (NHWC) or a filter (NCHW)
            if (nchw) {
                const I k = cur.k + I(line), c = c0 + I(col);
                Bs[Tile::b_index(line, col)] =
                    k < Kg && c < Cg ? dgrad_weight<L>(cx.p, cx.ds, wg, tap, k, c) : 0.f;
                continue;
            }
            const I k = cur.k + I(col * V), c = c0 + I(line);
            float* dst = Bs + Tile::b_index(col * V, line);
            if (vec) {
                const bool in = k < Kg && c < Cg;
                async_copy_cg16(dst, in ? &wg[((tap.r * I(cx.p.S) + tap.s) * Cg + c) * I(cx.p.K) + k] : wg,
                                in ? 16 : 0);
                continue;
            }
#pragma unroll 1
            for (int e = 0; e < V; ++e)
                dst[e] = k + I(e) < Kg && c < Cg ? dgrad_weight<L>(cx.p, cx.ds, wg, tap, I(k + I(e)), c) : 0.f;
        }
        cur.advance(cx.kpad, cx.ph.w.taps);
    }
};

// Blocks per SM that __launch_bounds__ asks ptxas to fit: shared memory allows 2 (75-81
// KiB each), as the forward's float kernel.
constexpr int kTcBwdMinBlocks = 2;

// One block per tile (kTcBM pixels of a phase x kTcBN channels of a group), in a
// grid-stride loop; the phase outermost, as bwd_data_gemm's. vec: NHWC's 16-byte copies.
template <class Policy, Layout L, typename I>
__global__ void __launch_bounds__(kTcThreads, kTcBwdMinBlocks)
    bwd_data_tc(Conv2dParams p, DgradShape ds, DgradDiv<I> dv, bool vec, const float* __restrict__ dy,
                const float* __restrict__ w, float* __restrict__ dx) {
    constexpr bool nchw = L == Layout::NCHW;
    // A along k (NHWC) or pixels (NCHW); B the other way: each as its source runs.
    using Tile = TcTile<Policy, nchw, !nchw>;
    using LoadA = typename std::conditional<nchw, DgradLoadA_NCHW<Tile, I>, DgradLoadA_NHWC<Tile, I>>::type;
    extern __shared__ __align__(128) unsigned char tc_smem[];
    float* const stages = reinterpret_cast<float*>(tc_smem);
    float* const staging = reinterpret_cast<float*>(tc_smem);

    const I Cg = I(ds.Cg), kpad = (I(ds.Kg) + I(kTcBK - 1)) / I(kTcBK) * I(kTcBK);
    const I m_tiles = I(ds.m_tiles), n_tiles = I(ds.n_tiles), groups = I(p.groups);
    for (I tile = blockIdx.x; tile < I(ds.tiles); tile += gridDim.x) {
        // Once per tile: plain divisions.
        const I m0 = tile % m_tiles * I(kTcBM);
        const I c0 = tile / m_tiles % n_tiles * I(kTcBN);
        const I g = tile / (m_tiles * n_tiles) % groups;
        const DgradPhase<I> ph = dgrad_phase(p, ds, I(tile / (m_tiles * n_tiles * groups)));
        const DgradTileCtx<I> cx{p, ds, ph, kpad};
        const I k_tiles = ph.h.taps * ph.w.taps * (kpad / I(kTcBK));

        LoadA load_a(cx, dv, dy, g, m0, vec);
        DgradLoadB<Tile, L, I> load_b(cx, w, g, c0, vec);
        typename Tile::Acc acc[2][2];
        tc_mainloop<Policy, Tile>(acc, stages, k_tiles, load_a, load_b);
        tc_stage_acc<Tile>(acc, staging);

        // The pixels inside the image, the channels inside the group; channel c's element
        // lies c * step past channel 0's.
        if (nchw) {
            // Thread t: pixel t % kTcBM, channels t / kTcBM + 2i (dx runs along pixels).
            const int ml = threadIdx.x % kTcBM;
            const I at = dgrad_dx_offset<L>(p, ds, dv, ph, I(m0 + I(ml)), I(g * Cg));
            if (at >= 0) {
                const I step = I(p.H) * I(p.W);
                for (int cl = threadIdx.x / kTcBM; cl < kTcBN; cl += kTcThreads / kTcBM) {
                    const I c = c0 + I(cl);
                    if (c >= Cg) break;
                    dx[at + c * step] = staging[Tile::c_index(ml, cl)];
                }
            }
        } else {
            // Thread t: channel t % kTcBN, pixels t / kTcBN + 4i (dx runs along channels).
            const int cl = threadIdx.x % kTcBN;
            const I c = c0 + I(cl);
            if (c < Cg) {
                for (int ml = threadIdx.x / kTcBN; ml < kTcBM; ml += kTcThreads / kTcBN) {
                    const I at = dgrad_dx_offset<L>(p, ds, dv, ph, I(m0 + I(ml)), I(g * Cg));
                    if (at >= 0) dx[at + c] = staging[Tile::c_index(ml, cl)];
                }
            }
        }
        __syncthreads();  // the next tile's stages overwrite the staging tile
    }
}

// ------------------------------------------------------------------ grad weight loads
// The GEMM's rows are filters j, its columns the reduction indices kk = (c, r, s) of the
// weight's order, its reduction the pixels m of a chunk [m_begin, m_end). Each loader gets
// the k-tile's offset k0 from the chunk's start.

// A = dy^T, element (j, m) = dy[n, g*Kg + j, pq]. NHWC: As column-major (As[m][j]),
// chunks of V filters of a pixel, thread t chunk column t % kCols of pixels t / kCols +
// kStep*i. NCHW: As row-major (As[j][m]), thread t pixel t % kTcBK of filters t / kTcBK +
// kStep*i (dy runs along pixels).
template <class Tile, Layout L, typename I>
struct WgradLoadA {
    static constexpr bool nchw = L == Layout::NCHW;
    static constexpr int kCols = nchw ? kTcBK : kTcBM / V, kStep = kTcThreads / kCols;
    static constexpr int kRows = (nchw ? kTcBM : kTcBK) / kStep;
    const Conv2dParams& p;
    const GemmDiv<I>& dv;
    const float* dyg;  // filter g*Kg + j0 of image 0
    I Kg, j0, m_begin, m_end;
    int col, row;
    bool vec;

    __device__ __forceinline__ WgradLoadA(const Conv2dParams& p_, const GemmShape& gs, const GemmDiv<I>& dv_,
                                          const float* dy, I g, I j0_, I m_begin_, I m_end_, bool vec_)
        : p(p_), dv(dv_), dyg(dy + (g * I(gs.Kg) + j0_) * (nchw ? I(gs.PQ) : I(1))), Kg(I(gs.Kg) - j0_),
          j0(j0_), m_begin(m_begin_), m_end(m_end_), col(threadIdx.x % kCols), row(threadIdx.x / kCols),
          vec(vec_) {}

    __device__ __forceinline__ void operator()(float* As, I k0) const {
        const I K = I(p.K);
        if (nchw) {
            const I m = m_begin + k0 + I(col);
            I n = 0, pq = 0;
            if (m < m_end) pq = dv.pq.divmod(m, n);
            const I PQ = dv.pq.d, base = n * K * PQ + pq;
#pragma unroll 4
            for (int i = 0; i < kRows; ++i) {
                const int jl = row + kStep * i;
                As[Tile::a_index(jl, col)] = m < m_end && I(jl) < Kg ? dyg[base + I(jl) * PQ] : 0.f;
            }
            return;
        }
        const int jl = col * V;  // Kg here counts from j0
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
            const int ml = row + kStep * i;
            const I m = m_begin + k0 + I(ml);
            float* dst = As + Tile::a_index(jl, ml);
            if (vec) {
                const bool in = m < m_end && I(jl) < Kg;
                async_copy_cg16(dst, in ? dyg + m * K + I(jl) : dyg, in ? 16 : 0);
                continue;
            }
#pragma unroll 1
            for (int e = 0; e < V; ++e)
                dst[e] = m < m_end && I(jl + e) < Kg ? dyg[m * K + I(jl + e)] : 0.f;
        }
    }
};

// B = col, element (m, kk) = x gathered at pixel m's tap (r, s), channel c (the forward's
// im2col). NHWC: Bs row-major (Bs[m][kk]), chunks of V channels of one tap (Cg % V == 0
// with vec), thread t chunk column t % kCols of pixels t / kCols + kStep*i, its (c, r, s)
// fixed for the tile. NCHW: Bs column-major (Bs[kk][m]), thread t pixel t % kTcBK of
// columns t / kTcBK + kStep*i.
template <class Tile, Layout L, typename I>
struct WgradLoadB {
    static constexpr bool nchw = L == Layout::NCHW;
    static constexpr int kCols = nchw ? kTcBK : kTcBN / V, kStep = kTcThreads / kCols;
    static constexpr int kRows = (nchw ? kTcBN : kTcBK) / kStep;
    const Conv2dParams& p;
    const GemmShape& gs;
    const GemmDiv<I>& dv;
    const float* xg;  // channel g*Cg of image 0
    I kk0, m_begin, m_end;
    I c, r, s;  // NHWC: the chunk's first (c, r, s)
    int col, row;
    bool vec;

    __device__ __forceinline__ WgradLoadB(const Conv2dParams& p_, const GemmShape& gs_, const GemmDiv<I>& dv_,
                                          const float* x, I g, I kk0_, I m_begin_, I m_end_, bool vec_)
        : p(p_), gs(gs_), dv(dv_), xg(x + g * I(gs_.Cg) * (nchw ? I(p_.H) * I(p_.W) : I(1))), kk0(kk0_),
          m_begin(m_begin_), m_end(m_end_), c(0), r(0), s(0), col(threadIdx.x % kCols),
          row(threadIdx.x / kCols), vec(vec_) {
        if (!nchw) {
            I rs;
            c = dv.cg.divmod(I(kk0 + I(col * V)), rs);
            s = dv.s.divmod(rs, r);
        }
    }

    __device__ __forceinline__ Pixel<I> pixel(I m) const {
        Pixel<I> px = pixel_of(p, gs, dv, m < m_end ? m : m_begin);
        px.valid = m < m_end;
        return px;
    }

    __device__ __forceinline__ void operator()(float* Bs, I k0) const {
        const I red = I(gs.red);
        if (nchw) {
            const Pixel<I> px = pixel(m_begin + k0 + I(col));
#pragma unroll 2
            for (int i = 0; i < kRows; ++i) {
                const int nl = row + kStep * i;
                const I kk = kk0 + I(nl);
                float v = 0.f;
                if (kk < red) {
                    I cc, rr;
                    const I rs = dv.rs.divmod(kk, cc);
                    const I ss = dv.s.divmod(rs, rr);
                    v = gather<Layout::NCHW>(p, xg, px, cc, rr, ss);
                }
                Bs[Tile::b_index(col, nl)] = v;
            }
            return;
        }
        const I kk = kk0 + I(col * V);
        const I H = I(p.H), W = I(p.W);
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
            const int ml = row + kStep * i;
            const Pixel<I> px = pixel(m_begin + k0 + I(ml));
            float* dst = Bs + Tile::b_index(ml, col * V);
            if (vec) {
                // Cg % V == 0: the chunk's channels lie in one tap, inside red or past it.
                const I h = px.h0 + r * I(p.dil_h), w = px.w0 + s * I(p.dil_w);
                const bool in = kk < red && px.valid && h >= 0 && h < H && w >= 0 && w < W;
                async_copy_cg16(dst, in ? xg + px.base + (h * W + w) * I(p.C) + c : xg, in ? 16 : 0);
                continue;
            }
            // Element by element: (c, s, r) counted on from the chunk's first index.
            const I Cg = dv.cg.d, S = dv.s.d;
            I ce = c, se = s, re = r;
#pragma unroll 1
            for (int e = 0; e < V; ++e) {
                dst[e] = kk + I(e) < red ? gather<Layout::NHWC>(p, xg, px, ce, re, se) : 0.f;
                if (++ce == Cg) {
                    ce = 0;
                    if (++se == S) se = 0, ++re;
                }
            }
        }
    }
};

// One block per tile (kTcBM filters x kTcBN columns of one group's dW, one pixel chunk),
// in a grid-stride loop, the filter tile fastest. vec_a / vec_b: NHWC's 16-byte copies.
template <class Policy, Layout L, typename I>
__global__ void __launch_bounds__(kTcThreads, kTcBwdMinBlocks)
    bwd_filter_tc(Conv2dParams p, GemmShape gs, GemmDiv<I> dv, I split_pixels, I splits, bool vec_a,
                  bool vec_b, const float* __restrict__ dy, const float* __restrict__ x,
                  float* __restrict__ ws, float* __restrict__ dw) {
    constexpr bool nchw = L == Layout::NCHW;
    // A = dy^T along filters (NHWC, column-major) or pixels (NCHW); B = col along channels
    // (NHWC, row-major) or pixels (NCHW).
    using Tile = TcTile<Policy, !nchw, nchw>;
    extern __shared__ __align__(128) unsigned char tc_smem[];
    float* const stages = reinterpret_cast<float*>(tc_smem);
    float* const staging = reinterpret_cast<float*>(tc_smem);

    const I K = I(p.K), Kg = I(gs.Kg), red = I(gs.red), M = I(gs.M);
    const I j_tiles = I(gs.m_tiles), kk_tiles = I(gs.n_tiles), groups = I(p.groups);
    for (I tile = blockIdx.x; tile < I(gs.tiles); tile += gridDim.x) {
        // Once per tile: plain divisions.
        const I j0 = tile % j_tiles * I(kTcBM);
        const I kk0 = tile / j_tiles % kk_tiles * I(kTcBN);
        const I g = tile / (j_tiles * kk_tiles) % groups;
        const I split = tile / (j_tiles * kk_tiles * groups);
        const I m_begin = split * split_pixels;
        const I m_end = M - m_begin < split_pixels ? M : m_begin + split_pixels;
        const I k_tiles = (m_end - m_begin + I(kTcBK - 1)) / I(kTcBK);

        WgradLoadA<Tile, L, I> load_a(p, gs, dv, dy, g, j0, m_begin, m_end, vec_a);
        WgradLoadB<Tile, L, I> load_b(p, gs, dv, x, g, kk0, m_begin, m_end, vec_b);
        typename Tile::Acc acc[2][2];
        tc_mainloop<Policy, Tile>(acc, stages, k_tiles, load_a, load_b);
        tc_stage_acc<Tile>(acc, staging);

        // Thread t: column t % kTcBN, filters t / kTcBN + 4i: ws and NCHW's dw run along
        // the columns (NHWC's dw along filters: one chunk, no partials, strided stores).
        const int nl = threadIdx.x % kTcBN;
        const I kk = kk0 + I(nl);
        if (kk < red) {
            for (int jl = threadIdx.x / kTcBN; jl < kTcBM; jl += kTcThreads / kTcBN) {
                const I j = j0 + I(jl);
                if (j >= Kg) break;
                const I k = g * Kg + j;
                const float v = staging[Tile::c_index(jl, nl)];
                if (splits > 1)
                    ws[(split * K + k) * red + kk] = v;
                else
                    dw[nchw ? k * red + kk : kk * K + k] = v;
            }
        }
        __syncthreads();  // the staging tile is the next tile's pipeline
    }
}

// ------------------------------------------------------------------ launchers

template <class Policy, Layout L, typename I>
void launch_bwd_data_tc(const Conv2dParams& p, const DgradShape& ds, bool vec, const float* dy,
                        const float* w, float* dx, cudaStream_t stream) {
    constexpr int smem = TcTile<Policy, L == Layout::NCHW, L != Layout::NCHW>::kSmemBytes;
    // Above 48 KiB of dynamic shared memory a kernel must opt in (per device: every launch).
    FC_CUDA_CHECK(cudaFuncSetAttribute(bwd_data_tc<Policy, L, I>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       smem));
    bwd_data_tc<Policy, L, I><<<blocks_for(ds.tiles, 1), kTcThreads, smem, stream>>>(p, ds, DgradDiv<I>(ds), vec,
                                                                                    dy, w, dx);
    FC_CUDA_CHECK_LAUNCH();
}

template <class Policy>
void launch_bwd_data_tc(const Conv2dParams& p, const float* dy, const float* w, float* dx, cudaStream_t stream) {
    const DgradShape ds = dgrad_shape(p, kTcBM, kTcBN);
    const bool nchw = p.layout == Layout::NCHW;
    const bool vec = !nchw && ds.Kg % V == 0 && aligned16(dy) && aligned16(w);
    // + the tiles' overhang past M and Cg, and the reduction's taps * Kpad.
    const int64_t kpad = ceil_div(ds.Kg, kTcBK) * kTcBK;
    const int64_t extent = max64(conv_extent(p), ds.tiles + ds.M + ds.Cg + kTcBM + kTcBN + p.R * p.S * kpad);
    with_index_type(extent, [&](auto index) {
        using I = decltype(index);
        if (nchw)
            launch_bwd_data_tc<Policy, Layout::NCHW, I>(p, ds, vec, dy, w, dx, stream);
        else
            launch_bwd_data_tc<Policy, Layout::NHWC, I>(p, ds, vec, dy, w, dx, stream);
    });
}

template <class Policy, Layout L, typename I>
void launch_bwd_filter_tc(const Conv2dParams& p, const GemmShape& gs, int64_t split_pixels, int64_t splits,
                          bool vec_a, bool vec_b, const float* dy, const float* x, float* ws, float* dw,
                          cudaStream_t stream) {
    constexpr int smem = TcTile<Policy, L != Layout::NCHW, L == Layout::NCHW>::kSmemBytes;
    FC_CUDA_CHECK(cudaFuncSetAttribute(bwd_filter_tc<Policy, L, I>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       smem));
    bwd_filter_tc<Policy, L, I><<<blocks_for(gs.tiles, 1), kTcThreads, smem, stream>>>(
        p, gs, GemmDiv<I>(p, gs), I(split_pixels), I(splits), vec_a, vec_b, dy, x, ws, dw);
    FC_CUDA_CHECK_LAUNCH();
}

template <class Policy>
void launch_bwd_filter_tc(const Conv2dParams& p, int64_t split_pixels, int64_t splits, const float* dy,
                          const float* x, float* ws, float* dw, cudaStream_t stream) {
    // The GEMM's rows are filters (m_tiles over Kg), its columns the reduction indices
    // (n_tiles over Cg*R*S), times the groups and the pixel chunks.
    GemmShape gs = gemm_shape(p, kTcBM, kTcBN);
    gs.m_tiles = ceil_div(gs.Kg, kTcBM);
    gs.n_tiles = ceil_div(gs.red, kTcBN);
    gs.tiles = gs.m_tiles * gs.n_tiles * p.groups * splits;
    const bool nhwc = p.layout == Layout::NHWC;
    const bool vec_a = nhwc && gs.Kg % V == 0 && aligned16(dy);
    const bool vec_b = nhwc && gs.Cg % V == 0 && aligned16(x);
    // + the partials, the tiles' overhang past Kg and red, and the last chunk's past M.
    const int64_t extent = max64(max64(conv_extent(p), splits * p.K * gs.red + kTcBN),
                                 gs.tiles + (p.K + kTcBM) * (gs.red + kTcBN) + gs.M + split_pixels + kTcBK);
    with_index_type(extent, [&](auto index) {
        using I = decltype(index);
        if (nhwc)
            launch_bwd_filter_tc<Policy, Layout::NHWC, I>(p, gs, split_pixels, splits, vec_a, vec_b, dy, x, ws,
                                                          dw, stream);
        else
            launch_bwd_filter_tc<Policy, Layout::NCHW, I>(p, gs, split_pixels, splits, vec_a, vec_b, dy, x, ws,
                                                          dw, stream);
    });
}

}  // namespace

void implicit_gemm_tc_bwd_data(const Conv2dParams& p, const float* dy, const float* w, float* dx,
                               cudaStream_t stream) {
    FC_CHECK(p.precision != Precision::Strict, "the tensor-core GEMM computes in TF32, not strict float32");
    if (p.precision == Precision::TF32x3)
        launch_bwd_data_tc<TcTf32x3>(p, dy, w, dx, stream);
    else
        launch_bwd_data_tc<TcTf32>(p, dy, w, dx, stream);
}

void implicit_gemm_tc_bwd_filter(const Conv2dParams& p, int64_t split_pixels, int64_t splits,
                                 const float* dy, const float* x, float* ws, float* dw,
                                 cudaStream_t stream) {
    FC_CHECK(p.precision != Precision::Strict, "the tensor-core GEMM computes in TF32, not strict float32");
    FC_CHECK(split_pixels % kTcBK == 0, "the grad weight's pixel chunks are whole k-tiles");
    if (p.precision == Precision::TF32x3)
        launch_bwd_filter_tc<TcTf32x3>(p, split_pixels, splits, dy, x, ws, dw, stream);
    else
        launch_bwd_filter_tc<TcTf32>(p, split_pixels, splits, dy, x, ws, dw, stream);
}

}  // namespace cuda
}  // namespace fastconv

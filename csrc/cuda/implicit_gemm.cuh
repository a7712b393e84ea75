// implicit_gemm.cuh: what the implicit-GEMM kernels share (conv2d_fwd.cu's forward,
// conv2d_bwd.cu's grad weight and grad input): the GEMM's sizes and the gather of one
// element of the im2col matrix that is never built, for the forward's problem and for
// the transposed one (grad input, below). Private to csrc/cuda/.
//
// col[m][kk] for output pixel m = (n, oh, ow) of the GEMM (M = N * P * Q rows) and
// reduction index kk over one group's (c, r, s), Cg * R * S of them, ordered as the
// weight's memory order: NCHW (K, Cg, R, S) -> kk = (c * R + r) * S + s; NHWC
// (R, S, Cg, K) -> kk = (r * S + s) * Cg + c.
#pragma once
#include "../common/params.h"
#include "../common/shapes.h"
#include "cuda_common.cuh"

namespace fastconv {
namespace cuda {

// The GEMM's sizes, computed once on the host.
struct GemmShape {
    int64_t M, PQ, Cg, Kg, red;
    int64_t m_tiles, n_tiles, tiles;  // tiles = m_tiles * n_tiles * groups
};

// The shape of conv p's GEMM in tiles of bm pixels x bn filters.
inline GemmShape gemm_shape(const Conv2dParams& p, int64_t bm, int64_t bn) {
    GemmShape gs;
    gs.PQ = p.P * p.Q;
    gs.M = p.N * gs.PQ;
    gs.Cg = p.C / p.groups;
    gs.Kg = p.K / p.groups;
    gs.red = gs.Cg * p.R * p.S;
    gs.m_tiles = ceil_div(gs.M, bm);
    gs.n_tiles = ceil_div(gs.Kg, bn);
    gs.tiles = gs.m_tiles * gs.n_tiles * p.groups;
    return gs;
}

// The kernels' index type I (cuda_common.cuh): int32_t where conv_extent fits. Their
// divisions by P*Q, Q, S, R*S and Cg go through DivMod, built once on the host.
template <typename I>
struct GemmDiv {
    DivMod<I> pq, q, s, rs, cg;
    GemmDiv() = default;
    GemmDiv(const Conv2dParams& p, const GemmShape& gs)
        : pq(gs.PQ), q(p.Q), s(p.S), rs(p.R * p.S), cg(gs.Cg) {}
};

// One output pixel m of the GEMM as a tile loader sees it: where its image starts and
// the input coordinates of its window's top-left tap.
template <typename I>
struct Pixel {
    I base;    // offset of image n in x
    I h0, w0;  // oh * sh - ph, ow * sw - pw
    bool valid;  // m < M (the last tile overhangs)
};

template <typename I>
__device__ __forceinline__ Pixel<I> pixel_of(const Conv2dParams& p, const GemmShape& gs,
                                              const GemmDiv<I>& dv, I m) {
    Pixel<I> px;
    px.valid = m < I(gs.M);
    I n, oh;
    const I pq = dv.pq.divmod(m, n);
    const I ow = dv.q.divmod(pq, oh);
    px.base = n * I(p.C) * I(p.H) * I(p.W);
    px.h0 = oh * I(p.stride_h) - I(p.pad_h);
    px.w0 = ow * I(p.stride_w) - I(p.pad_w);
    return px;
}

// col[m][(c, r, s)] = x[n, g*Cg + c, h0 + r*dh, w0 + s*dw], 0 in the padding. xg points
// at channel g*Cg of image 0.
template <Layout L, typename I>
__device__ __forceinline__ float gather(const Conv2dParams& p, const float* __restrict__ xg,
                                        const Pixel<I>& px, I c, I r, I s) {
    const I H = I(p.H), W = I(p.W);
    const I h = px.h0 + r * I(p.dil_h), w = px.w0 + s * I(p.dil_w);
    if (!px.valid || h < 0 || h >= H || w < 0 || w >= W) return 0.f;
    return L == Layout::NCHW ? xg[px.base + (c * H + h) * W + w]
                             : xg[px.base + (h * W + w) * I(p.C) + c];
}

// ------------------------------------------------------------------------ grad input
//
// Grad input as a GEMM (a transposed convolution), per group g:
//   dx_g[m][c] = sum over (k, r, s) of dy[n, g*Kg + k, oh, ow] * w[g*Kg + k, c, r, s]
// for input pixel m = (n, h, w), with oh = (h + pad_h - r*dil_h) / stride_h and ow alike,
// taken only where the division is exact and oh in [0, P), ow in [0, Q).
//
// Stride phases. Whether tap r reaches row h depends on h % stride_h alone, so the input
// pixels are split by phase (a, b) = (h % stride_h, w % stride_w): phase (a, b) holds the
// pixels h = a + stride_h * i, w = b + stride_w * j, on a grid of Hs x Ws = ceil(H /
// stride_h) x ceil(W / stride_w) per image (the last row or column of a phase may fall
// off the image: masked), and they share one set of taps along each axis, r = r0 + t *
// rstep for t < taps, rstep = stride_h / gcd(stride_h, dil_h). The output row of tap t
// is then linear in i, oh = i + o0 - t * o_step with o_step = dil_h / gcd(stride_h,
// dil_h): no divisibility test and no division in a GEMM's main loop, and over all
// phases the taps add up to R * S rather than R * S * stride_h * stride_w. (CUTLASS's
// strided dgrad splits by (h + pad) % stride: the same classes under other names.)
// M = N * Hs * Ws pixels a phase, in (n, i, j) order; the reduction runs tap by tap and,
// within a tap, over the group's Kg filters, so a slice of it is one tap and up to a
// tile's depth of consecutive filters.

// Sizes of the transposed problem, computed once on the host (dgrad_shape).
struct DgradShape {
    int64_t Hs, Ws, M;        // the phase grid and its pixel count N * Hs * Ws
    int64_t Cg, Kg;
    int64_t rstep, sstep;     // steps between the taps of a phase: r = r0 + t * rstep
    int64_t oh_step, ow_step; // and between their output rows: oh = i + o0 - t * oh_step
    int64_t phases;           // stride_h * stride_w
    int64_t m_tiles, n_tiles, tiles;  // tiles = phases * groups * n_tiles * m_tiles
};

inline int64_t gcd64(int64_t a, int64_t b) {
    while (b != 0) {
        const int64_t t = a % b;
        a = b, b = t;
    }
    return a;
}

// tile_m pixels x tile_n channels a tile (a kernel's own tiling).
inline DgradShape dgrad_shape(const Conv2dParams& p, int64_t tile_m, int64_t tile_n) {
    DgradShape ds{};
    ds.Hs = ceil_div(p.H, p.stride_h), ds.Ws = ceil_div(p.W, p.stride_w);
    ds.M = p.N * ds.Hs * ds.Ws;
    ds.Cg = p.C / p.groups, ds.Kg = p.K / p.groups;
    const int64_t gh = gcd64(p.stride_h, p.dil_h), gw = gcd64(p.stride_w, p.dil_w);
    ds.rstep = p.stride_h / gh, ds.sstep = p.stride_w / gw;
    ds.oh_step = p.dil_h / gh, ds.ow_step = p.dil_w / gw;
    ds.phases = p.stride_h * p.stride_w;
    ds.m_tiles = ceil_div(ds.M, tile_m), ds.n_tiles = ceil_div(ds.Cg, tile_n);
    ds.tiles = ds.phases * p.groups * ds.n_tiles * ds.m_tiles;
    return ds;
}

// Divisions by the phase grid (pixel m -> (n, i, j)), built once on the host.
template <typename I>
struct DgradDiv {
    DivMod<I> hw, w;
    DgradDiv() = default;
    explicit DgradDiv(const DgradShape& ds) : hw(ds.Hs * ds.Ws), w(ds.Ws) {}
};

// One axis of a phase: its first input row `first` (= the phase a), and its taps r0 +
// t * step for t < taps, whose output row for grid row i is i + o0 - t * o_step.
template <typename I>
struct DgradAxis {
    I first, r0, taps, o0;
};

// The smallest r >= 0 with (a + pad - r * dil) % stride == 0 lies below step (the
// solutions repeat every step): at most stride trials, once per tile.
template <typename I>
__device__ __forceinline__ DgradAxis<I> dgrad_axis(I a, I stride, I pad, I dil, I R, I step) {
    DgradAxis<I> ax{a, 0, 0, 0};
    for (I r = 0; r < step; ++r) {
        const I num = a + pad - r * dil;  // may be negative; % and / are then exact
        if (num % stride == 0) {
            ax.r0 = r;
            ax.taps = r < R ? (R - 1 - r) / step + 1 : I(0);
            ax.o0 = num / stride;
            break;
        }
    }
    return ax;
}

template <typename I>
struct DgradPhase {
    DgradAxis<I> h, w;
};

// Phase number phase in [0, stride_h * stride_w): a = phase / stride_w, b = phase %
// stride_w (plain divisions: once per tile).
template <typename I>
__device__ __forceinline__ DgradPhase<I> dgrad_phase(const Conv2dParams& p, const DgradShape& ds,
                                                     I phase) {
    const I sw = I(p.stride_w);
    DgradPhase<I> ph;
    ph.h = dgrad_axis(phase / sw, I(p.stride_h), I(p.pad_h), I(p.dil_h), I(p.R), I(ds.rstep));
    ph.w = dgrad_axis(phase % sw, sw, I(p.pad_w), I(p.dil_w), I(p.S), I(ds.sstep));
    return ph;
}

// Pixel m of a phase's GEMM as a tile loader sees it: where its image starts in dy and
// its phase-grid position, input (a + stride_h * i, b + stride_w * j). A masked pixel
// (m >= M, or off the image) has base 0 and i = kDgradMasked, whose output rows i + doh
// are negative (|doh| is below conv_extent / 2, so below 2^30 where I is int32_t), so
// every tap misses it without a flag (a register less a pixel: it kept the NHWC kernel's
// four pixels from spilling). Correctness does not rest on it: a masked pixel's GEMM row
// is never stored, and dgrad_row's bounds test keeps every read inside dy.
template <typename I>
constexpr I kDgradMasked = I(-(1 << 30));

template <typename I>
struct DgradPixel {
    I base;  // offset of image n in dy
    I i, j;
};

template <typename I>
__device__ __forceinline__ DgradPixel<I> dgrad_pixel(const Conv2dParams& p, const DgradShape& ds,
                                                     const DgradDiv<I>& dv,
                                                     const DgradPhase<I>& ph, I m) {
    DgradPixel<I> px;
    I n;
    const I ij = dv.hw.divmod(m, n);
    px.j = dv.w.divmod(ij, px.i);
    const bool valid = m < I(ds.M) && ph.h.first + px.i * I(p.stride_h) < I(p.H) &&
                       ph.w.first + px.j * I(p.stride_w) < I(p.W);
    // (n may pass N by far in the last tile's overhang: no offset is formed from it.)
    px.base = valid ? n * I(p.K) * I(p.P) * I(p.Q) : I(0);
    if (!valid) px.i = kDgradMasked<I>;
    return px;
}

// Offset in dx of pixel m's element of channel cc (0 <= cc < C), or -1 where m is masked.
template <Layout L, typename I>
__device__ __forceinline__ I dgrad_dx_offset(const Conv2dParams& p, const DgradShape& ds,
                                             const DgradDiv<I>& dv, const DgradPhase<I>& ph, I m,
                                             I cc) {
    I n, i;
    const I j = dv.w.divmod(dv.hw.divmod(m, n), i);
    const I h = ph.h.first + i * I(p.stride_h), w = ph.w.first + j * I(p.stride_w);
    if (m >= I(ds.M) || h >= I(p.H) || w >= I(p.W)) return -1;
    return offset4i(L, n, cc, h, w, I(p.C), I(p.H), I(p.W));
}

// Tap (tr, ts) of a phase: the filter position and where it reads dy, oh = i + doh.
template <typename I>
struct DgradTap {
    I r, s, doh, dow;
};

template <typename I>
__device__ __forceinline__ DgradTap<I> dgrad_tap(const DgradShape& ds, const DgradPhase<I>& ph,
                                                 I tr, I ts) {
    return {ph.h.r0 + tr * I(ds.rstep), ph.w.r0 + ts * I(ds.sstep),
            ph.h.o0 - tr * I(ds.oh_step), ph.w.o0 - ts * I(ds.ow_step)};
}

// Where pixel px reads dy at tap: the offset from dyg (filter g*Kg of image 0) of its
// (n, oh, ow) at the group's first filter, or -1 where (oh, ow) falls outside dy or the
// pixel is masked. Filter k of the group then lies k * dgrad_k_step further on. A loader
// takes it once per pixel and tap, and reads its slices of k from it.
template <Layout L, typename I>
__device__ __forceinline__ I dgrad_row(const Conv2dParams& p, const DgradPixel<I>& px,
                                       const DgradTap<I>& tap) {
    const I P = I(p.P), Q = I(p.Q);
    const I oh = px.i + tap.doh, ow = px.j + tap.dow;
    if (oh < 0 || oh >= P || ow < 0 || ow >= Q) return -1;
    return L == Layout::NCHW ? px.base + oh * Q + ow : px.base + (oh * Q + ow) * I(p.K);
}

template <Layout L, typename I>
__device__ __forceinline__ I dgrad_k_step(const Conv2dParams& p) {
    return L == Layout::NCHW ? I(p.P) * I(p.Q) : I(1);
}

// The A element (pixel px, reduction index (k, tap)): dy[n, g*Kg + k, oh, ow], 0 where
// (oh, ow) falls outside dy or the pixel is masked; row = dgrad_row(p, px, tap).
// 0 <= k < Kg is the caller's to ensure.
template <Layout L, typename I>
__device__ __forceinline__ float dgrad_gather(const Conv2dParams& p, const float* __restrict__ dyg,
                                              I row, I k) {
    return row < 0 ? 0.f : dyg[row + k * dgrad_k_step<L, I>(p)];
}

// The B element (reduction index (k, tap), channel c): w[g*Kg + k, c, r, s] in the
// layout's weight order (NCHW (K, Cg, R, S), NHWC (R, S, Cg, K)). wg points at filter
// g*Kg; 0 <= k < Kg and 0 <= c < Cg are the caller's to ensure.
template <Layout L, typename I>
__device__ __forceinline__ float dgrad_weight(const Conv2dParams& p, const DgradShape& ds,
                                              const float* __restrict__ wg,
                                              const DgradTap<I>& tap, I k, I c) {
    const I R = I(p.R), S = I(p.S), Cg = I(ds.Cg);
    return L == Layout::NCHW ? wg[((k * Cg + c) * R + tap.r) * S + tap.s]
                             : wg[((tap.r * S + tap.s) * Cg + c) * I(p.K) + k];
}

// The largest index, offset or coordinate the conv2d kernels form (tensors, weight,
// and window coordinates oh * stride - pad + r * dil on either side of the image); the
// launchers choose int32_t where it fits.
inline int64_t conv_extent(const Conv2dParams& p) {
    const int64_t tensors = max64(max64(p.N * p.C * p.H * p.W, p.N * p.K * p.P * p.Q),
                                  p.K * max64(p.C / max64(p.groups, 1), 1) * p.R * p.S);
    const int64_t rows = p.H + p.pad_h + (p.P + 1) * p.stride_h + (p.R + 1) * p.dil_h;
    const int64_t cols = p.W + p.pad_w + (p.Q + 1) * p.stride_w + (p.S + 1) * p.dil_w;
    return max64(tensors, 2 * max64(rows, cols));
}

}  // namespace cuda
}  // namespace fastconv

// implicit_gemm.cuh: what the implicit-GEMM kernels share (conv2d_fwd.cu's forward,
// conv2d_bwd.cu's grad weight): the GEMM's sizes and the gather of one element of the
// im2col matrix that is never built. Private to csrc/cuda/.
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

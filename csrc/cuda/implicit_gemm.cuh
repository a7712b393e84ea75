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

namespace fastconv {
namespace cuda {

// The GEMM's sizes, computed once on the host.
struct GemmShape {
    int64_t M, PQ, Cg, Kg, red;
    int64_t m_tiles, n_tiles, tiles;  // tiles = m_tiles * n_tiles * groups
};

// One output pixel m of the GEMM as the A-tile loader sees it: where its image starts
// and the input coordinates of its window's top-left tap.
struct Pixel {
    int64_t base;    // offset of image n in x
    int64_t h0, w0;  // oh * sh - ph, ow * sw - pw
    bool valid;      // m < M (the last tile overhangs)
};

__device__ __forceinline__ Pixel pixel_of(const Conv2dParams& p, const GemmShape& gs, int64_t m) {
    Pixel px;
    px.valid = m < gs.M;
    const int64_t n = m / gs.PQ, pq = m % gs.PQ;
    px.base = n * p.C * p.H * p.W;
    px.h0 = (pq / p.Q) * p.stride_h - p.pad_h;
    px.w0 = (pq % p.Q) * p.stride_w - p.pad_w;
    return px;
}

// col[m][(c, r, s)] = x[n, g*Cg + c, h0 + r*dh, w0 + s*dw], 0 in the padding. xg points
// at channel g*Cg of image 0.
template <Layout L>
__device__ __forceinline__ float gather(const Conv2dParams& p, const float* __restrict__ xg,
                                        const Pixel& px, int64_t c, int64_t r, int64_t s) {
    const int64_t h = px.h0 + r * p.dil_h, w = px.w0 + s * p.dil_w;
    if (!px.valid || h < 0 || h >= p.H || w < 0 || w >= p.W) return 0.f;
    return L == Layout::NCHW ? xg[px.base + (c * p.H + h) * p.W + w]
                             : xg[px.base + (h * p.W + w) * p.C + c];
}

}  // namespace cuda
}  // namespace fastconv

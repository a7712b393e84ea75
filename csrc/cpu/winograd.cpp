// winograd.cpp: 3x3, stride-1 conv2d forward and grad input on the CPU by Winograd's minimal
// filtering. The matrices, the 2-D transforms of one tile and the tile math are
// csrc/common/winograd.h's (shared with a future CUDA twin); this file cuts the work into
// chunks of tiles and runs the alpha^2 GEMMs through gemm.h.
//
// Variants (dispatched from conv2d_fwd.cpp, and from conv2d_bwd.cpp for grad input):
//   winograd2  F(2x2, 3x3): 4x4 patches, 16 products per 2x2 outputs, 2.25x fewer
//              multiplies than the gemm variant's 9 per output. Exact on small integers.
//   winograd4  F(4x4, 3x3): 6x6 patches, 36 products per 4x4 outputs, 4x fewer; more
//              rounding (winograd.h; figures in benchmarks/NOTES.md).
// Both take a 3x3 kernel, stride 1, dilation 1, any padding and any groups (each group runs
// its own GEMMs), NCHW or NHWC, float or double; bias and activation follow through
// bias_activation, as in the gemm variant. Grad input of such a layer is the forward
// convolution of dy with the flipped, channel-transposed filters, padded by 2 - pad
// (winograd.h, bwd_data_as_forward), and runs the same code. Grad weight runs as gemm.
//
// One call:
//   1. Filters, once: U[g][e][c][k] = (G w_{g,k,c} G^T)[e] for the alpha^2 positions e,
//      computed in double and rounded once to T (G holds 1/6, 1/15: rounded coefficients
//      applied in float would add their own error to every filter).
//   2. Tiles, in chunks (tasks of for_each_task, parallel.h). The tiles of all images form
//      one raster (n, th, tw) per group, so small images share a chunk and its GEMMs. Each
//      chunk, per run of tiles along one tile row:
//        the run's alpha input rows are copied into a zero-padded band, channel-minor
//        (pixel-major, Cg channels each) whatever the layout, so the transform needs no
//        bounds checks and reads every tap as a contiguous vector of channels;
//        V[e][t][c] = (B^T d B)[e], vectorised over c.
//      Then alpha^2 GEMMs, tile-major: M_e (tiles x Kg) = V_e (tiles x Cg) . U_e (Cg x Kg).
//      The tile count is the GEMM's M, cut in register rows of 6, so ResNet-50's 7x7 layer
//      at batch 1 (4 tiles of F(4x4)) wastes 2 rows of 6; as N (columns of 16) it would
//      waste 12 of 16. Then per run Y = A^T M A, vectorised over k, into a channel-minor
//      band that is copied into y, clipped at P and Q.
// Transforms are written once per type and built for AVX2 and baseline x86-64 (target_clones,
// chosen at run time), called from inside the OpenMP loops (an attribute on the function
// around `omp parallel` would not reach them: benchmarks/NOTES.md, pooling v5).
#include <algorithm>
#include <cstring>
#include <vector>

#include "../common/check.h"
#include "../common/winograd.h"
#include "conv2d_common.h"
#include "gemm.h"
#include "parallel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// flatten: the header's transforms are templates of templates; inlined whole, a tile's
// values live in registers and the channel loop around them vectorises.
#define FC_WINO_KERNEL __attribute__((target_clones("avx2", "default"), flatten))
#else
#define FC_WINO_KERNEL
#endif

namespace fastconv {
namespace cpu {

namespace {

using winograd::static_for;

// V and M of one chunk (alpha^2 x tiles x (Cg + Kg) elements) are kept within this many
// bytes, so that what the input transform writes is still in cache when the GEMMs read it,
// and the GEMMs' results when the output transform reads them (L2 is 512 KiB a core on the
// development EPYC, 1-2 MiB on recent Xeons).
constexpr int64_t kWinogradBudget = int64_t(1) << 20;
// ...but a chunk has at least this many tiles (or all there are): every GEMM packs its whole
// U_e (Cg x Kg), which costs about as much as 1 / tiles of its multiplies. With 32 tiles the
// budget is exceeded from Cg + Kg > 227 on (F(4x4), float), e.g. 4.7 MB at 512 + 512.
constexpr int64_t kMinChunkTiles = 32;

// Where filter (k, c) of group g of the convolution being computed keeps its tap (r, s):
// w[g * g_stride + k * k_stride + c * c_stride + tap[r * 3 + s]].
struct FilterMap {
    int64_t g_stride, k_stride, c_stride;
    int64_t tap[9];
};

// The forward's filters: w is (K, Cg, 3, 3) for NCHW, (3, 3, Cg, K) for NHWC.
FilterMap forward_filters(const Conv2dParams& p) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
    FilterMap f{};
    const bool nchw = p.layout == Layout::NCHW;
    f.g_stride = nchw ? Kg * Cg * 9 : Kg;
    f.k_stride = nchw ? Cg * 9 : 1;
    f.c_stride = nchw ? 9 : p.K;
    for (int t = 0; t < 9; ++t) f.tap[t] = nchw ? t : t * Cg * p.K;
    return f;
}

// Grad input's filters, w'[c, k, r, s] = w[k, c, 2 - r, 2 - s] of the forward p's weight:
// the forward's input channels are their outputs, its outputs their inputs, taps reversed
// ((2 - r) * 3 + (2 - s) = 8 - (r * 3 + s)).
FilterMap transposed_filters(const Conv2dParams& p) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
    FilterMap f{};
    const bool nchw = p.layout == Layout::NCHW;
    f.g_stride = nchw ? Kg * Cg * 9 : Kg;
    f.k_stride = nchw ? 9 : p.K;
    f.c_stride = nchw ? Cg * 9 : 1;
    for (int t = 0; t < 9; ++t) f.tap[t] = nchw ? 8 - t : (8 - t) * Cg * p.K;
    return f;
}

// u[e * e_stride + k] = (G w_k G^T)[e] for the Kg filters k of one (group, channel); w points
// at filter 0's taps. In double, rounded once to T.
template <int m, typename T>
FC_WINO_KERNEL void filter_run(const T* __restrict w, const FilterMap& f, int64_t Kg,
                               T* __restrict u, int64_t e_stride) {
    constexpr int a2 = (m + 2) * (m + 2);
    const int64_t ks = f.k_stride;
    int64_t tap[9];
    for (int t = 0; t < 9; ++t) tap[t] = f.tap[t];
    for (int64_t k = 0; k < Kg; ++k) {
        double g[9], v[a2];
        static_for<0, 9>([&](auto t) { g[decltype(t)::value] = double(w[k * ks + tap[decltype(t)::value]]); });
        winograd::filter_transform<m>(g, v);
        static_for<0, a2>([&](auto e) { u[decltype(e)::value * e_stride + k] = T(v[decltype(e)::value]); });
    }
}

// U[((g * alpha^2 + e) * Cg + c) * Kg + k], for the convolution q whose filters f maps.
template <int m, typename T>
std::vector<T> transform_filters(const Conv2dParams& q, const FilterMap& f, const T* w) {
    constexpr int64_t a2 = (m + 2) * (m + 2);
    const int64_t Cg = q.C / q.groups, Kg = q.K / q.groups;
    std::vector<T> U(size_t(q.groups * a2 * Cg * Kg));
    T* out = U.data();
#pragma omp parallel for schedule(static)
    for (int64_t gc = 0; gc < q.groups * Cg; ++gc) {
        const int64_t g = gc / Cg, c = gc % Cg;
        filter_run<m>(w + g * f.g_stride + c * f.c_stride, f, Kg, out + (g * a2 * Cg + c) * Kg,
                      Cg * Kg);
    }
    return U;
}

// The input band of one run of tiles: `rows` input rows from h0, `cols` pixels from w0, the
// group's Cg channels of each pixel contiguous; zeros outside the image.
template <typename T>
void gather_band(const Conv2dParams& q, const T* x, int64_t n, int64_t g, int64_t h0,
                 int64_t w0, int64_t rows, int64_t cols, T* band) {
    const int64_t Cg = q.C / q.groups;
    // Band columns [lo, hi) hold image columns w0 + lo ... inside [0, W).
    const int64_t lo = std::min(cols, std::max<int64_t>(0, -w0));
    const int64_t hi = std::max(lo, std::min(cols, q.W - w0));
    if (q.layout == Layout::NHWC) {
        for (int64_t i = 0; i < rows; ++i) {
            T* dst = band + i * cols * Cg;
            const int64_t h = h0 + i;
            if (h < 0 || h >= q.H || lo == hi) {
                std::fill(dst, dst + cols * Cg, T(0));
                continue;
            }
            std::fill(dst, dst + lo * Cg, T(0));
            const T* src = x + ((n * q.H + h) * q.W + w0) * q.C + g * Cg;
            if (q.groups == 1)
                std::memcpy(dst + lo * Cg, src + lo * Cg, size_t((hi - lo) * Cg) * sizeof(T));
            else
                for (int64_t j = lo; j < hi; ++j)
                    std::memcpy(dst + j * Cg, src + j * q.C, size_t(Cg) * sizeof(T));
            std::fill(dst + hi * Cg, dst + cols * Cg, T(0));
        }
        return;
    }
    std::fill(band, band + rows * cols * Cg, T(0));
    for (int64_t c = 0; c < Cg; ++c) {
        const T* plane = x + (n * q.C + g * Cg + c) * q.H * q.W;
        for (int64_t i = 0; i < rows; ++i) {
            const int64_t h = h0 + i;
            if (h < 0 || h >= q.H) continue;
            const T* src = plane + h * q.W + w0;
            T* dst = band + i * cols * Cg + c;
            for (int64_t j = lo; j < hi; ++j) dst[j * Cg] = src[j];
        }
    }
}

// V[e * e_stride + t * Cg + c] = (B^T d_t B)[e] for the tiles t < tiles of a band whose pixel
// rows are row_stride apart; tile t's patch starts at band column t * m.
template <int m, typename T>
FC_WINO_KERNEL void input_run(const T* __restrict band, int64_t row_stride, int64_t Cg,
                              int64_t tiles, T* __restrict V, int64_t e_stride) {
    constexpr int a = m + 2;
    for (int64_t t = 0; t < tiles; ++t) {
        const T* src = band + t * m * Cg;
        T* dst = V + t * Cg;
        for (int64_t c = 0; c < Cg; ++c) {
            T d[a * a], v[a * a];
            static_for<0, a * a>([&](auto e_) {
                constexpr int e = decltype(e_)::value;
                d[e] = src[(e / a) * row_stride + (e % a) * Cg + c];
            });
            winograd::input_transform<m>(d, v);
            static_for<0, a * a>([&](auto e) { dst[decltype(e)::value * e_stride + c] = v[decltype(e)::value]; });
        }
    }
}

// The m x m outputs Y = A^T M_t A of tiles t < tiles, where M_t[e] = z[e * e_stride + t * Kg + k],
// into an output band: pixel (i, t * m + j) at out[i * row_stride + (t * m + j) * Kg + k].
template <int m, typename T>
FC_WINO_KERNEL void output_run(const T* __restrict z, int64_t e_stride, int64_t Kg, int64_t tiles,
                               T* __restrict out, int64_t row_stride) {
    constexpr int a = m + 2;
    for (int64_t t = 0; t < tiles; ++t) {
        const T* src = z + t * Kg;
        T* dst = out + t * m * Kg;
        for (int64_t k = 0; k < Kg; ++k) {
            T mt[a * a], y[m * m];
            static_for<0, a * a>([&](auto e) { mt[decltype(e)::value] = src[decltype(e)::value * e_stride + k]; });
            winograd::output_transform<m>(mt, 1, y);
            static_for<0, m * m>([&](auto o_) {
                constexpr int o = decltype(o_)::value;
                dst[(o / m) * row_stride + (o % m) * Kg + k] = y[o];
            });
        }
    }
}

// An output band (rows x cols pixels from (oh0, ow0), Kg channels each) into y, clipped at P, Q.
template <typename T>
void scatter_band(const Conv2dParams& q, const T* band, int64_t n, int64_t g, int64_t oh0,
                  int64_t ow0, int64_t rows, int64_t cols, T* y) {
    const int64_t Kg = q.K / q.groups;
    const int64_t nr = std::min(rows, q.P - oh0), nc = std::min(cols, q.Q - ow0);
    if (q.layout == Layout::NHWC) {
        for (int64_t i = 0; i < nr; ++i) {
            const T* src = band + i * cols * Kg;
            T* dst = y + ((n * q.P + oh0 + i) * q.Q + ow0) * q.K + g * Kg;
            if (q.groups == 1)
                std::memcpy(dst, src, size_t(nc * Kg) * sizeof(T));
            else
                for (int64_t j = 0; j < nc; ++j)
                    std::memcpy(dst + j * q.K, src + j * Kg, size_t(Kg) * sizeof(T));
        }
        return;
    }
    for (int64_t k = 0; k < Kg; ++k)
        for (int64_t i = 0; i < nr; ++i) {
            const T* src = band + i * cols * Kg + k;
            T* dst = y + ((n * q.K + g * Kg + k) * q.P + oh0 + i) * q.Q + ow0;
            for (int64_t j = 0; j < nc; ++j) dst[j] = src[j * Kg];
        }
}

// Calls f(n, th, tw0, tw1, j) for each run of tiles of the raster (n, th, tw), tiles [u0, u1),
// that stays on one tile row: tiles tw0 .. tw1 - 1 of row th of image n, the first being
// tile j of the chunk.
template <typename F>
void for_each_tile_run(int64_t u0, int64_t u1, int64_t TH, int64_t TW, F f) {
    int64_t n = u0 / (TH * TW), th = u0 / TW % TH, tw = u0 % TW;
    for (int64_t u = u0; u < u1; tw = 0) {
        const int64_t tw1 = std::min(TW, tw + (u1 - u));
        f(n, th, tw, tw1, u - u0);
        u += tw1 - tw;
        if (++th == TH) th = 0, ++n;
    }
}

// Tiles per chunk: what fits kWinogradBudget, at least kMinChunkTiles, at most all. The same
// for any thread count, so the chunk edges that tests/test_conv2d.py THRESHOLDS straddles
// do not move with the machine. (A many-core machine at batch 1 gets fewer chunks than
// 2 per thread, and for_each_task then runs them in turn with threaded GEMMs.)
int64_t chunk_tiles(int64_t tiles, int64_t a2, int64_t Cg, int64_t Kg, size_t elem) {
    const int64_t fit = kWinogradBudget / (a2 * (Cg + Kg) * int64_t(elem));
    return std::min(tiles, std::max(kMinChunkTiles, fit));
}

// y = x (*) w for the 3x3, stride-1 convolution q, w given as U (transform_filters). No bias.
template <int m, typename T>
void tiles_conv(const Conv2dParams& q, const T* U, const T* x, T* y) {
    constexpr int64_t a = m + 2, a2 = a * a;
    const int64_t Cg = q.C / q.groups, Kg = q.K / q.groups;
    const int64_t TH = winograd::tile_count(q.P, m), TW = winograd::tile_count(q.Q, m);
    const int64_t tiles = q.N * TH * TW;
    const int64_t chunk = chunk_tiles(tiles, a2, Cg, Kg, sizeof(T));
    const int64_t chunks = ceil_div(tiles, chunk);
    const int64_t run_max = std::min(chunk, TW);  // tiles in one run, at most
    struct Scratch {
        std::vector<T> v, z, in, out;
    };
    for_each_task(
        q.groups * chunks,
        [&] {
            return Scratch{std::vector<T>(a2 * chunk * Cg), std::vector<T>(a2 * chunk * Kg),
                           std::vector<T>(a * (run_max * m + 2) * Cg),
                           std::vector<T>(m * run_max * m * Kg)};
        },
        [&](int64_t task, Scratch& s) {
            const int64_t g = task / chunks, u0 = task % chunks * chunk;
            const int64_t u1 = std::min(u0 + chunk, tiles);
            for_each_tile_run(u0, u1, TH, TW, [&](int64_t n, int64_t th, int64_t tw0, int64_t tw1, int64_t j) {
                const int64_t cols = (tw1 - tw0) * m + 2;
                gather_band(q, x, n, g, winograd::tile_origin(th, m, q.pad_h),
                            winograd::tile_origin(tw0, m, q.pad_w), a, cols, s.in.data());
                input_run<m>(s.in.data(), cols * Cg, Cg, tw1 - tw0, s.v.data() + j * Cg, chunk * Cg);
            });
            for (int64_t e = 0; e < a2; ++e)
                gemm<T>(false, false, u1 - u0, Kg, Cg, s.v.data() + e * chunk * Cg, Cg,
                        U + (g * a2 + e) * Cg * Kg, Kg, T(0), s.z.data() + e * chunk * Kg, Kg);
            for_each_tile_run(u0, u1, TH, TW, [&](int64_t n, int64_t th, int64_t tw0, int64_t tw1, int64_t j) {
                const int64_t cols = (tw1 - tw0) * m;
                output_run<m>(s.z.data() + j * Kg, chunk * Kg, Kg, tw1 - tw0, s.out.data(), cols * Kg);
                scatter_band(q, s.out.data(), n, g, th * m, tw0 * m, m, cols, y);
            });
        });
}

void check_applies(const Conv2dParams& p) {
    FC_CHECK(winograd::applies(p.R, p.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w),
             "the winograd variants need a 3x3 kernel, stride 1 and dilation 1");
}

template <int m, typename T>
void run(const Conv2dParams& q, const FilterMap& f, const T* x, const T* w, T* y) {
    const std::vector<T> U = transform_filters<m>(q, f, w);
    tiles_conv<m>(q, U.data(), x, y);
}

}  // namespace

template <typename T>
void winograd_fwd(const Conv2dParams& p, int m, const T* x, const T* w, const T* b, T* y) {
    check_applies(p);
    if (m == 2)
        run<2>(p, forward_filters(p), x, w, y);
    else
        run<4>(p, forward_filters(p), x, w, y);
    bias_activation(p, b, y);
}

template <typename T>
void winograd_bwd_data(const Conv2dParams& p, int m, const T* dy, const T* w, T* dx) {
    check_applies(p);
    const Conv2dParams q = winograd::bwd_data_as_forward(p);
    if (m == 2)
        run<2>(q, transposed_filters(p), dy, w, dx);
    else
        run<4>(q, transposed_filters(p), dy, w, dx);
}

template void winograd_fwd<float>(const Conv2dParams&, int, const float*, const float*,
                                  const float*, float*);
template void winograd_fwd<double>(const Conv2dParams&, int, const double*, const double*,
                                   const double*, double*);
template void winograd_bwd_data<float>(const Conv2dParams&, int, const float*, const float*, float*);
template void winograd_bwd_data<double>(const Conv2dParams&, int, const double*, const double*,
                                        double*);

}  // namespace cpu
}  // namespace fastconv

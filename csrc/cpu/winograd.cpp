// winograd.cpp: 3x3, stride-1 conv2d forward and grad input on the CPU by Winograd's minimal
// filtering. The matrices, the 2-D transforms of one tile and the tile math are
// csrc/common/winograd.h's (shared with the CUDA twin, csrc/cuda/winograd.cu); this file
// cuts the work into chunks of tiles and runs the alpha^2 GEMMs through gemm.h.
//
// Variants (dispatched from conv2d_fwd.cpp, and from conv2d_bwd.cpp for grad input):
//   winograd2  F(2x2, 3x3): 4x4 patches, 16 products per 2x2 outputs, 2.25x fewer
//              multiplies than the gemm variant's 9 per output. Exact on small integers.
//   winograd4  F(4x4, 3x3): 6x6 patches, 36 products per 4x4 outputs, 4x fewer; more
//              rounding (winograd.h; figures in benchmarks/NOTES.md).
// Both take a 3x3 kernel, stride 1, dilation 1, any padding and any groups (each group runs
// its own GEMMs), NCHW or NHWC, float or double; bias, residual and activation follow
// through bias_activation, as in the gemm variant. Grad input of such a layer is the forward
// convolution of dy with the flipped, channel-transposed filters, padded by 2 - pad
// (winograd.h, bwd_data_as_forward), and runs the same code. Grad weight (bwd_filter_tiles)
// transforms x's tiles and dy's (A dy A^T) the same way and sums their products over the
// tiles, one GEMM per alpha^2 position, then dw = G^T dU G.
//
// One call:
//   1. Filters, once: U[g][e][c][k] = (G w_{g,k,c} G^T)[e] for the alpha^2 positions e, in T
//      (FilterAcc says why not double), along the output channels (FilterTaps), written packed
//      as the GEMMs read them (gemm.h, PackedB).
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
// Transforms are written once per type and built for AVX2 and baseline x86-64 (chosen
// through isa.h, FC_WINO_BUILDS), called from inside the OpenMP loops (an attribute on the function
// around `omp parallel` would not reach them: benchmarks/NOTES.md, pooling v5).
#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../common/check.h"
#include "../common/winograd.h"
#include "conv2d_common.h"
#include "gemm.h"
#include "parallel.h"
#include "simd.h"
#include "workspace.h"

// The three transform runs below are written once (name_body) and built per ISA path by
// FC_WINO_BUILDS: name_portable and name_avx2 (the avx512 path runs the AVX2 build), chosen
// through isa.h like every other kernel. flatten: the header's transforms are templates of
// templates; inlined whole, a tile's values live in registers and the channel loop around
// them vectorises.
#define FC_WINO_BUILDS(name, PARAMS, ARGS)                                                 \
    template <int m, typename T>                                                         \
    __attribute__((flatten)) void name##_portable PARAMS { name##_body<m> ARGS; }         \
    template <int m, typename T>                                                         \
    FC_TARGET_AVX2 __attribute__((flatten)) void name##_avx2 PARAMS { name##_body<m> ARGS; } \
    template <int m, typename T>                                                         \
    inline void name PARAMS {                                                            \
        if (isa() >= Isa::Avx2) return name##_avx2<m> ARGS;                              \
        name##_portable<m> ARGS;                                                         \
    }
// On the channel loops: their iterations are independent. GCC otherwise sees 16 or 36 stores
// a row apart through one pointer, wants more than 10 run-time overlap checks and gives up
// vectorising (-fopt-info-vec-missed: "number of versioning for alias run-time tests").
#if defined(__GNUC__) && !defined(__clang__)
#define FC_WINO_INDEPENDENT _Pragma("GCC ivdep")
#else
#define FC_WINO_INDEPENDENT
#endif

namespace fastconv {
namespace cpu {

namespace {

using winograd::static_for;

// Scratch that is written before it is read, so not zero-filled: std::vector's fill of a
// chunk's V and M was 7.6% of a LeNet-sized F(4x4) call (callgrind).
template <typename T>
using Buffer = std::unique_ptr<T[]>;

template <typename T>
Buffer<T> buffer(int64_t n) {
    return Buffer<T>(new T[size_t(n)]);
}

// The type the filter transform computes in: T. In double, rounded once, F(4x4)'s float32
// error was 2-3% lower at C = 64 ... 512 and 15% at C = 3 (1.70e-6 against 1.75e-6 at C = 256,
// relu inputs, 14x14), and the transform took 2.5x the instructions (23.6 against 9.5 M on
// ResNet-50's 512-channel layer at batch 1, where it is the largest part of the call).
template <typename T>
using FilterAcc = T;

// V and M of one chunk (alpha^2 x tiles x (Cg + Kg) elements) are kept within this many
// bytes, so that what the input transform writes is still in cache when the GEMMs read it,
// and the GEMMs' results when the output transform reads them (L2 is 512 KiB a core on the
// development EPYC, 1-2 MiB on recent Xeons).
constexpr int64_t kWinogradBudget = int64_t(1) << 20;
// ...but a chunk has at least this many tiles (or all there are): every GEMM packs its whole
// U_e (Cg x Kg) again, ~1.5 instructions an element against ~0.2 per multiply-add of the
// micro-kernel, so packing costs about 7.5 / tiles of the GEMM (callgrind, ResNet-50 at
// batch 1: a floor of 32 -> 64 took the 128-channel layer's F(4x4) from 12.0 to 11.1 M
// instructions and the 256-channel layer's F(2x2) from 18.9 to 17.3 M). With 64 tiles the
// budget is exceeded from Cg + Kg > 113 on (F(4x4), float): 9.4 MB at 512 + 512. Where
// the balance between cache and packing lies is for timing on a quiet machine to say.
constexpr int64_t kMinChunkTiles = 64;
// Transformed filters larger than this are streamed from memory by every chunk (chunk_tiles).
constexpr int64_t kLargeFilters = int64_t(16) << 20;

// ----------------------------------------------------------------------- NCHW <-> bands
// NCHW planes hold a channel's pixels together, the bands a pixel's channels: every
// NCHW band is a transpose. Scalar, the transposes were a quarter of ResNet-50's first 3x3
// layer in F(2x2) (callgrind: 5.5 of 22.4 M instructions, with a zero fill of the whole
// band); with 8x8 (float) or 4x4 (double) blocks in AVX2 registers and only the padding
// zero-filled, 0.6 M, and the call 17.4 M.

#if FC_X86_ISA
// transpose() below for rows and cols multiples of the block: S::L x S::L in registers
// (simd.h's in-register transpose: 8 x 8 floats, 4 x 4 doubles).
template <typename S>
FC_TARGET_AVX2 void transpose_blocks_avx2(const typename S::T* src, int64_t src_ld,
                                          typename S::T* dst, int64_t dst_ld, int64_t rows,
                                          int64_t cols) {
    constexpr int L = S::L;
    for (int64_t i = 0; i + L <= rows; i += L)
        for (int64_t j = 0; j + L <= cols; j += L) {
            typename S::V r[L];
            for (int k = 0; k < L; ++k) r[k] = S::load(src + (i + k) * src_ld + j);
            S::transpose(r);
            for (int k = 0; k < L; ++k) S::store(dst + (j + k) * dst_ld + i, r[k]);
        }
}
inline void transpose_blocks(const float* src, int64_t src_ld, float* dst, int64_t dst_ld,
                             int64_t rows, int64_t cols) {
    transpose_blocks_avx2<Avx2Float>(src, src_ld, dst, dst_ld, rows, cols);
}
inline void transpose_blocks(const double* src, int64_t src_ld, double* dst, int64_t dst_ld,
                             int64_t rows, int64_t cols) {
    transpose_blocks_avx2<Avx2Double>(src, src_ld, dst, dst_ld, rows, cols);
}
#else
template <typename T>
void transpose_blocks(const T*, int64_t, T*, int64_t, int64_t, int64_t) {}
#endif

// dst[j * dst_ld + i] = src[i * src_ld + j] for i < rows, j < cols.
template <typename T>
void transpose(const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows, int64_t cols) {
    constexpr int64_t B = 32 / sizeof(T);  // the AVX2 block: 8 floats or 4 doubles
    int64_t rb = 0, cb = 0;                 // rows and columns the blocks cover
    if (isa() >= Isa::Avx2) {
        rb = rows / B * B, cb = cols / B * B;
        transpose_blocks(src, src_ld, dst, dst_ld, rb, cb);
    }
    for (int64_t j = 0; j < cols; ++j)
        for (int64_t i = j < cb ? rb : 0; i < rows; ++i) dst[j * dst_ld + i] = src[i * src_ld + j];
}

// ----------------------------------------------------------------------- filters

// The filters of the convolution being computed: tap t (r * 3 + s) of filter k for input
// channel c of group g is at(g, c, t)[k * k_stride]. The filter transform vectorises along k,
// so where k_stride is not 1 (every layout but the forward's NHWC) transform_filters gathers
// one sliver of filters at a time into a small tile. (Transposing the whole weight first, as
// before, wrote 9.4 MB column by column on ResNet-50's 512-channel layer: 30% of its F(2x2)
// call at batch 1, perf.)
template <typename T>
struct FilterTaps {
    const T* base;
    int64_t g_stride, c_stride, t_stride, k_stride;
    bool reversed;  // taps in reverse order: grad input's filters, w'[., ., r, s] = w[., ., 2-r, 2-s]
    const T* at(int64_t g, int64_t c, int t) const {
        return base + g * g_stride + c * c_stride + (reversed ? 8 - t : t) * t_stride;
    }
};

// The taps of the forward p's filters (grad_input false), or of grad input's, w'[c, k, r, s] =
// w[k, c, 2 - r, 2 - s]: the forward's input channels are their outputs. w is (K, Cg, 3, 3)
// for NCHW, (3, 3, Cg, K) for NHWC.
template <typename T>
FilterTaps<T> filter_taps(const Conv2dParams& p, bool grad_input, const T* w) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;  // of the forward p
    if (p.layout == Layout::NHWC)
        return grad_input ? FilterTaps<T>{w, Kg, 1, Cg * p.K, p.K, true}
                          : FilterTaps<T>{w, Kg, p.K, Cg * p.K, 1, false};
    return grad_input ? FilterTaps<T>{w, Kg * Cg * 9, Cg * 9, 1, 9, true}
                      : FilterTaps<T>{w, Kg * Cg * 9, 9, 1, Cg * 9, false};
}

// u[e * e_stride + k] = (G g_k G^T)[e] for the Kg filters k of one (group, input channel),
// tap t of filter k being taps[t][k].
template <int m, typename T>
void filter_run_body(const T* const* taps, int64_t Kg, T* __restrict u, int64_t e_stride) {
    constexpr int a2 = (m + 2) * (m + 2);
    const T* r[9];
    for (int t = 0; t < 9; ++t) r[t] = taps[t];
    FC_WINO_INDEPENDENT
    for (int64_t k = 0; k < Kg; ++k) {
        FilterAcc<T> g[9], v[a2];
        static_for<0, 9>([&](auto t) FC_WINO_LAMBDA { g[decltype(t)::value] = r[decltype(t)::value][k]; });
        winograd::filter_transform<m>(g, v);
        static_for<0, a2>([&](auto e) FC_WINO_LAMBDA { u[decltype(e)::value * e_stride + k] = T(v[decltype(e)::value]); });
    }
}
FC_WINO_BUILDS(filter_run, (const T* const* taps, int64_t Kg, T* __restrict u, int64_t e_stride),
               (taps, Kg, u, e_stride))

// The distance between the alpha^2 matrices of U, V and M (U_e to U_{e+1}, ...): n elements
// rounded up to an odd number of 64-byte lines, so that the alpha^2 values one transform
// reads or writes for a tile (or filter) fall in alpha^2 different cache sets. Where the
// distance was a multiple of 4 KiB they shared one set of the L1d: 512 x 512 floats of U
// (1 MiB) made the filter transform as slow as the GEMMs on ResNet-50's 7x7 layer, and a
// chunk of 64 tiles x 128 channels (32 KiB) the input transform a third of the 28x28
// layer's F(4x4) call at batch 2 (perf).
template <typename T>
int64_t spread(int64_t n) {
    constexpr int64_t line = 64 / sizeof(T);
    const int64_t lines = (n + line - 1) / line;
    return (lines | 1) * line;
}

template <typename T>
int64_t filter_stride(const PackedB& layout) {
    return spread<T>(layout.size());
}

// The transformed filters U_e (Cg x Kg, e < alpha^2, per group) of the convolution q (the
// forward p, or its grad input when grad_input), each packed as the GEMM reads its B
// (gemm.h, PackedB: `layout`), so that no GEMM of the call packs them again:
// U_{g,e}(c, k) = (G w_{g,k,c} G^T)[e] at U + (g * alpha^2 + e) * filter_stride(layout) +
// layout.offset(c, k).
template <int m, typename T>
const T* transform_filters(const Conv2dParams& q, const Conv2dParams& p, bool grad_input,
                           const T* w, PackedB& layout) {
    constexpr int64_t a2 = (m + 2) * (m + 2);
    const int64_t Cg = q.C / q.groups, Kg = q.K / q.groups;
    const FilterTaps<T> f = filter_taps(p, grad_input, w);
    layout = packed_b_layout<T>(Cg, Kg);
    const PackedB lay = layout;
    const int64_t us = filter_stride<T>(lay);
    T* U = workspace<T>(Slot::Filters, q.groups * a2 * us);
    // Tasks of kCB channels x one sliver of filters: their taps, gathered where k_stride is
    // not 1, are a few KiB of a few dozen pages (channel by channel over all filters touched
    // one page per filter: 512 pages a channel on the 512-channel layer, a TLB miss a load).
    constexpr int64_t kMaxNR = 32, kCB = 16;  // the widest path's sliver (avx512 float)
    FC_CHECK(lay.NR <= kMaxNR, "a GEMM sliver wider than the filter tile");
    const int64_t slivers = ceil_div(Kg, lay.NR), cblocks = ceil_div(Cg, kCB);
#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < q.groups * slivers * cblocks; ++task) {
        const int64_t g = task / (slivers * cblocks), k0 = task / cblocks % slivers * lay.NR;
        const int64_t c0 = task % cblocks * kCB, nc = std::min(kCB, Cg - c0);
        const int64_t nk = std::min(lay.NR, Kg - k0);
        alignas(64) T tile[kCB * 9 * kMaxNR];
        if (f.k_stride != 1)  // filter j's taps of channel c into column j of rows c * 9 + t
            for (int64_t c = 0; c < nc; ++c)
                for (int64_t j = 0; j < nk; ++j)
                    for (int t = 0; t < 9; ++t)
                        tile[(c * 9 + t) * lay.NR + j] = f.at(g, c0 + c, t)[(k0 + j) * f.k_stride];
        for (int64_t c = 0; c < nc; ++c) {
            const T* taps[9];
            for (int t = 0; t < 9; ++t)
                taps[t] = f.k_stride == 1 ? f.at(g, c0 + c, t) + k0 : tile + (c * 9 + t) * lay.NR;
            T* u = U + g * a2 * us + lay.offset(c0 + c, k0);
            filter_run<m>(taps, nk, u, us);
            for (int64_t e = 0; e < a2 && nk < lay.NR; ++e)
                std::fill(u + e * us + nk, u + e * us + lay.NR, T(0));
        }
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
    for (int64_t i = 0; i < rows; ++i) {
        T* dst = band + i * cols * Cg;
        const int64_t h = h0 + i;
        if (h < 0 || h >= q.H || lo == hi) {
            std::fill(dst, dst + cols * Cg, T(0));
            continue;
        }
        std::fill(dst, dst + lo * Cg, T(0));
        std::fill(dst + hi * Cg, dst + cols * Cg, T(0));
        if (q.layout == Layout::NCHW) {  // Cg planes, H * W apart
            transpose(x + ((n * q.C + g * Cg) * q.H + h) * q.W + w0 + lo, q.H * q.W,
                      dst + lo * Cg, Cg, Cg, hi - lo);
            continue;
        }
        const T* src = x + ((n * q.H + h) * q.W + w0) * q.C + g * Cg;
        if (q.groups == 1)
            std::memcpy(dst + lo * Cg, src + lo * Cg, size_t((hi - lo) * Cg) * sizeof(T));
        else
            for (int64_t j = lo; j < hi; ++j)
                std::memcpy(dst + j * Cg, src + j * q.C, size_t(Cg) * sizeof(T));
    }
}

// V[e * e_stride + t * Cg + c] = (B^T d_t B)[e] for the tiles t < tiles of a band whose pixel
// rows are row_stride apart; tile t's patch starts at band column t * m.
template <int m, typename T>
void input_run_body(const T* __restrict band, int64_t row_stride, int64_t Cg, int64_t tiles,
                    T* __restrict V, int64_t e_stride) {
    constexpr int a = m + 2;
    for (int64_t t = 0; t < tiles; ++t) {
        const T* src = band + t * m * Cg;
        T* dst = V + t * Cg;
        FC_WINO_INDEPENDENT
        for (int64_t c = 0; c < Cg; ++c) {
            T d[a * a], v[a * a];
            static_for<0, a * a>([&](auto e_) FC_WINO_LAMBDA {
                constexpr int e = decltype(e_)::value;
                d[e] = src[(e / a) * row_stride + (e % a) * Cg + c];
            });
            winograd::input_transform<m>(d, v);
            static_for<0, a * a>([&](auto e) FC_WINO_LAMBDA { dst[decltype(e)::value * e_stride + c] = v[decltype(e)::value]; });
        }
    }
}
FC_WINO_BUILDS(input_run, (const T* __restrict band, int64_t row_stride, int64_t Cg, int64_t tiles,
                           T* __restrict V, int64_t e_stride),
               (band, row_stride, Cg, tiles, V, e_stride))

// The m x m outputs Y = A^T M_t A of tiles t < tiles, where M_t[e] = z[e * e_stride + t * Kg + k],
// into an output band: pixel (i, t * m + j) at out[i * row_stride + (t * m + j) * Kg + k].
template <int m, typename T>
void output_run_body(const T* __restrict z, int64_t e_stride, int64_t Kg, int64_t tiles,
                     T* __restrict out, int64_t row_stride) {
    constexpr int a = m + 2;
    for (int64_t t = 0; t < tiles; ++t) {
        const T* src = z + t * Kg;
        T* dst = out + t * m * Kg;
        FC_WINO_INDEPENDENT
        for (int64_t k = 0; k < Kg; ++k) {
            T mt[a * a], y[m * m];
            static_for<0, a * a>([&](auto e) FC_WINO_LAMBDA { mt[decltype(e)::value] = src[decltype(e)::value * e_stride + k]; });
            winograd::output_transform<m>(mt, 1, y);
            static_for<0, m * m>([&](auto o_) FC_WINO_LAMBDA {
                constexpr int o = decltype(o_)::value;
                dst[(o / m) * row_stride + (o % m) * Kg + k] = y[o];
            });
        }
    }
}
FC_WINO_BUILDS(output_run, (const T* __restrict z, int64_t e_stride, int64_t Kg, int64_t tiles,
                            T* __restrict out, int64_t row_stride),
               (z, e_stride, Kg, tiles, out, row_stride))

// Grad weight's two transforms (winograd.h: output_grad_transform, filter_grad_transform).
// Z[e * e_stride + t * Kg + k] = (A dy_t A^T)[e] for the tiles t < tiles of an m-row band of
// output gradients (pixel (i, j) at band[i * row_stride + j * Kg]; tile t starts at column t * m).
template <int m, typename T>
void dy_run_body(const T* __restrict band, int64_t row_stride, int64_t Kg, int64_t tiles,
                 T* __restrict Z, int64_t e_stride) {
    constexpr int a = m + 2;
    for (int64_t t = 0; t < tiles; ++t) {
        const T* src = band + t * m * Kg;
        T* dst = Z + t * Kg;
        FC_WINO_INDEPENDENT
        for (int64_t k = 0; k < Kg; ++k) {
            T d[m * m], v[a * a];
            static_for<0, m * m>([&](auto e_) FC_WINO_LAMBDA {
                constexpr int e = decltype(e_)::value;
                d[e] = src[(e / m) * row_stride + (e % m) * Kg + k];
            });
            winograd::output_grad_transform<m>(d, v);
            static_for<0, a * a>([&](auto e) FC_WINO_LAMBDA { dst[decltype(e)::value * e_stride + k] = v[decltype(e)::value]; });
        }
    }
}
FC_WINO_BUILDS(dy_run, (const T* __restrict band, int64_t row_stride, int64_t Kg, int64_t tiles,
                        T* __restrict Z, int64_t e_stride),
               (band, row_stride, Kg, tiles, Z, e_stride))

// out[c * c_stride + t * t_stride] = (G^T du_c G)[t] for c < n, du_c[e] = du[e * e_stride + c].
template <int m, typename T>
void filter_grad_run_body(const T* __restrict du, int64_t e_stride, int64_t n, T* __restrict out,
                          int64_t c_stride, int64_t t_stride) {
    constexpr int a2 = (m + 2) * (m + 2);
    FC_WINO_INDEPENDENT
    for (int64_t c = 0; c < n; ++c) {
        T u[a2], g[9];
        static_for<0, a2>([&](auto e) FC_WINO_LAMBDA { u[decltype(e)::value] = du[decltype(e)::value * e_stride + c]; });
        winograd::filter_grad_transform<m>(u, 1, g);
        static_for<0, 9>([&](auto t) FC_WINO_LAMBDA { out[c * c_stride + decltype(t)::value * t_stride] = g[decltype(t)::value]; });
    }
}
FC_WINO_BUILDS(filter_grad_run, (const T* __restrict du, int64_t e_stride, int64_t n,
                                 T* __restrict out, int64_t c_stride, int64_t t_stride),
               (du, e_stride, n, out, c_stride, t_stride))

// An output band (rows x cols pixels from (oh0, ow0), nk channels each: the group's channels
// k0 .. k0 + nk - 1) into y, clipped at P, Q.
template <typename T>
void scatter_band(const Conv2dParams& q, const T* band, int64_t n, int64_t g, int64_t oh0,
                  int64_t ow0, int64_t rows, int64_t cols, int64_t k0, int64_t nk, T* y) {
    const int64_t Kg = q.K / q.groups, kf = g * Kg + k0;  // kf: y's first channel
    const int64_t nr = std::min(rows, q.P - oh0), nc = std::min(cols, q.Q - ow0);
    for (int64_t i = 0; i < nr; ++i) {
        const T* src = band + i * cols * nk;
        if (q.layout == Layout::NCHW) {  // nk planes, P * Q apart
            transpose(src, nk, y + ((n * q.K + kf) * q.P + oh0 + i) * q.Q + ow0, q.P * q.Q, nc, nk);
            continue;
        }
        T* dst = y + ((n * q.P + oh0 + i) * q.Q + ow0) * q.K + kf;
        if (nk == q.K)
            std::memcpy(dst, src, size_t(nc * nk) * sizeof(T));
        else
            for (int64_t j = 0; j < nc; ++j)
                std::memcpy(dst + j * q.K, src + j * nk, size_t(nk) * sizeof(T));
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

// One run of tiles (for_each_tile_run's arguments).
struct TileRun {
    int64_t n, th, tw0, tw1, j;
};

// f(run, band) for each run, band being band_elems of the running thread's scratch
// (workspace.h, Slot::Bands) for f's use. Where the chunks run in turn (for_each_task with
// fewer than two per thread: ResNet-50's 7x7 layer at batch 32 has two) and no region is
// open, the runs are shared among the threads; the transforms were one thread's work while
// the other waited (libgomp's wait was 11% of that layer's samples, perf). Runs write
// disjoint tiles of V, and of y.
template <typename T, typename F>
void each_run(const std::vector<TileRun>& runs, int64_t band_elems, F f) {
    if (in_region() || runs.size() < 2 || max_threads() == 1) {
        T* band = workspace<T>(Slot::Bands, band_elems);
        for (const TileRun& r : runs) f(r, band);
        return;
    }
#pragma omp parallel
    {
        T* band = workspace<T>(Slot::Bands, band_elems);
#pragma omp for schedule(static)
        for (size_t i = 0; i < runs.size(); ++i) f(runs[i], band);
    }
}

// f(e) for the alpha^2 products e of a chunk. Where no region is open (chunks in turn) they
// are shared among the threads in one region, each GEMM on one thread: one fork and join
// instead of alpha^2 (36 GEMM regions a chunk before, and a join costs most at batch 1,
// where a product is a few microseconds of work). Inside a region, in turn.
template <typename F>
void each_product(int64_t a2, F f) {
    if (in_region() || max_threads() == 1) {
        for (int64_t e = 0; e < a2; ++e) f(e);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t e = 0; e < a2; ++e) f(e);
}

// Tiles per chunk: what fits kWinogradBudget, at least kMinChunkTiles, at most all. The same
// for any thread count, so the chunk edges that tests/test_conv2d.py THRESHOLDS straddles
// do not move with the machine. (A many-core machine at batch 1 gets fewer chunks than
// 2 per thread, and for_each_task then runs them in turn with threaded GEMMs.)
int64_t chunk_tiles(int64_t tiles, int64_t a2, int64_t Cg, int64_t Kg, size_t elem) {
    const int64_t fit = kWinogradBudget / (a2 * (Cg + Kg) * int64_t(elem));
    // Where U is large, each chunk streams all of it from memory: then a chunk takes at least
    // the tiles whose V and M are as large as U. ResNet-50's 7x7 layer at batch 32 (F(4x4),
    // U 37.7 MB): 64 -> 128 tiles a chunk, 9.3-9.5 -> 8.9-9.1 ms (2 threads); on the
    // 14x14 layer (U 9.4 MB) the same rule lost 7.0-7.4 -> 7.9-8.3 ms.
    const bool u_large = a2 * Cg * Kg * int64_t(elem) > kLargeFilters;
    return std::min(tiles, std::max({kMinChunkTiles, fit, u_large ? Cg * Kg / (Cg + Kg) : 0}));
}

// Whether tiles_conv splits each chunk among the threads by filters (tiles_by_filters):
// where the chunks run in turn (fewer than two a thread: batch 1) and each thread gets at
// least one sliver of the packed filters.
bool split_by_filters(int64_t tasks, int64_t Kg, const PackedB& layout) {
    const int64_t nt = max_threads();
    return !in_region() && nt > 1 && tasks < 2 * nt && ceil_div(Kg, layout.NR) >= nt;
}

// tiles_conv's chunks in turn, thread t computing filters [k0, k1) (whole slivers of U) of
// every tile: its own V of the whole chunk (the input transform done by every thread), its
// alpha^2 products on its columns of U, its channels' output transform and scatter. Nothing
// one thread writes is read by another, and the filters' slivers each thread reads are the
// ones it transformed (transform_filters splits them the same way). Sharing the runs and
// the products (each_run, each_product) sent half of U, V and M from one thread's cache to
// the other's every call: where the host put the two vCPUs on cores without a shared L3,
// ResNet-50's l2_3x3 and l3_3x3 at batch 1 (auto: F(4x4), F(2x2)) took 0.41 and 0.60 ms;
// split, 0.33-0.34 and 0.45 (parallel.h, "Same owner"). Where the cores share an L3 the
// duplicated input transforms and V packing cost: 0.238 -> 0.275, 0.39 -> 0.42 ms.
template <int m, typename T>
void tiles_by_filters(const Conv2dParams& q, const T* U, const PackedB& layout, const T* x, T* y,
                      int64_t chunk, int64_t v_stride, int64_t in_elems) {
    constexpr int64_t a = m + 2, a2 = a * a;
    const int64_t Cg = q.C / q.groups, Kg = q.K / q.groups;
    const int64_t TH = winograd::tile_count(q.P, m), TW = winograd::tile_count(q.Q, m);
    const int64_t tiles = q.N * TH * TW, chunks = ceil_div(tiles, chunk);
    const int64_t slivers = ceil_div(Kg, layout.NR), run_max = std::min(chunk, TW);
#pragma omp parallel
    {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t k0 = std::min(Kg, slivers * t / nt * layout.NR);
        const int64_t k1 = std::min(Kg, slivers * (t + 1) / nt * layout.NR), nk = k1 - k0;
        if (nk > 0) {
            const int64_t z_stride = spread<T>(chunk * nk);
            T* const v = workspace<T>(Slot::TilesIn, a2 * v_stride);
            T* const z = workspace<T>(Slot::TilesOut, a2 * z_stride);
            T* const band = workspace<T>(Slot::Bands, std::max(in_elems, m * run_max * m * nk));
            for (int64_t task = 0; task < q.groups * chunks; ++task) {
                const int64_t g = task / chunks, u0 = task % chunks * chunk;
                const int64_t u1 = std::min(u0 + chunk, tiles);
                for_each_tile_run(u0, u1, TH, TW, [&](int64_t n, int64_t th, int64_t tw0, int64_t tw1, int64_t j) {
                    const int64_t cols = (tw1 - tw0) * m + 2;
                    gather_band(q, x, n, g, winograd::tile_origin(th, m, q.pad_h),
                                winograd::tile_origin(tw0, m, q.pad_w), a, cols, band);
                    input_run<m>(band, cols * Cg, Cg, tw1 - tw0, v + j * Cg, v_stride);
                });
                for (int64_t e = 0; e < a2; ++e)
                    gemm_packed_b_columns<T>(false, u1 - u0, Kg, Cg, v + e * v_stride, Cg,
                                             U + (g * a2 + e) * filter_stride<T>(layout), k0, k1,
                                             T(0), z + e * z_stride, nk);
                for_each_tile_run(u0, u1, TH, TW, [&](int64_t n, int64_t th, int64_t tw0, int64_t tw1, int64_t j) {
                    const int64_t cols = (tw1 - tw0) * m;
                    output_run<m>(z + j * nk, z_stride, nk, tw1 - tw0, band, cols * nk);
                    scatter_band(q, band, n, g, th * m, tw0 * m, m, cols, k0, nk, y);
                });
            }
        }
    }
}

// y = x (*) w for the 3x3, stride-1 convolution q, w given as U (transform_filters, packed as
// `layout` says). No bias.
template <int m, typename T>
void tiles_conv(const Conv2dParams& q, const T* U, const PackedB& layout, const T* x, T* y) {
    constexpr int64_t a = m + 2, a2 = a * a;
    const int64_t Cg = q.C / q.groups, Kg = q.K / q.groups;
    const int64_t TH = winograd::tile_count(q.P, m), TW = winograd::tile_count(q.Q, m);
    const int64_t tiles = q.N * TH * TW;
    const int64_t chunk = chunk_tiles(tiles, a2, Cg, Kg, sizeof(T));
    const int64_t chunks = ceil_div(tiles, chunk);
    const int64_t run_max = std::min(chunk, TW);  // tiles in one run, at most
    const int64_t v_stride = spread<T>(chunk * Cg), z_stride = spread<T>(chunk * Kg);  // V_e, M_e
    const int64_t in_elems = a * (run_max * m + 2) * Cg, out_elems = m * run_max * m * Kg;  // bands
    if (split_by_filters(q.groups * chunks, Kg, layout))
        return tiles_by_filters<m>(q, U, layout, x, y, chunk, v_stride, in_elems);
    struct Scratch {
        T *v, *z;
    };
    for_each_task(
        q.groups * chunks,
        [&] {
            return Scratch{workspace<T>(Slot::TilesIn, a2 * v_stride),
                           workspace<T>(Slot::TilesOut, a2 * z_stride)};
        },
        [&](int64_t task, Scratch& s) {
            const int64_t g = task / chunks, u0 = task % chunks * chunk;
            const int64_t u1 = std::min(u0 + chunk, tiles);
            std::vector<TileRun> runs;
            for_each_tile_run(u0, u1, TH, TW, [&](int64_t n, int64_t th, int64_t tw0, int64_t tw1, int64_t j) {
                runs.push_back({n, th, tw0, tw1, j});
            });
            each_run<T>(runs, in_elems, [&](const TileRun& r, T* band) {
                const int64_t cols = (r.tw1 - r.tw0) * m + 2;
                gather_band(q, x, r.n, g, winograd::tile_origin(r.th, m, q.pad_h),
                            winograd::tile_origin(r.tw0, m, q.pad_w), a, cols, band);
                input_run<m>(band, cols * Cg, Cg, r.tw1 - r.tw0, s.v + r.j * Cg, v_stride);
            });
            each_product(a2, [&](int64_t e) {
                gemm_packed_b<T>(false, u1 - u0, Kg, Cg, s.v + e * v_stride, Cg,
                                 U + (g * a2 + e) * filter_stride<T>(layout), T(0),
                                 s.z + e * z_stride, Kg);
            });
            each_run<T>(runs, out_elems, [&](const TileRun& r, T* band) {
                const int64_t cols = (r.tw1 - r.tw0) * m;
                output_run<m>(s.z + r.j * Kg, z_stride, Kg, r.tw1 - r.tw0, band, cols * Kg);
                scatter_band(q, band, r.n, g, r.th * m, r.tw0 * m, m, cols, 0, Kg, y);
            });
        });
}

// V and Z of all the tiles grad weight sums over stay within this many bytes; past it the
// tiles go in chunks, each adding into dU (alpha^2 x Cg x Kg, re-read and re-written per chunk).
constexpr int64_t kGradWeightBudget = int64_t(8) << 20;

// dw = the 3x3 filters' gradient of the stride-1 convolution p, by dU_e (Kg x Cg) = sum over
// tiles of Z_e^T V_e (one GEMM per e, reducing over tiles), then dw = G^T dU G per filter.
// Chunks in turn and threaded GEMMs: every sum in a fixed order, whatever the thread count.
template <int m, typename T>
void bwd_filter_tiles(const Conv2dParams& p, const T* dy, const T* x, T* dw) {
    constexpr int64_t a = m + 2, a2 = a * a;
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
    const int64_t TH = winograd::tile_count(p.P, m), TW = winograd::tile_count(p.Q, m);
    const int64_t tiles = p.N * TH * TW;
    const int64_t fit = kGradWeightBudget / (a2 * (Cg + Kg) * int64_t(sizeof(T)));
    const int64_t chunk = std::min(tiles, std::max(kMinChunkTiles, fit));
    const int64_t run_max = std::min(chunk, TW);
    const int64_t v_stride = spread<T>(chunk * Cg), z_stride = spread<T>(chunk * Kg);
    const int64_t u_stride = spread<T>(Kg * Cg);
    const int64_t in_elems = a * (run_max * m + 2) * Cg, dy_elems = m * run_max * m * Kg;
    Conv2dParams o = p;  // dy as an image: K channels of P x Q, read by gather_band
    o.C = p.K, o.H = p.P, o.W = p.Q;
    T* const V = workspace<T>(Slot::TilesIn, a2 * v_stride);
    T* const Z = workspace<T>(Slot::TilesOut, a2 * z_stride);
    T* const dU = workspace<T>(Slot::Filters, a2 * u_stride);
    for (int64_t g = 0; g < p.groups; ++g) {
        for (int64_t u0 = 0; u0 < tiles; u0 += chunk) {
            const int64_t u1 = std::min(u0 + chunk, tiles);
            std::vector<TileRun> runs;
            for_each_tile_run(u0, u1, TH, TW, [&](int64_t n, int64_t th, int64_t tw0, int64_t tw1, int64_t j) {
                runs.push_back({n, th, tw0, tw1, j});
            });
            each_run<T>(runs, std::max(in_elems, dy_elems), [&](const TileRun& r, T* band) {
                int64_t cols = (r.tw1 - r.tw0) * m + 2;
                gather_band(p, x, r.n, g, winograd::tile_origin(r.th, m, p.pad_h),
                            winograd::tile_origin(r.tw0, m, p.pad_w), a, cols, band);
                input_run<m>(band, cols * Cg, Cg, r.tw1 - r.tw0, V + r.j * Cg, v_stride);
                cols = (r.tw1 - r.tw0) * m;  // zeros past P and Q: the dropped outputs' gradients
                gather_band(o, dy, r.n, g, r.th * m, r.tw0 * m, m, cols, band);
                dy_run<m>(band, cols * Kg, Kg, r.tw1 - r.tw0, Z + r.j * Kg, z_stride);
            });
            each_product(a2, [&](int64_t e) {
                gemm<T>(true, false, Kg, Cg, u1 - u0, Z + e * z_stride, Kg,
                        V + e * v_stride, Cg, u0 == 0 ? T(0) : T(1), dU + e * u_stride, Cg);
            });
        }
        // dw[k, c, r, s] (NCHW: K x Cg x 3 x 3; NHWC: 3 x 3 x Cg x K) from dU[e][k][c]
        const bool nchw = p.layout == Layout::NCHW;
#pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < Kg; ++k)
            filter_grad_run<m>(dU + k * Cg, u_stride, Cg,
                               nchw ? dw + (g * Kg + k) * Cg * 9 : dw + g * Kg + k,
                               nchw ? 9 : p.K, nchw ? 1 : Cg * p.K);
    }
}

void check_applies(const Conv2dParams& p) {
    FC_CHECK(winograd::applies(p.R, p.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w),
             "the winograd variants need a 3x3 kernel, stride 1 and dilation 1");
}

// y = x (*) w for q, the forward p or (grad_input) the convolution that gives p's grad input.
template <int m, typename T>
void run(const Conv2dParams& q, const Conv2dParams& p, bool grad_input, const T* x, const T* w,
         T* y) {
    PackedB layout;
    const T* U = transform_filters<m>(q, p, grad_input, w, layout);
    tiles_conv<m>(q, U, layout, x, y);
}

// Float F(4x4) on fewer than winograd::kFloatF4MinOutputs outputs runs in double (winograd.h
// says why; the GPU twin follows the same rule).
using winograd::kFloatF4MinOutputs;

template <int m, typename T>
void run_accurate(const Conv2dParams& q, const Conv2dParams& p, bool grad_input, const T* x,
                  const T* w, T* y) {
    const int64_t outs = q.N * q.K * q.P * q.Q;
    if (!(std::is_same<T, float>::value && m == 4 && outs < kFloatF4MinOutputs))
        return run<m>(q, p, grad_input, x, w, y);
    const int64_t xs = q.N * q.C * q.H * q.W, ws = p.K * (p.C / p.groups) * p.R * p.S;
    std::vector<double> xd(x, x + xs), wd(w, w + ws), yd(outs);
    run<m>(q, p, grad_input, xd.data(), wd.data(), yd.data());
    std::copy(yd.begin(), yd.end(), y);
}

}  // namespace

template <typename T>
void winograd_fwd(const Conv2dParams& p, int m, const T* x, const T* w, const T* b, T* y,
                  const T* residual) {
    check_applies(p);
    if (m == 2)
        run<2>(p, p, false, x, w, y);
    else
        run_accurate<4>(p, p, false, x, w, y);
    bias_activation(p, b, y, residual);
}

template <typename T>
void winograd_bwd_data(const Conv2dParams& p, int m, const T* dy, const T* w, T* dx) {
    check_applies(p);
    const Conv2dParams q = winograd::bwd_data_as_forward(p);
    if (m == 2)
        run<2>(q, p, true, dy, w, dx);
    else
        run_accurate<4>(q, p, true, dy, w, dx);
}

template <typename T>
void winograd_bwd_filter(const Conv2dParams& p, int m, const T* dy, const T* x, T* dw) {
    check_applies(p);
    if (m == 2)
        bwd_filter_tiles<2>(p, dy, x, dw);
    else
        bwd_filter_tiles<4>(p, dy, x, dw);
}

template void winograd_fwd<float>(const Conv2dParams&, int, const float*, const float*,
                                  const float*, float*, const float*);
template void winograd_fwd<double>(const Conv2dParams&, int, const double*, const double*,
                                   const double*, double*, const double*);
template void winograd_bwd_data<float>(const Conv2dParams&, int, const float*, const float*, float*);
template void winograd_bwd_data<double>(const Conv2dParams&, int, const double*, const double*,
                                        double*);
template void winograd_bwd_filter<float>(const Conv2dParams&, int, const float*, const float*,
                                         float*);
template void winograd_bwd_filter<double>(const Conv2dParams&, int, const double*, const double*,
                                          double*);

}  // namespace cpu
}  // namespace fastconv

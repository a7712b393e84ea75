// conv2d_common.h: what the CPU forward and backward passes share: the GEMM view of a
// convolution, im2col / col2im for a chunk of output pixels, and the epilogue.
//
// GEMM view, per image n and group g (red = Cg * R * S, the reduction length):
//   NCHW  y[n, g] (Kg x PQ)          = w_g (Kg x red)  . col (red x PQ)
//   NHWC  y[n][:, g] (PQ x Kg, ld K) = col (PQ x red)  . w_g (red x Kg, ld K)
// col is built for output pixels [j0, j1) at a time (pixel j = oh * Q + ow).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/activation.h"
#include "../common/shapes.h"
#include "../common/winograd.h"
#include "activation_cpu.h"
#include "cpu_ops.h"
#include "isa.h"
#include "parallel.h"
#include "simd.h"
#include "workspace.h"

namespace fastconv {
namespace cpu {

// Bytes of im2col matrix one task may hold: bounded whatever the image size.
constexpr int64_t kColBudget = int64_t(4) << 20;

// A GEMM narrower than this many output pixels spends more on packing than on
// arithmetic: small images are batched up to it (LeNet C2, 10x10 outputs: 2.4x).
constexpr int64_t kMinGemmPixels = 512;

struct ConvGemmShape {
    int64_t Cg, Kg, PQ, red, chunk, chunks, col_elems;
    bool is_pointwise;  // 1x1, stride 1, no padding: the input is the GEMM operand
    ConvGemmShape(const Conv2dParams& p, size_t elem)
        : Cg(p.C / p.groups), Kg(p.K / p.groups), PQ(p.P * p.Q), red(Cg * p.R * p.S) {
        is_pointwise = p.R == 1 && p.S == 1 && p.stride_h == 1 && p.stride_w == 1 &&
                       p.pad_h == 0 && p.pad_w == 0 && p.P == p.H && p.Q == p.W;
        chunk = is_pointwise ? PQ : std::max<int64_t>(1, kColBudget / int64_t(elem) / red);
        chunk = std::min(chunk, PQ);
        chunks = ceil_div(PQ, chunk);
        col_elems = chunk * red;
    }
};

// Calls f(oh, ow0, ow1, j) for each run of output pixels of one output row in [j0, j1):
// pixels (oh, ow0 .. ow1) start at chunk column j.
// (One division per call, none per run: on LeNet's 10-pixel rows two int64 divisions per
// run made im2col cost 4x the GEMM.)
template <typename F>
inline void for_each_row_run(const Conv2dParams& p, int64_t j0, int64_t j1, F f) {
    int64_t oh = j0 / p.Q, ow0 = j0 % p.Q;
    for (int64_t j = j0; j < j1; ++oh, ow0 = 0) {
        const int64_t ow1 = std::min(p.Q, ow0 + (j1 - j));
        f(oh, ow0, ow1, j - j0);
        j += ow1 - ow0;
    }
}

// Runs are often a few pixels long (LeNet C2: 10), where a memcpy / memset call costs
// more than the copy; keep GCC from turning the copy loops back into such calls.
#if defined(__GNUC__) && !defined(__clang__)
#define FC_NO_LIBCALL_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define FC_NO_LIBCALL_LOOPS
#endif

// col[(c*R + r)*S + s][j - j0] = x[n, g*Cg + c, oh*sh - ph + r*dh, ow*sw - pw + s*dw], 0 outside.
// Rows of col are ld apart (ld >= j1 - j0; several images may share one col matrix).
// The row runs of [j0, j1) and each tap column's valid range are found once per call:
// per row of col they cost as much as the copy (divisions).
template <typename T>
FC_NO_LIBCALL_LOOPS void im2col_nchw(const Conv2dParams& p, const T* x, int64_t n, int64_t g,
                                     int64_t j0, int64_t j1, T* col, int64_t ld) {
    struct Run { int64_t oh, a, b, j; };
    Run runs_buf[64];
    std::vector<Run> runs_heap;
    Run* runs = runs_buf;
    int64_t nruns = 0;
    const int64_t max_runs = (j1 - j0) / p.Q + 2;
    if (max_runs > 64) runs_heap.resize(max_runs), runs = runs_heap.data();
    for_each_row_run(p, j0, j1, [&](int64_t oh, int64_t a, int64_t b, int64_t j) {
        runs[nruns++] = {oh, a, b, j};
    });
    int64_t q0s[16], q1s[16];  // per tap column s < 16; wider kernels compute inline
    for (int64_t s = 0; s < std::min<int64_t>(p.S, 16); ++s) {
        q0s[s] = valid_out_begin(s * p.dil_w - p.pad_w, p.stride_w);
        q1s[s] = valid_out_end(s * p.dil_w - p.pad_w, p.stride_w, p.W, p.Q);
    }
    // Whole output rows whose taps all fall inside the image need no per-run bookkeeping:
    // a strided 2-D copy (valid convolutions, most rows of padded ones).
    const bool whole_rows = j0 % p.Q == 0 && (j1 - j0) % p.Q == 0 && p.stride_w == 1;
    const int64_t oh_first = j0 / p.Q, oh_count = (j1 - j0) / p.Q;
    const int64_t Cg = p.C / p.groups;
    for (int64_t c = 0; c < Cg; ++c) {
        const T* plane = x + (n * p.C + g * Cg + c) * p.H * p.W;
        for (int64_t r = 0; r < p.R; ++r)
            for (int64_t s = 0; s < p.S; ++s) {
                T* row = col + ((c * p.R + r) * p.S + s) * ld;
                const int64_t off_w = s * p.dil_w - p.pad_w;
                const int64_t q0 = s < 16 ? q0s[s] : valid_out_begin(off_w, p.stride_w);
                const int64_t q1 = s < 16 ? q1s[s] : valid_out_end(off_w, p.stride_w, p.W, p.Q);
                const int64_t h_first = oh_first * p.stride_h - p.pad_h + r * p.dil_h;
                const int64_t h_last = h_first + (oh_count - 1) * p.stride_h;
                if (whole_rows && q0 == 0 && q1 == p.Q && h_first >= 0 && h_last < p.H) {
                    const T* src = plane + h_first * p.W + off_w;
                    for (int64_t i = 0; i < oh_count; ++i, src += p.stride_h * p.W)
                        for (int64_t q = 0; q < p.Q; ++q) row[i * p.Q + q] = src[q];
                    continue;
                }
                for (int64_t k = 0; k < nruns; ++k) {
                    const Run& u = runs[k];
                    T* dst = row + u.j - u.a;  // dst[ow] for ow in [a, b)
                    const int64_t h = u.oh * p.stride_h - p.pad_h + r * p.dil_h;
                    int64_t lo = std::max(u.a, q0), hi = std::min(u.b, q1);
                    if (h < 0 || h >= p.H || lo >= hi) lo = hi = u.b;
                    for (int64_t ow = u.a; ow < lo; ++ow) dst[ow] = T(0);
                    const T* src = plane + h * p.W + off_w;
                    if (p.stride_w == 1)
                        for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = src[ow];
                    else
                        for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = src[ow * p.stride_w];
                    for (int64_t ow = hi; ow < u.b; ++ow) dst[ow] = T(0);
                }
            }
    }
}

// im2col_nchw with the pixels [j0, j1) shared among the threads where no parallel region
// is open: a convolution whose image is one GEMM task (batch 1's large images) built its
// im2col on one thread while the other waited (ResNet-50's l2_3x3s2 at batch 1: 16% of a
// one-thread call, perf). Each part writes its own columns of col.
template <typename T>
void im2col_nchw_shared(const Conv2dParams& p, const T* x, int64_t n, int64_t g, int64_t j0,
                        int64_t j1, T* col, int64_t ld) {
    const int64_t red = (p.C / p.groups) * p.R * p.S;
    const int64_t parts = in_region() || (j1 - j0) * red < (int64_t(1) << 16)
                              ? 1
                              : std::min<int64_t>(max_threads(), (j1 - j0) / 16);
    if (parts <= 1) return im2col_nchw(p, x, n, g, j0, j1, col, ld);
#pragma omp parallel for num_threads(int(parts)) schedule(static)
    for (int64_t i = 0; i < parts; ++i) {
        const int64_t a = j0 + (j1 - j0) * i / parts, b = j0 + (j1 - j0) * (i + 1) / parts;
        im2col_nchw(p, x, n, g, a, b, col + (a - j0), ld);
    }
}

// col[j - j0][(r*S + s)*Cg + c] = x[n, oh*sh - ph + r*dh, ow*sw - pw + s*dw, g*Cg + c], 0 outside.
template <typename T>
void im2col_nhwc(const Conv2dParams& p, const T* x, int64_t n, int64_t g, int64_t j0, int64_t j1,
                 T* col) {
    const int64_t Cg = p.C / p.groups, red = Cg * p.R * p.S;
    for (int64_t j = j0; j < j1; ++j) {
        const int64_t oh = j / p.Q, ow = j % p.Q;
        T* dst = col + (j - j0) * red;
        for (int64_t r = 0; r < p.R; ++r) {
            const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
            for (int64_t s = 0; s < p.S; ++s, dst += Cg) {
                const int64_t w = ow * p.stride_w - p.pad_w + s * p.dil_w;
                if (h < 0 || h >= p.H || w < 0 || w >= p.W)
                    std::fill(dst, dst + Cg, T(0));
                else
                    std::memcpy(dst, x + ((n * p.H + h) * p.W + w) * p.C + g * Cg,
                                size_t(Cg) * sizeof(T));
            }
        }
    }
}

// The adjoint of im2col_nchw: dx[n, g*Cg + c, h, w] += col[...] for every tap that read it.
template <typename T>
void col2im_nchw(const Conv2dParams& p, const T* col, int64_t n, int64_t g, int64_t j0, int64_t j1,
                 T* dx) {
    const int64_t Cg = p.C / p.groups, cols = j1 - j0;
    for (int64_t c = 0; c < Cg; ++c) {
        T* plane = dx + (n * p.C + g * Cg + c) * p.H * p.W;
        for (int64_t r = 0; r < p.R; ++r)
            for (int64_t s = 0; s < p.S; ++s) {
                const T* row = col + ((c * p.R + r) * p.S + s) * cols;
                const int64_t off_w = s * p.dil_w - p.pad_w;
                const int64_t q0 = valid_out_begin(off_w, p.stride_w);
                const int64_t q1 = valid_out_end(off_w, p.stride_w, p.W, p.Q);
                for_each_row_run(p, j0, j1, [&](int64_t oh, int64_t a, int64_t b, int64_t j) {
                    const T* src = row + j - a;
                    const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
                    if (h < 0 || h >= p.H) return;
                    T* dst = plane + h * p.W + off_w;
                    const int64_t lo = std::max(a, q0), hi = std::min(b, q1);
                    if (p.stride_w == 1)
                        for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += src[ow];
                    else
                        for (int64_t ow = lo; ow < hi; ++ow) dst[ow * p.stride_w] += src[ow];
                });
            }
    }
}

// The adjoint of im2col_nhwc.
template <typename T>
void col2im_nhwc(const Conv2dParams& p, const T* col, int64_t n, int64_t g, int64_t j0, int64_t j1,
                 T* dx) {
    const int64_t Cg = p.C / p.groups, red = Cg * p.R * p.S;
    for (int64_t j = j0; j < j1; ++j) {
        const int64_t oh = j / p.Q, ow = j % p.Q;
        const T* src = col + (j - j0) * red;
        for (int64_t r = 0; r < p.R; ++r) {
            const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
            for (int64_t s = 0; s < p.S; ++s, src += Cg) {
                const int64_t w = ow * p.stride_w - p.pad_w + s * p.dil_w;
                if (h < 0 || h >= p.H || w < 0 || w >= p.W) continue;
                T* dst = dx + ((n * p.H + h) * p.W + w) * p.C + g * Cg;
                for (int64_t c = 0; c < Cg; ++c) dst[c] += src[c];
            }
        }
    }
}

// y[j] += residual[j] for j < n (the skip add of conv2d_fwd); nothing where residual is
// null. Called on a span of y just before activate_span, while the span is in cache (by
// bias_activation and the depthwise variant; direct adds each element itself).
template <typename T>
inline void add_residual(T* y, const T* residual, int64_t n) {
    if (residual == nullptr) return;
    for (int64_t j = 0; j < n; ++j) y[j] += residual[j];
}

// y = act(y + bias + residual), in place over the whole output; residual (y's shape and
// layout) may be null.
template <typename T>
void bias_activation(const Conv2dParams& p, const T* b, T* y, const T* residual = nullptr) {
    if (!p.has_bias && p.act == Activation::None && residual == nullptr) return;
    const int64_t PQ = p.P * p.Q;
    if (p.layout == Layout::NCHW) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t n = 0; n < p.N; ++n)
            for (int64_t k = 0; k < p.K; ++k) {
                const int64_t at = (n * p.K + k) * PQ;
                add_residual(y + at, residual ? residual + at : nullptr, PQ);
                activate_span(p.act, y + at, PQ, p.has_bias ? b[k] : T(0));
            }
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < p.N * PQ; ++j) {
            add_residual(y + j * p.K, residual ? residual + j * p.K : nullptr, p.K);
            if (p.has_bias)
                activate_span(p.act, y + j * p.K, p.K, b);
            else
                activate_span(p.act, y + j * p.K, p.K, T(0));
        }
    }
}

// ----------------------------------------------------------------------- blocked
// What conv2d_fwd.cpp's blocked variant and conv2d_bwd.cpp's blocked grad weight share:
// where they apply, and each image copied once into a zero-padded scratch so that
// every tap is in bounds.

// The kernels are written over simd.h's vectors: built for the avx2 and avx512 paths, not
// for portable (where blocked runs as gemm).
#define FC_BLOCKED FC_X86_ISA
constexpr int64_t kBlockedMaxK = 24;
constexpr int64_t kBlockedFwdMaxK = 512;  // the forward: any K up to this, in filter blocks

// The forward's variant="blocked" (elsewhere it runs gemm).
inline bool blocked_applies(const Conv2dParams& p) {
    return FC_BLOCKED && isa() >= Isa::Avx2 && p.layout == Layout::NCHW && p.groups == 1 &&
           p.K <= kBlockedFwdMaxK;
}

// The grad weight's blocked kernel: K <= 24 on both paths.
inline bool blocked_bwd_applies(const Conv2dParams& p) {
    return blocked_applies(p) && p.K <= kBlockedMaxK;
}

// Where the forward's auto takes blocked: few filters (K <= 24), or up to 64 of
// them over a short reduction from few channels (a network's first layer: ResNet's conv1,
// 3 x 7 x 7, where gemm's im2col matrix is 49 times the image), not 1x1; or a layer of
// stride 2 along the row, rows of a run or more, whose weights stay in L2: on avx512 each
// 32-filter block's (taps x 32) within kBlockedBlockWeights, and where images are few (each
// shared by the threads, which then each stream every block) all of them within
// kBlockedAllWeights. Measured, 2 Zen 5 threads, blocked against gemm (ms):
//   ResNet-50 3x3 stride 2     weights   batch 1        batch 8       batch 32
//   64 ch (l2's, 64 filters)   147 KiB   0.165 / 0.23                 4.6 / 6.7
//   128 ch (l2_3x3s2)          590 KiB   0.57 / 0.68    4.08 / 5.23   16.4 / 20.9
//   256 ch (l3's)              2.3 MiB   0.82 / 0.65                  16.3 / 19.7
//   512 ch (l4's)              9.4 MiB   2.37 / 0.70
// On avx2 (16-filter blocks) the 256-channel layer lost at batch 32 too (38.4 / 33.6), so
// there all the weights must fit: l2_3x3s2 1.21 / 1.49 (b1), 32.4 / 35.8 (b32).
constexpr int64_t kBlockedBlockWeights = int64_t(384) << 10, kBlockedAllWeights = int64_t(1) << 20;
inline bool blocked_auto(const Conv2dParams& p) {
    if (!blocked_applies(p)) return false;
    if (p.K <= kBlockedMaxK || (p.K <= 64 && p.C <= 4 && p.R * p.S > 1 && p.C * p.R * p.S <= 256))
        return true;
    if (p.stride_w != 2 || p.R * p.S == 1 || p.Q < 12) return false;
    const int64_t tap_bytes = p.C * p.R * p.S * int64_t(sizeof(float));
    const bool few_images = p.N < 2 * max_threads();
    if (isa() == Isa::Avx512)
        return tap_bytes * 32 <= kBlockedBlockWeights && (!few_images || tap_bytes * p.K <= kBlockedAllWeights);
    return tap_bytes * p.K <= kBlockedAllWeights;
}

// Whether the blocked forward of p runs its rowvec kernel (conv2d_fwd.cpp, blocked): avx512
// or avx2, stride 1 along the row, at most kRowvecMaxK filters, rows of at most two vectors
// (avx512) or KB x VQ accumulators within 12 (avx2; KB the filters rounded up to even), and
// more lanes busy along the row than along the channels (the blocks of filters the other
// kernels hold: avx512 8, 16, 32..., avx2 8, 16, 24).
constexpr int64_t kRowvecMaxK = 12;
inline bool blocked_takes_rowvec(const Conv2dParams& p) {
    if (!blocked_applies(p) || p.stride_w != 1 || p.K > kRowvecMaxK || isa() == Isa::Portable)
        return false;
    const bool wide = isa() == Isa::Avx512;
    const int64_t L = wide ? 16 : 8, vq = ceil_div(p.Q, L), kb = 2 * ceil_div(p.K, int64_t(2));
    const int64_t k_lanes = wide && p.K > 8 ? 16 * ceil_div(p.K, int64_t(16)) : 8 * ceil_div(p.K, int64_t(8));
    const double along_row = double(p.Q) / double(L * vq), along_k = double(p.K) / double(k_lanes);
    return (wide ? vq <= 2 : vq * kb <= 12) && along_row > along_k;
}

// The padded scratch of one image: rows 0 .. (P-1)*sh + (R-1)*dh, columns 0 ..
// (Qb-1)*sw + (S-1)*dw, where Qb rounds Q up to whole blocks of pb pixels (the extra
// columns are zeros; outputs computed there are dropped).
// i0: the padded image's row that is the scratch's row 0 (a band's first row; 0 for a whole
// image).
struct BlockedShape {
    int64_t Hp, Wp, Qb, i0 = 0;
    BlockedShape(const Conv2dParams& p, int64_t pb)
        : Hp((p.P - 1) * p.stride_h + (p.R - 1) * p.dil_h + 1),
          Wp((ceil_div(p.Q, pb) * pb - 1) * p.stride_w + (p.S - 1) * p.dil_w + 1),
          Qb(ceil_div(p.Q, pb) * pb) {}
};

// The band of the padded image that starts at its row i0 and is b.Hp rows high, each
// channel's rows contiguous (the whole image: i0 = 0 and the image's BlockedShape).
inline void pad_band(const Conv2dParams& p, const BlockedShape& b, const float* x, float* xp,
                     int64_t i0) {
    // Columns j = w + pad_w for w in [0, W), clipped to the scratch; zeros around.
    const int64_t j0 = std::min(p.pad_w, b.Wp), j1 = std::min(p.pad_w + p.W, b.Wp);
    for (int64_t c = 0; c < p.C; ++c)
        for (int64_t i = 0; i < b.Hp; ++i) {
            const int64_t h = i0 + i - p.pad_h;
            float* dst = xp + (c * b.Hp + i) * b.Wp;
            if (h < 0 || h >= p.H) {
                std::fill(dst, dst + b.Wp, 0.f);
                continue;
            }
            const float* src = x + (c * p.H + h) * p.W;
            std::fill(dst, dst + j0, 0.f);
            if (j1 > j0) std::copy(src, src + (j1 - j0), dst + j0);
            std::fill(dst + std::max(j0, j1), dst + b.Wp, 0.f);
        }
}

inline void pad_image(const Conv2dParams& p, const BlockedShape& b, const float* x, float* xp) {
    pad_band(p, b, x, xp, 0);
}

// ----------------------------------------------------------------------- winograd
// winograd.cpp: the winograd2 (F(2x2, 3x3)) and winograd4 (F(4x4, 3x3)) variants, m = 2 or 4,
// for 3x3 kernels, stride 1, dilation 1 (winograd::applies; anything else throws
// std::invalid_argument). Forward with bias, residual and activation; grad input and grad
// weight of the same layer.

template <typename T>
void winograd_fwd(const Conv2dParams& p, int m, const T* x, const T* w, const T* b, T* y,
                  const T* residual);
template <typename T>
void winograd_bwd_data(const Conv2dParams& p, int m, const T* dy, const T* w, T* dx);
template <typename T>
void winograd_bwd_filter(const Conv2dParams& p, int m, const T* dy, const T* x, T* dw);

// auto's choice for a 3x3, stride-1 convolution with one group (forward, or the grad input
// as the forward convolution q that computes it): Winograd where it measured faster than
// gemm, else Gemm. What decides is the tile count of the batch: each call transforms the
// filters afresh (alpha^2 x C x K values, 37.7 MB for F(4x4) on the 512-channel layer), and
// only enough tiles pay for that. Measured 2026-11-30, 2-core AMD EPYC Zen 5, AVX-512 path,
// 2 threads, ms (speedup over PyTorch 2.14 in the same run), after the filters were
// transformed straight into the GEMM's packed layout (NOTES.md):
//                 tiles F(4)/F(2)  gemm           winograd2      winograd4
//   l4  7x7  b1    4 / 16          0.94 (0.95)    1.22 (0.73)    2.35 (0.38)
//   l4  7x7  b2    8 / 32          1.53 (0.84)    1.56 (0.82)    2.48 (0.52)
//   l4  7x7  b4   16 / 64          2.74 (0.79)    2.31 (0.94)    3.20 (0.68)
//   l4  7x7  b8   32 / 128         5.46 (0.75)    3.96 (1.03)    4.06 (1.00)
//   l4  7x7  b32 128 / 512        19.1  (0.78)   12.0  (1.24)    9.48 (1.57)
//   l3 14x14 b1   16 / 49          0.71 (0.81)    0.44 (1.32)    0.47 (1.21)
//   l3 14x14 b2   32 / 98          1.37 (0.76)    0.75 (1.39)    0.70 (1.49)
//   l3 14x14 b4   64 / 196         2.67 (0.74)    1.44 (1.37)    1.12 (1.76)
//   l2 28x28 b1   49 / 196         0.71 (0.74)    0.41 (1.29)    0.29 (1.78)
//   l1 56x56 b1  196 / 784         0.80 (0.68)    0.38 (1.44)    0.33 (1.62)
// So: F(4x4) from 32 tiles of 4x4 in the batch, F(2x2) from 48 tiles of 2x2, gemm below.
// F(4x4)'s float32 error at those sizes is ~1e-6 (NOTES.md).
inline ConvVariant auto_winograd(const Conv2dParams& q) {
    if (!winograd::applies(q.R, q.S, q.stride_h, q.stride_w, q.dil_h, q.dil_w) || q.groups != 1)
        return ConvVariant::Gemm;
    const auto tiles = [&](int m) {
        return q.N * winograd::tile_count(q.P, m) * winograd::tile_count(q.Q, m);
    };
    if (tiles(4) >= 32) return ConvVariant::Winograd4;
    if (tiles(2) >= 48) return ConvVariant::Winograd2;
    return ConvVariant::Gemm;
}

}  // namespace cpu
}  // namespace fastconv

// conv2d_fwd.cpp: conv2d forward on the CPU, NCHW and NHWC, float and double.
// The CUDA twin is csrc/cuda/conv2d_fwd.cu.
//
//   y = act(bias + x (*) w + residual)   (cross-correlation; see params.h for the index
//                                          formula; residual, y's shape, may be null)
//
// Variants:
//   direct     one output at a time, every tap bounds-checked: the readable spec.
//   gemm       im2col + packed GEMM (gemm.h). The im2col matrix is built for a chunk of
//              output pixels at a time (at most kColBudget bytes), so memory stays bounded
//              for any image size. 1x1 / stride 1 / no padding skips im2col: the input
//              already is the GEMM operand (NHWC: one GEMM for the whole batch).
//   depthwise  groups == C (one input channel per group): per-channel sliding window,
//              vectorised over output columns (NCHW) or channels (NHWC). A GEMM of
//              one reduction row per group would waste the packing.
//   blocked    few output channels (K <= 24; on avx512 up to 64), groups 1, NCHW, float:
//              a register-blocked direct convolution. Each image is copied once into a
//              zero-padded scratch, so every tap is in bounds. No im2col matrix: on LeNet
//              C2 (K 16, 10x10 outputs) im2col was a third of the gemm variant's time and
//              GEMM packing another eighth. Three block shapes (see "blocked" below): a
//              run of one output row's pixels x vectors of channels, one tap a broadcast
//              per pixel and a weight load per vector (stride 1 and 2, immediate tap
//              offsets); the same over pixels that span rows (other strides); and, for at
//              most 12 filters, vectors along the output row x the filters (LeNet C1 on
//              avx512, C2's grad input on both paths). Falls back to gemm where it does
//              not apply (and for double).
//   winograd2  3x3, stride 1, dilation 1 only: Winograd F(2x2, 3x3) and F(4x4, 3x3),
//   winograd4  2.25x and 4x fewer multiplies than gemm (winograd.cpp); auto's choice by
//              auto_winograd's shape rule (conv2d_common.h).
// Auto picks depthwise when Cg == 1 and groups > 1, blocked for K <= 24 and for a first
// layer's few channels (blocked_auto in conv2d_common.h), winograd or gemm otherwise
// (auto_winograd).
//
// The epilogue, act(. + bias + residual), is conv2d_common.h's bias_activation for gemm,
// blocked and winograd (a pass over the output after the products); direct and depthwise
// apply it to each output, or span of outputs, as they finish it (add_residual, then
// activate_span).
//
// conv2d_avgpool (the LeNet-5 block: conv + bias + activation + average pool) runs the
// chosen variant into the full-resolution activation, then pool.cpp's average pool over
// it: one call from Python, two passes here. (The GPU fuses the two into one kernel.)
#include <algorithm>
#include <array>
#include <utility>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "../common/activation.h"
#include "../common/check.h"
#include "../common/shapes.h"
#include "conv2d_common.h"
#include "cpu_ops.h"
#include "isa.h"
#include "parallel.h"
#include "simd.h"
#include "gemm.h"

namespace fastconv {
namespace cpu {

namespace {

template <typename T>
void direct(const Conv2dParams& p, const T* x, const T* w, const T* b, T* y, const T* residual) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t k = 0; k < p.K; ++k) {
            const int64_t g = k / Kg;
            for (int64_t oh = 0; oh < p.P; ++oh)
                for (int64_t ow = 0; ow < p.Q; ++ow) {
                    T acc = p.has_bias ? b[k] : T(0);
                    for (int64_t c = 0; c < Cg; ++c)
                        for (int64_t r = 0; r < p.R; ++r) {
                            const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
                            if (h < 0 || h >= p.H) continue;
                            for (int64_t s = 0; s < p.S; ++s) {
                                const int64_t wi = ow * p.stride_w - p.pad_w + s * p.dil_w;
                                if (wi < 0 || wi >= p.W) continue;
                                acc += x[offset4(p.layout, n, g * Cg + c, h, wi, p.C, p.H, p.W)] *
                                       w[weight_offset(p.layout, k, c, r, s, p.K, Cg, p.R, p.S)];
                            }
                        }
                    const int64_t at = offset4(p.layout, n, k, oh, ow, p.K, p.P, p.Q);
                    if (residual) acc += residual[at];
                    y[at] = activate(p.act, acc);
                }
        }
}

// NCHW images with few output pixels: how many share one GEMM (1 = none).
inline int64_t images_per_gemm(const Conv2dParams& p, const ConvGemmShape& s, size_t elem) {
    if (p.layout != Layout::NCHW || s.is_pointwise || s.PQ >= kMinGemmPixels) return 1;
    const int64_t fit = kColBudget / int64_t(elem) / (s.red * s.PQ);
    return std::max<int64_t>(1, std::min({p.N, ceil_div(kMinGemmPixels, s.PQ), fit}));
}

// NCHW, several images per GEMM: their im2col matrices side by side, one product into a
// scratch tile (Kg x images * PQ), then each filter's row back into its image's plane.
template <typename T>
void small_images(const Conv2dParams& p, const ConvGemmShape& s, int64_t batch, const T* x,
                  const T* w, T* y) {
    const int64_t blocks = ceil_div(p.N, batch), tasks = blocks * p.groups;
    struct Scratch {
        T *col, *tile;
    };
    for_each_task(
        tasks,
        [&] {
            return Scratch{workspace<T>(Slot::Columns, s.red * batch * s.PQ),
                           workspace<T>(Slot::Rows, s.Kg * batch * s.PQ)};
        },
        [&](int64_t t, Scratch& sc) {
            const int64_t g = t % p.groups, n0 = (t / p.groups) * batch;
            const int64_t nb = std::min(batch, p.N - n0), ld = nb * s.PQ;
            for (int64_t i = 0; i < nb; ++i)
                im2col_nchw(p, x, n0 + i, g, 0, s.PQ, sc.col + i * s.PQ, ld);
            gemm<T>(false, false, s.Kg, ld, s.red, w + g * s.Kg * s.red, s.red, sc.col, ld,
                    T(0), sc.tile, ld);
            for (int64_t i = 0; i < nb; ++i)
                for (int64_t k = 0; k < s.Kg; ++k)
                    std::copy_n(sc.tile + k * ld + i * s.PQ, s.PQ,
                                y + ((n0 + i) * p.K + g * s.Kg + k) * s.PQ);
        });
}

// One NCHW GEMM for a whole layer (a single task) computed transposed, (pixels x CgRS) .
// (CgRS x Kg) into a tile whose columns are then copied out as the filters' rows: where the
// GEMM's micro-tiles (avx512: 14 rows x 32 columns) cover pixels x filters with a tenth less
// padding than filters x pixels, and the tile is small enough that the copy is noise.
// ResNet-50's l4_3x3 at batch 1: 512 filters x 49 pixels run as 518 x 64, 49 x 512 as 56 x
// 512; the GEMM alone 0.81 -> 0.62 ms on 2 Zen 5 threads (benchmarks/NOTES.md).
constexpr int64_t kTransposedTileMax = int64_t(1) << 16;
template <typename T>
bool transposed_gemm_pays(const ConvGemmShape& s, int64_t pixels) {
    return pixels * s.Kg <= kTransposedTileMax &&
           10 * gemm_tile_work<T>(pixels, s.Kg) <= 9 * gemm_tile_work<T>(s.Kg, pixels);
}

// Whether gemm_variant runs one image's single GEMM split by filters (gemm_by_filters):
// NCHW, one group, one chunk of pixels, several threads and at least a micro-tile's worth
// of filters each.
template <typename T>
bool gemm_splits_filters(const Conv2dParams& p, const ConvGemmShape& s, int64_t tasks) {
    const int64_t nt = max_threads();
    if (tasks != 1 || nt < 2 || in_region() || p.layout != Layout::NCHW || p.groups != 1 ||
        s.is_pointwise)
        return false;
    const MicroTile tile = gemm_micro_tile<T>();
    return s.Kg >= nt * std::max(tile.MR, tile.NR);
}

// One image's GEMM (Kg x red) . (red x PQ), thread t computing its own filters [k0, k1) from
// an im2col matrix it builds whole itself, into y directly or (transposed_gemm_pays) through
// its own tile. Nothing one thread writes is read by another. With the im2col shared
// (im2col_nchw_shared builds each thread a part and every GEMM thread reads all of it), half
// of it crossed from one core's cache to the other's every call: ResNet-50's l4_3x3 at batch
// 1 took 0.93-1.03 ms where the host put the two vCPUs on cores without a shared L3, against
// 0.70-0.72 where they share one; split, 0.71-0.72 and 0.71-0.75 (parallel.h, "Same owner").
// The cost where they share a cache: each thread writes the whole im2col (l2_3x3 at batch 1,
// variant gemm: 0.62 -> 0.73 ms there, 0.83 -> 0.71 on far cores).
template <typename T>
void gemm_by_filters(const Conv2dParams& p, const ConvGemmShape& s, const T* x, const T* w,
                     T* y) {
    const bool transposed = transposed_gemm_pays<T>(s, s.PQ);
    const MicroTile tile = gemm_micro_tile<T>();
    const int64_t unit = transposed ? tile.NR : tile.MR, units = ceil_div(s.Kg, unit);
#pragma omp parallel
    {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t k0 = std::min(s.Kg, units * t / nt * unit);
        const int64_t k1 = std::min(s.Kg, units * (t + 1) / nt * unit), nk = k1 - k0;
        if (nk > 0) {
            T* const col = workspace<T>(Slot::Columns, s.red * s.PQ);
            im2col_nchw(p, x, 0, 0, 0, s.PQ, col, s.PQ);
            if (transposed) {
                T* const part = workspace<T>(Slot::Rows, s.PQ * nk);
                gemm<T>(true, true, s.PQ, nk, s.red, col, s.PQ, w + k0 * s.red, s.red, T(0),
                        part, nk);
                for (int64_t k = 0; k < nk; ++k)
                    for (int64_t j = 0; j < s.PQ; ++j) y[(k0 + k) * s.PQ + j] = part[j * nk + k];
            } else {
                gemm<T>(false, false, nk, s.PQ, s.red, w + k0 * s.red, s.red, col, s.PQ, T(0),
                        y + k0 * s.PQ, s.PQ);
            }
        }
    }
}

template <typename T>
void gemm_variant(const Conv2dParams& p, const T* x, const T* w, const T* b, T* y,
                  const T* residual) {
    const ConvGemmShape s(p, sizeof(T));
    const bool nchw = p.layout == Layout::NCHW;

    const int64_t batch = images_per_gemm(p, s, sizeof(T));
    if (batch > 1) {
        small_images(p, s, batch, x, w, y);
    } else if (gemm_splits_filters<T>(p, s, p.N * p.groups * s.chunks)) {
        gemm_by_filters(p, s, x, w, y);
    } else if (s.is_pointwise && !nchw) {
        // (N*P*Q x C) . (C x K): the NHWC input is the im2col matrix already.
        for (int64_t g = 0; g < p.groups; ++g)
            gemm<T>(false, false, p.N * s.PQ, s.Kg, s.Cg, x + g * s.Cg, p.C, w + g * s.Kg, p.K,
                    T(0), y + g * s.Kg, p.K);
    } else {
        // One task per (image, group, chunk of output pixels). With at least two tasks
        // per thread the tasks run in parallel, each GEMM on one thread; otherwise the
        // tasks run in turn and each GEMM uses every thread.
        const int64_t tasks = p.N * p.groups * s.chunks;
        for_each_task(
            tasks, [&] { return workspace<T>(Slot::Columns, s.is_pointwise ? 0 : s.col_elems); },
            [&](int64_t t, T* col) {
                const int64_t n = t / (p.groups * s.chunks), g = (t / s.chunks) % p.groups;
                const int64_t j0 = (t % s.chunks) * s.chunk, j1 = std::min(j0 + s.chunk, s.PQ);
                if (nchw) {
                    // (Kg x CgRS) . (CgRS x pixels) -> y[n, g*Kg.., j0..j1)
                    const T* B = x + (n * p.C + g * s.Cg) * p.H * p.W + j0;
                    if (!s.is_pointwise) {
                        im2col_nchw_shared(p, x, n, g, j0, j1, col, j1 - j0);
                        B = col;
                    }
                    const int64_t ldb = s.is_pointwise ? s.PQ : j1 - j0;
                    T* const out = y + (n * p.K + g * s.Kg) * s.PQ + j0;
                    if (tasks == 1 && transposed_gemm_pays<T>(s, j1 - j0)) {
                        T* const tile = workspace<T>(Slot::Rows, (j1 - j0) * s.Kg);
                        gemm<T>(true, true, j1 - j0, s.Kg, s.red, B, ldb, w + g * s.Kg * s.red,
                                s.red, T(0), tile, s.Kg);
#pragma omp parallel for schedule(static)
                        for (int64_t k = 0; k < s.Kg; ++k)
                            for (int64_t j = 0; j < j1 - j0; ++j) out[k * s.PQ + j] = tile[j * s.Kg + k];
                    } else {
                        gemm<T>(false, false, s.Kg, j1 - j0, s.red, w + g * s.Kg * s.red, s.red, B,
                                ldb, T(0), out, s.PQ);
                    }
                } else {
                    // (pixels x RSCg) . (RSCg x Kg) -> y[n, j0..j1), g*Kg..]
                    im2col_nhwc(p, x, n, g, j0, j1, col);
                    gemm<T>(false, false, j1 - j0, s.Kg, s.red, col, s.red, w + g * s.Kg,
                            p.K, T(0), y + (n * s.PQ + j0) * p.K + g * s.Kg, p.K);
                }
            });
    }
    bias_activation(p, b, y, residual);
}

// One NCHW depthwise plane along its output rows: each row the bias, then per tap a pass
// along the row (vectorised over output columns), then residual and activation. Built per
// ISA path: at baseline SSE2 (4 lanes) ResNet-like 56 x 56 planes ran at 12-13 GMAC/s.
// spans[2 s], spans[2 s + 1]: tap s's output columns, computed once per call by
// depthwise_spans (two divisions a tap and row were most of the time on 56 x 56 planes).
inline std::vector<int64_t> depthwise_spans(const Conv2dParams& p) {
    std::vector<int64_t> spans(size_t(2 * p.S));
    for (int64_t s = 0; s < p.S; ++s) {
        const int64_t off = s * p.dil_w - p.pad_w;
        spans[2 * s] = valid_out_begin(off, p.stride_w);
        spans[2 * s + 1] = valid_out_end(off, p.stride_w, p.W, p.Q);
    }
    return spans;
}
template <typename T>
__attribute__((always_inline)) inline void depthwise_rows_t(const Conv2dParams& p,
                                                            const int64_t* spans, const T* xp,
                                                            const T* wk, T bias, T* yp,
                                                            const T* res) {
    for (int64_t oh = 0; oh < p.P; ++oh) {
        T* row = yp + oh * p.Q;
        for (int64_t q = 0; q < p.Q; ++q) row[q] = bias;
        for (int64_t r = 0; r < p.R; ++r) {
            const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
            if (h < 0 || h >= p.H) continue;
            const T* xr = xp + h * p.W;
            for (int64_t s = 0; s < p.S; ++s) {
                const int64_t off = s * p.dil_w - p.pad_w, q0 = spans[2 * s], q1 = spans[2 * s + 1];
                const T wv = wk[r * p.S + s];
                if (p.stride_w == 1) {
                    const T* xs = xr + off;
                    for (int64_t q = q0; q < q1; ++q) row[q] += wv * xs[q];
                } else {
                    for (int64_t q = q0; q < q1; ++q) row[q] += wv * xr[q * p.stride_w + off];
                }
            }
        }
        add_residual(row, res ? res + oh * p.Q : nullptr, p.Q);
        activate_span(p.act, row, p.Q, T(0));
    }
}
void depthwise_rows_portable(const Conv2dParams& p, const int64_t* spans, const float* xp,
                             const float* wk, float bias, float* yp, const float* res) {
    depthwise_rows_t(p, spans, xp, wk, bias, yp, res);
}
#if FC_X86_ISA
FC_TARGET_AVX2 void depthwise_rows_avx2(const Conv2dParams& p, const int64_t* spans,
                                        const float* xp, const float* wk, float bias, float* yp,
                                        const float* res) {
    depthwise_rows_t(p, spans, xp, wk, bias, yp, res);
}
FC_TARGET_AVX512 void depthwise_rows_avx512(const Conv2dParams& p, const int64_t* spans,
                                            const float* xp, const float* wk, float bias,
                                            float* yp, const float* res) {
    depthwise_rows_t(p, spans, xp, wk, bias, yp, res);
}
#endif
inline void depthwise_rows(const Conv2dParams& p, const int64_t* spans, const float* xp,
                           const float* wk, float bias, float* yp, const float* res) {
#if FC_X86_ISA
    if (isa() == Isa::Avx512) return depthwise_rows_avx512(p, spans, xp, wk, bias, yp, res);
    if (isa() == Isa::Avx2) return depthwise_rows_avx2(p, spans, xp, wk, bias, yp, res);
#endif
    depthwise_rows_portable(p, spans, xp, wk, bias, yp, res);
}
inline void depthwise_rows(const Conv2dParams& p, const int64_t* spans, const double* xp,
                           const double* wk, double bias, double* yp, const double* res) {
    depthwise_rows_t(p, spans, xp, wk, bias, yp, res);
}

// One NCHW depthwise plane, stride 1 along the row, on the avx2 / avx512 paths: the plane
// copied into a zero-padded scratch xs by pad_band (b: BlockedShape(p, L), its rows cover
// whole vectors of outputs; `one`: p for one channel), then each output row in chunks of up
// to four vectors held in registers over all taps and stored once (depthwise_rows_t loads
// and stores its row at every tap: 9 passes of 56 columns for a 3x3 row).
template <typename S>
__attribute__((always_inline)) inline void depthwise_regs_t(const Conv2dParams& p,
                                                            const Conv2dParams& one,
                                                            const BlockedShape& b,
                                                            const float* xp, const float* wk,
                                                            float bias, float* yp,
                                                            const float* res, float* xs) {
    using V = typename S::V;
    constexpr int L = S::L, NV = 4;
    const int64_t Wp = b.Wp;
    pad_band(one, b, xp, xs, 0);
    const V bv = S::bcast(&bias);
    for (int64_t oh = 0; oh < p.P; ++oh) {
        float* out = yp + oh * p.Q;
        for (int64_t q0 = 0; q0 < p.Q; q0 += NV * L) {
            V acc[NV];
            for (int v = 0; v < NV; ++v) acc[v] = bv;
            const int64_t nv = std::min<int64_t>(NV, ceil_div(p.Q - q0, int64_t(L)));
            for (int64_t r = 0; r < p.R; ++r) {
                const float* src = xs + (oh * p.stride_h + r * p.dil_h) * Wp + q0;
                for (int64_t s = 0; s < p.S; ++s) {
                    const V wv = S::bcast(wk + r * p.S + s);
                    const float* at = src + s * p.dil_w;
                    for (int v = 0; v < NV; ++v)
                        if (v < nv) acc[v] = S::fma(S::load(at + v * L), wv, acc[v]);
                }
            }
            for (int v = 0; v < NV; ++v) {
                const int64_t q = q0 + v * L;
                if (q + L <= p.Q) {
                    S::store(out + q, acc[v]);
                } else if (q < p.Q) {
                    alignas(64) float tail[L];
                    S::store(tail, acc[v]);
                    for (int64_t j = 0; q + j < p.Q; ++j) out[q + j] = tail[j];
                }
            }
        }
        add_residual(out, res ? res + oh * p.Q : nullptr, p.Q);
        activate_span(p.act, out, p.Q, 0.f);
    }
}
#if FC_X86_ISA
FC_TARGET_AVX2 void depthwise_regs_avx2(const Conv2dParams& p, const Conv2dParams& one,
                                        const BlockedShape& b, const float* xp, const float* wk,
                                        float bias, float* yp, const float* res, float* xs) {
    depthwise_regs_t<Avx2Float>(p, one, b, xp, wk, bias, yp, res, xs);
}
FC_TARGET_AVX512 void depthwise_regs_avx512(const Conv2dParams& p, const Conv2dParams& one,
                                            const BlockedShape& b, const float* xp,
                                            const float* wk, float bias, float* yp,
                                            const float* res, float* xs) {
    depthwise_regs_t<Avx512Float>(p, one, b, xp, wk, bias, yp, res, xs);
}
#endif

// One NHWC depthwise output row (n, oh), multiplier 1, on the avx2 / avx512 paths: each
// pixel's channels [k0, k1) (whole vectors of S) in chunks of up to four vectors held in
// registers over the taps and stored once (the pixel loop in depthwise() loads and stores
// its K channels at every tap).
template <typename S>
__attribute__((always_inline)) inline void depthwise_nhwc_chunks_t(
    const Conv2dParams& p, int64_t n, int64_t oh, int64_t k0, int64_t k1, const float* x,
    const float* w, const float* b, float* y) {
    using V = typename S::V;
    constexpr int L = S::L, NV = 4;
    const int64_t K = p.K;
    for (int64_t ow = 0; ow < p.Q; ++ow) {
        float* out = y + ((n * p.P + oh) * p.Q + ow) * K;
        for (int64_t c0 = k0; c0 < k1; c0 += NV * L) {
            const int nv = int(std::min<int64_t>(NV, (k1 - c0) / L));
            V acc[NV];
            for (int v = 0; v < NV; ++v)
                acc[v] = p.has_bias && v < nv ? S::load(b + c0 + v * L) : S::zero();
            for (int64_t r = 0; r < p.R; ++r) {
                const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
                if (h < 0 || h >= p.H) continue;
                for (int64_t s = 0; s < p.S; ++s) {
                    const int64_t wi = ow * p.stride_w - p.pad_w + s * p.dil_w;
                    if (wi < 0 || wi >= p.W) continue;
                    const float* in = x + ((n * p.H + h) * p.W + wi) * K + c0;
                    const float* wt = w + (r * p.S + s) * K + c0;
                    for (int v = 0; v < NV; ++v)
                        if (v < nv) acc[v] = S::fma(S::load(wt + v * L), S::load(in + v * L), acc[v]);
                }
            }
            for (int v = 0; v < NV; ++v)
                if (v < nv) S::store(out + c0 + v * L, acc[v]);
        }
    }
}
// The row: whole vectors of the path's width, then (avx512) one of 8, then the last K % 8
// channels one by one; then residual and activation pixel by pixel.
template <typename S>
__attribute__((always_inline)) inline void depthwise_nhwc_row_t(const Conv2dParams& p,
                                                                int64_t n, int64_t oh,
                                                                const float* x, const float* w,
                                                                const float* b, float* y,
                                                                const float* residual) {
    const int64_t K = p.K, wide = K / S::L * S::L, vec = K / 8 * 8;
    depthwise_nhwc_chunks_t<S>(p, n, oh, 0, wide, x, w, b, y);
    if (vec > wide) depthwise_nhwc_chunks_t<Avx2Float>(p, n, oh, wide, vec, x, w, b, y);
    for (int64_t ow = 0; ow < p.Q; ++ow) {
        const int64_t at = ((n * p.P + oh) * p.Q + ow) * K;
        float* out = y + at;
        for (int64_t k = vec; k < K; ++k) {
            float sum = p.has_bias ? b[k] : 0.f;
            for (int64_t r = 0; r < p.R; ++r) {
                const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
                if (h < 0 || h >= p.H) continue;
                for (int64_t s = 0; s < p.S; ++s) {
                    const int64_t wi = ow * p.stride_w - p.pad_w + s * p.dil_w;
                    if (wi < 0 || wi >= p.W) continue;
                    sum += w[(r * p.S + s) * K + k] * x[((n * p.H + h) * p.W + wi) * K + k];
                }
            }
            out[k] = sum;
        }
        add_residual(out, residual ? residual + at : nullptr, K);
        activate_span(p.act, out, K, 0.f);
    }
}
#if FC_X86_ISA
FC_TARGET_AVX2 void depthwise_nhwc_row_avx2(const Conv2dParams& p, int64_t n, int64_t oh,
                                            const float* x, const float* w, const float* b,
                                            float* y, const float* residual) {
    depthwise_nhwc_row_t<Avx2Float>(p, n, oh, x, w, b, y, residual);
}
FC_TARGET_AVX512 void depthwise_nhwc_row_avx512(const Conv2dParams& p, int64_t n, int64_t oh,
                                                const float* x, const float* w, const float* b,
                                                float* y, const float* residual) {
    depthwise_nhwc_row_t<Avx512Float>(p, n, oh, x, w, b, y, residual);
}
#endif

// NCHW depthwise (one channel a group) on small planes, L channels at a time (simd.h's
// width): the L planes copied pixel-major into a zero-padded scratch xs (Hp x Wp pixels of
// L channels), each output pixel's L channels summed tap by tap as vectors, 4 pixels of a
// row at a time (one weight load per tap for 4 FMAs), written back plane by plane. A plane
// of 7 x 7 has rows too short to vectorise along; its channels are many.
// Scratch: xs Hp * Wp * L (zeroed before the first block), ys P * Q * L, wt R * S * L
// floats.
template <typename S>
__attribute__((always_inline)) inline void depthwise_channels_t(
    const Conv2dParams& p, const BlockedShape& shape, int64_t n, int64_t c0, const float* x,
    const float* w, const float* b, float* y, const float* residual, float* xs, float* ys,
    float* wt) {
    using V = typename S::V;
    constexpr int L = S::L, PB = 4;
    const int64_t nc = std::min<int64_t>(L, p.C - c0), RS = p.R * p.S, PQ = p.P * p.Q;
    const int64_t Hp = shape.Hp, Wp = shape.Wp;
    // xs starts zeroed (the caller's std::vector) and only the image's pixels are written,
    // the same positions for every block: its padding stays zero.
    const int64_t h0 = std::max<int64_t>(0, p.pad_h), h1 = std::min(Hp, p.H + p.pad_h);
    const int64_t v0 = std::max<int64_t>(0, p.pad_w), v1 = std::min(Wp, p.W + p.pad_w);
    for (int64_t l = 0; l < nc; ++l) {
        const float* plane = x + (n * p.C + c0 + l) * p.H * p.W;
        for (int64_t hp = h0; hp < h1; ++hp)
            for (int64_t wp = v0; wp < v1; ++wp)
                xs[(hp * Wp + wp) * L + l] = plane[(hp - p.pad_h) * p.W + wp - p.pad_w];
    }
    for (int64_t t = 0; t < RS; ++t)
        for (int64_t l = 0; l < L; ++l) wt[t * L + l] = l < nc ? w[(c0 + l) * RS + t] : 0.f;
    alignas(64) float bias[L];
    for (int64_t l = 0; l < L; ++l) bias[l] = p.has_bias && l < nc ? b[c0 + l] : 0.f;
    const V bv = S::load(bias);
    const int64_t step_w = p.stride_w * L, tap_w = p.dil_w * L;
    for (int64_t oh = 0; oh < p.P; ++oh) {
        int64_t ow = 0;
        for (; ow + PB <= p.Q; ow += PB) {
            V acc[PB];
            for (int j = 0; j < PB; ++j) acc[j] = bv;
            for (int64_t r = 0; r < p.R; ++r) {
                const float* row = xs + ((oh * p.stride_h + r * p.dil_h) * Wp + ow * p.stride_w) * L;
                for (int64_t s = 0; s < p.S; ++s) {
                    const V wv = S::load(wt + (r * p.S + s) * L);
                    for (int j = 0; j < PB; ++j)
                        acc[j] = S::fma(S::load(row + s * tap_w + j * step_w), wv, acc[j]);
                }
            }
            for (int j = 0; j < PB; ++j) S::store(ys + (oh * p.Q + ow + j) * L, acc[j]);
        }
        for (; ow < p.Q; ++ow) {
            V acc = bv;
            for (int64_t r = 0; r < p.R; ++r) {
                const float* row = xs + ((oh * p.stride_h + r * p.dil_h) * Wp + ow * p.stride_w) * L;
                for (int64_t s = 0; s < p.S; ++s)
                    acc = S::fma(S::load(row + s * tap_w), S::load(wt + (r * p.S + s) * L), acc);
            }
            S::store(ys + (oh * p.Q + ow) * L, acc);
        }
    }
    for (int64_t l = 0; l < nc; ++l) {
        const int64_t at = (n * p.K + c0 + l) * PQ;
        float* out = y + at;
        for (int64_t i = 0; i < PQ; ++i) out[i] = ys[i * L + l];
        add_residual(out, residual ? residual + at : nullptr, PQ);
        activate_span(p.act, out, PQ, 0.f);
    }
}
#if FC_X86_ISA
FC_TARGET_AVX2 void depthwise_channels_avx2(const Conv2dParams& p, const BlockedShape& shape,
                                            int64_t n, int64_t c0, const float* x,
                                            const float* w, const float* b, float* y,
                                            const float* residual, float* xs, float* ys,
                                            float* wt) {
    depthwise_channels_t<Avx2Float>(p, shape, n, c0, x, w, b, y, residual, xs, ys, wt);
}
FC_TARGET_AVX512 void depthwise_channels_avx512(const Conv2dParams& p, const BlockedShape& shape,
                                                int64_t n, int64_t c0, const float* x,
                                                const float* w, const float* b, float* y,
                                                const float* residual, float* xs, float* ys,
                                                float* wt) {
    depthwise_channels_t<Avx512Float>(p, shape, n, c0, x, w, b, y, residual, xs, ys, wt);
}
#endif

// Whether depthwise_channels runs p: avx2 or avx512, float, NCHW, a multiplier of 1, input
// planes of at most 16 x 16 pixels, 32 x 32 where the stride along the row is not 1 (the
// copies in and out are element by element; stride 1 on larger planes: depthwise_regs).
// 2 Zen 5 threads, batch 32, MobileNetV3-small's layers, ms, row loops -> channels, or ->
// rows in registers (PyTorch):
//   5x5  576 x 7^2 6.0 -> 0.84, regs 1.8 (1.6-3.1); 240 x 14^2 4.0 -> 1.06, regs 1.6
//        (2.5-4.8); 288 x 14^2 stride 2 3.9 -> 0.61 (0.25-0.38); 96 x 28^2 stride 2
//        3.0 -> 0.83-0.88 (0.35-0.55)
//   3x3  88 x 28^2 2.5 -> 1.3, regs 0.89 (4.1-6.1); 72 x 56^2 stride 2 2.9 -> 3.3 and
//        16 x 112^2 stride 2 1.9 -> 2.2 (these stay on the row loops: 2.4-2.5, 1.6)
//   batch 1: 576 x 7^2 5x5 0.142 -> 0.035 (0.05-0.07).
constexpr int64_t kChannelsMaxPlaneStride1 = 16 * 16, kChannelsMaxPlane = 32 * 32;
template <typename T>
inline bool depthwise_by_channels(const Conv2dParams& p) {
    return FC_X86_ISA && std::is_same<T, float>::value && isa() != Isa::Portable &&
           p.layout == Layout::NCHW && p.K == p.C &&
           p.H * p.W <= (p.stride_w == 1 ? kChannelsMaxPlaneStride1 : kChannelsMaxPlane);
}
inline void depthwise_channels(const Conv2dParams& p, const float* x, const float* w,
                               const float* b, float* y, const float* residual) {
#if FC_X86_ISA
    const int64_t L = isa() == Isa::Avx512 ? 16 : 8, blocks = ceil_div(p.C, L);
    const BlockedShape shape(p, 1);  // the padded image's pixels
    const int64_t xs_n = shape.Hp * shape.Wp * L, ys_n = p.P * p.Q * L, wt_n = p.R * p.S * L;
#pragma omp parallel
    {
        std::vector<float> scratch(size_t(xs_n + ys_n + wt_n));
        float *xs = scratch.data(), *ys = xs + xs_n, *wt = ys + ys_n;
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < p.N; ++n)
            for (int64_t blk = 0; blk < blocks; ++blk) {
                if (L == 16)
                    depthwise_channels_avx512(p, shape, n, blk * L, x, w, b, y, residual, xs, ys, wt);
                else
                    depthwise_channels_avx2(p, shape, n, blk * L, x, w, b, y, residual, xs, ys, wt);
            }
    }
#endif
}
inline void depthwise_channels(const Conv2dParams&, const double*, const double*, const double*,
                               double*, const double*) {}

template <typename T>
void depthwise(const Conv2dParams& p, const T* x, const T* w, const T* b, T* y,
               const T* residual) {
    if (depthwise_by_channels<T>(p)) return depthwise_channels(p, x, w, b, y, residual);
    const int64_t Kg = p.K / p.groups;  // channel multiplier
#if FC_X86_ISA
    // Stride 1 along the row, on the vector paths: rows in registers (depthwise_regs_t).
    // The bench's 32 x 256 x 56^2 3x3: 16.3 -> 8.3 ms; at batch 1 0.50 -> 0.20 (PyTorch
    // 0.18-0.22), Zen 5, avx512.
    if constexpr (std::is_same<T, float>::value) {
        if (p.layout == Layout::NCHW && p.stride_w == 1 && isa() != Isa::Portable) {
            const bool wide = isa() == Isa::Avx512;
            const auto plane = wide ? depthwise_regs_avx512 : depthwise_regs_avx2;
            const BlockedShape shape(p, wide ? 16 : 8);
            Conv2dParams one = p;
            one.C = 1;
#pragma omp parallel
            {
                std::vector<float> xs(size_t(shape.Hp * shape.Wp));
#pragma omp for collapse(2) schedule(static)
                for (int64_t n = 0; n < p.N; ++n)
                    for (int64_t k = 0; k < p.K; ++k) {
                        const int64_t at = (n * p.K + k) * p.P * p.Q;
                        plane(p, one, shape, x + (n * p.C + k / Kg) * p.H * p.W, w + k * p.R * p.S,
                              p.has_bias ? b[k] : 0.f, y + at, residual ? residual + at : nullptr,
                              xs.data());
                    }
            }
            return;
        }
    }
#endif
    if (p.layout == Layout::NCHW) {
        const std::vector<int64_t> spans = depthwise_spans(p);
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t n = 0; n < p.N; ++n)
            for (int64_t k = 0; k < p.K; ++k) {
                const int64_t at = (n * p.K + k) * p.P * p.Q;
                depthwise_rows(p, spans.data(), x + (n * p.C + k / Kg) * p.H * p.W, w + k * p.R * p.S,
                               p.has_bias ? b[k] : T(0), y + at, residual ? residual + at : nullptr);
            }
    } else {
#if FC_X86_ISA
        // Multiplier 1 on the vector paths: channels in registers (depthwise_nhwc_row_t).
        // 2 Zen 5 threads, avx512, ms: 32 x 576 x 7^2 5x5 1.05 -> 0.50, 32 x 88 x 28^2 3x3
        // 1.38 -> 0.72, 32 x 256 x 56^2 17.8 -> 10.8, batch 1 256 x 56^2 0.49 -> 0.16
        // (PyTorch 0.22, 0.26, 29.4, 0.11: it also reuses each weight load across pixels).
        if constexpr (std::is_same<T, float>::value) {
            if (Kg == 1 && isa() != Isa::Portable) {
                const auto row = isa() == Isa::Avx512 ? depthwise_nhwc_row_avx512 : depthwise_nhwc_row_avx2;
#pragma omp parallel for collapse(2) schedule(static)
                for (int64_t n = 0; n < p.N; ++n)
                    for (int64_t oh = 0; oh < p.P; ++oh) row(p, n, oh, x, w, b, y, residual);
                return;
            }
        }
#endif
        // NHWC, weight (R, S, 1, K): every output pixel is a K-vector, accumulated tap
        // by tap from contiguous input rows of C channels.
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t n = 0; n < p.N; ++n)
            for (int64_t oh = 0; oh < p.P; ++oh)
                for (int64_t ow = 0; ow < p.Q; ++ow) {
                    T* out = y + ((n * p.P + oh) * p.Q + ow) * p.K;
                    for (int64_t k = 0; k < p.K; ++k) out[k] = p.has_bias ? b[k] : T(0);
                    for (int64_t r = 0; r < p.R; ++r) {
                        const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
                        if (h < 0 || h >= p.H) continue;
                        for (int64_t s = 0; s < p.S; ++s) {
                            const int64_t wi = ow * p.stride_w - p.pad_w + s * p.dil_w;
                            if (wi < 0 || wi >= p.W) continue;
                            const T* in = x + ((n * p.H + h) * p.W + wi) * p.C;
                            const T* wt = w + (r * p.S + s) * p.K;
                            if (Kg == 1)
                                for (int64_t k = 0; k < p.K; ++k) out[k] += wt[k] * in[k];
                            else
                                for (int64_t k = 0; k < p.K; ++k) out[k] += wt[k] * in[k / Kg];
                        }
                    }
                    add_residual(out, residual ? residual + (out - y) : nullptr, p.K);
                    activate_span(p.act, out, p.K, T(0));
                }
    }
}

// ----------------------------------------------------------------------- blocked

#if FC_BLOCKED
// Two kernels, each a block of PB output pixels x VK vectors of S::L channels in
// registers, summed over (c, r, s) with one weight load per tap and one broadcast of
// the input per pixel and tap. wt: (C*R*S) x KV weights, channel-minor, zero beyond K.
// store_block moves the block to y, where channel k of a block's pixels is contiguous.
//   runs    stride_w 1 or 2: the block is PB neighbouring pixels of one output row, the
//           taps of pixel j at base + j * stride_w (an immediate), PB chosen so that the
//           row splits evenly (LeNet C2's 10-pixel rows: PB 10). 25% faster than
//           `pixels` on C2 (0.71 vs 0.91 ms on one Zen 5 core): there the twelve
//           per-pixel offsets did not fit the general registers, and three were
//           reloaded from the stack at every tap.
//   pixels  any other stride: the block is PB consecutive pixels of the flattened image
//           (i = oh * Q + ow), spanning rows; pixel j's taps at base + off[j].

// The first n pixels of the block acc (PB pixels x VK vectors of channels) into y, where
// out points at the block's first pixel in plane 0. Vectors of channels turn into pixel
// vectors in registers: AVX-512's 16 x 16 transpose per vector, or (one vector) AVX2's
// 8 x 8 over pixels 0-7 and 8-15; then one store per channel (C2's 160 scalar copies a
// block were ~15% of its time). Otherwise through a pixel-major tile in memory.
// store_block's AVX2 case, out of line: each vector of channels, pixels 0-7 and 8-15 in
// turn, transposed in registers; a run's last pixels by store_first. (Through a tile in
// memory, ResNet-50's conv1 on the avx2 path spent 96 scalar copies a run of 6 pixels x 16
// filters against 1764 FMAs. Inlined, or handed acc itself, it made GCC keep the
// accumulators of the generic tap loop on the stack: l2_3x3s2 at batch 1 1.0 -> 1.6 ms.)
template <int VK, int PB>
FC_TARGET_AVX2 __attribute__((noinline)) void store_block_avx2(const Conv2dParams& p,
                                                               const __m256 (&acc)[PB][VK],
                                                               int n, float* out) {
    using S = Avx2Float;
    constexpr int L = S::L;
    const int64_t PQ = p.P * p.Q;
    for (int v = 0; v < VK; ++v)
        for (int half = 0; half * L < n; ++half) {
            __m256 r[L];
            for (int j = 0; j < L; ++j) r[j] = half * L + j < PB ? acc[half * L + j][v] : S::zero();
            S::transpose(r);
            const int m = std::min(n - half * L, L);
            for (int64_t k = L * v; k < std::min<int64_t>(p.K, L * (v + 1)); ++k)
                S::store_first(out + k * PQ + half * L, r[k - L * v], m);
        }
}

template <typename S, int VK, int PB>
__attribute__((always_inline)) inline void store_block(const Conv2dParams& p,
                                                       typename S::V (&acc)[PB][VK], int n,
                                                       float* out) {
    using V = typename S::V;
    constexpr int L = S::L, KV = L * VK;
    const int64_t PQ = p.P * p.Q;
    if constexpr (PB <= 2 * L && std::is_same<S, Avx2Float>::value) {
        // A copy goes out of line: acc's own address taken, GCC keeps it in memory.
        V copy[PB][VK];
        for (int j = 0; j < PB; ++j)
            for (int v = 0; v < VK; ++v) copy[j][v] = acc[j][v];
        store_block_avx2<VK, PB>(p, copy, n, out);
    } else if constexpr (PB <= L && std::is_same<S, Avx512Float>::value) {
        const auto m = S::mask(n);
        for (int v = 0; v < VK; ++v) {
            V r[L];
            for (int j = 0; j < L; ++j) r[j] = j < PB ? acc[j][v] : S::zero();
            S::transpose(r);
            for (int64_t k = L * v; k < std::min<int64_t>(p.K, L * (v + 1)); ++k)
                S::store(out + k * PQ, m, r[k - L * v]);
        }
    } else {
        alignas(64) float tile[PB * KV];
        for (int j = 0; j < PB; ++j)
            for (int v = 0; v < VK; ++v) S::store(tile + j * KV + L * v, acc[j][v]);
        for (int64_t k = 0; k < p.K; ++k, out += PQ)
            for (int j = 0; j < n; ++j) out[j] = tile[j * KV + k];
    }
}

// One block of N neighbouring output pixels x VK vectors of channels, summed over (c, r, s):
// run points at the first pixel's first tap in channel 0, pixel j's taps SW further on
// each; the block's first n pixels are stored at out. KS: the filter width when the caller
// knows it (the tap loop then unrolls: LeNet C2 0.71 -> 0.63 ms on one Zen 5 core), else 0.
template <typename S, int VK, int N, int KS, int SW>
__attribute__((always_inline)) inline void run_block(const Conv2dParams& p, const BlockedShape& b,
                                                     const float* run, const float* wt, int n,
                                                     float* out) {
    using V = typename S::V;
    constexpr int L = S::L, KV = L * VK;
    const int64_t plane = b.Hp * b.Wp, row_step = p.dil_h * b.Wp;
    V acc[N][VK];
    for (int j = 0; j < N; ++j)
        for (int v = 0; v < VK; ++v) acc[j][v] = S::zero();
    const float* wr = wt;
    for (int64_t c = 0; c < p.C; ++c)
        for (int64_t r = 0; r < p.R; ++r) {
            const float* base = run + c * plane + r * row_step;
            const int64_t taps = KS ? KS : p.S;
#pragma GCC unroll 7
            for (int64_t s = 0; s < taps; ++s, wr += KV, base += p.dil_w) {
                V wk[VK];
                for (int v = 0; v < VK; ++v) wk[v] = S::load(wr + L * v);
                for (int j = 0; j < N; ++j) {
                    const V xv = S::bcast(base + j * SW);
                    for (int v = 0; v < VK; ++v) acc[j][v] = S::fma(xv, wk[v], acc[j][v]);
                }
            }
        }
    store_block<S, VK, N>(p, acc, n, out);
}

// Output rows [r0, r1) of one image in runs of PB pixels, and a row's last Q % PB pixels
// in one run of PT where PT > 0 and they fit (else of PB, its extra pixels computed and
// not stored). (Two rows a block, one weight load for 2 x PB FMAs, measured slower on
// LeNet C2: 0.76 ms.)
template <typename S, int VK, int PB, int KS = 0, int SW = 1, int PT = 0>
__attribute__((always_inline)) inline void blocked_runs(const Conv2dParams& p,
                                                        const BlockedShape& b,
                                                        const float* xp, const float* wt,
                                                        float* y, int64_t r0, int64_t r1) {
    for (int64_t oh = r0; oh < r1; ++oh) {
        const float* row = xp + oh * p.stride_h * b.Wp;
        float* out = y + oh * p.Q;
        int64_t q0 = 0;
        for (; q0 + PB <= p.Q; q0 += PB) run_block<S, VK, PB, KS, SW>(p, b, row + q0 * SW, wt, PB, out + q0);
        if (q0 == p.Q) continue;
        const int n = int(p.Q - q0);
        if (PT > 0 && n <= PT)
            run_block<S, VK, (PT > 0 ? PT : PB), KS, SW>(p, b, row + q0 * SW, wt, n, out + q0);
        else
            run_block<S, VK, PB, KS, SW>(p, b, row + q0 * SW, wt, n, out + q0);
    }
}

// Two output rows a block for stride 1, dilation 1 and one vector of channels: input row
// oh + rr feeds row oh through filter row rr and row oh + 1 through filter row rr - 1, so each
// broadcast of the input serves two FMAs. blocked_runs spends one weight load and PB broadcasts
// (all loads) on PB FMAs a tap: LeNet C2 (PB 10) is load-bound at two loads a cycle; here the
// R - 1 inner input rows spend 2 weight loads and PB broadcasts on 2 PB FMAs. 2 PB
// accumulators (PB <= 14 on avx512's 32 zmm). An odd last row goes through blocked_runs.
// The tap loop is not unrolled: unrolled, GCC hoisted the ten weight vectors and spilled
// accumulators (0.75 ms a core on C2, against blocked_runs' 0.645); rolled, 0.605 (PyTorch
// 0.61), and GCC slides the row's inputs through registers between taps.
template <typename S, int PB, int KS>
__attribute__((always_inline)) inline void blocked_runs2(const Conv2dParams& p,
                                                         const BlockedShape& b,
                                                         const float* xp, const float* wt,
                                                         float* y, int64_t r0, int64_t r1) {
    using V = typename S::V;
    constexpr int KV = S::L;
    const int64_t plane = b.Hp * b.Wp;
    int64_t oh = r0;
    for (; oh + 1 < r1; oh += 2)
        for (int64_t qb = 0; qb < p.Q; qb += PB) {
            V a0[PB][1], a1[PB][1];
            for (int j = 0; j < PB; ++j) a0[j][0] = a1[j][0] = S::zero();
            // One input row through filter row rr into row oh (kTop) and rr - 1 into oh + 1 (kBot).
            auto input_row = [&](auto top, auto bot, const float* base, const float* w_top,
                                 const float* w_bot) __attribute__((always_inline)) {
                constexpr bool kTop = decltype(top)::value, kBot = decltype(bot)::value;
#pragma GCC unroll 1
                for (int s = 0; s < KS; ++s) {
                    const V w0 = kTop ? S::load(w_top + s * KV) : S::zero();
                    const V w1 = kBot ? S::load(w_bot + s * KV) : S::zero();
                    for (int j = 0; j < PB; ++j) {
                        const V xv = S::bcast(base + s + j);
                        if (kTop) a0[j][0] = S::fma(xv, w0, a0[j][0]);
                        if (kBot) a1[j][0] = S::fma(xv, w1, a1[j][0]);
                    }
                }
            };
            using True = std::true_type;
            using False = std::false_type;
            const float* run = xp + oh * b.Wp + qb;
            for (int64_t c = 0; c < p.C; ++c) {
                const float* base = run + c * plane;
                const float* wc = wt + c * p.R * KS * KV;
                input_row(True{}, False{}, base, wc, nullptr);
                for (int64_t rr = 1; rr < p.R; ++rr)
                    input_row(True{}, True{}, base + rr * b.Wp, wc + rr * KS * KV,
                              wc + (rr - 1) * KS * KV);
                input_row(False{}, True{}, base + p.R * b.Wp, nullptr, wc + (p.R - 1) * KS * KV);
            }
            const int n = int(std::min<int64_t>(PB, p.Q - qb));
            store_block<S, 1, PB>(p, a0, n, y + oh * p.Q + qb);
            store_block<S, 1, PB>(p, a1, n, y + (oh + 1) * p.Q + qb);
        }
    if (oh < r1) blocked_runs<S, 1, PB, KS>(p, b, xp, wt, y, oh, r1);
}

// Flattened output pixels [i0, i1) of one image in blocks of PB (the last block repeats
// its last pixel: computed, not stored).
template <typename S, int VK, int PB>
__attribute__((always_inline)) inline void blocked_pixels(const Conv2dParams& p,
                                                          const BlockedShape& b,
                                                          const float* xp, const float* wt,
                                                          float* y, int64_t i0, int64_t i1) {
    using V = typename S::V;
    constexpr int L = S::L, KV = L * VK;
    const int64_t plane = b.Hp * b.Wp, row_step = p.dil_h * b.Wp;
    for (int64_t b0 = i0; b0 < i1; b0 += PB) {
        int64_t off[PB];
        int64_t oh = b0 / p.Q, ow = b0 - oh * p.Q;
        for (int j = 0; j < PB; ++j) {
            off[j] = oh * p.stride_h * b.Wp + ow * p.stride_w;
            if (b0 + j + 1 < i1 && ++ow == p.Q) ow = 0, ++oh;
        }
        V acc[PB][VK];
        for (int j = 0; j < PB; ++j)
            for (int v = 0; v < VK; ++v) acc[j][v] = S::zero();
        const float* wr = wt;
        for (int64_t c = 0; c < p.C; ++c)
            for (int64_t r = 0; r < p.R; ++r) {
                const float* base = xp + c * plane + r * row_step;
                for (int64_t s = 0; s < p.S; ++s, wr += KV, base += p.dil_w) {
                    V wk[VK];
                    for (int v = 0; v < VK; ++v) wk[v] = S::load(wr + L * v);
                    for (int j = 0; j < PB; ++j) {
                        const V xv = S::bcast(base + off[j]);
                        for (int v = 0; v < VK; ++v) acc[j][v] = S::fma(xv, wk[v], acc[j][v]);
                    }
                }
            }
        store_block<S, VK, PB>(p, acc, int(std::min<int64_t>(PB, i1 - b0)), y + b0);
    }
}

// Few filters, stride_w 1: vectors along the output row instead of along the channels. A
// block is one output row's VQ vectors of L pixels x KB filters (KB >= K; the weights are
// zero past K): each tap is VQ vector loads of the input row, KB broadcasts of a weight and
// KB x VQ FMAs, and each filter's row is stored as VQ vectors, no transpose. LeNet C1 on
// avx512 (6 filters, 28-pixel rows): 28 of 32 lanes busy, where a vector of channels holds
// 6 of 8 (ymm) and its rows split into runs of 10. avx2 (KB x VQ <= 12 of its 16 ymm): LeNet
// C2's grad input as a forward convolution (6 filters, 14-pixel rows, 14 of 16 lanes).
constexpr int kRowvecKV = int(kRowvecMaxK);  // the weights' row length for every rowvec instantiation
template <typename S, int VQ, int KB>
__attribute__((always_inline)) inline void blocked_rowvec(const Conv2dParams& p,
                                                          const BlockedShape& b, const float* xp,
                                                          const float* wt, float* y, int64_t r0,
                                                          int64_t r1) {
    using V = typename S::V;
    constexpr int L = S::L;
    const int64_t PQ = p.P * p.Q, plane = b.Hp * b.Wp, row_step = p.dil_h * b.Wp;
    const int last = int(p.Q - (VQ - 1) * L);
    for (int64_t oh = r0; oh < r1; ++oh) {
        V acc[KB][VQ];
        for (int k = 0; k < KB; ++k)
            for (int v = 0; v < VQ; ++v) acc[k][v] = S::zero();
        const float* row = xp + oh * p.stride_h * b.Wp;
        // Filter rows that read the zero rows around the image are skipped: LeNet C2's grad
        // input (a 10-row dy padded by 4 on each side) has 50 of its 70 (row, filter row)
        // pairs inside.
        const int64_t h0 = b.i0 + oh * p.stride_h - p.pad_h;
        const int64_t r_lo = valid_out_begin(h0, p.dil_h), r_hi = valid_out_end(h0, p.dil_h, p.H, p.R);
        for (int64_t c = 0; c < p.C; ++c)
            for (int64_t r = r_lo; r < r_hi; ++r) {
                const float* base = row + c * plane + r * row_step;
                const float* wr = wt + (c * p.R + r) * p.S * kRowvecKV;
                for (int64_t s = 0; s < p.S; ++s, wr += kRowvecKV, base += p.dil_w) {
                    V xv[VQ];
                    for (int v = 0; v < VQ; ++v) xv[v] = S::load(base + v * L);
                    for (int k = 0; k < KB; ++k) {
                        const V wk = S::bcast(wr + k);
                        for (int v = 0; v < VQ; ++v) acc[k][v] = S::fma(xv[v], wk, acc[k][v]);
                    }
                }
            }
        float* out = y + oh * p.Q;
        for (int k = 0; k < KB && k < p.K; ++k, out += PQ) {
            for (int v = 0; v + 1 < VQ; ++v) S::store(out + v * L, acc[k][v]);
            S::store_first(out + (VQ - 1) * L, acc[k][VQ - 1], last);
        }
    }
}
template <int VQ, int KB>
FC_TARGET_AVX512 void blocked_rowvec_avx512(const Conv2dParams& p, const BlockedShape& b,
                                            const float* xp, const float* wt, float* y,
                                            int64_t r0, int64_t r1) {
    blocked_rowvec<Avx512Float, VQ, KB>(p, b, xp, wt, y, r0, r1);
}
template <int VQ, int KB>
FC_TARGET_AVX2 void blocked_rowvec_avx2(const Conv2dParams& p, const BlockedShape& b,
                                        const float* xp, const float* wt, float* y, int64_t r0,
                                        int64_t r1) {
    blocked_rowvec<Avx2Float, VQ, KB>(p, b, xp, wt, y, r0, r1);
}

// One image's outputs (rows [r0, r1) of it) by one kernel instantiation.
using BlockedImage = void (*)(const Conv2dParams&, const BlockedShape&, const float*,
                              const float*, float*, int64_t, int64_t);

template <typename S, int VK, int PB, int PT = 0>
__attribute__((always_inline)) inline void blocked_image(const Conv2dParams& p,
                                                         const BlockedShape& b, const float* xp,
                                                         const float* wt, float* y, int64_t r0,
                                                         int64_t r1) {
    if constexpr (VK == 1 && PB <= 14 && std::is_same<S, Avx512Float>::value)
        if (p.stride_w == 1 && p.stride_h == 1 && p.dil_h == 1 && p.dil_w == 1 && p.S == 5)
            return blocked_runs2<S, PB, 5>(p, b, xp, wt, y, r0, r1);
    if (p.stride_w == 1 && p.S == 5) return blocked_runs<S, VK, PB, 5, 1, PT>(p, b, xp, wt, y, r0, r1);
    if (p.stride_w == 1 && p.S == 3) return blocked_runs<S, VK, PB, 3, 1, PT>(p, b, xp, wt, y, r0, r1);
    if (p.stride_w == 1) return blocked_runs<S, VK, PB, 0, 1, PT>(p, b, xp, wt, y, r0, r1);
    if (p.stride_w == 2 && p.S == 7) return blocked_runs<S, VK, PB, 7, 2, PT>(p, b, xp, wt, y, r0, r1);
    if (p.stride_w == 2) return blocked_runs<S, VK, PB, 0, 2, PT>(p, b, xp, wt, y, r0, r1);
    blocked_pixels<S, VK, PB>(p, b, xp, wt, y, r0 * p.Q, r1 * p.Q);
}

template <int VK, int PB, int PT = 0>
FC_TARGET_AVX2 void blocked_image_avx2(const Conv2dParams& p, const BlockedShape& b,
                                       const float* xp, const float* wt, float* y, int64_t r0,
                                       int64_t r1) {
    blocked_image<Avx2Float, VK, PB, PT>(p, b, xp, wt, y, r0, r1);
}
template <int VK, int PB>
FC_TARGET_AVX512 void blocked_image_avx512(const Conv2dParams& p, const BlockedShape& b,
                                           const float* xp, const float* wt, float* y,
                                           int64_t r0, int64_t r1) {
    blocked_image<Avx512Float, VK, PB>(p, b, xp, wt, y, r0, r1);
}

// The pixels a block holds: for stride_w 1 and 2 the run length that splits a row evenly with
// at most pb_max per run (and at least pb_min, the accumulators that hide the FMA
// latency), else pb_max.
inline int blocked_pb(const Conv2dParams& p, int pb_min, int pb_max) {
    if (p.stride_w > 2) return pb_max;
    const int64_t runs = ceil_div(p.Q, int64_t(pb_max));
    return int(std::max<int64_t>(pb_min, ceil_div(p.Q, runs)));
}

// kernels[pb - kMinPB]: one instantiation per block size.
constexpr int kMinPB = 6;
template <int VK, int... PB>
constexpr std::array<BlockedImage, sizeof...(PB)> avx2_kernels(std::integer_sequence<int, PB...>) {
    return {blocked_image_avx2<VK, PB + kMinPB>...};
}
template <int VK, int... PB>
constexpr std::array<BlockedImage, sizeof...(PB)> avx512_kernels(std::integer_sequence<int, PB...>) {
    return {blocked_image_avx512<VK, PB + kMinPB>...};
}

// The blocked convolution: KV accumulated channels (the weights' row length), image_fn
// the kernel instantiation, its output rows padded to whole blocks of pb pixels.
template <int KV>
void blocked_vk(const Conv2dParams& p, BlockedImage image_fn, int pb, const float* x,
                const float* w, float* y) {
    const BlockedShape b(p, pb);
    const int64_t taps = p.C * p.R * p.S, kblocks = ceil_div(p.K, int64_t(KV)), PQ = p.P * p.Q;
    // Rows [r0, r1) of image n's output, each filter block in turn (its params say K <= KV),
    // from xp, the padded band (shape bb) whose first row is output row r0's first input row.
    auto rows = [&](const float* wt, const float* xp, const BlockedShape& bb, int64_t n,
                    int64_t r0, int64_t r1) {
        for (int64_t kb = 0; kb < kblocks; ++kb) {
            Conv2dParams q = p;
            q.K = std::min<int64_t>(KV, p.K - kb * KV);
            image_fn(q, bb, xp, wt + kb * taps * KV,
                     y + (n * p.K + kb * KV) * PQ + r0 * p.Q, 0, r1 - r0);
        }
    };
    const int64_t in = p.C * p.H * p.W;
#pragma omp parallel
    {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        // Each thread packs the filters for itself (parallel.h, "Same owner"). ResNet-50's
        // l2_3x3s2 at batch 1, 2 Zen 5 threads (near): 0.96-0.98 ms, packed by one thread for
        // both 0.99-1.00, each half by one thread 0.97-0.99.
        // Block kb's weights (c, r, s) x k, as the accumulators hold them, zero for k >= K:
        // the GEMM's sliver packing (8 x 8 transposes). Packed one scalar at a time on the
        // calling thread, l2_3x3s2's 128 x 1152 weights took 64 us a call while the other
        // thread waited, 6% of its batch-1 time.
        float* const wt = workspace<float>(Slot::Packed, kblocks * taps * KV);
        for (int64_t kb = 0; kb < kblocks; ++kb)
            pack_sliver(KV, w + kb * KV * taps, taps, std::min<int64_t>(KV, p.K - kb * KV), taps,
                        wt + kb * taps * KV);
        if (p.N >= 2 * nt) {
            // An image that needs no padding (LeNet C2: 14 x 14, 5 x 5, runs of 10) is read
            // in place: C2 at batch 256 on 2 Zen 5 threads (avx512) 0.33 -> 0.30 ms.
            const bool in_place = b.Hp == p.H && b.Wp == p.W && p.pad_h == 0 && p.pad_w == 0;
            float* const xp = in_place ? nullptr : workspace<float>(Slot::Padded, p.C * b.Hp * b.Wp);
#pragma omp for schedule(static) nowait
            for (int64_t n = 0; n < p.N; ++n) {
                if (in_place) {
                    rows(wt, x + n * in, b, n, 0, p.P);
                } else {
                    pad_image(p, b, x + n * in, xp);
                    rows(wt, xp, b, n, 0, p.P);
                }
            }
        } else {  // few large images: each thread its rows of each, from a band it pads itself
            // Nothing one thread writes is read by another (parallel.h, "Same owner"):
            // with the image padded by all threads and shared, ResNet-50's conv1 and
            // l2_3x3s2 at batch 1 took 0.547 and 0.650 ms where the host put the two
            // vCPUs on cores without a shared L3; with bands, 0.50 and 0.54-0.58 (the
            // same as on cores that share one: the halo rows copied twice are noise).
            const int64_t r0 = p.P * t / nt, r1 = p.P * (t + 1) / nt;
            if (r0 < r1) {
                BlockedShape band = b;
                band.Hp = (r1 - r0 - 1) * p.stride_h + (p.R - 1) * p.dil_h + 1;
                band.i0 = r0 * p.stride_h;
                float* const xp = workspace<float>(Slot::Padded, p.C * band.Hp * b.Wp);
                for (int64_t n = 0; n < p.N; ++n) {
                    pad_band(p, band, x + n * in, xp, r0 * p.stride_h);
                    rows(wt, xp, band, n, r0, r1);
                }
            }
        }
    }
}
#endif

void blocked(const Conv2dParams& p, const float* x, const float* w, const float* b, float* y,
             const float* residual) {
#if FC_BLOCKED
    if (blocked_applies(p)) {
        // K <= 8 stays on ymm under avx512 too: a zmm would hold 8 or more zero channels.
        // Accumulators: AVX2 12 of its 16 ymm (VK x pb <= 12), AVX-512 up to 28 of 32 zmm.
        using Seq = std::make_integer_sequence<int, 15 - kMinPB>;  // pb 6 .. 14
        static constexpr auto k512_1 = avx512_kernels<1>(Seq{}), k512_2 = avx512_kernels<2>(Seq{});
        static constexpr auto k2_1 = avx2_kernels<1>(Seq{});
        // Lanes busy per FMA: vectors along the row (rowvec) against vectors of channels
        // (runs of pixels; ymm for K <= 8): the larger wins (blocked_takes_rowvec).
        if (blocked_takes_rowvec(p)) {
            // [vq - 1][KB / 2 - 1], KB: K rounded up to an even count (LeNet C1's 6 exactly);
            // avx2 only where KB x VQ <= 12 (blocked_takes_rowvec).
            static constexpr BlockedImage rowvec512[2][6] = {
                {blocked_rowvec_avx512<1, 2>, blocked_rowvec_avx512<1, 4>, blocked_rowvec_avx512<1, 6>,
                 blocked_rowvec_avx512<1, 8>, blocked_rowvec_avx512<1, 10>, blocked_rowvec_avx512<1, 12>},
                {blocked_rowvec_avx512<2, 2>, blocked_rowvec_avx512<2, 4>, blocked_rowvec_avx512<2, 6>,
                 blocked_rowvec_avx512<2, 8>, blocked_rowvec_avx512<2, 10>, blocked_rowvec_avx512<2, 12>}};
            static constexpr BlockedImage rowvec2[6][6] = {
                {blocked_rowvec_avx2<1, 2>, blocked_rowvec_avx2<1, 4>, blocked_rowvec_avx2<1, 6>,
                 blocked_rowvec_avx2<1, 8>, blocked_rowvec_avx2<1, 10>, blocked_rowvec_avx2<1, 12>},
                {blocked_rowvec_avx2<2, 2>, blocked_rowvec_avx2<2, 4>, blocked_rowvec_avx2<2, 6>},
                {blocked_rowvec_avx2<3, 2>, blocked_rowvec_avx2<3, 4>},
                {blocked_rowvec_avx2<4, 2>},
                {blocked_rowvec_avx2<5, 2>},
                {blocked_rowvec_avx2<6, 2>}};
            const int L = isa() == Isa::Avx512 ? 16 : 8;
            const int64_t vq = ceil_div(p.Q, int64_t(L)), kb = (p.K - 1) / 2;
            const BlockedImage fn = L == 16 ? rowvec512[vq - 1][kb] : rowvec2[vq - 1][kb];
            FC_CHECK(fn != nullptr, "blocked: no rowvec kernel for this row and filter count");
            blocked_vk<kRowvecKV>(p, fn, int(L * vq), x, w, y);
        } else if (isa() == Isa::Avx512 && p.K > 8 && p.K <= 16) {
            const int pb = blocked_pb(p, 8, 14);
            blocked_vk<16>(p, k512_1[pb - kMinPB], pb, x, w, y);
        } else if (isa() == Isa::Avx512 && p.K > 16 && p.K <= 32) {
            const int pb = blocked_pb(p, 8, 12);
            blocked_vk<32>(p, k512_2[pb - kMinPB], pb, x, w, y);
        } else if (isa() == Isa::Avx512 && p.K > 32 && p.K <= 48) {
            blocked_vk<48>(p, blocked_image_avx512<3, 8>, 8, x, w, y);  // 24 zmm accumulating
        } else if (isa() == Isa::Avx512 && p.K > 48) {
            // Blocks of 32 filters, runs of up to 14 pixels (28 zmm accumulating). Against
            // blocks of 64 x 6 pixels, 2 Zen 5 threads: ResNet-50's conv1 at batch 1 0.55 ->
            // 0.51 ms, l2_3x3s2 0.62 -> 0.57 (b1), 18.9 -> 16.4 (b32): half the weights in L1d
            // per block, and its rows (112, 28) split into whole runs of 14.
            const int pb = blocked_pb(p, 8, 14);
            blocked_vk<32>(p, k512_2[pb - kMinPB], pb, x, w, y);
        } else if (p.K <= 8) {
            const int pb = blocked_pb(p, 8, 12);
            blocked_vk<8>(p, k2_1[pb - kMinPB], pb, x, w, y);
        } else if (p.K <= 16 || p.K > 24) {
            // A row's last Q % 6 pixels, up to 4, in a run of 4 (8 accumulators): 2 Zen 5
            // threads, batch 1, ResNet-50's l2_3x3s2 (28 = 4 x 6 + 4) 1.085 -> 1.046 ms,
            // conv1 (112 = 18 x 6 + 4) 1.01 -> 0.99. Runs of 7 (14 accumulators) spilled
            // one and took 1.75 ms; with the weights as the FMAs' memory operands instead
            // of registers, 1.9 (three loads a cycle where Zen 5 issues two).
            blocked_vk<16>(p, blocked_image_avx2<2, 6, 4>, 6, x, w, y);
        } else {
            blocked_vk<24>(p, blocked_image_avx2<3, 4>, 4, x, w, y);
        }
        bias_activation(p, b, y, residual);
        return;
    }
#endif
    gemm_variant(p, x, w, b, y, residual);
}

void blocked(const Conv2dParams& p, const double* x, const double* w, const double* b, double* y,
             const double* residual) {
    gemm_variant(p, x, w, b, y, residual);
}

}  // namespace

template <typename T>
void conv2d_fwd(const Conv2dParams& p, ConvVariant v, const T* x, const T* w, const T* b, T* y,
                const T* residual) {
    if (v == ConvVariant::Auto)
        v = (p.C == p.groups && p.groups > 1) ? ConvVariant::Depthwise
            : (std::is_same<T, float>::value && blocked_auto(p)) ? ConvVariant::Blocked
                                                                    : auto_winograd(p);
    switch (v) {
        case ConvVariant::Direct: return direct(p, x, w, b, y, residual);
        case ConvVariant::Blocked: return blocked(p, x, w, b, y, residual);
        case ConvVariant::Depthwise:
            FC_CHECK(p.C == p.groups, "the depthwise variant needs groups == channels");
            return depthwise(p, x, w, b, y, residual);
        case ConvVariant::Winograd2: return winograd_fwd(p, 2, x, w, b, y, residual);
        case ConvVariant::Winograd4: return winograd_fwd(p, 4, x, w, b, y, residual);
        default: return gemm_variant(p, x, w, b, y, residual);
    }
}

template <typename T>
void conv2d_avgpool_fwd(const Conv2dPoolParams& p, ConvVariant v, const T* x, const T* w,
                        const T* b, T* y, T* a) {
    conv2d_fwd<T>(p.conv, v, x, w, b, a);
    avg_pool_fwd<T>(block_pool(p), a, y);
}

#define FC_INSTANTIATE(T)                                                                     \
    template void conv2d_fwd<T>(const Conv2dParams&, ConvVariant, const T*, const T*, const T*, \
                                T*, const T*);                                                \
    template void conv2d_avgpool_fwd<T>(const Conv2dPoolParams&, ConvVariant, const T*,        \
                                        const T*, const T*, T*, T*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace cpu
}  // namespace fastconv

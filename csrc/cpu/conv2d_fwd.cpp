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
//   blocked    few output channels (K <= 24, groups 1, NCHW, float, AVX2 + FMA): a
//              register-blocked direct convolution. Each image is copied once into a
//              zero-padded scratch, so every tap is in bounds; a block of 12 / VK output
//              pixels x K rounded up to 8 * VK channels lives in 12 ymm accumulators, and
//              each tap is one broadcast of the input per pixel and VK weight vectors.
//              No im2col matrix: on LeNet C2 (K 16, 10x10 outputs) im2col was a third of
//              the gemm variant's time and GEMM packing another eighth. Falls back to
//              gemm where it does not apply (and for double).
//   winograd2  3x3, stride 1, dilation 1 only: Winograd F(2x2, 3x3) and F(4x4, 3x3),
//   winograd4  2.25x and 4x fewer multiplies than gemm (winograd.cpp). Not chosen by auto
//              yet: that waits for timings on a quiet machine (benchmarks/NOTES.md).
// Auto picks depthwise when Cg == 1 and groups > 1, blocked where it applies, gemm
// otherwise.
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
        std::vector<T> col, tile;
    };
    for_each_task(
        tasks,
        [&] { return Scratch{std::vector<T>(s.red * batch * s.PQ), std::vector<T>(s.Kg * batch * s.PQ)}; },
        [&](int64_t t, Scratch& sc) {
            const int64_t g = t % p.groups, n0 = (t / p.groups) * batch;
            const int64_t nb = std::min(batch, p.N - n0), ld = nb * s.PQ;
            for (int64_t i = 0; i < nb; ++i)
                im2col_nchw(p, x, n0 + i, g, 0, s.PQ, sc.col.data() + i * s.PQ, ld);
            gemm<T>(false, false, s.Kg, ld, s.red, w + g * s.Kg * s.red, s.red, sc.col.data(), ld,
                    T(0), sc.tile.data(), ld);
            for (int64_t i = 0; i < nb; ++i)
                for (int64_t k = 0; k < s.Kg; ++k)
                    std::copy_n(sc.tile.data() + k * ld + i * s.PQ, s.PQ,
                                y + ((n0 + i) * p.K + g * s.Kg + k) * s.PQ);
        });
}

template <typename T>
void gemm_variant(const Conv2dParams& p, const T* x, const T* w, const T* b, T* y,
                  const T* residual) {
    const ConvGemmShape s(p, sizeof(T));
    const bool nchw = p.layout == Layout::NCHW;

    const int64_t batch = images_per_gemm(p, s, sizeof(T));
    if (batch > 1) {
        small_images(p, s, batch, x, w, y);
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
            tasks, [&] { return std::vector<T>(s.is_pointwise ? 0 : s.col_elems); },
            [&](int64_t t, std::vector<T>& col) {
                const int64_t n = t / (p.groups * s.chunks), g = (t / s.chunks) % p.groups;
                const int64_t j0 = (t % s.chunks) * s.chunk, j1 = std::min(j0 + s.chunk, s.PQ);
                if (nchw) {
                    // (Kg x CgRS) . (CgRS x pixels) -> y[n, g*Kg.., j0..j1)
                    const T* B = x + (n * p.C + g * s.Cg) * p.H * p.W + j0;
                    if (!s.is_pointwise) {
                        im2col_nchw(p, x, n, g, j0, j1, col.data(), j1 - j0);
                        B = col.data();
                    }
                    gemm<T>(false, false, s.Kg, j1 - j0, s.red, w + g * s.Kg * s.red, s.red, B,
                            s.is_pointwise ? s.PQ : j1 - j0, T(0),
                            y + (n * p.K + g * s.Kg) * s.PQ + j0, s.PQ);
                } else {
                    // (pixels x RSCg) . (RSCg x Kg) -> y[n, j0..j1), g*Kg..]
                    im2col_nhwc(p, x, n, g, j0, j1, col.data());
                    gemm<T>(false, false, j1 - j0, s.Kg, s.red, col.data(), s.red, w + g * s.Kg,
                            p.K, T(0), y + (n * s.PQ + j0) * p.K + g * s.Kg, p.K);
                }
            });
    }
    bias_activation(p, b, y, residual);
}

template <typename T>
void depthwise(const Conv2dParams& p, const T* x, const T* w, const T* b, T* y,
               const T* residual) {
    const int64_t Kg = p.K / p.groups;  // channel multiplier
    if (p.layout == Layout::NCHW) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t n = 0; n < p.N; ++n)
            for (int64_t k = 0; k < p.K; ++k) {
                const T* xp = x + (n * p.C + k / Kg) * p.H * p.W;
                const T* wk = w + k * p.R * p.S;
                T* yp = y + (n * p.K + k) * p.P * p.Q;
                for (int64_t oh = 0; oh < p.P; ++oh) {
                    T* row = yp + oh * p.Q;
                    std::fill(row, row + p.Q, p.has_bias ? b[k] : T(0));
                    for (int64_t r = 0; r < p.R; ++r) {
                        const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
                        if (h < 0 || h >= p.H) continue;
                        const T* xr = xp + h * p.W;
                        for (int64_t s = 0; s < p.S; ++s) {
                            const int64_t off = s * p.dil_w - p.pad_w;
                            const int64_t q0 = valid_out_begin(off, p.stride_w);
                            const int64_t q1 = valid_out_end(off, p.stride_w, p.W, p.Q);
                            const T wv = wk[r * p.S + s];
                            if (p.stride_w == 1) {
                                const T* xs = xr + off;
                                for (int64_t q = q0; q < q1; ++q) row[q] += wv * xs[q];
                            } else {
                                for (int64_t q = q0; q < q1; ++q)
                                    row[q] += wv * xr[q * p.stride_w + off];
                            }
                        }
                    }
                    add_residual(row, residual ? residual + (row - y) : nullptr, p.Q);
                    activate_span(p.act, row, p.Q, T(0));
                }
            }
    } else {
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
// Output rows [p0, p1) of one image, in blocks of PB pixels x VK vectors of S::L channels.
// wt: (C*R*S) x KV weights, channel-minor, zero beyond K. tile: Qb x KV floats.
template <typename S, int VK, int PB>
__attribute__((always_inline)) inline void blocked_rows(const Conv2dParams& p,
                                                        const BlockedShape& b, const float* xp,
                                                        const float* wt, float* tile, float* y,
                                                        int64_t p0, int64_t p1) {
    using V = typename S::V;
    constexpr int L = S::L, KV = L * VK;
    for (int64_t oh = p0; oh < p1; ++oh) {
        for (int64_t q0 = 0; q0 < b.Qb; q0 += PB) {
            V acc[PB][VK];
            for (int j = 0; j < PB; ++j)
                for (int v = 0; v < VK; ++v) acc[j][v] = S::zero();
            for (int64_t c = 0; c < p.C; ++c)
                for (int64_t r = 0; r < p.R; ++r) {
                    const float* row = xp + (c * b.Hp + oh * p.stride_h + r * p.dil_h) * b.Wp +
                                       q0 * p.stride_w;
                    const float* wr = wt + (c * p.R + r) * p.S * KV;
                    for (int64_t s = 0; s < p.S; ++s) {
                        V wk[VK];
                        for (int v = 0; v < VK; ++v) wk[v] = S::load(wr + s * KV + L * v);
                        const float* xs = row + s * p.dil_w;
                        for (int j = 0; j < PB; ++j) {
                            const V xv = S::bcast(xs + j * p.stride_w);
                            for (int v = 0; v < VK; ++v) acc[j][v] = S::fma(xv, wk[v], acc[j][v]);
                        }
                    }
                }
            for (int j = 0; j < PB; ++j)
                for (int v = 0; v < VK; ++v) S::store(tile + (q0 + j) * KV + L * v, acc[j][v]);
        }
        for (int64_t k = 0; k < p.K; ++k) {
            float* out = y + (k * p.P + oh) * p.Q;
            for (int64_t q = 0; q < p.Q; ++q) out[q] = tile[q * KV + k];
        }
    }
}

using BlockedRows = void (*)(const Conv2dParams&, const BlockedShape&, const float*, const float*,
                             float*, float*, int64_t, int64_t);

// AVX2: 12 ymm accumulators, 12 / VK pixels x VK vectors of 8 channels.
template <int VK>
FC_TARGET_AVX2 void blocked_rows_avx2(const Conv2dParams& p, const BlockedShape& b,
                                      const float* xp, const float* wt, float* tile, float* y,
                                      int64_t p0, int64_t p1) {
    blocked_rows<Avx2Float, VK, 12 / VK>(p, b, xp, wt, tile, y, p0, p1);
}
// AVX-512: 12 pixels x VK vectors of 16 channels, 12 or 24 zmm accumulators. Each tap of
// a pixel is one broadcast and VK FMAs for up to 16 VK channels, where AVX2 spent
// ceil(K / 8) FMAs.
template <int VK>
FC_TARGET_AVX512 void blocked_rows_avx512(const Conv2dParams& p, const BlockedShape& b,
                                          const float* xp, const float* wt, float* tile, float* y,
                                          int64_t p0, int64_t p1) {
    blocked_rows<Avx512Float, VK, 12>(p, b, xp, wt, tile, y, p0, p1);
}

// The blocked convolution with rows(): KV accumulated channels, blocks of PB pixels.
template <int KV, int PB>
void blocked_vk(const Conv2dParams& p, BlockedRows rows, const float* x, const float* w,
                float* y) {
    const BlockedShape b(p, PB);
    const int64_t taps = p.C * p.R * p.S;
    std::vector<float> wt(taps * KV, 0.f);  // (c, r, s) x k, as the accumulators hold them
    for (int64_t k = 0; k < p.K; ++k)
        for (int64_t t = 0; t < taps; ++t) wt[t * KV + k] = w[k * taps + t];
    const int64_t image = p.C * b.Hp * b.Wp, in = p.C * p.H * p.W, out = p.K * p.P * p.Q;
    if (p.N >= 2 * omp_get_max_threads()) {
#pragma omp parallel
        {
            std::vector<float> xp(image), tile(b.Qb * KV);
#pragma omp for schedule(dynamic)
            for (int64_t n = 0; n < p.N; ++n) {
                pad_image(p, b, x + n * in, xp.data());
                rows(p, b, xp.data(), wt.data(), tile.data(), y + n * out, 0, p.P);
            }
        }
    } else {  // few large images: one scratch, rows shared out
        std::vector<float> xp(image);
        for (int64_t n = 0; n < p.N; ++n) {
            pad_image(p, b, x + n * in, xp.data());
#pragma omp parallel
            {
                std::vector<float> tile(b.Qb * KV);
#pragma omp for schedule(static)
                for (int64_t oh = 0; oh < p.P; ++oh)
                    rows(p, b, xp.data(), wt.data(), tile.data(), y + n * out, oh, oh + 1);
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
        if (isa() == Isa::Avx512 && p.K > 8 && p.K <= 16)
            blocked_vk<16, 12>(p, blocked_rows_avx512<1>, x, w, y);
        else if (isa() == Isa::Avx512 && p.K > 16)
            blocked_vk<32, 12>(p, blocked_rows_avx512<2>, x, w, y);
        else if (p.K <= 8)
            blocked_vk<8, 12>(p, blocked_rows_avx2<1>, x, w, y);
        else if (p.K <= 16)
            blocked_vk<16, 6>(p, blocked_rows_avx2<2>, x, w, y);
        else
            blocked_vk<24, 4>(p, blocked_rows_avx2<3>, x, w, y);
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
            : (std::is_same<T, float>::value && blocked_applies(p)) ? ConvVariant::Blocked
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

// pool.cpp: max, average and global average pooling on the CPU, forward and backward,
// NCHW and NHWC, float and double. The CUDA twin is csrc/cuda/pool.cu.
//
// Semantics are PyTorch's (see params.h for the padding fields):
//   max      the first maximum of the window in row-major scan order wins; a NaN wins over
//            any number (the last NaN met), so NaN propagates. The index is h * W + w.
//   average  sum over the window clipped to the image, divided by divisor (if set), else by
//            the window clipped to [-pad, H + pad_end) (count_include_pad) or to the image.
// Backward passes are deterministic: each plane (NCHW) or image (NHWC) is scattered by
// one thread, in output raster order.
#include <algorithm>
#include <type_traits>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common/check.h"
#include "../common/shapes.h"
#include "cpu_ops.h"
#include "isa.h"
#include "simd.h"

#if FC_X86_ISA
#include <immintrin.h>
#endif

namespace fastconv {
namespace cpu {

namespace {

// The column windows of every output column, computed once per call: pool_taps() divides,
// and dividing per output pixel cost more than the pooling itself (3x on the ResNet stem).
inline std::vector<PoolTaps> column_taps(const Pool2dParams& p, int64_t dil) {
    std::vector<PoolTaps> cols(p.Q);
    for (int64_t ow = 0; ow < p.Q; ++ow) cols[ow] = pool_taps(ow, p.stride_w, p.pad_w, p.kw, dil, p.W);
    return cols;
}

template <typename T>
inline bool takes(T v, T best) { return v > best || std::isnan(v); }

// Output columns [q0, q1) whose windows need no clipping (all kw taps inside the row).
inline void interior_columns(const std::vector<PoolTaps>& cols, int64_t kw, int64_t& q0,
                             int64_t& q1) {
    const int64_t Q = int64_t(cols.size());
    q0 = 0;
    while (q0 < Q && !(cols[q0].t0 == 0 && cols[q0].t1 == kw)) ++q0;
    q1 = q0;
    while (q1 < Q && cols[q1].t0 == 0 && cols[q1].t1 == kw) ++q1;
}

// NCHW max (no indices) or average pooling of planes [plane0, plane1): border columns
// pixel by pixel, interior columns a whole row at a time, tap by tap, so the loop over
// columns vectorises (kSW: the stride as a constant, 0 for any). Each output takes its
// taps in the per-pixel loops' order (rows, then columns, from -inf or 0): the same bits.
template <typename T, bool kMax, int kSW>
__attribute__((always_inline)) inline void pool_nchw_planes(const Pool2dParams& p,
                                                            const PoolTaps* cols, int64_t q0,
                                                            int64_t q1, const T* x, T* y,
                                                            int64_t plane0, int64_t plane1) {
    const int64_t sw = kSW ? kSW : p.stride_w;
    const int64_t dh = kMax ? p.dil_h : 1, dw = kMax ? p.dil_w : 1;
    const T lowest = -std::numeric_limits<T>::infinity();
    for (int64_t plane = plane0; plane < plane1; ++plane) {
        const T* xp = x + plane * p.H * p.W;
        for (int64_t oh = 0; oh < p.P; ++oh) {
            const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, dh, p.H);
            T* yr = y + (plane * p.P + oh) * p.Q;
            auto one = [&](int64_t ow) {
                const PoolTaps& tw = cols[ow];
                T acc = kMax ? lowest : T(0);
                for (int64_t i = th.t0; i < th.t1; ++i)
                    for (int64_t j = tw.t0; j < tw.t1; ++j) {
                        const T v = xp[(th.start + i * dh) * p.W + tw.start + j * dw];
                        acc = kMax ? (takes(v, acc) ? v : acc) : acc + v;
                    }
                yr[ow] = kMax ? acc : acc / T(pool_avg_divisor(p, oh, ow));
            };
            for (int64_t ow = 0; ow < q0; ++ow) one(ow);
            for (int64_t ow = q1; ow < p.Q; ++ow) one(ow);
            if (q1 <= q0) continue;
            for (int64_t q = q0; q < q1; ++q) yr[q] = kMax ? lowest : T(0);
            for (int64_t i = th.t0; i < th.t1; ++i) {
                const T* row = xp + (th.start + i * dh) * p.W - p.pad_w;
                for (int64_t j = 0; j < p.kw; ++j) {
                    const T* r = row + j * dw;
                    for (int64_t q = q0; q < q1; ++q) {
                        const T v = r[q * sw];
                        yr[q] = kMax ? (takes(v, yr[q]) ? v : yr[q]) : yr[q] + v;
                    }
                }
            }
            if (!kMax) {
                const T div = T(pool_avg_divisor(p, oh, q0));  // alike for interior columns
                for (int64_t q = q0; q < q1; ++q) yr[q] /= div;
            }
        }
    }
}

// always_inline: so that it is built inside each ISA path's function below. Left to the
// inliner, it was not: the AVX2 clone of the earlier target_clones build was one jump to
// the baseline-x86-64 copy of this function, and never ran an AVX2 instruction.
template <typename T, bool kMax>
__attribute__((always_inline)) inline void pool_nchw_any_stride(const Pool2dParams& p, const PoolTaps* cols, int64_t q0,
                                 int64_t q1, const T* x, T* y, int64_t b0, int64_t b1) {
    if (p.stride_w == 1) return pool_nchw_planes<T, kMax, 1>(p, cols, q0, q1, x, y, b0, b1);
    if (p.stride_w == 2) return pool_nchw_planes<T, kMax, 2>(p, cols, q0, q1, x, y, b0, b1);
    pool_nchw_planes<T, kMax, 0>(p, cols, q0, q1, x, y, b0, b1);
}

// Float NCHW planes, built once per ISA path from the same loops and chosen through isa.h
// (the avx2 build: 8-wide max / add over output columns, where baseline x86-64 is 4-wide).
// Called from inside the OpenMP loop: an attribute on the function around `omp parallel`
// would not reach it.
template <bool kMax>
void pool_nchw_portable(const Pool2dParams& p, const PoolTaps* cols, int64_t q0, int64_t q1,
                        const float* x, float* y, int64_t b0, int64_t b1) {
    pool_nchw_any_stride<float, kMax>(p, cols, q0, q1, x, y, b0, b1);
}
#if FC_X86_ISA
template <bool kMax>
FC_TARGET_AVX2 void pool_nchw_avx2(const Pool2dParams& p, const PoolTaps* cols, int64_t q0,
                                   int64_t q1, const float* x, float* y, int64_t b0, int64_t b1) {
    pool_nchw_any_stride<float, kMax>(p, cols, q0, q1, x, y, b0, b1);
}
template <bool kMax>
FC_TARGET_AVX512 void pool_nchw_avx512(const Pool2dParams& p, const PoolTaps* cols, int64_t q0,
                                       int64_t q1, const float* x, float* y, int64_t b0,
                                       int64_t b1) {
    pool_nchw_any_stride<float, kMax>(p, cols, q0, q1, x, y, b0, b1);
}
#endif

template <bool kMax>
inline void pool_nchw(const Pool2dParams& p, const PoolTaps* cols, int64_t q0, int64_t q1,
                      const float* x, float* y, int64_t b0, int64_t b1) {
#if FC_X86_ISA
    // Max on the avx512 path runs the AVX2 build: GCC's 512-bit build of the strided,
    // NaN-aware select was 1.6-1.8x slower (8 x 64 x 112^2, 3x3 stride 2: 3.61 against
    // 2.03 ms; 2x2: 1.79 against 1.10; Zen 5, 2026-11-30); average is alike on both.
    if (isa() == Isa::Avx512 && !kMax) return pool_nchw_avx512<kMax>(p, cols, q0, q1, x, y, b0, b1);
    if (isa() == Isa::Avx512) return pool_nchw_avx2<kMax>(p, cols, q0, q1, x, y, b0, b1);
    if (isa() == Isa::Avx2) return pool_nchw_avx2<kMax>(p, cols, q0, q1, x, y, b0, b1);
#endif
    pool_nchw_portable<kMax>(p, cols, q0, q1, x, y, b0, b1);
}
template <bool kMax>
inline void pool_nchw(const Pool2dParams& p, const PoolTaps* cols, int64_t q0, int64_t q1,
                      const double* x, double* y, int64_t b0, int64_t b1) {
    pool_nchw_any_stride<double, kMax>(p, cols, q0, q1, x, y, b0, b1);
}

// Every NCHW plane, in blocks of planes shared out between the threads.
template <bool kMax, typename T>
void pool_nchw_all(const Pool2dParams& p, const std::vector<PoolTaps>& cols, const T* x, T* y) {
    int64_t q0, q1;
    interior_columns(cols, p.kw, q0, q1);
    const int64_t planes = p.N * p.C, block = 16, blocks = ceil_div(planes, block);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b)
        pool_nchw<kMax>(p, cols.data(), q0, q1, x, y, b * block,
                        std::min(planes, (b + 1) * block));
}

// NCHW max pooling with indices of planes [plane0, plane1), as pool_nchw_planes: border
// columns pixel by pixel, interior columns a row at a time, tap by tap, the winners'
// positions kept as int32 (the caller checked H * W fits) beside the running maxima so
// that compare and select vectorise together, widened to int64 once per row.
template <typename T, int kSW>
__attribute__((always_inline)) inline void max_idx_nchw_planes(const Pool2dParams& p, const PoolTaps* cols, int64_t q0, int64_t q1,
                         const T* x, T* y, int64_t* idx, int64_t plane0, int64_t plane1) {
    const int64_t sw = kSW ? kSW : p.stride_w, W = p.W;
    const T lowest = -std::numeric_limits<T>::infinity();
    std::vector<int32_t> arg(std::max<int64_t>(q1 - q0, 0));
    for (int64_t plane = plane0; plane < plane1; ++plane) {
        const T* xp = x + plane * p.H * W;
        for (int64_t oh = 0; oh < p.P; ++oh) {
            const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, p.dil_h, p.H);
            const int64_t o = (plane * p.P + oh) * p.Q;
            T* yr = y + o;
            int64_t* ir = idx + o;
            auto one = [&](int64_t ow) {
                const PoolTaps& tw = cols[ow];
                T best = lowest;
                int64_t at_best = -1;
                for (int64_t i = th.t0; i < th.t1; ++i)
                    for (int64_t j = tw.t0; j < tw.t1; ++j) {
                        const int64_t at = (th.start + i * p.dil_h) * W + tw.start + j * p.dil_w;
                        if (takes(xp[at], best)) best = xp[at], at_best = at;
                    }
                yr[ow] = best;
                ir[ow] = at_best;
            };
            for (int64_t ow = 0; ow < q0; ++ow) one(ow);
            for (int64_t ow = q1; ow < p.Q; ++ow) one(ow);
            if (q1 <= q0) continue;
            T* best = yr + q0;
            int32_t* a = arg.data();
            const int64_t n = q1 - q0;
            for (int64_t q = 0; q < n; ++q) best[q] = lowest, a[q] = -1;
            for (int64_t i = th.t0; i < th.t1; ++i) {
                const int64_t h = th.start + i * p.dil_h;
                for (int64_t j = 0; j < p.kw; ++j) {
                    // Input column of interior output q0 + q at tap j: base + q * sw.
                    const int64_t col0 = q0 * sw - p.pad_w + j * p.dil_w;
                    const T* r = xp + h * W + col0;
                    const int32_t base = int32_t(h * W + col0);
                    for (int64_t q = 0; q < n; ++q) {
                        const T v = r[q * sw];
                        const bool t = takes(v, best[q]);
                        best[q] = t ? v : best[q];
                        a[q] = t ? base + int32_t(q * sw) : a[q];
                    }
                }
            }
            for (int64_t q = 0; q < n; ++q) ir[q0 + q] = a[q];
        }
    }
}

template <typename T>
__attribute__((always_inline)) inline void max_idx_nchw_block(
    const Pool2dParams& p, const PoolTaps* cols, int64_t q0, int64_t q1, const T* x, T* y,
    int64_t* idx, int64_t b0, int64_t b1) {
    if (p.stride_w == 1) return max_idx_nchw_planes<T, 1>(p, cols, q0, q1, x, y, idx, b0, b1);
    if (p.stride_w == 2) return max_idx_nchw_planes<T, 2>(p, cols, q0, q1, x, y, idx, b0, b1);
    max_idx_nchw_planes<T, 0>(p, cols, q0, q1, x, y, idx, b0, b1);
}

// Float blocks built once per ISA path (isa.h) from the same loops.
void max_idx_nchw_portable(const Pool2dParams& p, const PoolTaps* cols, int64_t q0, int64_t q1,
                           const float* x, float* y, int64_t* idx, int64_t b0, int64_t b1) {
    max_idx_nchw_block(p, cols, q0, q1, x, y, idx, b0, b1);
}
#if FC_X86_ISA
FC_TARGET_AVX2 void max_idx_nchw_avx2(const Pool2dParams& p, const PoolTaps* cols, int64_t q0,
                                      int64_t q1, const float* x, float* y, int64_t* idx,
                                      int64_t b0, int64_t b1) {
    max_idx_nchw_block(p, cols, q0, q1, x, y, idx, b0, b1);
}
#endif
inline void max_idx_nchw_any(const Pool2dParams& p, const PoolTaps* cols, int64_t q0, int64_t q1,
                             const float* x, float* y, int64_t* idx, int64_t b0, int64_t b1) {
#if FC_X86_ISA
    // The avx512 path runs the AVX2 build here too (see pool_nchw): 4.13 against 2.71 ms.
    if (isa() >= Isa::Avx2) return max_idx_nchw_avx2(p, cols, q0, q1, x, y, idx, b0, b1);
#endif
    max_idx_nchw_portable(p, cols, q0, q1, x, y, idx, b0, b1);
}
inline void max_idx_nchw_any(const Pool2dParams& p, const PoolTaps* cols, int64_t q0, int64_t q1,
                             const double* x, double* y, int64_t* idx, int64_t b0, int64_t b1) {
    max_idx_nchw_block(p, cols, q0, q1, x, y, idx, b0, b1);
}

template <typename T>
void max_idx_nchw(const Pool2dParams& p, const std::vector<PoolTaps>& cols, const T* x, T* y,
                  int64_t* idx) {
    int64_t q0, q1;
    interior_columns(cols, p.kw, q0, q1);
    const int64_t planes = p.N * p.C, block = 16, blocks = ceil_div(planes, block);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b)
        max_idx_nchw_any(p, cols.data(), q0, q1, x, y, idx, b * block,
                         std::min(planes, (b + 1) * block));
}

// One NHWC output row (n, oh) of max pooling, optionally with indices: each output
// pixel's C maxima in place, tap by tap; the winners' positions as int32 beside them (one
// width, so compare and select vectorise together), widened once per pixel.
template <typename T>
__attribute__((always_inline)) inline void max_nhwc_row_t(const Pool2dParams& p,
                                                          const PoolTaps* cols, int64_t n,
                                                          int64_t oh, const T* x, T* y,
                                                          int64_t* idx, int32_t* a) {
    const T lowest = -std::numeric_limits<T>::infinity();
    const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, p.dil_h, p.H);
    for (int64_t ow = 0; ow < p.Q; ++ow) {
        const PoolTaps& tw = cols[ow];
        const int64_t o = ((n * p.P + oh) * p.Q + ow) * p.C;
        T* best = y + o;
        for (int64_t c = 0; c < p.C; ++c) best[c] = lowest;
        if (idx)
            for (int64_t c = 0; c < p.C; ++c) a[c] = -1;
        for (int64_t i = th.t0; i < th.t1; ++i) {
            const int64_t h = th.start + i * p.dil_h;
            for (int64_t j = tw.t0; j < tw.t1; ++j) {
                const int64_t at = h * p.W + tw.start + j * p.dil_w;
                const T* v = x + (n * p.H * p.W + at) * p.C;
                if (idx) {
                    const int32_t at32 = int32_t(at);
                    for (int64_t c = 0; c < p.C; ++c) {
                        const bool t = takes(v[c], best[c]);
                        best[c] = t ? v[c] : best[c];
                        a[c] = t ? at32 : a[c];
                    }
                } else {
                    for (int64_t c = 0; c < p.C; ++c) best[c] = takes(v[c], best[c]) ? v[c] : best[c];
                }
            }
        }
        if (idx)
            for (int64_t c = 0; c < p.C; ++c) idx[o + c] = a[c];
    }
}

// Float rows built once per ISA path (isa.h) from the same loop.
void max_nhwc_row_portable(const Pool2dParams& p, const PoolTaps* cols, int64_t n, int64_t oh,
                           const float* x, float* y, int64_t* idx, int32_t* a) {
    max_nhwc_row_t(p, cols, n, oh, x, y, idx, a);
}
#if FC_X86_ISA
FC_TARGET_AVX2 void max_nhwc_row_avx2(const Pool2dParams& p, const PoolTaps* cols, int64_t n,
                                      int64_t oh, const float* x, float* y, int64_t* idx,
                                      int32_t* a) {
    max_nhwc_row_t(p, cols, n, oh, x, y, idx, a);
}
// The lanes of the last vector of `rest` channels (1-128 left after whole blocks): the
// first rest % 16, or all 16.
inline uint16_t last_lanes(int64_t rest) { return uint16_t((1u << (rest % 16 ? rest % 16 : 16)) - 1); }
// AVX-512 NHWC pooling: NV (up to 8) vectors of 16 channels from c0 held in registers across
// the window's taps (one load per tap and vector, one store per output), the last vector
// under `last`. The portable loops keep them in y and reload and store them at every tap
// (ResNet-50's stem max pool, NHWC, 9 taps: 61% of the copy bandwidth). kMax: takes() as
// compare masks (greater, or NaN), kIdx: with the winners' positions; else the average,
// summed in the taps' order and divided by div, as the portable loop does.
template <int NV, bool kMax, bool kIdx>
FC_TARGET_AVX512 __attribute__((always_inline)) inline void pool_nhwc_block_avx512(
    const Pool2dParams& p, const PoolTaps& th, const PoolTaps& tw, int64_t dil_h, int64_t dil_w,
    const float* xn, int64_t c0, __mmask16 last, float div, float* out, int64_t* iout) {
    __m512 acc[NV];
    __m512i arg[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
        acc[v] = kMax ? _mm512_set1_ps(-std::numeric_limits<float>::infinity()) : _mm512_setzero_ps(),
        arg[v] = _mm512_set1_epi32(-1);
    for (int64_t i = th.t0; i < th.t1; ++i) {
        const int64_t h = th.start + i * dil_h;
        for (int64_t j = tw.t0; j < tw.t1; ++j) {
            const int64_t at = h * p.W + tw.start + j * dil_w;
            const float* src = xn + at * p.C + c0;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                const __m512 x = v == NV - 1 ? _mm512_maskz_loadu_ps(last, src + 16 * v)
                                             : _mm512_loadu_ps(src + 16 * v);
                if (!kMax) {
                    acc[v] = _mm512_add_ps(acc[v], x);
                    continue;
                }
                const __mmask16 t = _mm512_cmp_ps_mask(x, acc[v], _CMP_GT_OQ) |
                                    _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
                acc[v] = _mm512_mask_mov_ps(acc[v], t, x);
                if (kIdx) arg[v] = _mm512_mask_mov_epi32(arg[v], t, _mm512_set1_epi32(int32_t(at)));
            }
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
        const __mmask16 m = v == NV - 1 ? last : __mmask16(0xFFFF);
        _mm512_mask_storeu_ps(out + 16 * v, m, kMax ? acc[v] : _mm512_div_ps(acc[v], _mm512_set1_ps(div)));
        if (kIdx) {  // int32 positions widened to int64, eight at a time
            alignas(64) int32_t a32[16];
            _mm512_store_si512(a32, arg[v]);
            _mm512_mask_storeu_epi64(iout + 16 * v, __mmask8(m),
                                     _mm512_maskz_cvtepi32_epi64(0xFF, _mm256_load_si256(reinterpret_cast<const __m256i*>(a32))));
            _mm512_mask_storeu_epi64(iout + 16 * v + 8, __mmask8(m >> 8),
                                     _mm512_maskz_cvtepi32_epi64(0xFF, _mm256_load_si256(reinterpret_cast<const __m256i*>(a32 + 8))));
        }
    }
}

// One NHWC output row (n, oh) by pool_nhwc_block_avx512: blocks of 128 channels, then the
// last 1-127 as 1-8 vectors, the last masked. iout: the indices (kIdx) or null.
template <bool kMax, bool kIdx>
FC_TARGET_AVX512 void pool_nhwc_row_avx512(const Pool2dParams& p, const PoolTaps* cols,
                                           int64_t dil_h, int64_t dil_w, int64_t n, int64_t oh,
                                           const float* x, float* y, int64_t* idx) {
    const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, dil_h, p.H);
    const float* xn = x + n * p.H * p.W * p.C;
    const int64_t full = p.C / 128 * 128, rest = p.C - full;
    const __mmask16 last = last_lanes(rest);
    for (int64_t ow = 0; ow < p.Q; ++ow) {
        const int64_t o = ((n * p.P + oh) * p.Q + ow) * p.C;
        const PoolTaps& tw = cols[ow];
        const float div = kMax ? 1.f : float(pool_avg_divisor(p, oh, ow));
        for (int64_t c0 = 0; c0 < full; c0 += 128)
            pool_nhwc_block_avx512<8, kMax, kIdx>(p, th, tw, dil_h, dil_w, xn, c0, 0xFFFF, div,
                                                  y + o + c0, idx + o + c0);
        float* out = y + o + full;
        int64_t* iout = idx + o + full;
#define FC_POOL_TAIL(nv) \
    case nv: pool_nhwc_block_avx512<nv, kMax, kIdx>(p, th, tw, dil_h, dil_w, xn, full, last, div, out, iout); break;
        switch ((rest + 15) / 16) {
            FC_POOL_TAIL(1) FC_POOL_TAIL(2) FC_POOL_TAIL(3) FC_POOL_TAIL(4)
            FC_POOL_TAIL(5) FC_POOL_TAIL(6) FC_POOL_TAIL(7) FC_POOL_TAIL(8)
            default: break;
        }
#undef FC_POOL_TAIL
    }
}

FC_TARGET_AVX512 void max_nhwc_row_avx512(const Pool2dParams& p, const PoolTaps* cols, int64_t n,
                                          int64_t oh, const float* x, float* y, int64_t* idx,
                                          int32_t*) {
    if (idx)
        pool_nhwc_row_avx512<true, true>(p, cols, p.dil_h, p.dil_w, n, oh, x, y, idx);
    else
        pool_nhwc_row_avx512<true, false>(p, cols, p.dil_h, p.dil_w, n, oh, x, y, idx);
}
#endif
inline void max_nhwc_row(const Pool2dParams& p, const PoolTaps* cols, int64_t n, int64_t oh,
                         const float* x, float* y, int64_t* idx, int32_t* a) {
#if FC_X86_ISA
    if (isa() == Isa::Avx512) return max_nhwc_row_avx512(p, cols, n, oh, x, y, idx, a);
    if (isa() == Isa::Avx2) return max_nhwc_row_avx2(p, cols, n, oh, x, y, idx, a);
#endif
    max_nhwc_row_portable(p, cols, n, oh, x, y, idx, a);
}
inline void max_nhwc_row(const Pool2dParams& p, const PoolTaps* cols, int64_t n, int64_t oh,
                         const double* x, double* y, int64_t* idx, int32_t* a) {
    max_nhwc_row_t(p, cols, n, oh, x, y, idx, a);
}

// The same row for planes of 2^31 or more pixels: int64 positions, kept per channel.
template <typename T>
void max_nhwc_row_wide(const Pool2dParams& p, const PoolTaps* cols, int64_t n, int64_t oh,
                       const T* x, T* y, int64_t* idx) {
    const T lowest = -std::numeric_limits<T>::infinity();
    const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, p.dil_h, p.H);
    for (int64_t ow = 0; ow < p.Q; ++ow) {
        const PoolTaps& tw = cols[ow];
        const int64_t o = ((n * p.P + oh) * p.Q + ow) * p.C;
        std::fill(y + o, y + o + p.C, lowest);
        std::fill(idx + o, idx + o + p.C, int64_t(-1));
        for (int64_t i = th.t0; i < th.t1; ++i)
            for (int64_t j = tw.t0; j < tw.t1; ++j) {
                const int64_t at = (th.start + i * p.dil_h) * p.W + tw.start + j * p.dil_w;
                const T* v = x + (n * p.H * p.W + at) * p.C;
                for (int64_t c = 0; c < p.C; ++c)
                    if (takes(v[c], y[o + c])) y[o + c] = v[c], idx[o + c] = at;
            }
    }
}

}  // namespace

template <typename T>
void max_pool_fwd(const Pool2dParams& p, const T* x, T* y, int64_t* idx) {
    const std::vector<PoolTaps> cols = column_taps(p, p.dil_w);
    const T lowest = -std::numeric_limits<T>::infinity();
    // Positions fit int32 in the vectorised paths (an index is < H * W).
    const bool small = p.H * p.W <= INT32_MAX;
    if (p.layout == Layout::NCHW && !idx) return pool_nchw_all<true>(p, cols, x, y);
    if (p.layout == Layout::NCHW && small) return max_idx_nchw(p, cols, x, y, idx);
    if (p.layout == Layout::NCHW) {
#pragma omp parallel for schedule(static)
        for (int64_t plane = 0; plane < p.N * p.C; ++plane) {
            const T* xp = x + plane * p.H * p.W;
            for (int64_t oh = 0; oh < p.P; ++oh) {
                const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, p.dil_h, p.H);
                for (int64_t ow = 0; ow < p.Q; ++ow) {
                    const PoolTaps& tw = cols[ow];
                    T best = lowest;
                    int64_t arg = -1;
                    for (int64_t i = th.t0; i < th.t1; ++i) {
                        const int64_t h = th.start + i * p.dil_h;
                        for (int64_t j = tw.t0; j < tw.t1; ++j) {
                            const int64_t at = h * p.W + tw.start + j * p.dil_w;
                            if (takes(xp[at], best)) best = xp[at], arg = at;
                        }
                    }
                    const int64_t o = (plane * p.P + oh) * p.Q + ow;
                    y[o] = best;
                    idx[o] = arg;
                }
            }
        }
        return;
    }
    // NHWC: each output pixel is a run of C channels, updated in place tap by tap from
    // contiguous input runs, so the channel loop vectorises (row functions below).
#pragma omp parallel
    {
        std::vector<int32_t> arg32(idx && small ? p.C : 0);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < p.N; ++n)
            for (int64_t oh = 0; oh < p.P; ++oh) {
                if (idx && !small) {
                    max_nhwc_row_wide(p, cols.data(), n, oh, x, y, idx);
                    continue;
                }
                max_nhwc_row(p, cols.data(), n, oh, x, y, idx, arg32.data());
            }
    }
}

namespace {

// Whether input position v (a row or a column) is one of the taps t.start + t * dil,
// t in [t.t0, t.t1).
inline bool on_taps(int64_t v, const PoolTaps& t, int64_t dil) {
    const int64_t d = v - t.start;
    return d >= t.t0 * dil && d < (t.t1 - 1) * dil + 1 && (dil == 1 || d % dil == 0);
}

// For every input position i of one axis, the outputs whose windows take it (in
// increasing order): out[begin[i] .. begin[i + 1]). The gathers' inner lists.
struct Reach {
    std::vector<int64_t> begin, out;
    std::vector<int64_t> first;  // first[o]: the first input reaching output o, -1 if none
    Reach(int64_t in, int64_t outs, int64_t k, int64_t stride, int64_t pad, int64_t dil)
        : first(size_t(outs), -1) {
        begin.reserve(in + 1);
        for (int64_t i = 0; i < in; ++i) {
            begin.push_back(int64_t(out.size()));
            const int64_t lo = first_out_reaching(i, k, stride, pad, dil);
            const int64_t hi = last_out_reaching(i, stride, pad, outs);
            for (int64_t o = lo; o < hi; ++o) {
                const int64_t d = i + pad - o * stride;
                if (d >= 0 && d % dil == 0 && d / dil < k) {
                    out.push_back(o);
                    if (first[o] < 0) first[o] = i;
                }
            }
        }
        begin.push_back(int64_t(out.size()));
    }
};

// Before pixel (h, w) of the max-pool gradient: asks for the indices and gradients of the
// output kPrefetchOutputs columns ahead in each output row that row h is the first to reach
// (the rows no earlier input row has brought into cache). Where windows overlap, each
// pixel reads two output rows and the hardware's prefetcher missed the new one: ResNet-50's
// stem pool (3x3, stride 2, 64 channels, NHWC) took 7.3 ms, 4.6 ms with this (94% of the
// copy bandwidth; 2 ahead 4.4, 4 and 8 ahead 4.1-4.3 without the dx stores, Zen 5).
// always_inline: GCC judged the function, prefetches only, to have no effect and deleted its
// call from the AVX-512 row, which does not inline it otherwise (other target).
constexpr int64_t kPrefetchOutputs = 4;
template <typename T>
__attribute__((always_inline)) inline void prefetch_new_outputs(
    const Pool2dParams& p, const Reach& rows, const Reach& cols, int64_t n, int64_t h,
    int64_t w, const T* dy, const int64_t* idx) {
    if (cols.begin[w] == cols.begin[w + 1]) return;
    const int64_t q = std::min(p.Q - 1, cols.out[cols.begin[w]] + kPrefetchOutputs);
    for (int64_t r = rows.begin[h]; r < rows.begin[h + 1]; ++r) {
        if (rows.first[rows.out[r]] != h) continue;
        const int64_t o = ((n * p.P + rows.out[r]) * p.Q + q) * p.C;
        const char* ix = reinterpret_cast<const char*>(idx + o);
        const char* g = reinterpret_cast<const char*>(dy + o);
        for (int64_t b = 0; b < p.C * int64_t(sizeof(int64_t)); b += 64) __builtin_prefetch(ix + b);
        for (int64_t b = 0; b < p.C * int64_t(sizeof(T)); b += 64) __builtin_prefetch(g + b);
    }
}

// One NHWC input row (n, h) of the max-pool gradient, into drow (W * C): each pixel's C
// channels the sum of the gradients of the outputs whose windows take it and whose winner
// it was (compare and select across the channels); returns how many winners it took, and
// adds to `named` the indices other than -1 of the outputs this row is the first to reach
// (each output counted once, by its window's first pixel, while its indices are in cache:
// a pass of its own over all indices, 8 bytes an output, was a fifth of the bytes the call
// moved).
template <typename T>
__attribute__((always_inline)) inline int64_t max_bwd_nhwc_row_t(
    const Pool2dParams& p, const Reach& rows, const Reach& cols, int64_t n, int64_t h,
    const T* dy, const int64_t* idx, T* drow, int64_t& named) {
    int64_t hits = 0, names = 0;
    for (int64_t w = 0; w < p.W; ++w) {
        prefetch_new_outputs(p, rows, cols, n, h, w, dy, idx);
        T* d = drow + w * p.C;
        for (int64_t c = 0; c < p.C; ++c) d[c] = T(0);
        const int64_t at = h * p.W + w;
        for (int64_t r = rows.begin[h]; r < rows.begin[h + 1]; ++r) {
            const bool first_row = rows.first[rows.out[r]] == h;
            for (int64_t k = cols.begin[w]; k < cols.begin[w + 1]; ++k) {
                const int64_t o = ((n * p.P + rows.out[r]) * p.Q + cols.out[k]) * p.C;
                const T* g = dy + o;
                const int64_t* ix = idx + o;
                for (int64_t c = 0; c < p.C; ++c) {
                    const bool m = ix[c] == at;
                    d[c] += m ? g[c] : T(0);
                    hits += m;
                }
                if (first_row && cols.first[cols.out[k]] == w)
                    for (int64_t c = 0; c < p.C; ++c) names += ix[c] != -1;
            }
        }
    }
    named += names;
    return hits;
}

// Float rows built once per ISA path (isa.h) from the same loop, and on the AVX-512 path
// written out: 16 channels at a time, the two 8-lane int64 compares joined into one mask
// that selects the gradient's lanes and counts the takes (GCC's vectorisation of the loop
// above widened each compare's mask lane by lane: 39.5 ms, 60% of the copy bandwidth, on
// the 64x128x128x128 2x2 case, Zen 5).
int64_t max_bwd_nhwc_row_portable(const Pool2dParams& p, const Reach& rows, const Reach& cols,
                                  int64_t n, int64_t h, const float* dy, const int64_t* idx,
                                  float* drow, int64_t& named) {
    return max_bwd_nhwc_row_t(p, rows, cols, n, h, dy, idx, drow, named);
}
#if FC_X86_ISA
// The AVX2 row written out the same way, 8 channels a vector: each 4-lane int64 compare's
// lanes narrowed to 32 bits (the low halves picked, the quarters put back in order).
// GCC's loop: 7.1 ms on ResNet-50's stem pool (NHWC, Zen 5, the avx2 path).
FC_TARGET_AVX2 __attribute__((always_inline)) inline __m256 narrow(__m256i lo, __m256i hi) {
    return _mm256_castsi256_ps(_mm256_permute4x64_epi64(
        _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi), 0x88)),
        0xD8));
}
template <int NV>
FC_TARGET_AVX2 __attribute__((always_inline)) inline void max_bwd_nhwc_block_avx2(
    const Pool2dParams& p, const Reach& rows, const Reach& cols, int64_t n, int64_t h,
    int64_t w, int64_t c0, const float* dy, const int64_t* idx, float* d, int64_t& hits,
    int64_t& names) {
    const __m256i at = _mm256_set1_epi64x(h * p.W + w), none = _mm256_set1_epi64x(-1);
    __m256 acc[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_setzero_ps();
    for (int64_t r = rows.begin[h]; r < rows.begin[h + 1]; ++r) {
        const bool first_row = rows.first[rows.out[r]] == h;
        for (int64_t k = cols.begin[w]; k < cols.begin[w + 1]; ++k) {
            const int64_t o = ((n * p.P + rows.out[r]) * p.Q + cols.out[k]) * p.C + c0;
            const bool first = first_row && cols.first[cols.out[k]] == w;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                const __m256i* ix = reinterpret_cast<const __m256i*>(idx + o + 8 * v);
                const __m256i lo = _mm256_loadu_si256(ix), hi = _mm256_loadu_si256(ix + 1);
                const __m256 m = narrow(_mm256_cmpeq_epi64(lo, at), _mm256_cmpeq_epi64(hi, at));
                acc[v] = _mm256_add_ps(acc[v], _mm256_and_ps(m, _mm256_loadu_ps(dy + o + 8 * v)));
                hits += __builtin_popcount(unsigned(_mm256_movemask_ps(m)));
                if (first)
                    names += 8 - __builtin_popcount(unsigned(_mm256_movemask_ps(
                                     narrow(_mm256_cmpeq_epi64(lo, none), _mm256_cmpeq_epi64(hi, none)))));
            }
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(d + 8 * v, acc[v]);
}

FC_TARGET_AVX2 int64_t max_bwd_nhwc_row_avx2(const Pool2dParams& p, const Reach& rows,
                                             const Reach& cols, int64_t n, int64_t h,
                                             const float* dy, const int64_t* idx, float* drow,
                                             int64_t& named) {
    int64_t hits = 0, names = 0;
    const int64_t full = p.C / 64 * 64, vec = p.C / 8 * 8;
    for (int64_t w = 0; w < p.W; ++w) {
        prefetch_new_outputs(p, rows, cols, n, h, w, dy, idx);
        float* d = drow + w * p.C;
        for (int64_t c0 = 0; c0 < full; c0 += 64)
            max_bwd_nhwc_block_avx2<8>(p, rows, cols, n, h, w, c0, dy, idx, d + c0, hits, names);
#define FC_MAX_BWD_TAIL(nv)                                                                 \
    case nv:                                                                                \
        max_bwd_nhwc_block_avx2<nv>(p, rows, cols, n, h, w, full, dy, idx, d + full, hits, \
                                    names);                                                 \
        break;
        switch ((vec - full) / 8) {
            FC_MAX_BWD_TAIL(1) FC_MAX_BWD_TAIL(2) FC_MAX_BWD_TAIL(3) FC_MAX_BWD_TAIL(4)
            FC_MAX_BWD_TAIL(5) FC_MAX_BWD_TAIL(6) FC_MAX_BWD_TAIL(7)
            default: break;
        }
#undef FC_MAX_BWD_TAIL
        // The last C % 8 channels one by one, in the same order of outputs.
        const int64_t at = h * p.W + w;
        for (int64_t c = vec; c < p.C; ++c) {
            float sum = 0.f;
            for (int64_t r = rows.begin[h]; r < rows.begin[h + 1]; ++r)
                for (int64_t k = cols.begin[w]; k < cols.begin[w + 1]; ++k) {
                    const int64_t o = ((n * p.P + rows.out[r]) * p.Q + cols.out[k]) * p.C + c;
                    const bool m = idx[o] == at;
                    sum += m ? dy[o] : 0.f;
                    hits += m;
                    if (rows.first[rows.out[r]] == h && cols.first[cols.out[k]] == w)
                        names += idx[o] != -1;
                }
            d[c] = sum;
        }
    }
    named += names;
    return hits;
}
// NV (up to 8) vectors of 16 channels from c0 summed in registers over the outputs that
// reach pixel (h, w), the last vector's lanes under `last` (masked loads and stores only
// there: on Zen 5, masked loads and stores of every vector took this pass from 39 to 62 ms).
template <int NV>
FC_TARGET_AVX512 __attribute__((always_inline)) inline void max_bwd_nhwc_block_avx512(
    const Pool2dParams& p, const Reach& rows, const Reach& cols, int64_t n, int64_t h,
    int64_t w, int64_t c0, __mmask16 last, const float* dy, const int64_t* idx, float* d,
    int64_t& hits, int64_t& names) {
    const __m512i at = _mm512_set1_epi64(h * p.W + w), none = _mm512_set1_epi64(-1);
    __m512 acc[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_ps();
    for (int64_t r = rows.begin[h]; r < rows.begin[h + 1]; ++r) {
        const bool first_row = rows.first[rows.out[r]] == h;
        for (int64_t k = cols.begin[w]; k < cols.begin[w + 1]; ++k) {
            const int64_t o = ((n * p.P + rows.out[r]) * p.Q + cols.out[k]) * p.C + c0;
            const bool first = first_row && cols.first[cols.out[k]] == w;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                const int64_t* ix = idx + o + 16 * v;
                const float* g = dy + o + 16 * v;
                const bool part = v == NV - 1 && last != 0xFFFF;
                const __m512i lo = part ? _mm512_maskz_loadu_epi64(__mmask8(last), ix)
                                        : _mm512_loadu_si512(ix);
                const __m512i hi = part ? _mm512_maskz_loadu_epi64(__mmask8(last >> 8), ix + 8)
                                        : _mm512_loadu_si512(ix + 8);
                const __m512 gv = part ? _mm512_maskz_loadu_ps(last, g) : _mm512_loadu_ps(g);
                const __mmask16 lanes = v == NV - 1 ? last : __mmask16(0xFFFF);
                const __mmask16 m = _mm512_kunpackb(_mm512_cmpeq_epi64_mask(hi, at),
                                                    _mm512_cmpeq_epi64_mask(lo, at)) & lanes;
                acc[v] = _mm512_mask_add_ps(acc[v], m, acc[v], gv);
                hits += __builtin_popcount(m);
                if (first)
                    names += __builtin_popcount(
                        _mm512_kunpackb(_mm512_cmpneq_epi64_mask(hi, none),
                                        _mm512_cmpneq_epi64_mask(lo, none)) & lanes);
            }
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
        if (v == NV - 1 && last != 0xFFFF)
            _mm512_mask_storeu_ps(d + 16 * v, last, acc[v]);
        else
            _mm512_storeu_ps(d + 16 * v, acc[v]);
    }
}

FC_TARGET_AVX512 int64_t max_bwd_nhwc_row_avx512(const Pool2dParams& p, const Reach& rows,
                                                 const Reach& cols, int64_t n, int64_t h,
                                                 const float* dy, const int64_t* idx,
                                                 float* drow, int64_t& named) {
    int64_t hits = 0, names = 0;
    const int64_t full = p.C / 128 * 128, rest = p.C - full;
    const __mmask16 last = last_lanes(rest);
    for (int64_t w = 0; w < p.W; ++w) {
        prefetch_new_outputs(p, rows, cols, n, h, w, dy, idx);
        float* d = drow + w * p.C;
        for (int64_t c0 = 0; c0 < full; c0 += 128)
            max_bwd_nhwc_block_avx512<8>(p, rows, cols, n, h, w, c0, 0xFFFF, dy, idx, d + c0,
                                         hits, names);
#define FC_MAX_BWD_TAIL(nv)                                                                   \
    case nv:                                                                                  \
        max_bwd_nhwc_block_avx512<nv>(p, rows, cols, n, h, w, full, last, dy, idx, d + full, \
                                      hits, names);                                           \
        break;
        switch ((rest + 15) / 16) {
            FC_MAX_BWD_TAIL(1) FC_MAX_BWD_TAIL(2) FC_MAX_BWD_TAIL(3) FC_MAX_BWD_TAIL(4)
            FC_MAX_BWD_TAIL(5) FC_MAX_BWD_TAIL(6) FC_MAX_BWD_TAIL(7) FC_MAX_BWD_TAIL(8)
            default: break;
        }
#undef FC_MAX_BWD_TAIL
    }
    named += names;
    return hits;
}
#endif
inline int64_t max_bwd_nhwc_row(const Pool2dParams& p, const Reach& rows, const Reach& cols,
                                int64_t n, int64_t h, const float* dy, const int64_t* idx,
                                float* drow, int64_t& named) {
#if FC_X86_ISA
    if (isa() == Isa::Avx512)
        return max_bwd_nhwc_row_avx512(p, rows, cols, n, h, dy, idx, drow, named);
    if (isa() == Isa::Avx2) return max_bwd_nhwc_row_avx2(p, rows, cols, n, h, dy, idx, drow, named);
#endif
    return max_bwd_nhwc_row_portable(p, rows, cols, n, h, dy, idx, drow, named);
}
inline int64_t max_bwd_nhwc_row(const Pool2dParams& p, const Reach& rows, const Reach& cols,
                                int64_t n, int64_t h, const double* dy, const int64_t* idx,
                                double* drow, int64_t& named) {
    return max_bwd_nhwc_row_t(p, rows, cols, n, h, dy, idx, drow, named);
}

// NCHW max-pool grad input where 2-wide windows tile the row (stride 2 across, no padding,
// no dilation): pixel 2q + j of an input row is output q's gradient where output q's index
// is that pixel (at0 + 2q + j), else 0, for q < Q (dx[0, 2Q)); returns the pixels taken.
// Each pixel is in one window, so 0 + g, the scatter's bits. The scatter below, one output
// at a time: 64 x 128 x 128^2, 2x2, 65 ms (37% of copy, Zen 5).
template <typename T>
__attribute__((always_inline)) inline int64_t max_bwd_pairs_row_t(const int64_t* ix,
                                                                  const T* g, int64_t Q,
                                                                  int64_t at0, T* d) {
    int64_t hits = 0;
    for (int64_t q = 0; q < Q; ++q) {
        const bool m0 = ix[q] == at0 + 2 * q, m1 = ix[q] == at0 + 2 * q + 1;
        d[2 * q] = T(0) + (m0 ? g[q] : T(0));
        d[2 * q + 1] = T(0) + (m1 ? g[q] : T(0));
        hits += m0 + m1;
    }
    return hits;
}
int64_t max_bwd_pairs_row_portable(const int64_t* ix, const float* g, int64_t Q, int64_t at0,
                                   float* d) {
    return max_bwd_pairs_row_t(ix, g, Q, at0, d);
}
#if FC_X86_ISA
// AVX2: 4 outputs, 8 pixels a step; the two int64 compares' lanes interleaved by one blend
// (each 64-bit lane all ones or all zeros: its halves are equal).
FC_TARGET_AVX2 int64_t max_bwd_pairs_row_avx2(const int64_t* ix, const float* g, int64_t Q,
                                              int64_t at0, float* d) {
    int64_t hits = 0, q = 0;
    const __m256i pairs = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    for (; q + 4 <= Q; q += 4) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ix + q));
        const __m256i even =
            _mm256_add_epi64(_mm256_set1_epi64x(at0 + 2 * q), _mm256_setr_epi64x(0, 2, 4, 6));
        const __m256i odd = _mm256_add_epi64(even, _mm256_set1_epi64x(1));
        const __m256 m = _mm256_castsi256_ps(_mm256_blend_epi32(_mm256_cmpeq_epi64(v, even),
                                                                _mm256_cmpeq_epi64(v, odd), 0xAA));
        const __m256 gv =
            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(g + q)), pairs);
        _mm256_storeu_ps(d + 2 * q, _mm256_add_ps(_mm256_setzero_ps(), _mm256_and_ps(m, gv)));
        hits += __builtin_popcount(unsigned(_mm256_movemask_ps(m)));
    }
    return hits + max_bwd_pairs_row_t(ix + q, g + q, Q - q, at0 + 2 * q, d + 2 * q);
}
// AVX-512: 8 outputs, 16 pixels a step, the last step's under masks; the indices narrowed
// to int32 with saturation (an index beyond int32 stays beyond every position, never a false
// match) and paired. (Zero-masking forms throughout: GCC 12 warns of the plain forms'
// undefined lanes.)
FC_TARGET_AVX512 int64_t max_bwd_pairs_row_avx512(const int64_t* ix, const float* g, int64_t Q,
                                                  int64_t at0, float* d) {
    const __m512i pairs = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t hits = 0;
    for (int64_t q = 0; q < Q; q += 8) {
        const int64_t left = std::min<int64_t>(Q - q, 8);
        const __mmask8 outs = __mmask8((1u << left) - 1);
        const __mmask16 pixels = __mmask16((1u << (2 * left)) - 1);
        const bool whole = left == 8;
        const __m512i v64 = whole ? _mm512_loadu_si512(ix + q) : _mm512_maskz_loadu_epi64(outs, ix + q);
        const __m256 g8 = whole ? _mm256_loadu_ps(g + q) : _mm256_maskz_loadu_ps(outs, g + q);
        const __m512i v = _mm512_maskz_permutexvar_epi32(
            0xFFFF, pairs, _mm512_castsi256_si512(_mm512_maskz_cvtsepi64_epi32(0xFF, v64)));
        const __m512i at = _mm512_add_epi32(_mm512_set1_epi32(int32_t(at0 + 2 * q)), lane);
        const __mmask16 m = _mm512_mask_cmpeq_epi32_mask(pixels, v, at);
        const __m512 gv = _mm512_maskz_permutexvar_ps(0xFFFF, pairs, _mm512_castps256_ps512(g8));
        const __m512 out = _mm512_maskz_add_ps(m, _mm512_setzero_ps(), gv);
        if (whole)
            _mm512_storeu_ps(d + 2 * q, out);
        else
            _mm512_mask_storeu_ps(d + 2 * q, pixels, out);
        hits += __builtin_popcount(m);
    }
    return hits;
}
#endif
inline int64_t max_bwd_pairs_row(const int64_t* ix, const float* g, int64_t Q, int64_t at0,
                                 float* d) {
#if FC_X86_ISA
    if (isa() == Isa::Avx512) return max_bwd_pairs_row_avx512(ix, g, Q, at0, d);
    if (isa() == Isa::Avx2) return max_bwd_pairs_row_avx2(ix, g, Q, at0, d);
#endif
    return max_bwd_pairs_row_portable(ix, g, Q, at0, d);
}
inline int64_t max_bwd_pairs_row(const int64_t* ix, const double* g, int64_t Q, int64_t at0,
                                 double* d) {
    return max_bwd_pairs_row_t(ix, g, Q, at0, d);
}

// The indices of a plane that name a pixel (all but -1): what the write-once rows' takes
// are counted against.
inline int64_t named_indices(const int64_t* ix, int64_t n) {
    int64_t named = 0;
    for (int64_t o = 0; o < n; ++o) named += ix[o] != -1;
    return named;
}

// Whether max_bwd_w3s2_plane_avx512 applies: windows 3 wide at stride 2 with one column of
// padding (ResNet-50's stem pool, 3x3 / 2 / 1), at most 3 high, no dilation, planes under
// 2^30 pixels (positions in int32 with room: a saturated index never wraps onto a window).
inline bool max_bwd_w3s2_applies(const Pool2dParams& p) {
    return p.kw == 3 && p.stride_w == 2 && p.pad_w == 1 && p.dil_w == 1 && p.dil_h == 1 &&
           p.kh <= 3 && p.H * p.W < (int64_t(1) << 30) && 2 * (p.Q - 1) < p.W;
}

// The output rows whose windows reach input row h (no dilation): [lo, hi), those with
// h - (oh stride_h - pad_h) in [0, kh).
inline void reaching_rows(const Pool2dParams& p, int64_t h, int64_t& lo, int64_t& hi) {
    lo = std::max<int64_t>(0, ceil_div(h + p.pad_h - p.kh + 1, p.stride_h));
    hi = std::min<int64_t>(p.P, (h + p.pad_h) / p.stride_h + 1);
}

#if FC_X86_ISA
// NCHW max-pool grad input of one plane where max_bwd_w3s2_applies, AVX-512: each dx row
// written once, 32 pixels a step, from the output rows that reach it, in order. Output j's
// window covers columns 2j - 1, 2j, 2j + 1 of the row: even column 2j is j's middle tap,
// odd column 2j - 1 is j - 1's right tap then j's left one (raster order, so the scatter's
// sums, bit for bit: 0 + a + b, with + 0 where an output does not take the pixel). An
// output takes a pixel of row h where its index minus (h W + 2j - 1) is 0, 1 or 2; the
// pixels taken, against the indices other than -1, check every index (as the NHWC gather).
// The scatter one output at a time ran at ~10 cycles an output (the stem pool 32 x 64 x
// 112^2: 10.4-11 ms, of which 3.2 zeroing dx and reading the indices).
// The AVX2 build of max_bwd_w3s2_plane_avx512, 8 outputs (16 pixels) a step: the indices
// outside [0, HW) replaced by -2 and narrowed to int32 (no lane can then alias a
// position), the rest as there.
FC_TARGET_AVX2 __attribute__((always_inline)) inline void store_clipped_avx2(
    float* d, int64_t first, int64_t W, int64_t end, __m256 v) {
    if (first >= 0 && first + 8 <= end) return _mm256_storeu_ps(d + first, v);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, v);
    for (int64_t l = std::max<int64_t>(0, -first); l < 8 && first + l < W; ++l) d[first + l] = lanes[l];
}
FC_TARGET_AVX2 __attribute__((always_inline)) inline __m256i narrow_positions_avx2(
    const int64_t* iw, int64_t n, int64_t HW) {
    alignas(32) int64_t tail[8];
    if (n < 8) {
        for (int64_t l = 0; l < 8; ++l) tail[l] = l < n ? iw[l] : -2;
        iw = tail;
    }
    const __m256i lo = _mm256_set1_epi64x(-1), hi = _mm256_set1_epi64x(HW), none = _mm256_set1_epi64x(-2);
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    __m256i half[2];
    for (int k = 0; k < 2; ++k) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(iw + 4 * k));
        const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi64(v, lo), _mm256_cmpgt_epi64(hi, v));
        half[k] = _mm256_permutevar8x32_epi32(_mm256_blendv_epi8(none, v, in), pick);
    }
    return _mm256_blend_epi32(half[0], half[1], 0xF0);
}
FC_TARGET_AVX2 void max_bwd_w3s2_plane_avx2(const Pool2dParams& p, const int64_t* ix,
                                            const float* g, float* dxp, int64_t& taken,
                                            int64_t& named) {
    const int64_t Q = p.Q, W = p.W, PQ = p.P * p.Q, HW = p.H * p.W;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i rot = _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6);
    const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2);
    named += named_indices(ix, PQ);
    for (int64_t h = 0; h < p.H; ++h) {
        int64_t oh_lo, oh_hi;
        reaching_rows(p, h, oh_lo, oh_hi);
        __m256 carry[3] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        float* const d = dxp + h * W;
        for (int64_t j0 = 0; 2 * j0 - 1 < W; j0 += 8) {
            const __m256i j = _mm256_add_epi32(_mm256_set1_epi32(int32_t(j0)), lane);
            const __m256i jj = _mm256_add_epi32(j, j);
            const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(Q)), j);
            const __m256i left = _mm256_and_si256(live, _mm256_cmpgt_epi32(j, _mm256_setzero_si256()));
            const __m256i right = _mm256_and_si256(
                live, _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(W)), _mm256_add_epi32(jj, one)));
            const __m256i start = _mm256_add_epi32(_mm256_set1_epi32(int32_t(h * W - 1)), jj);
            const int64_t n = std::max<int64_t>(0, std::min<int64_t>(8, Q - j0));
            __m256 even = _mm256_setzero_ps(), odd = _mm256_setzero_ps();
            for (int64_t oh = oh_lo; oh < oh_hi && n > 0; ++oh) {
                const __m256i pos = _mm256_sub_epi32(narrow_positions_avx2(ix + oh * Q + j0, n, HW), start);
                __m256 gv;
                if (n == 8) {
                    gv = _mm256_loadu_ps(g + oh * Q + j0);
                } else {
                    alignas(32) float gt[8] = {};
                    for (int64_t l = 0; l < n; ++l) gt[l] = g[oh * Q + j0 + l];
                    gv = _mm256_load_ps(gt);
                }
                const __m256 m0 = _mm256_castsi256_ps(_mm256_and_si256(left, _mm256_cmpeq_epi32(pos, _mm256_setzero_si256())));
                const __m256 m1 = _mm256_castsi256_ps(_mm256_and_si256(live, _mm256_cmpeq_epi32(pos, one)));
                const __m256 m2 = _mm256_castsi256_ps(_mm256_and_si256(right, _mm256_cmpeq_epi32(pos, two)));
                taken += __builtin_popcount(unsigned(_mm256_movemask_ps(_mm256_or_ps(_mm256_or_ps(m0, m1), m2))));
                const __m256 t2 = _mm256_and_ps(m2, gv);
                __m256& c = carry[oh - oh_lo];
                const __m256 shifted = _mm256_blend_ps(_mm256_permutevar8x32_ps(t2, rot),
                                                       _mm256_permutevar8x32_ps(c, rot), 0x01);
                even = _mm256_add_ps(even, _mm256_and_ps(m1, gv));
                odd = _mm256_add_ps(_mm256_add_ps(odd, shifted), _mm256_and_ps(m0, gv));
                c = t2;
            }
            if (n == 0)  // past the last output: the last odd column, from the carries
                for (int64_t oh = oh_lo; oh < oh_hi; ++oh)
                    odd = _mm256_add_ps(odd, _mm256_blend_ps(_mm256_setzero_ps(),
                                                             _mm256_permutevar8x32_ps(carry[oh - oh_lo], rot), 0x01));
            const __m256 ul = _mm256_unpacklo_ps(odd, even), uh = _mm256_unpackhi_ps(odd, even);
            const int64_t c0 = 2 * j0 - 1, end = h + 1 < p.H ? W + 8 : W;
            store_clipped_avx2(d, c0, W, end, _mm256_permute2f128_ps(ul, uh, 0x20));
            store_clipped_avx2(d, c0 + 8, W, end, _mm256_permute2f128_ps(ul, uh, 0x31));
        }
    }
}

// v's lanes to d[first ..), those in [0, W) under a mask, or all 16 unmasked where they end
// by `end` (masked stores of whole vectors are slow on Zen 5).
FC_TARGET_AVX512 __attribute__((always_inline)) inline void store_clipped_avx512(
    float* d, int64_t first, int64_t W, int64_t end, __m512 v) {
    if (first >= 0 && first + 16 <= end) return _mm512_storeu_ps(d + first, v);
    const int64_t a = std::max<int64_t>(0, -first), b = std::min<int64_t>(16, W - first);
    if (b > a) _mm512_mask_storeu_ps(d + first, __mmask16(((1u << b) - 1) & ~((1u << a) - 1)), v);
}

FC_TARGET_AVX512 void max_bwd_w3s2_plane_avx512(const Pool2dParams& p, const int64_t* ix,
                                                const float* g, float* dxp, int64_t& taken,
                                                int64_t& named) {
    const int64_t Q = p.Q, W = p.W, PQ = p.P * p.Q;
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2);
    named += named_indices(ix, PQ);
    for (int64_t h = 0; h < p.H; ++h) {
        int64_t oh_lo, oh_hi;
        reaching_rows(p, h, oh_lo, oh_hi);
        __m512 carry[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        float* const d = dxp + h * W;
        for (int64_t j0 = 0; 2 * j0 - 1 < W; j0 += 16) {
            const __m512i j = _mm512_add_epi32(_mm512_set1_epi32(int32_t(j0)), lane);
            const __m512i jj = _mm512_add_epi32(j, j);  // 2j
            const __mmask16 live = _mm512_cmplt_epi32_mask(j, _mm512_set1_epi32(int32_t(Q)));
            const __mmask16 left = live & _mm512_cmpgt_epi32_mask(j, _mm512_setzero_si512());
            const __mmask16 right = live & _mm512_cmplt_epi32_mask(_mm512_add_epi32(jj, one),
                                                                   _mm512_set1_epi32(int32_t(W)));
            const __m512i start = _mm512_add_epi32(_mm512_set1_epi32(int32_t(h * W - 1)), jj);
            const int64_t n = std::max<int64_t>(0, std::min<int64_t>(16, Q - j0));
            const __mmask8 n0 = __mmask8((1u << std::min<int64_t>(n, 8)) - 1);
            const __mmask8 n1 = __mmask8((1u << std::max<int64_t>(n - 8, 0)) - 1);
            __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
            for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
                // Whole vectors where the step is inside the row (masked ones are slow on Zen 5).
                const int64_t* iw = ix + oh * Q + j0;
                const __m512i w0 = n == 16 ? _mm512_loadu_si512(iw) : _mm512_maskz_loadu_epi64(n0, iw);
                const __m512i w1 = n == 16 ? _mm512_loadu_si512(iw + 8) : _mm512_maskz_loadu_epi64(n1, iw + 8);
                const __m512i at = _mm512_maskz_inserti64x4(
                    0xFF, _mm512_castsi256_si512(_mm512_maskz_cvtsepi64_epi32(0xFF, w0)),
                    _mm512_maskz_cvtsepi64_epi32(0xFF, w1), 1);
                const __m512 gv = n == 16 ? _mm512_loadu_ps(g + oh * Q + j0)
                                          : _mm512_maskz_loadu_ps(__mmask16(n0 | (n1 << 8)), g + oh * Q + j0);
                const __m512i pos = _mm512_sub_epi32(at, start);
                const __mmask16 m0 = left & _mm512_cmpeq_epi32_mask(pos, _mm512_setzero_si512());
                const __mmask16 m1 = live & _mm512_cmpeq_epi32_mask(pos, one);
                const __mmask16 m2 = right & _mm512_cmpeq_epi32_mask(pos, two);
                taken += __builtin_popcount(m0) + __builtin_popcount(m1) + __builtin_popcount(m2);
                const __m512 t2 = _mm512_maskz_mov_ps(m2, gv);
                __m512& c = carry[oh - oh_lo];
                even = _mm512_add_ps(even, _mm512_maskz_mov_ps(m1, gv));
                odd = _mm512_add_ps(_mm512_add_ps(odd, _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(
                                                           0xFFFF, _mm512_castps_si512(t2), _mm512_castps_si512(c), 15))),
                                    _mm512_maskz_mov_ps(m0, gv));
                c = t2;
            }
            // Columns 2 j0 - 1 .. 2 j0 + 30: (odd, even) pairs, clipped to [0, W).
            const __m512 out_lo = _mm512_permutex2var_ps(odd, lo, even);
            const __m512 out_hi = _mm512_permutex2var_ps(odd, hi, even);
            // Masked stores only where a vector crosses the row's ends, except that a row's
            // last vector may run on into the next row (written after it), not past the plane.
            const int64_t c0 = 2 * j0 - 1, end = h + 1 < p.H ? W + 16 : W;
            store_clipped_avx512(d, c0, W, end, out_lo);
            store_clipped_avx512(d, c0 + 16, W, end, out_hi);
        }
    }
}
#endif

}  // namespace

// NCHW: each plane zeroed and scattered into by one thread while it sits in cache, each
// index checked against its window (row from a double reciprocal, no integer division);
// where 2-wide windows tile the rows (max_bwd_pairs_row) and where 3-wide windows step by 2
// (max_bwd_w3s2_plane_*, the ResNet-50 stem's), each dx row written once instead, with the
// scatter's sums.
// NHWC: a gather, each input pixel's C channels written once from the outputs whose
// windows take it, compare and select across the channels; an index outside its window
// is never taken, so counting the takes against the indices that are not -1 checks them
// all.
template <typename T>
void max_pool_bwd(const Pool2dParams& p, const T* dy, const int64_t* idx, T* dx) {
    const int64_t HW = p.H * p.W, PQ = p.P * p.Q;
    // Indices may come from the caller: one that names no pixel of its output's window
    // is refused (the GPU's gather could not find it), not written.
    int64_t bad = 0;
    const bool pairs = p.kw == 2 && p.stride_w == 2 && p.pad_w == 0 && p.dil_w == 1 &&
                       p.stride_h == p.kh && p.pad_h == 0 && p.dil_h == 1 &&
                       p.P * p.kh <= p.H && p.Q * 2 <= p.W && HW <= INT32_MAX;
    if (p.layout == Layout::NCHW && pairs) {
        // Windows that tile the plane, 2 wide: each dx row written once, in order, from its
        // output row (max_bwd_pairs_row); rows and columns no window takes are zeros. Each
        // pixel is in one window, so the pixels taken, against the indices other than -1,
        // check them all (as the NHWC gather does).
        int64_t taken = 0, named = 0;
#pragma omp parallel for schedule(static) reduction(+ : taken, named)
        for (int64_t plane = 0; plane < p.N * p.C; ++plane) {
            const int64_t* ix = idx + plane * PQ;
            const T* g = dy + plane * PQ;
            T* dxp = dx + plane * HW;
            named += named_indices(ix, PQ);
            for (int64_t h = 0; h < p.H; ++h) {
                T* d = dxp + h * p.W;
                const int64_t oh = h / p.kh;
                int64_t w = 0;
                if (oh < p.P) {
                    taken += max_bwd_pairs_row(ix + oh * p.Q, g + oh * p.Q, p.Q, h * p.W, d);
                    w = 2 * p.Q;
                }
                std::fill(d + w, d + p.W, T(0));
            }
        }
        bad = named - taken;
#if FC_X86_ISA
    } else if (p.layout == Layout::NCHW && std::is_same<T, float>::value && isa() >= Isa::Avx2 &&
               max_bwd_w3s2_applies(p)) {
        const auto plane_fn = isa() == Isa::Avx512 ? max_bwd_w3s2_plane_avx512 : max_bwd_w3s2_plane_avx2;
        int64_t taken = 0, named = 0;
#pragma omp parallel for schedule(static) reduction(+ : taken, named)
        for (int64_t plane = 0; plane < p.N * p.C; ++plane)
            plane_fn(p, idx + plane * PQ, reinterpret_cast<const float*>(dy) + plane * PQ,
                     reinterpret_cast<float*>(dx) + plane * HW, taken, named);
        bad = named - taken;
#endif
    } else if (p.layout == Layout::NCHW) {
        const std::vector<PoolTaps> cols = column_taps(p, p.dil_w);
        const double inv_w = 1.0 / double(p.W);
#pragma omp parallel for schedule(static) reduction(+ : bad)
        for (int64_t plane = 0; plane < p.N * p.C; ++plane) {
            T* dxp = dx + plane * HW;
            std::fill(dxp, dxp + HW, T(0));
            const int64_t* ix = idx + plane * PQ;
            const T* g = dy + plane * PQ;
            for (int64_t oh = 0; oh < p.P; ++oh) {
                const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, p.dil_h, p.H);
                for (int64_t ow = 0; ow < p.Q; ++ow) {
                    const int64_t o = oh * p.Q + ow, at = ix[o];
                    if (at < 0 || at >= HW) {
                        bad += at != -1;
                        continue;
                    }
                    int64_t h = int64_t(double(at) * inv_w);
                    h -= h * p.W > at;
                    h += (h + 1) * p.W <= at;
                    if (on_taps(h, th, p.dil_h) && on_taps(at - h * p.W, cols[ow], p.dil_w))
                        dxp[at] += g[o];
                    else
                        ++bad;
                }
            }
        }
    } else {
        const Reach rows(p.H, p.P, p.kh, p.stride_h, p.pad_h, p.dil_h);
        const Reach cols(p.W, p.Q, p.kw, p.stride_w, p.pad_w, p.dil_w);
        int64_t taken = 0, named = 0;
#pragma omp parallel for collapse(2) schedule(static) reduction(+ : taken, named)
        for (int64_t n = 0; n < p.N; ++n)
            for (int64_t h = 0; h < p.H; ++h)
                taken += max_bwd_nhwc_row(p, rows, cols, n, h, dy, idx,
                                          dx + (n * p.H + h) * p.W * p.C, named);
        // Outputs no input pixel reaches (windows wholly in the padding) are named by none
        // of the rows above: their indices counted here.
        for (int64_t oh = 0; oh < p.P; ++oh)
            for (int64_t ow = 0; ow < p.Q; ++ow)
                if (rows.first[oh] < 0 || cols.first[ow] < 0)
                    for (int64_t n = 0; n < p.N; ++n)
                        for (int64_t c = 0; c < p.C; ++c)
                            named += idx[((n * p.P + oh) * p.Q + ow) * p.C + c] != -1;
        bad = named - taken;
    }
    FC_CHECK(bad == 0, "max_pool2d_backward: indices hold positions outside their pooling "
                       "windows (are they from this input and these pooling arguments?)");
}

// An NHWC average-pool row on the AVX-512 path (float), where the CPU has it; false: not
// done, the caller's loop runs.
inline bool avg_nhwc_row_fast(const Pool2dParams& p, const PoolTaps* cols, int64_t n, int64_t oh,
                              const float* x, float* y) {
#if FC_X86_ISA
    if (isa() == Isa::Avx512) {
        pool_nhwc_row_avx512<false, false>(p, cols, 1, 1, n, oh, x, y, nullptr);
        return true;
    }
#endif
    return false;
}
inline bool avg_nhwc_row_fast(const Pool2dParams&, const PoolTaps*, int64_t, int64_t,
                              const double*, double*) {
    return false;
}

// An NHWC average-pool row of few channels whose windows tile the image (stride = window,
// no padding, every window inside), along whole input rows rather than pixel by pixel:
// u[j] = the sum over the window's taps (t_h, t_w), in the taps' order, of input row
// t_h's element j + t_w * C, for every j of the row, then divided; output pixel q's
// channels are u's at q * kw * C. A pixel's C channels are too few for a vector; the
// row's Q * kw * C are many (LeNet's 2x2 pool, 6 channels, 28 columns: 168 floats).
// The sums and quotients are the pixel loop's, bit for bit. u: the row's scratch.
template <typename T>
__attribute__((always_inline)) inline void avg_nhwc_tiles_row_t(const Pool2dParams& p, int64_t n,
                                                                int64_t oh, T div, const T* x,
                                                                T* y, T* u) {
    const int64_t L = (p.Q * p.kw - p.kw + 1) * p.C;  // through the last pixel's first tap
    for (int64_t j = 0; j < L; ++j) u[j] = T(0);
    for (int64_t i = 0; i < p.kh; ++i) {
        const T* row = x + ((n * p.H + oh * p.kh + i) * p.W) * p.C;
        for (int64_t t = 0; t < p.kw; ++t) {
            const T* v = row + t * p.C;
            for (int64_t j = 0; j < L; ++j) u[j] += v[j];
        }
    }
    for (int64_t j = 0; j < L; ++j) u[j] /= div;
    T* out = y + (n * p.P + oh) * p.Q * p.C;
    for (int64_t q = 0; q < p.Q; ++q)
        for (int64_t c = 0; c < p.C; ++c) out[q * p.C + c] = u[q * p.kw * p.C + c];
}
void avg_nhwc_tiles_row_portable(const Pool2dParams& p, int64_t n, int64_t oh, float div,
                                 const float* x, float* y, float* u) {
    avg_nhwc_tiles_row_t(p, n, oh, div, x, y, u);
}
#if FC_X86_ISA
FC_TARGET_AVX2 void avg_nhwc_tiles_row_avx2(const Pool2dParams& p, int64_t n, int64_t oh,
                                            float div, const float* x, float* y, float* u) {
    avg_nhwc_tiles_row_t(p, n, oh, div, x, y, u);
}
FC_TARGET_AVX512 void avg_nhwc_tiles_row_avx512(const Pool2dParams& p, int64_t n, int64_t oh,
                                                float div, const float* x, float* y, float* u) {
    avg_nhwc_tiles_row_t(p, n, oh, div, x, y, u);
}
#endif
inline void avg_nhwc_tiles_row(const Pool2dParams& p, int64_t n, int64_t oh, float div,
                               const float* x, float* y, float* u) {
#if FC_X86_ISA
    if (isa() == Isa::Avx512) return avg_nhwc_tiles_row_avx512(p, n, oh, div, x, y, u);
    if (isa() == Isa::Avx2) return avg_nhwc_tiles_row_avx2(p, n, oh, div, x, y, u);
#endif
    avg_nhwc_tiles_row_portable(p, n, oh, div, x, y, u);
}
inline void avg_nhwc_tiles_row(const Pool2dParams& p, int64_t n, int64_t oh, double div,
                               const double* x, double* y, double* u) {
    avg_nhwc_tiles_row_t(p, n, oh, div, x, y, u);
}

template <typename T>
void avg_pool_fwd(const Pool2dParams& p, const T* x, T* y) {
    const std::vector<PoolTaps> cols = column_taps(p, 1);
    if (p.layout == Layout::NCHW) return pool_nchw_all<false>(p, cols, x, y);
    // Few channels: under 16 (2x2 pools, Zen 5, 64x56x56xC: C = 3, 8, 12 in 0.08, 0.13,
    // 0.21 ms against the pixel loops' 0.18-0.48; C = 16 0.28 against 0.23 on avx512).
    if (p.C < 16 && p.stride_h == p.kh && p.stride_w == p.kw && p.pad_h == 0 &&
        p.pad_w == 0 && p.P * p.kh <= p.H && p.Q * p.kw <= p.W) {
        const T div = T(pool_avg_divisor(p, 0, 0));  // every window whole: one divisor
#pragma omp parallel
        {
            std::vector<T> u(size_t(p.Q * p.kw * p.C));
#pragma omp for collapse(2) schedule(static)
            for (int64_t n = 0; n < p.N; ++n)
                for (int64_t oh = 0; oh < p.P; ++oh) avg_nhwc_tiles_row(p, n, oh, div, x, y, u.data());
        }
        return;
    }
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t oh = 0; oh < p.P; ++oh) {
            if (avg_nhwc_row_fast(p, cols.data(), n, oh, x, y)) continue;
            const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, 1, p.H);
            for (int64_t ow = 0; ow < p.Q; ++ow) {
                const PoolTaps& tw = cols[ow];
                T* out = y + ((n * p.P + oh) * p.Q + ow) * p.C;
                std::fill(out, out + p.C, T(0));
                for (int64_t i = th.t0; i < th.t1; ++i)
                    for (int64_t j = tw.t0; j < tw.t1; ++j) {
                        const T* v = x + ((n * p.H + th.start + i) * p.W + tw.start + j) * p.C;
                        for (int64_t c = 0; c < p.C; ++c) out[c] += v[c];
                    }
                const T div = T(pool_avg_divisor(p, oh, ow));
                for (int64_t c = 0; c < p.C; ++c) out[c] /= div;
            }
        }
}

// NCHW: each plane zeroed and scattered into by one thread while it sits in cache.
// NHWC: a gather, each input pixel's C channels written once, the sum over the outputs
// whose windows take it (in output raster order, as the scatter adds them), across the
// channels.
template <typename T>
void avg_pool_bwd(const Pool2dParams& p, const T* dy, T* dx) {
    const std::vector<PoolTaps> cols = column_taps(p, 1);
    const int64_t HW = p.H * p.W;
    const bool tiles = p.stride_h == p.kh && p.stride_w == p.kw && p.pad_h == 0 && p.pad_w == 0 &&
                       p.H == p.P * p.kh && p.W == p.Q * p.kw;
    if (p.layout == Layout::NCHW && tiles) {
        // Windows that tile the plane exactly: each dx row is its output row's quotients,
        // each repeated kw times, written once (no zeroing, no adds). 64 x 128 x 128^2,
        // 2x2, Zen 5: 87 ms (7.8 GB/s) by the scatter below.
#pragma omp parallel
        {
            std::vector<T> q(p.Q);
#pragma omp for collapse(2) schedule(static)
            for (int64_t plane = 0; plane < p.N * p.C; ++plane)
                for (int64_t oh = 0; oh < p.P; ++oh) {
                    const T* g = dy + (plane * p.P + oh) * p.Q;
                    for (int64_t ow = 0; ow < p.Q; ++ow) q[ow] = g[ow] / T(pool_avg_divisor(p, oh, ow));
                    T* d = dx + plane * HW + oh * p.kh * p.W;
                    if (p.kw == 2)
                        for (int64_t ow = 0; ow < p.Q; ++ow) d[2 * ow] = d[2 * ow + 1] = q[ow];
                    else
                        for (int64_t ow = 0; ow < p.Q; ++ow)
                            for (int64_t j = 0; j < p.kw; ++j) d[ow * p.kw + j] = q[ow];
                    for (int64_t i = 1; i < p.kh; ++i) std::copy_n(d, p.W, d + i * p.W);
                }
        }
        return;
    }
    if (p.layout == Layout::NCHW) {
#pragma omp parallel for schedule(static)
        for (int64_t plane = 0; plane < p.N * p.C; ++plane) {
            T* dxp = dx + plane * HW;
            std::fill(dxp, dxp + HW, T(0));
            for (int64_t oh = 0; oh < p.P; ++oh) {
                const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, 1, p.H);
                const T* g = dy + (plane * p.P + oh) * p.Q;
                for (int64_t ow = 0; ow < p.Q; ++ow) {
                    const PoolTaps& tw = cols[ow];
                    const T gd = g[ow] / T(pool_avg_divisor(p, oh, ow));
                    for (int64_t i = th.t0; i < th.t1; ++i) {
                        T* d = dxp + (th.start + i) * p.W + tw.start;
                        for (int64_t j = tw.t0; j < tw.t1; ++j) d[j] += gd;
                    }
                }
            }
        }
        return;
    }
    if (tiles) {
        // Windows that tile the image exactly (LeNet's 2x2 pools): every input pixel takes
        // one output's gradient, so each output's row of C quotients is copied to its
        // kh x kw pixels and nothing is zeroed or added (256 x 28^2 x 6, Zen 5: 0.64 ms
        // by the gather below, 0.31 ms so; PyTorch 0.41 ms).
#pragma omp parallel
        {
            std::vector<T> row(p.Q * p.C);
#pragma omp for collapse(2) schedule(static)
            for (int64_t n = 0; n < p.N; ++n)
                for (int64_t oh = 0; oh < p.P; ++oh) {
                    const T* g = dy + (n * p.P + oh) * p.Q * p.C;
                    for (int64_t ow = 0; ow < p.Q; ++ow) {
                        const T div = T(pool_avg_divisor(p, oh, ow));
                        for (int64_t c = 0; c < p.C; ++c) row[ow * p.C + c] = g[ow * p.C + c] / div;
                    }
                    // The window's first dx row element by element, then copies of it:
                    // a copy of C channels per pixel and row was a library call per 24
                    // bytes with LeNet's 6 (256 x 28^2 x 6, Zen 5: 0.28-0.32 ms, 0.18 so).
                    T* const d0 = dx + (n * p.H + oh * p.kh) * p.W * p.C;
                    for (int64_t ow = 0; ow < p.Q; ++ow) {
                        const T* src = row.data() + ow * p.C;
                        T* dst = d0 + ow * p.kw * p.C;
                        for (int64_t j = 0; j < p.kw; ++j, dst += p.C)
                            for (int64_t c = 0; c < p.C; ++c) dst[c] = src[c];
                    }
                    for (int64_t i = 1; i < p.kh; ++i) std::copy_n(d0, p.W * p.C, d0 + i * p.W * p.C);
                }
        }
        return;
    }
    const Reach rows(p.H, p.P, p.kh, p.stride_h, p.pad_h, 1);
    const Reach reach(p.W, p.Q, p.kw, p.stride_w, p.pad_w, 1);
    // Each output's divisor once a call, not once per pixel it reaches (with LeNet's 6
    // channels the divisor's arithmetic was most of a pixel's work).
    std::vector<T> divs(p.P * p.Q);
    for (int64_t oh = 0; oh < p.P; ++oh)
        for (int64_t ow = 0; ow < p.Q; ++ow) divs[oh * p.Q + ow] = T(pool_avg_divisor(p, oh, ow));
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t h = 0; h < p.H; ++h)
            for (int64_t w = 0; w < p.W; ++w) {
                T* d = dx + ((n * p.H + h) * p.W + w) * p.C;
                std::fill(d, d + p.C, T(0));
                for (int64_t r = rows.begin[h]; r < rows.begin[h + 1]; ++r)
                    for (int64_t k = reach.begin[w]; k < reach.begin[w + 1]; ++k) {
                        const int64_t o = rows.out[r] * p.Q + reach.out[k];
                        const T div = divs[o];
                        const T* g = dy + (n * p.P * p.Q + o) * p.C;
                        for (int64_t c = 0; c < p.C; ++c) d[c] += g[c] / div;
                    }
            }
}

// The mean of each of `count` contiguous planes of HW elements.
//   v1 one running double sum a plane: a chain of dependent adds (0.54x PyTorch on
//      32x2048 planes of 7x7, 2-core EPYC).
//   v2 eight partial sums a plane, indexed by constants so they stay in registers, in an
//      OpenMP loop whose function had an AVX2 clone (0.99x): the clone never reached the
//      loop, because GCC outlines an OpenMP body into one function built for the default
//      target, so the loop ran 4-wide SSE.
//   v3 the OpenMP loop hands out blocks of planes; float blocks of small planes run an
//      AVX2 function chosen at run time: two 8-wide chains a plane, folded in registers.
template <typename T>
__attribute__((always_inline)) inline void plane_means_block(const T* x, int64_t begin,
                                                             int64_t end, int64_t HW, T* y) {
    const double inv_hw = 1.0 / double(HW);
    for (int64_t plane = begin; plane < end; ++plane) {
        const T* xp = x + plane * HW;
        T a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0}, tail = 0;
        int64_t i = 0;
        for (; i + 16 <= HW; i += 16)
            for (int u = 0; u < 8; ++u) a[u] += xp[i + u], b[u] += xp[i + 8 + u];
        for (; i + 8 <= HW; i += 8)
            for (int u = 0; u < 8; ++u) a[u] += xp[i + u];
        for (; i < HW; ++i) tail += xp[i];
        for (int u = 0; u < 8; ++u) a[u] += b[u];
        if (HW <= 4096) {
            // Small planes (ResNet's 7x7): the fold itself is the cost, so a float tree
            // and one multiply; sixteen partial sums of <= 256 terms stay accurate.
            const T sum = (((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))) + tail;
            y[plane] = T(double(sum) * inv_hw);
        } else {
            double acc = double(tail);
            for (int u = 0; u < 8; ++u) acc += double(a[u]);
            y[plane] = T(acc * inv_hw);
        }
    }
}

#if FC_X86_ISA
// Small float planes on the avx2 and avx512 paths: two 8-wide sums a plane folded in
// registers (left to the compiler, the fold was eight scalar extracts and adds). The
// avx512 path runs this AVX2 code too: no 16-wide version has been written.
FC_TARGET_AVX2 void plane_means_block_avx2(const float* x, int64_t begin,
                                                           int64_t end, int64_t HW, float* y) {
    const double inv_hw = 1.0 / double(HW);
    for (int64_t plane = begin; plane < end; ++plane) {
        const float* xp = x + plane * HW;
        __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= HW; i += 16) {
            a = _mm256_add_ps(a, _mm256_loadu_ps(xp + i));
            b = _mm256_add_ps(b, _mm256_loadu_ps(xp + i + 8));
        }
        if (i + 8 <= HW) a = _mm256_add_ps(a, _mm256_loadu_ps(xp + i)), i += 8;
        float tail = 0;
        for (; i < HW; ++i) tail += xp[i];
        a = _mm256_add_ps(a, b);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        y[plane] = float(double(_mm_cvtss_f32(s) + tail) * inv_hw);
    }
}
#endif

inline void plane_means_block_any(const float* x, int64_t b, int64_t e, int64_t HW, float* y) {
#if FC_X86_ISA
    if (isa() >= Isa::Avx2 && HW <= 4096) return plane_means_block_avx2(x, b, e, HW, y);
#endif
    plane_means_block(x, b, e, HW, y);
}

inline void plane_means_block_any(const double* x, int64_t b, int64_t e, int64_t HW, double* y) {
    plane_means_block(x, b, e, HW, y);
}

template <typename T>
void plane_means(const T* x, int64_t count, int64_t HW, T* y) {
    const int64_t block = 64;  // planes per call of the cloned function
    const int64_t blocks = ceil_div(count, block);
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < blocks; ++k)
        plane_means_block_any(x, k * block, min64(count, (k + 1) * block), HW, y);
}

// One image's channel means, NHWC, for channels [c0, c0 + kMeanChunk): rows added as T in
// runs of 64, each run's sums then into double (as accurate as the NCHW path's float partial
// sums folded in double). Compiled per ISA from the same loops: with double sums per element
// and the baseline's SSE2, ResNet-50's head (32 x 7 x 7 x 2048) ran at 20 GB/s, 0.6x PyTorch.
constexpr int64_t kMeanChunk = 512;
template <typename T>
__attribute__((always_inline)) inline void nhwc_means(const T* x, int64_t HW, int64_t C, int64_t c0,
                                                      T* y) {
    const int64_t n = min64(kMeanChunk, C - c0);
    T part[kMeanChunk];
    double acc[kMeanChunk];
    for (int64_t c = 0; c < n; ++c) acc[c] = 0.0;
    for (int64_t i0 = 0; i0 < HW; i0 += 64) {
        for (int64_t c = 0; c < n; ++c) part[c] = T(0);
        for (int64_t i = i0; i < min64(HW, i0 + 64); ++i) {
            const T* row = x + i * C + c0;
            for (int64_t c = 0; c < n; ++c) part[c] += row[c];
        }
        for (int64_t c = 0; c < n; ++c) acc[c] += double(part[c]);
    }
    for (int64_t c = 0; c < n; ++c) y[c0 + c] = T(acc[c] / double(HW));
}
#if FC_X86_ISA
// The same with the run's sums of 8 vectors of channels held in registers (left to the
// compiler, each row's sums went through memory: 38 GB/s on the head above, against the
// NCHW path's 109 on the same cache-resident input).
template <typename S>
__attribute__((always_inline)) inline void nhwc_means_simd(const typename S::T* x, int64_t HW,
                                                           int64_t C, int64_t c0, typename S::T* y) {
    using T = typename S::T;
    using V = typename S::V;
    constexpr int L = S::L, NV = 8;
    const int64_t n = min64(kMeanChunk, C - c0);
    double acc[kMeanChunk];
    for (int64_t c = 0; c < n; ++c) acc[c] = 0.0;
    for (int64_t i0 = 0; i0 < HW; i0 += 64) {
        const int64_t i1 = min64(HW, i0 + 64);
        int64_t c = 0;
        for (; c + NV * L <= n; c += NV * L) {
            V a[NV];
            for (int v = 0; v < NV; ++v) a[v] = S::zero();
            for (int64_t i = i0; i < i1; ++i) {
                const T* row = x + i * C + c0 + c;
                for (int v = 0; v < NV; ++v) a[v] = S::add(a[v], S::load(row + v * L));
            }
            alignas(64) T part[NV * L];
            for (int v = 0; v < NV; ++v) S::store(part + v * L, a[v]);
            for (int j = 0; j < NV * L; ++j) acc[c + j] += double(part[j]);
        }
        for (; c < n; ++c) {
            T part = T(0);
            for (int64_t i = i0; i < i1; ++i) part += x[i * C + c0 + c];
            acc[c] += double(part);
        }
    }
    for (int64_t c = 0; c < n; ++c) y[c0 + c] = T(acc[c] / double(HW));
}
template <typename T>
FC_TARGET_AVX512 void nhwc_means_avx512(const T* x, int64_t HW, int64_t C, int64_t c0, T* y) {
    nhwc_means_simd<std::conditional_t<sizeof(T) == 4, Avx512Float, Avx512Double>>(x, HW, C, c0, y);
}
template <typename T>
FC_TARGET_AVX2 void nhwc_means_avx2(const T* x, int64_t HW, int64_t C, int64_t c0, T* y) {
    nhwc_means_simd<std::conditional_t<sizeof(T) == 4, Avx2Float, Avx2Double>>(x, HW, C, c0, y);
}
#endif
template <typename T>
void nhwc_means_any(const T* x, int64_t HW, int64_t C, int64_t c0, T* y) {
#if FC_X86_ISA
    if (isa() == Isa::Avx512) return nhwc_means_avx512(x, HW, C, c0, y);
    if (isa() == Isa::Avx2) return nhwc_means_avx2(x, HW, C, c0, y);
#endif
    nhwc_means(x, HW, C, c0, y);
}
template <typename T>
void global_avg_pool_fwd(const GlobalPoolParams& p, const T* x, T* y) {
    const int64_t HW = p.H * p.W;
    if (p.layout == Layout::NCHW) {
        plane_means(x, p.N * p.C, HW, y);
        return;
    }
    const int64_t chunks = ceil_div(p.C, kMeanChunk);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t k = 0; k < chunks; ++k)
            nhwc_means_any(x + n * HW * p.C, HW, p.C, k * kMeanChunk, y + n * p.C);
}

// Every input pixel gets dy / HW: a fill per plane (NCHW), a copy of the image's row of
// C values per pixel (NHWC), both along contiguous memory.
template <typename T>
void global_avg_pool_bwd(const GlobalPoolParams& p, const T* dy, T* dx) {
    const int64_t HW = p.H * p.W;
    if (p.layout == Layout::NCHW) {
#pragma omp parallel for schedule(static)
        for (int64_t plane = 0; plane < p.N * p.C; ++plane)
            std::fill(dx + plane * HW, dx + (plane + 1) * HW, dy[plane] / T(HW));
        return;
    }
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t i = 0; i < HW; ++i) {
            T* d = dx + (n * HW + i) * p.C;
            const T* g = dy + n * p.C;
            for (int64_t c = 0; c < p.C; ++c) d[c] = g[c] / T(HW);
        }
}

#define FC_INSTANTIATE(T)                                                                   \
    template void max_pool_fwd<T>(const Pool2dParams&, const T*, T*, int64_t*);            \
    template void max_pool_bwd<T>(const Pool2dParams&, const T*, const int64_t*, T*);      \
    template void avg_pool_fwd<T>(const Pool2dParams&, const T*, T*);                      \
    template void avg_pool_bwd<T>(const Pool2dParams&, const T*, T*);                      \
    template void global_avg_pool_fwd<T>(const GlobalPoolParams&, const T*, T*);           \
    template void global_avg_pool_bwd<T>(const GlobalPoolParams&, const T*, T*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace cpu
}  // namespace fastconv

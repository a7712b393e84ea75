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
#include <cmath>
#include <limits>
#include <vector>

#include "../common/check.h"
#include "../common/shapes.h"
#include "cpu_ops.h"
#include "isa.h"

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
    if (isa() == Isa::Avx512) return pool_nchw_avx512<kMax>(p, cols, q0, q1, x, y, b0, b1);
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

}  // namespace

template <typename T>
void max_pool_fwd(const Pool2dParams& p, const T* x, T* y, int64_t* idx) {
    const std::vector<PoolTaps> cols = column_taps(p, p.dil_w);
    const T lowest = -std::numeric_limits<T>::infinity();
    if (p.layout == Layout::NCHW && !idx) return pool_nchw_all<true>(p, cols, x, y);
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
                    if (idx) idx[o] = arg;
                }
            }
        }
        return;
    }
    // NHWC: each output pixel is a run of C channels, updated in place tap by tap from
    // contiguous input runs, so the channel loop vectorises.
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t oh = 0; oh < p.P; ++oh) {
            const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, p.dil_h, p.H);
            for (int64_t ow = 0; ow < p.Q; ++ow) {
                const PoolTaps& tw = cols[ow];
                const int64_t o = ((n * p.P + oh) * p.Q + ow) * p.C;
                T* best = y + o;
                std::fill(best, best + p.C, lowest);
                if (idx) std::fill(idx + o, idx + o + p.C, int64_t(-1));
                for (int64_t i = th.t0; i < th.t1; ++i) {
                    const int64_t h = th.start + i * p.dil_h;
                    for (int64_t j = tw.t0; j < tw.t1; ++j) {
                        const int64_t at = h * p.W + tw.start + j * p.dil_w;
                        const T* v = x + (n * p.H * p.W + at) * p.C;
                        if (idx) {
                            int64_t* arg = idx + o;
                            for (int64_t c = 0; c < p.C; ++c)
                                if (takes(v[c], best[c])) best[c] = v[c], arg[c] = at;
                        } else {
                            for (int64_t c = 0; c < p.C; ++c)
                                best[c] = takes(v[c], best[c]) ? v[c] : best[c];
                        }
                    }
                }
            }
        }
}

template <typename T>
void max_pool_bwd(const Pool2dParams& p, const T* dy, const int64_t* idx, T* dx) {
    const int64_t HW = p.H * p.W, PQ = p.P * p.Q;
    std::fill(dx, dx + p.N * p.C * HW, T(0));
    // Indices may come from the caller: one that names no pixel of its output's window
    // is refused (the GPU's gather could not find it), not written.
    int64_t bad = 0;
    if (p.layout == Layout::NCHW) {
#pragma omp parallel for schedule(static) reduction(+ : bad)
        for (int64_t plane = 0; plane < p.N * p.C; ++plane)
            for (int64_t o = 0; o < PQ; ++o) {
                const int64_t at = idx[plane * PQ + o];
                if (pool_window_holds(p, o / p.Q, o % p.Q, at))
                    dx[plane * HW + at] += dy[plane * PQ + o];
                else
                    bad += at != -1;
            }
    } else {
#pragma omp parallel for schedule(static) reduction(+ : bad)
        for (int64_t n = 0; n < p.N; ++n)
            for (int64_t o = 0; o < PQ; ++o)
                for (int64_t c = 0; c < p.C; ++c) {
                    const int64_t at = idx[(n * PQ + o) * p.C + c];
                    if (pool_window_holds(p, o / p.Q, o % p.Q, at))
                        dx[(n * HW + at) * p.C + c] += dy[(n * PQ + o) * p.C + c];
                    else
                        bad += at != -1;
                }
    }
    FC_CHECK(bad == 0, "max_pool2d_backward: indices hold positions outside their pooling "
                       "windows (are they from this input and these pooling arguments?)");
}

template <typename T>
void avg_pool_fwd(const Pool2dParams& p, const T* x, T* y) {
    const std::vector<PoolTaps> cols = column_taps(p, 1);
    if (p.layout == Layout::NCHW) return pool_nchw_all<false>(p, cols, x, y);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t oh = 0; oh < p.P; ++oh) {
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

template <typename T>
void avg_pool_bwd(const Pool2dParams& p, const T* dy, T* dx) {
    const std::vector<PoolTaps> cols = column_taps(p, 1);
    const bool nchw = p.layout == Layout::NCHW;
    const int64_t planes = nchw ? p.N * p.C : p.N;
    const int64_t lanes = nchw ? 1 : p.C;
    std::fill(dx, dx + p.N * p.C * p.H * p.W, T(0));
#pragma omp parallel for schedule(static)
    for (int64_t plane = 0; plane < planes; ++plane) {
        T* dxp = dx + plane * p.H * p.W * lanes;
        for (int64_t oh = 0; oh < p.P; ++oh) {
            const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, 1, p.H);
            for (int64_t ow = 0; ow < p.Q; ++ow) {
                const PoolTaps& tw = cols[ow];
                const T div = T(pool_avg_divisor(p, oh, ow));
                const T* g = dy + ((plane * p.P + oh) * p.Q + ow) * lanes;
                for (int64_t i = th.t0; i < th.t1; ++i)
                    for (int64_t j = tw.t0; j < tw.t1; ++j) {
                        T* d = dxp + ((th.start + i) * p.W + tw.start + j) * lanes;
                        for (int64_t c = 0; c < lanes; ++c) d[c] += g[c] / div;
                    }
            }
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

template <typename T>
void global_avg_pool_fwd(const GlobalPoolParams& p, const T* x, T* y) {
    const int64_t HW = p.H * p.W;
    if (p.layout == Layout::NCHW) {
        plane_means(x, p.N * p.C, HW, y);
        return;
    }
#pragma omp parallel
    {
        std::vector<double> acc(p.C);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < p.N; ++n) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t i = 0; i < HW; ++i)
                for (int64_t c = 0; c < p.C; ++c) acc[c] += x[(n * HW + i) * p.C + c];
            for (int64_t c = 0; c < p.C; ++c) y[n * p.C + c] = T(acc[c] / double(HW));
        }
    }
}

template <typename T>
void global_avg_pool_bwd(const GlobalPoolParams& p, const T* dy, T* dx) {
    const int64_t HW = p.H * p.W;
    const bool nchw = p.layout == Layout::NCHW;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t i = 0; i < HW; ++i)
            for (int64_t c = 0; c < p.C; ++c)
                dx[nchw ? (n * p.C + c) * HW + i : (n * HW + i) * p.C + c] =
                    dy[n * p.C + c] / T(HW);
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

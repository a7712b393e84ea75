// conv2d_bwd.cpp: conv2d backward on the CPU: grad input, grad weight, grad bias, and
// the activation's derivative. The CUDA twin is csrc/cuda/conv2d_bwd.cu.
//
// Every result is deterministic: each element is summed in a fixed order that depends
// on the shapes alone, never on the thread count or scheduling.
//
// Variants:
//   direct  grad input gathers, for each input pixel, the outputs whose windows reach it;
//           grad weight sums x * dy over (n, p, q) for each tap. The readable spec.
//   gemm    grad input: col = w_g^T . dy (one GEMM per image, group and pixel chunk),
//           then col2im adds it back into the image. Each task owns whole images, so
//           no two threads touch one element.
//           grad weight: dw_g += dy . col^T image after image (beta 1); the GEMM splits
//           the output matrix between threads and keeps each element's sum in order.
//   blocked grad weight where the forward's blocked variant applies (K <= 24, NCHW,
//           groups 1, float, AVX2 + FMA): no im2col. dy is turned pixel-major (K
//           channels per pixel, padded to 8 * VK) and the input padded once per image;
//           a block of 12 / VK taps x 8 * VK channels accumulates in 12 ymm registers
//           over the pixels, one dy load per channel vector and one input broadcast per
//           tap. Images go in fixed chunks of kChunk, each chunk's partial sum kept
//           apart and the partials added in chunk order: the bits depend on the shapes
//           only. Grad input runs as gemm.
//   winograd2, winograd4  grad input of a 3x3, stride-1 layer is the stride-1 convolution of dy
//           with the flipped, channel-transposed filters, padded by 2 - pad: it runs the
//           forward's Winograd code (winograd.cpp). Grad weight sums over the tiles
//           (A dy A^T) . (B^T x B), one GEMM per alpha^2 position, then G^T . G
//           (winograd_bwd_filter). auto takes both by the forward's tile rule.
//   auto    also: grad input of a stride-1 layer with few input channels through the
//           forward's rowvec kernel (bwd_data_rowvec), and gemm grad weight of small
//           NCHW images batched into one GEMM (bwd_filter_gemm_images).
// Depthwise runs as gemm (the forward's depthwise variant has no backward of its own yet).
//
// conv2d_avgpool (the LeNet-5 block) comes back through avgpool_act_bwd, which spreads
// the pooled gradient over each window and through the activation's derivative in one
// pass, and then through the three gradients above.
#include <algorithm>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "../common/activation.h"
#include "../common/shapes.h"
#include "conv2d_common.h"
#include "cpu_ops.h"
#include "gemm.h"
#include "parallel.h"

namespace fastconv {
namespace cpu {

template <typename T>
void activation_bwd(Activation act, int64_t count, const T* y, const T* dy, T* dz) {
    // In double, rounded once: 1 - y*y in float loses most of its digits where tanh
    // saturates (y = 0.9999), and grad bias sums these with heavy cancellation.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i)
        dz[i] = T(double(dy[i]) * activate_grad(act, double(y[i])));
}

namespace {

// out[i] = d[i] * act'(a[i]) in double, rounded once (a null: out[i] = d[i]). One loop per
// activation, so each vectorises with no switch inside.
template <Activation A, typename T>
__attribute__((always_inline)) inline void times_grad(const double* d, const T* a, T* out,
                                                      int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = T(d[i] * activate_grad(A, double(a[i])));
}

template <typename T>
__attribute__((always_inline)) inline void times_grad(Activation act, const double* d, const T* a,
                                                      T* out, int64_t n) {
    if (a) switch (act) {
            case Activation::Relu: return times_grad<Activation::Relu>(d, a, out, n);
            case Activation::Tanh: return times_grad<Activation::Tanh>(d, a, out, n);
            case Activation::Sigmoid: return times_grad<Activation::Sigmoid>(d, a, out, n);
            default: break;
        }
    for (int64_t i = 0; i < n; ++i) out[i] = T(d[i]);
}

// Rows [row0, row1) of avgpool_act_bwd's dz (one row: (n, k, h) in NCHW, the K channels of
// pixel (n, h, w) in NHWC).
template <typename T>
__attribute__((always_inline)) inline void avgpool_act_rows(const Conv2dPoolParams& bp,
                                                            const T* dy, const T* a, T* dz,
                                                            int64_t row0, int64_t row1) {
    const Conv2dParams& p = bp.conv;
    const int64_t PP = p.P / bp.pool_h, QQ = p.Q / bp.pool_w;
    const double area = double(bp.pool_h * bp.pool_w);
    const bool nchw = p.layout == Layout::NCHW;
    const int64_t len = nchw ? p.Q : p.K;
    // The row's elements under a pooled output (NCHW: the columns the floor keeps).
    const int64_t valid = nchw ? std::min(len, QQ * bp.pool_w) : len;
    constexpr int64_t kChunk = 256;
    for (int64_t row = row0; row < row1; ++row) {
        T* out = dz + row * len;
        const T* act = a ? a + row * len : nullptr;
        int64_t h, w = 0;  // w: the pixel's column (NHWC only)
        const T* g;        // the pooled gradient row (NCHW) or pixel (NHWC) above this row
        if (nchw) {
            h = row % p.P;
            g = dy + (row / p.P * PP + h / bp.pool_h) * QQ;
        } else {
            w = row % p.Q, h = row / p.Q % p.P;
            g = dy + ((row / (p.P * p.Q) * PP + h / bp.pool_h) * QQ + w / bp.pool_w) * p.K;
        }
        if (h / bp.pool_h >= PP || (!nchw && w / bp.pool_w >= QQ)) {  // dropped by the floor
            std::fill(out, out + len, T(0));
            continue;
        }
        // d = the pooled gradient / window area, in double; then times act' (in double,
        // rounded once, as activation_bwd), a chunk at a time. NCHW walks the pooled
        // column with a counter: v1's division per element (i / pool_w) and the switch
        // on the activation inside the loop kept it scalar (LeNet C1's block at batch
        // 128: 0.72 ms for this and grad bias).
        double d[kChunk];
        int64_t qi = 0, j = 0;  // NCHW: the pooled column and the place in its window
        for (int64_t i0 = 0; i0 < valid; i0 += kChunk) {
            const int64_t n = std::min(kChunk, valid - i0);
            if (nchw && bp.pool_w == 2) {  // LeNet's windows: each quotient twice, no counter
                for (int64_t i = 0; i < n; i += 2) d[i] = d[i + 1] = double(g[(i0 + i) / 2]) / area;
            } else if (nchw) {
                for (int64_t i = 0; i < n; ++i) {
                    d[i] = double(g[qi]) / area;
                    if (++j == bp.pool_w) j = 0, ++qi;
                }
            } else {
                for (int64_t i = 0; i < n; ++i) d[i] = double(g[i0 + i]) / area;
            }
            times_grad(p.act, d, act ? act + i0 : nullptr, out + i0, n);
        }
        std::fill(out + valid, out + len, T(0));
    }
}

// Per-ISA builds of the rows (isa.h). fp-contract off: a * a and 1 - that stay two roundings
// on every path, as in the baseline build and the CUDA twin (the emulator compares dz bit
// for bit), never one FMA.
#define FC_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
template <typename T>
FC_TARGET_AVX2 FC_NO_CONTRACT void avgpool_act_rows_avx2(const Conv2dPoolParams& bp, const T* dy,
                                                         const T* a, T* dz, int64_t r0, int64_t r1) {
    avgpool_act_rows(bp, dy, a, dz, r0, r1);
}
template <typename T>
FC_TARGET_AVX512 FC_NO_CONTRACT void avgpool_act_rows_avx512(const Conv2dPoolParams& bp,
                                                             const T* dy, const T* a, T* dz,
                                                             int64_t r0, int64_t r1) {
    avgpool_act_rows(bp, dy, a, dz, r0, r1);
}
template <typename T>
FC_NO_CONTRACT void avgpool_act_rows_portable(const Conv2dPoolParams& bp, const T* dy, const T* a,
                                              T* dz, int64_t r0, int64_t r1) {
    avgpool_act_rows(bp, dy, a, dz, r0, r1);
}

}  // namespace

template <typename T>
void avgpool_act_bwd(const Conv2dPoolParams& bp, const T* dy, const T* a, T* dz) {
    const Conv2dParams& p = bp.conv;
    const int64_t rows = p.layout == Layout::NCHW ? p.N * p.K * p.P : p.N * p.P * p.Q;
    auto* const run = isa() == Isa::Avx512 ? avgpool_act_rows_avx512<T>
                      : isa() == Isa::Avx2 ? avgpool_act_rows_avx2<T>
                                           : avgpool_act_rows_portable<T>;
#pragma omp parallel
    {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        run(bp, dy, a, dz, rows * t / nt, rows * (t + 1) / nt);
    }
}

namespace {

template <typename T>
void bwd_data_direct(const Conv2dParams& p, const T* dy, const T* w, T* dx) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t c = 0; c < p.C; ++c) {
            const int64_t g = c / Cg, cg = c % Cg;
            for (int64_t h = 0; h < p.H; ++h)
                for (int64_t wi = 0; wi < p.W; ++wi) {
                    T acc = T(0);
                    const int64_t p0 = first_out_reaching(h, p.R, p.stride_h, p.pad_h, p.dil_h);
                    const int64_t p1 = last_out_reaching(h, p.stride_h, p.pad_h, p.P);
                    const int64_t q0 = first_out_reaching(wi, p.S, p.stride_w, p.pad_w, p.dil_w);
                    const int64_t q1 = last_out_reaching(wi, p.stride_w, p.pad_w, p.Q);
                    for (int64_t k = g * Kg; k < (g + 1) * Kg; ++k)
                        for (int64_t oh = p0; oh < p1; ++oh) {
                            const int64_t rr = h + p.pad_h - oh * p.stride_h;  // = r * dil_h
                            if (rr % p.dil_h) continue;
                            for (int64_t ow = q0; ow < q1; ++ow) {
                                const int64_t ss = wi + p.pad_w - ow * p.stride_w;
                                if (ss % p.dil_w) continue;
                                acc += dy[offset4(p.layout, n, k, oh, ow, p.K, p.P, p.Q)] *
                                       w[weight_offset(p.layout, k, cg, rr / p.dil_h,
                                                       ss / p.dil_w, p.K, Cg, p.R, p.S)];
                            }
                        }
                    dx[offset4(p.layout, n, c, h, wi, p.C, p.H, p.W)] = acc;
                }
        }
}

template <typename T>
void bwd_data_gemm(const Conv2dParams& p, const T* dy, const T* w, T* dx) {
    const ConvGemmShape s(p, sizeof(T));
    const bool nchw = p.layout == Layout::NCHW;
    std::fill(dx, dx + p.N * p.C * p.H * p.W, T(0));
    // Tasks own (image, group) pairs: the chunks of one pair add into the same pixels,
    // so they run in turn inside the task.
    const int64_t tasks = p.N * p.groups;
    for_each_task(
        tasks, [&] { return workspace<T>(Slot::Columns, s.col_elems); },
        [&](int64_t t, T* col) {
            const int64_t n = t / p.groups, g = t % p.groups;
            for (int64_t j0 = 0; j0 < s.PQ; j0 += s.chunk) {
                const int64_t j1 = std::min(j0 + s.chunk, s.PQ), cols = j1 - j0;
                if (nchw) {
                    // (red x Kg) . (Kg x pixels): w_g transposed.
                    gemm<T>(true, false, s.red, cols, s.Kg, w + g * s.Kg * s.red, s.red,
                            dy + (n * p.K + g * s.Kg) * s.PQ + j0, s.PQ, T(0), col, cols);
                    col2im_nchw(p, col, n, g, j0, j1, dx);
                } else {
                    // (pixels x Kg) . (Kg x red): w_g (red x Kg, ld K) transposed.
                    gemm<T>(false, true, cols, s.red, s.Kg, dy + (n * s.PQ + j0) * p.K + g * s.Kg,
                            p.K, w + g * s.Kg, p.K, T(0), col, s.red);
                    col2im_nhwc(p, col, n, g, j0, j1, dx);
                }
            }
        });
}

template <typename T>
void bwd_filter_direct(const Conv2dParams& p, const T* dy, const T* x, T* dw) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t k = 0; k < p.K; ++k)
        for (int64_t c = 0; c < Cg; ++c) {
            const int64_t ci = (k / Kg) * Cg + c;
            for (int64_t r = 0; r < p.R; ++r)
                for (int64_t s = 0; s < p.S; ++s) {
                    T acc = T(0);
                    for (int64_t n = 0; n < p.N; ++n)
                        for (int64_t oh = 0; oh < p.P; ++oh) {
                            const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
                            if (h < 0 || h >= p.H) continue;
                            for (int64_t ow = 0; ow < p.Q; ++ow) {
                                const int64_t wi = ow * p.stride_w - p.pad_w + s * p.dil_w;
                                if (wi < 0 || wi >= p.W) continue;
                                acc += dy[offset4(p.layout, n, k, oh, ow, p.K, p.P, p.Q)] *
                                       x[offset4(p.layout, n, ci, h, wi, p.C, p.H, p.W)];
                            }
                        }
                    dw[weight_offset(p.layout, k, c, r, s, p.K, Cg, p.R, p.S)] = acc;
                }
        }
}

// bwd_filter_gemm's NCHW case on small images: one GEMM per group of images, whose pixels
// make the reduction. Image by image, the 7x7 layer of ResNet-50 summed 49 pixels per GEMM
// into all of dw (512 x 4608, 9.4 MB) read and written again for every image: 0.76x
// PyTorch's grad weight at batch 32. dy's rows of the group's images are copied side by
// side (Kg x images * PQ) and their im2col columns follow each other in one matrix.
template <typename T>
void bwd_filter_gemm_images(const Conv2dParams& p, const ConvGemmShape& s, const T* dy,
                            const T* x, T* dw) {
    const int64_t per = std::max<int64_t>(
        1, std::min(ceil_div(kMinGemmPixels, s.PQ), kColBudget / int64_t(sizeof(T)) / (s.red * s.PQ)));
    const int64_t ld = per * s.PQ;
    T* const col = workspace<T>(Slot::Columns, s.red * ld);
    T* const dyg = workspace<T>(Slot::Rows, s.Kg * ld);
    for (int64_t n0 = 0; n0 < p.N; n0 += per) {
        const int64_t nb = std::min(per, p.N - n0), cols = nb * s.PQ;
        for (int64_t g = 0; g < p.groups; ++g) {
            for (int64_t i = 0; i < nb; ++i) {
                im2col_nchw(p, x, n0 + i, g, 0, s.PQ, col + i * s.PQ, cols);
                for (int64_t k = 0; k < s.Kg; ++k)
                    std::copy_n(dy + ((n0 + i) * p.K + g * s.Kg + k) * s.PQ, s.PQ,
                                dyg + k * cols + i * s.PQ);
            }
            // dw_g (Kg x red) += dy (Kg x pixels) . col^T (pixels x red)
            gemm<T>(false, true, s.Kg, s.red, cols, dyg, cols, col, cols, T(1),
                    dw + g * s.Kg * s.red, s.red);
        }
    }
}

template <typename T>
void bwd_filter_gemm(const Conv2dParams& p, const T* dy, const T* x, T* dw) {
    const ConvGemmShape s(p, sizeof(T));
    const bool nchw = p.layout == Layout::NCHW;
    std::fill(dw, dw + p.K * s.red, T(0));
    if (nchw && !s.is_pointwise && s.PQ < kMinGemmPixels)
        return bwd_filter_gemm_images(p, s, dy, x, dw);
    T* const col = workspace<T>(Slot::Columns, s.col_elems);
    for (int64_t n = 0; n < p.N; ++n)
        for (int64_t g = 0; g < p.groups; ++g)
            for (int64_t j0 = 0; j0 < s.PQ; j0 += s.chunk) {
                const int64_t j1 = std::min(j0 + s.chunk, s.PQ), cols = j1 - j0;
                if (nchw) {
                    // dw_g (Kg x red) += dy (Kg x pixels) . col^T (pixels x red)
                    const T* B = x + (n * p.C + g * s.Cg) * p.H * p.W + j0;
                    if (!s.is_pointwise) {
                        im2col_nchw_shared(p, x, n, g, j0, j1, col, cols);
                        B = col;
                    }
                    gemm<T>(false, true, s.Kg, s.red, cols, dy + (n * p.K + g * s.Kg) * s.PQ + j0,
                            s.PQ, B, s.is_pointwise ? s.PQ : cols, T(1), dw + g * s.Kg * s.red,
                            s.red);
                } else {
                    // dw_g (red x Kg, ld K) += col^T (red x pixels) . dy (pixels x Kg)
                    im2col_nhwc(p, x, n, g, j0, j1, col);
                    gemm<T>(true, false, s.red, s.Kg, cols, col, s.red,
                            dy + (n * s.PQ + j0) * p.K + g * s.Kg, p.K, T(1), dw + g * s.Kg, p.K);
                }
            }
}

#if FC_BLOCKED
constexpr int64_t kChunk = 8;  // images per partial sum of the blocked grad weight

// The partial grad weight of images [n0, n1): part[t * KV + k] for taps t = (c, r, s), in
// blocks of TB taps x VK vectors of S::L channels.
template <typename S, int VK, int TB>
__attribute__((always_inline)) inline void bwd_filter_blocked_chunk(
    const Conv2dParams& p, const BlockedShape& b, const float* dy, const float* x,
    int64_t n0, int64_t n1, float* xp, float* dyt, float* part) {
    using V = typename S::V;
    constexpr int L = S::L, KV = L * VK;
    const int64_t taps = p.C * p.R * p.S, PQ = p.P * p.Q;
    std::fill(part, part + taps * KV, 0.f);
    // A tap's offset into the padded image, for whole blocks of TB taps: the last block's
    // extra taps read offset 0 (in bounds) and are never stored. Every loop over acc then
    // has a constant bound, so acc stays in registers; a tail loop `i < tb` had put all 12
    // accumulators on the stack, a load and a store around every FMA (GCC 12).
    std::vector<int64_t> tap_off(ceil_div(taps, TB) * TB, 0);
    for (int64_t c = 0; c < p.C; ++c)
        for (int64_t r = 0; r < p.R; ++r)
            for (int64_t s = 0; s < p.S; ++s)
                tap_off[(c * p.R + r) * p.S + s] = (c * b.Hp + r * p.dil_h) * b.Wp + s * p.dil_w;
    for (int64_t n = n0; n < n1; ++n) {
        pad_image(p, b, x + n * p.C * p.H * p.W, xp);
        const float* g = dy + n * p.K * PQ;
        for (int64_t j = 0; j < PQ; ++j)
            for (int64_t k = 0; k < KV; ++k) dyt[j * KV + k] = k < p.K ? g[k * PQ + j] : 0.f;
        for (int64_t t0 = 0; t0 < taps; t0 += TB) {
            const int64_t tb = std::min<int64_t>(TB, taps - t0);
            V acc[TB][VK];
            for (int i = 0; i < TB; ++i)
                for (int v = 0; v < VK; ++v) acc[i][v] = S::zero();
            const int64_t* off = tap_off.data() + t0;
            for (int64_t oh = 0; oh < p.P; ++oh)
                for (int64_t ow = 0; ow < p.Q; ++ow) {
                    const float* d = dyt + (oh * p.Q + ow) * KV;
                    V dv[VK];
                    for (int v = 0; v < VK; ++v) dv[v] = S::load(d + L * v);
                    const float* xo = xp + oh * p.stride_h * b.Wp + ow * p.stride_w;
                    for (int i = 0; i < TB; ++i) {
                        const V xv = S::bcast(xo + off[i]);
                        for (int v = 0; v < VK; ++v) acc[i][v] = S::fma(xv, dv[v], acc[i][v]);
                    }
                }
            for (int i = 0; i < TB; ++i)
                for (int v = 0; v < VK; ++v) {
                    if (i >= tb) continue;
                    float* dst = part + (t0 + i) * KV + L * v;
                    S::store(dst, S::add(S::load(dst), acc[i][v]));
                }
        }
    }
}

using BlockedChunk = void (*)(const Conv2dParams&, const BlockedShape&, const float*, const float*,
                              int64_t, int64_t, float*, float*, float*);

// AVX2: 12 / VK taps x VK vectors of 8 channels in 12 ymm accumulators; one vector (K <= 8,
// on avx512 too): 13 taps, so that a 5x5 filter's 25 run in two blocks, not 12, 12 and 1 of
// 12 (LeNet C1's grad weight and bias at batch 128: 0.69 -> 0.57 ms, 2 Zen 5 threads).
template <int VK>
FC_TARGET_AVX2 void bwd_filter_blocked_chunk_avx2(const Conv2dParams& p, const BlockedShape& b,
                                                  const float* dy, const float* x, int64_t n0,
                                                  int64_t n1, float* xp, float* dyt, float* part) {
    bwd_filter_blocked_chunk<Avx2Float, VK, VK == 1 ? 13 : 12 / VK>(p, b, dy, x, n0, n1, xp, dyt, part);
}
// AVX-512: 12 taps x VK vectors of 16 channels, 12 or 24 zmm accumulators.
template <int VK>
FC_TARGET_AVX512 void bwd_filter_blocked_chunk_avx512(const Conv2dParams& p,
                                                      const BlockedShape& b, const float* dy,
                                                      const float* x, int64_t n0, int64_t n1,
                                                      float* xp, float* dyt, float* part) {
    bwd_filter_blocked_chunk<Avx512Float, VK, 12>(p, b, dy, x, n0, n1, xp, dyt, part);
}

template <int KV>
void bwd_filter_blocked_vk(const Conv2dParams& p, BlockedChunk chunk, const float* dy,
                           const float* x, float* dw) {
    const BlockedShape b(p, 1);
    const int64_t taps = p.C * p.R * p.S, chunks = ceil_div(p.N, kChunk);
    std::vector<float> parts(chunks * taps * KV);
#pragma omp parallel
    {
        float* const xp = workspace<float>(Slot::Padded, p.C * b.Hp * b.Wp);
        float* const dyt = workspace<float>(Slot::Rows, p.P * p.Q * KV);
#pragma omp for schedule(static)
        for (int64_t ch = 0; ch < chunks; ++ch)
            chunk(p, b, dy, x, ch * kChunk, std::min(p.N, (ch + 1) * kChunk), xp, dyt,
                  parts.data() + ch * taps * KV);
    }
    // Chunks added in order; dw is (K, C, R, S), taps innermost.
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < p.K; ++k)
        for (int64_t t = 0; t < taps; ++t) {
            float acc = 0.f;
            for (int64_t ch = 0; ch < chunks; ++ch) acc += parts[(ch * taps + t) * KV + k];
            dw[k * taps + t] = acc;
        }
}
#endif

void bwd_filter_blocked(const Conv2dParams& p, const float* dy, const float* x, float* dw) {
#if FC_BLOCKED
    if (blocked_bwd_applies(p)) {
        // K <= 8 stays on ymm under avx512 too: a zmm would hold 8 or more zero channels.
        if (isa() == Isa::Avx512 && p.K > 8 && p.K <= 16)
            return bwd_filter_blocked_vk<16>(p, bwd_filter_blocked_chunk_avx512<1>, dy, x, dw);
        if (isa() == Isa::Avx512 && p.K > 16)
            return bwd_filter_blocked_vk<32>(p, bwd_filter_blocked_chunk_avx512<2>, dy, x, dw);
        if (p.K <= 8) return bwd_filter_blocked_vk<8>(p, bwd_filter_blocked_chunk_avx2<1>, dy, x, dw);
        if (p.K <= 16) return bwd_filter_blocked_vk<16>(p, bwd_filter_blocked_chunk_avx2<2>, dy, x, dw);
        return bwd_filter_blocked_vk<24>(p, bwd_filter_blocked_chunk_avx2<3>, dy, x, dw);
    }
#endif
    bwd_filter_gemm(p, dy, x, dw);
}

void bwd_filter_blocked(const Conv2dParams& p, const double* dy, const double* x, double* dw) {
    bwd_filter_gemm(p, dy, x, dw);
}

}  // namespace

namespace {

// Grad input of a stride-1 layer with few input channels as the blocked forward convolution
// of dy with the flipped, channel-transposed filters, where that runs the rowvec kernel
// (vectors along dx's rows; conv2d_common.h). LeNet C2's grad input (128 images, 2 threads,
// Zen 5): avx512 gemm 0.56 ms, this 0.44; avx2 (256 images) gemm + col2im 1.40 ms, this
// 1.25, and 0.95 with the filter rows that read dy's zero padding skipped. (Tried with v4's channel vectors it lost, 6.8 -> 15.1 ms:
// 6 channels in 8 lanes.) false: not taken.
bool bwd_data_rowvec(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
    if (p.stride_h != 1 || p.stride_w != 1 || p.dil_h != 1 || p.dil_w != 1 || p.groups != 1 ||
        p.pad_h > p.R - 1 || p.pad_w > p.S - 1)
        return false;
    const Conv2dParams q = winograd::bwd_data_as_forward(p);
    // One input channel (q.K 1: half the kernel's two filters' FMAs wasted) loses to gemm:
    // LeNet C1's grad input, 128 images, 0.50 against 0.47 ms (avx2), 0.42 against 0.36
    // (avx512).
    if (q.K < 2 || !blocked_takes_rowvec(q)) return false;
    // w'[c, k, r, s] = w[k, c, R-1-r, S-1-s]
    const int64_t RS = p.R * p.S;
    std::vector<float> wt(p.C * p.K * RS);
    for (int64_t k = 0; k < p.K; ++k)
        for (int64_t c = 0; c < p.C; ++c)
            for (int64_t t = 0; t < RS; ++t) wt[(c * p.K + k) * RS + t] = w[(k * p.C + c) * RS + RS - 1 - t];
    conv2d_fwd<float>(q, ConvVariant::Blocked, dy, wt.data(), nullptr, dx, nullptr);
    return true;
}
bool bwd_data_rowvec(const Conv2dParams&, const double*, const double*, double*) { return false; }

}  // namespace

template <typename T>
void conv2d_bwd_data(const Conv2dParams& p, ConvVariant v, const T* dy, const T* w, T* dx) {
    if (v == ConvVariant::Direct) return bwd_data_direct(p, dy, w, dx);
    if (v == ConvVariant::Auto && bwd_data_rowvec(p, dy, w, dx)) return;
    if (v == ConvVariant::Auto && winograd::applies(p.R, p.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w))
        v = auto_winograd(winograd::bwd_data_as_forward(p));
    if (v == ConvVariant::Winograd2) return winograd_bwd_data(p, 2, dy, w, dx);
    if (v == ConvVariant::Winograd4) return winograd_bwd_data(p, 4, dy, w, dx);
    bwd_data_gemm(p, dy, w, dx);
}

template <typename T>
void conv2d_bwd_filter(const Conv2dParams& p, ConvVariant v, const T* dy, const T* x, T* dw) {
    if (v == ConvVariant::Direct) return bwd_filter_direct(p, dy, x, dw);
    if (v == ConvVariant::Winograd2) return winograd_bwd_filter(p, 2, dy, x, dw);
    if (v == ConvVariant::Winograd4) return winograd_bwd_filter(p, 4, dy, x, dw);
    if (v == ConvVariant::Blocked ||
        (v == ConvVariant::Auto && std::is_same<T, float>::value && blocked_bwd_applies(p)))
        return bwd_filter_blocked(p, dy, x, dw);
    if (v == ConvVariant::Auto && winograd::applies(p.R, p.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w)) {
        v = auto_winograd(p);  // the forward's rule; measured on grad weight too (NOTES.md)
        if (v == ConvVariant::Winograd2 || v == ConvVariant::Winograd4)
            return winograd_bwd_filter(p, v == ConvVariant::Winograd2 ? 2 : 4, dy, x, dw);
    }
    bwd_filter_gemm(p, dy, x, dw);
}

template <typename T>
void conv2d_bwd_bias(const Conv2dParams& p, const T* dy, T* db) {
    const int64_t PQ = p.P * p.Q;
    const bool nchw = p.layout == Layout::NCHW;
    // A long sum of gradients that largely cancel: accumulated in double, so the float32
    // result is within one rounding of the exact sum. Eight partial sums (element j into sum
    // j % 8 of its plane) added in a fixed tree, not one chain of dependent adds (v1's single
    // accumulator ran at one add per FP latency: ~0.3 ms of LeNet C1's 128 x 6 x 784 at 2
    // threads). Images go in fixed chunks of kImages, each chunk's sums added in chunk order:
    // the bits depend on the shapes only, never on the thread count.
    constexpr int64_t kImages = 8;
    constexpr int kSums = 8;
    const int64_t chunks = ceil_div(p.N, kImages);
    // The sums of channel k over images [n0, n1), as the tree of kSums partial sums.
    auto sum = [&](int64_t k, int64_t n0, int64_t n1) {
        double acc[kSums] = {};
        for (int64_t n = n0; n < n1; ++n) {
            const T* base = nchw ? dy + (n * p.K + k) * PQ : dy + n * PQ * p.K + k;
            const int64_t step = nchw ? 1 : p.K;
            int64_t j = 0;
            for (; j + kSums <= PQ; j += kSums)
                for (int l = 0; l < kSums; ++l) acc[l] += base[(j + l) * step];
            for (int l = 0; j < PQ; ++j, ++l) acc[l] += base[j * step];
        }
        return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    };
    // Chunks shared out by images: each thread reads the images whose dz it wrote
    // (avgpool_act_bwd and the grad weight split them the same way; parallel.h, "Same
    // owner"). Split by channels, LeNet C1's block at batch 128 read half of dz from the
    // other core's cache, 0.54-0.69 ms for this and avgpool_act_bwd where the two vCPUs
    // shared no L3; split by images, 0.22 in either placement. Few chunks: by channels.
    std::vector<double> part(size_t(chunks * p.K));  // chunk c's sum of channel k at c * K + k
    auto chunk_sum = [&](int64_t c, int64_t k) {
        part[c * p.K + k] = sum(k, c * kImages, std::min(p.N, (c + 1) * kImages));
    };
    if (chunks >= 2 * int64_t(max_threads())) {
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < chunks; ++c)
            for (int64_t k = 0; k < p.K; ++k) chunk_sum(c, k);
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < p.K; ++k)
            for (int64_t c = 0; c < chunks; ++c) chunk_sum(c, k);
    }
    for (int64_t k = 0; k < p.K; ++k) {
        double total = 0.0;
        for (int64_t c = 0; c < chunks; ++c) total += part[c * p.K + k];
        db[k] = T(total);
    }
}

#define FC_INSTANTIATE(T)                                                                    \
    template void activation_bwd<T>(Activation, int64_t, const T*, const T*, T*);           \
    template void avgpool_act_bwd<T>(const Conv2dPoolParams&, const T*, const T*, T*);      \
    template void conv2d_bwd_data<T>(const Conv2dParams&, ConvVariant, const T*, const T*, T*); \
    template void conv2d_bwd_filter<T>(const Conv2dParams&, ConvVariant, const T*, const T*,  \
                                       T*);                                                  \
    template void conv2d_bwd_bias<T>(const Conv2dParams&, const T*, T*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace cpu
}  // namespace fastconv

// winograd.cu: 3x3, stride-1, undilated conv2d forward and grad input on the GPU by
// Winograd's minimal filtering, F(2x2, 3x3) and F(4x4, 3x3), float32, NCHW and NHWC, any
// padding and groups. The CPU twin is csrc/cpu/winograd.cpp; both run the matrices, the
// 2-D transforms of one tile and the tile index math of csrc/common/winograd.h.
//
//   y = act(x (*) w + b + residual)   through   Y = A^T [ sum_c (G g_c G^T) . (B^T d_c B) ] A
//
// Variants (ConvVariant::Winograd2 / Winograd4; conv2d_fwd.cu and conv2d_bwd.cu dispatch):
//   winograd2  F(2x2): 4x4 patches, 16 products per 2x2 outputs, 2.25x fewer multiplies
//              than the implicit GEMM's 9 per output. Exact on small integers.
//   winograd4  F(4x4): 6x6 patches, 36 products per 4x4 outputs, 4x fewer; more rounding
//              (winograd.h). Calls with fewer than winograd::kFloatF4MinOutputs outputs run
//              its kernels on double scratch (the CPU's rule and reason).
// Grad input is the forward convolution of dy with the weight rotated 180 degrees and
// transposed (K <-> C within each group), padded by 2 - pad (winograd.h,
// bwd_data_as_forward): the filter transform reads the weight that way (FilterTaps) and
// the other kernels are the forward's.
//
// One call is four launches over three scratch arrays from the stream-ordered pool (alpha =
// m + 2, e < alpha^2 a position of the transformed tile, T = N * TH * TW tiles per group):
//   wino_filter  one thread per (group, channel c, filter k): U[g][e][c][k] = (G g G^T)[e].
//   wino_input   one thread per (channel, tile): the alpha x alpha patch gathered with zeros
//                outside the image, V[g][e] = B^T d B as a (Cg x T) matrix (NCHW: tiles
//                contiguous, threads along tiles) or (T x Cg) (NHWC: channels contiguous,
//                threads along channels), so the gather and the store both run along the
//                axis that is contiguous in x.
//   wino_gemm    the alpha^2 x groups GEMMs M[g][e] (Kg x T) = U[g][e]^T (Kg x Cg) .
//                V[g][e] (Cg x T): the forward implicit GEMM's tiling (64 filters x 64
//                tiles per block of 256 threads, 16-deep slices of both operands in shared
//                memory, 4 x 4 outputs a thread), stored in V's orientation.
//   wino_output  one thread per (filter, tile): Y = A^T M A, then bias, residual and the
//                activation fused into the store, clipped at P and Q (the last tiles of a
//                row or column may hang past them: their extra outputs are dropped).
// Each kernel is a grid-stride loop in the index type I chosen on the host (int32_t where
// every index and offset fits: cuda_common.cuh); (channel, tile) -> (g, c, n, th, tw) go
// through DivMod.
#include <type_traits>

#include "../common/activation.h"
#include "../common/check.h"
#include "../common/winograd.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "implicit_gemm.cuh"
#include "winograd.cuh"

namespace fastconv {
namespace cuda {

namespace {

using winograd::static_for;

// Where tap t = r * 3 + s of filter k, channel c of group g of the convolution being computed
// lies in the weight: w[g * gs + c * cs + k * ks + (reversed ? 8 - t : t) * ts].
struct FilterTaps {
    int64_t gs, cs, ks, ts;
    bool reversed;
};

// The forward p's filters (grad_input false), or its grad input's: w'[c, k, r, s] =
// w[k, c, 2 - r, 2 - s] with the forward's filters as the channels. Weight (K, Cg, 3, 3)
// for NCHW, (3, 3, Cg, K) for NHWC, with p's Cg = C / groups and Kg = K / groups.
FilterTaps filter_taps(const Conv2dParams& p, bool grad_input) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
    const bool nchw = p.layout == Layout::NCHW;
    if (!grad_input) return nchw ? FilterTaps{Kg * Cg * 9, 9, Cg * 9, 1, false}
                                 : FilterTaps{Kg, p.K, 1, Cg * p.K, false};
    // Channel c of the grad input's convolution is p's filter g * Kg + c; its filter k is
    // p's input channel k of the group.
    return nchw ? FilterTaps{Kg * Cg * 9, Cg * 9, 9, 1, true}
                : FilterTaps{Kg, 1, p.K, Cg * p.K, true};
}

// The sizes of one call, for the convolution q being computed (the forward, or the grad
// input as a forward convolution).
struct WinoShape {
    int64_t Cg, Kg;         // channels and filters per group
    int64_t TH, TW, T;      // tile rows and columns of an image; T = N * TH * TW
    int64_t t_tiles, k_tiles, gemm_tiles;  // the GEMMs' 64 x 64 blocks over all (g, e)
};

// The GEMM's block: kWK filters x kWT tiles, kWC channels a slice, 256 threads in a 16 x 16
// grid of 4 x 4 outputs (the forward implicit GEMM's numbers, conv2d_fwd.cu).
constexpr int kWK = 64, kWT = 64, kWC = 16;
constexpr int kWGrid = 16, kWPer = 4;
static_assert(kWGrid * kWGrid == kThreads && kWGrid * kWPer == kWK && kWK == kWT);
static_assert(kWK * kWC == 4 * kThreads);  // each thread loads 4 elements of each slice

// The divisions of the transforms' thread index i, built once on the host: i -> (lane, rest)
// by `lane` (T in NCHW, where i = channel * T + tile; the channel count in NHWC, where
// i = tile * channels + channel), channel -> (g, c) by `group`, tile -> (n, th, tw).
template <typename I>
struct TileDiv {
    DivMod<I> lane, group, tw, th;
    TileDiv() = default;
    TileDiv(Layout L, int64_t channels, int64_t per_group, const WinoShape& s)
        : lane(L == Layout::NCHW ? s.T : channels), group(per_group), tw(s.TW), th(s.TH) {}
};

// (channel, tile) of thread index i, and the tile's (n, th, tw).
template <typename I>
struct TileAt {
    I g, c, t, n, th, tw;
};

template <Layout L, typename I>
__device__ __forceinline__ TileAt<I> tile_at(const TileDiv<I>& dv, I i) {
    TileAt<I> a;
    I ch, r;
    if (L == Layout::NCHW)
        a.t = dv.lane.divmod(i, ch);
    else
        ch = dv.lane.divmod(i, a.t);
    a.c = dv.group.divmod(ch, a.g);
    a.tw = dv.tw.divmod(a.t, r);
    a.th = dv.th.divmod(r, a.n);
    return a;
}

// ---------------------------------------------------------------------------- kernels

// U[((g * alpha^2 + e) * Cg + c) * Kg + k] = (G g G^T)[e] for every (g, c, k), k fastest.
template <int m, typename S, typename I>
__global__ void __launch_bounds__(kThreads)
    wino_filter(WinoShape s, I groups, FilterTaps f, DivMod<I> by_kg, DivMod<I> by_cg,
                const float* __restrict__ w, S* __restrict__ U) {
    constexpr int a2 = (m + 2) * (m + 2);
    const I Cg = by_cg.d, Kg = by_kg.d, count = groups * Cg * Kg;
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        I gc, g;
        const I k = by_kg.divmod(i, gc);
        const I c = by_cg.divmod(gc, g);
        const float* src = w + g * I(f.gs) + c * I(f.cs) + k * I(f.ks);
        const I ts = I(f.ts);
        S taps[9], u[a2];
        static_for<0, 9>([&](auto t_) {
            constexpr int t = decltype(t_)::value;
            taps[t] = S(src[(f.reversed ? 8 - t : t) * ts]);
        });
        winograd::filter_transform<m>(taps, u);
        S* dst = U + (g * a2 * Cg + c) * Kg + k;
        static_for<0, a2>([&](auto e) { dst[decltype(e)::value * Cg * Kg] = u[decltype(e)::value]; });
    }
}

// V[g][e] for every (channel, tile) of q: (Cg x T), element (c, t) at c * T + t, in NCHW;
// (T x Cg), at t * Cg + c, in NHWC.
template <int m, Layout L, typename S, typename I>
__global__ void __launch_bounds__(kThreads)
    wino_input(Conv2dParams q, WinoShape s, TileDiv<I> dv, const float* __restrict__ x,
               S* __restrict__ V) {
    constexpr int a = m + 2, a2 = a * a;
    constexpr bool nchw = L == Layout::NCHW;
    const I C = I(q.C), H = I(q.H), W = I(q.W), Cg = dv.group.d, T = I(s.T);
    const I count = C * T;
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const TileAt<I> at = tile_at<L>(dv, i);
        const I h0 = I(winograd::tile_origin(at.th, m, q.pad_h));
        const I w0 = I(winograd::tile_origin(at.tw, m, q.pad_w));
        const I ch = at.g * Cg + at.c;
        // Pixel (h, w) of this channel at x[base + h * hs + w * ws].
        const I hs = nchw ? W : W * C, ws = nchw ? I(1) : C;
        const float* base = x + (nchw ? (at.n * C + ch) * H * W : at.n * H * W * C + ch);
        bool row_in[a], col_in[a];
        static_for<0, a>([&](auto j_) {
            constexpr int j = decltype(j_)::value;
            row_in[j] = h0 + j >= 0 && h0 + j < H;
            col_in[j] = w0 + j >= 0 && w0 + j < W;
        });
        S d[a2], v[a2];
        static_for<0, a2>([&](auto e_) {
            constexpr int e = decltype(e_)::value, r = e / a, c = e % a;
            d[e] = row_in[r] && col_in[c] ? S(base[(h0 + r) * hs + (w0 + c) * ws]) : S(0);
        });
        winograd::input_transform<m>(d, v);
        S* dst = V + at.g * a2 * Cg * T + (nchw ? at.c * T + at.t : at.t * Cg + at.c);
        static_for<0, a2>([&](auto e) { dst[decltype(e)::value * Cg * T] = v[decltype(e)::value]; });
    }
}

// M[g][e] = U[g][e]^T V[g][e] for all g, e: (Kg x T), element (k, t) at k * T + t, in NCHW;
// (T x Kg), at t * Kg + k, in NHWC. A block computes kWK filters x kWT tiles of one (g, e).
template <Layout L, typename S, typename I>
__global__ void __launch_bounds__(kThreads)
    wino_gemm(WinoShape s, const S* __restrict__ U, const S* __restrict__ V, S* __restrict__ M) {
    constexpr bool nchw = L == Layout::NCHW;
    // Us's loader writes rows; Vs's writes columns in NHWC (16 channels of one tile), which
    // the padding spreads over 16 banks.
    __shared__ S Us[kWC][kWK];
    __shared__ S Vs[kWC][kWT + 1];
    const int tid = threadIdx.x;
    // Threads of a warp share a filter and run along tiles where M runs along tiles (NCHW),
    // and the other way round in NHWC, so that the stores of M coalesce.
    const int tk = nchw ? tid / kWGrid : tid % kWGrid;
    const int tt = nchw ? tid % kWGrid : tid / kWGrid;
    const I Cg = I(s.Cg), Kg = I(s.Kg), T = I(s.T);
    const I t_tiles = I(s.t_tiles), k_tiles = I(s.k_tiles), tiles = I(s.gemm_tiles);
    for (I tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        // Once per block tile: plain divisions.
        const I t0 = tile % t_tiles * kWT;
        const I k0 = tile / t_tiles % k_tiles * kWK;
        const I ge = tile / (t_tiles * k_tiles);  // g * alpha^2 + e
        const S* Ue = U + ge * Cg * Kg;
        const S* Ve = V + ge * Cg * T;
        S acc[kWPer][kWPer] = {};
        for (I c0 = 0; c0 < Cg; c0 += kWC) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {  // U: row c = tid / 64 + 4 i, column k = tid % 64
                const int row = tid / kWK + 4 * i;
                const I c = c0 + row, k = k0 + tid % kWK;
                Us[row][tid % kWK] = c < Cg && k < Kg ? Ue[c * Kg + k] : S(0);
            }
            if (nchw) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {  // row c = tid / 64 + 4 i, column t = tid % 64
                    const int row = tid / kWT + 4 * i;
                    const I c = c0 + row, t = t0 + tid % kWT;
                    Vs[row][tid % kWT] = c < Cg && t < T ? Ve[c * T + t] : S(0);
                }
            } else {
                const I c = c0 + tid % kWC;
#pragma unroll
                for (int i = 0; i < 4; ++i) {  // row c = tid % 16, column t = tid / 16 + 16 i
                    const int col = tid / kWC + 16 * i;
                    const I t = t0 + col;
                    Vs[tid % kWC][col] = c < Cg && t < T ? Ve[t * Cg + c] : S(0);
                }
            }
            __syncthreads();
#pragma unroll
            for (int cc = 0; cc < kWC; ++cc) {
                S u[kWPer], v[kWPer];
#pragma unroll
                for (int i = 0; i < kWPer; ++i) u[i] = Us[cc][tk + kWGrid * i];
#pragma unroll
                for (int j = 0; j < kWPer; ++j) v[j] = Vs[cc][tt + kWGrid * j];
#pragma unroll
                for (int i = 0; i < kWPer; ++i)
#pragma unroll
                    for (int j = 0; j < kWPer; ++j) acc[i][j] += u[i] * v[j];
            }
            __syncthreads();  // the slices are overwritten by the next ones
        }
        S* Me = M + ge * Kg * T;
#pragma unroll
        for (int i = 0; i < kWPer; ++i) {
            const I k = k0 + tk + kWGrid * i;
            if (k >= Kg) continue;
#pragma unroll
            for (int j = 0; j < kWPer; ++j) {
                const I t = t0 + tt + kWGrid * j;
                if (t < T) Me[nchw ? k * T + t : t * Kg + k] = acc[i][j];
            }
        }
    }
}

// y = act(A^T M A + b + residual) for every (filter, tile) of q, clipped at P and Q. The
// residual add is the hook for a ResNet block's skip connection: y-shaped, added after the
// bias and before the activation.
template <int m, Layout L, typename S, typename I>
__global__ void __launch_bounds__(kThreads)
    wino_output(Conv2dParams q, WinoShape s, TileDiv<I> dv, const S* __restrict__ M,
                const float* __restrict__ b, const float* __restrict__ residual,
                float* __restrict__ y) {
    constexpr int a = m + 2, a2 = a * a;
    constexpr bool nchw = L == Layout::NCHW;
    const I K = I(q.K), P = I(q.P), Q = I(q.Q), Kg = dv.group.d, T = I(s.T);
    const I count = K * T;
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const TileAt<I> at = tile_at<L>(dv, i);  // (g, filter c of the group, tile)
        const I k = at.g * Kg + at.c;
        const S* src = M + at.g * a2 * Kg * T + (nchw ? at.c * T + at.t : at.t * Kg + at.c);
        S z[a2], out[m * m];
        static_for<0, a2>([&](auto e) { z[decltype(e)::value] = src[decltype(e)::value * Kg * T]; });
        winograd::output_transform<m>(z, 1, out);
        const float bias = q.has_bias ? b[k] : 0.f;
        const I oh0 = at.th * m, ow0 = at.tw * m;
        static_for<0, m * m>([&](auto o_) {
            constexpr int o = decltype(o_)::value;
            const I oh = oh0 + o / m, ow = ow0 + o % m;
            if (oh < P && ow < Q) {
                const I idx = offset4i(L, at.n, k, oh, ow, K, P, Q);
                float v = float(out[o]) + bias;
                if (residual) v += residual[idx];
                y[idx] = activate(q.act, v);
            }
        });
    }
}

// ------------------------------------------------------------------------------ host

WinoShape wino_shape(const Conv2dParams& q, int m) {
    WinoShape s;
    s.Cg = q.C / q.groups, s.Kg = q.K / q.groups;
    s.TH = winograd::tile_count(q.P, m), s.TW = winograd::tile_count(q.Q, m);
    s.T = q.N * s.TH * s.TW;
    s.t_tiles = ceil_div(s.T, kWT), s.k_tiles = ceil_div(s.Kg, kWK);
    s.gemm_tiles = s.t_tiles * s.k_tiles * q.groups * (m + 2) * (m + 2);
    return s;
}

// Scratch from the stream-ordered pool, handed back on the same stream on every path
// (exceptions included), as conv2d_bwd.cu's split-K partials.
struct PoolScratch {
    void* dev = nullptr;
    cudaStream_t stream;
    ~PoolScratch() {
        if (dev) cudaFreeAsync(dev, stream);
    }
};

// y = act(x (*) w + b + residual) for the 3x3, stride-1 convolution q whose filters f reads
// from w, in F(m x m) with scratch and transforms in S.
template <int m, typename S>
void run(const Conv2dParams& q, const FilterTaps& f, const float* x, const float* w,
         const float* b, const float* residual, float* y, cudaStream_t stream) {
    constexpr int64_t a2 = (m + 2) * (m + 2);
    const WinoShape s = wino_shape(q, m);
    const int64_t nu = q.groups * a2 * s.Cg * s.Kg, nv = q.groups * a2 * s.Cg * s.T,
                  nm = q.groups * a2 * s.Kg * s.T;
    PoolScratch scratch{nullptr, stream};
    FC_CUDA_CHECK(cudaMallocAsync(&scratch.dev, sizeof(S) * (nu + nv + nm), stream));
    S* U = static_cast<S*>(scratch.dev);
    S* V = U + nu;
    S* M = V + nv;
    // The largest index any kernel forms: the scratch arrays (a GEMM block's loads and
    // stores stay within them), x, y, the weight and the patches' coordinates (conv_extent),
    // the GEMM's block count.
    const int64_t extent = max64(max64(conv_extent(q), max64(nu, max64(nv, nm))),
                                 s.gemm_tiles + max64(q.C, q.K) * s.T);
    with_index_type(extent, [&](auto index) {
        using I = decltype(index);
        const DivMod<I> by_cg(s.Cg), by_kg(s.Kg);
        wino_filter<m, S, I><<<blocks_for(q.groups * s.Cg * s.Kg, kThreads), kThreads, 0, stream>>>(
            s, I(q.groups), f, by_kg, by_cg, w, U);
        FC_CUDA_CHECK_LAUNCH();
        const unsigned int in_blocks = blocks_for(q.C * s.T, kThreads),
                           out_blocks = blocks_for(q.K * s.T, kThreads),
                           gemm_blocks = blocks_for(s.gemm_tiles, 1);
        const auto launch = [&](auto layout) {
            constexpr Layout L = decltype(layout)::value;
            const TileDiv<I> in(L, q.C, s.Cg, s), out(L, q.K, s.Kg, s);
            wino_input<m, L, S, I><<<in_blocks, kThreads, 0, stream>>>(q, s, in, x, V);
            FC_CUDA_CHECK_LAUNCH();
            wino_gemm<L, S, I><<<gemm_blocks, kThreads, 0, stream>>>(s, U, V, M);
            FC_CUDA_CHECK_LAUNCH();
            wino_output<m, L, S, I><<<out_blocks, kThreads, 0, stream>>>(q, s, out, M, b, residual, y);
        };
        if (q.layout == Layout::NCHW)
            launch(std::integral_constant<Layout, Layout::NCHW>());
        else
            launch(std::integral_constant<Layout, Layout::NHWC>());
        FC_CUDA_CHECK_LAUNCH();
    });
}

// F(4x4) in double below winograd::kFloatF4MinOutputs outputs (winograd.h says why).
void dispatch(const Conv2dParams& q, int m, const FilterTaps& f, const float* x,
              const float* w, const float* b, const float* residual, float* y,
              cudaStream_t stream) {
    if (m == 2) return run<2, float>(q, f, x, w, b, residual, y, stream);
    if (q.N * q.K * q.P * q.Q < winograd::kFloatF4MinOutputs)
        return run<4, double>(q, f, x, w, b, residual, y, stream);
    run<4, float>(q, f, x, w, b, residual, y, stream);
}

void check_applies(const Conv2dParams& p, int m) {
    FC_CHECK(m == 2 || m == 4, "Winograd F(m x m, 3 x 3) is built for m = 2 and 4");
    FC_CHECK(winograd::applies(p.R, p.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w),
             "the winograd variants need a 3x3 kernel, stride 1 and dilation 1");
}

}  // namespace

void winograd_conv2d_fwd(const Conv2dParams& p, int m, const float* x, const float* w,
                         const float* b, const float* residual, float* y, cudaStream_t stream) {
    check_applies(p, m);
    if (p.N * p.K * p.P * p.Q <= 0) return;
    dispatch(p, m, filter_taps(p, false), x, w, b, residual, y, stream);
}

void winograd_conv2d_bwd_data(const Conv2dParams& p, int m, const float* dy, const float* w,
                              float* dx, cudaStream_t stream) {
    check_applies(p, m);
    if (p.N * p.C * p.H * p.W <= 0) return;
    const Conv2dParams q = winograd::bwd_data_as_forward(p);
    dispatch(q, m, filter_taps(p, true), dy, w, nullptr, nullptr, dx, stream);
}

}  // namespace cuda
}  // namespace fastconv

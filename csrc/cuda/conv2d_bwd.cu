// conv2d_bwd.cu: conv2d backward on the GPU, float32, NCHW and NHWC: the activation's
// derivative, grad input, grad weight and grad bias. The CPU twin is
// csrc/cpu/conv2d_bwd.cpp; the layouts and weight layouts are the forward's.
//
// Every result is deterministic without atomics: each element is produced by one thread,
// or by one block whose threads take fixed strided shares of the sum and meet in
// block_sum's fixed tree, or (grad weight GEMM) as split partials added in a fixed
// order, so identical runs give identical bits.
//
// Kernels (one per result; the ConvVariant argument chooses grad input's and grad weight's):
//   activation_bwd  element-wise dz = dy * act'(y), in double rounded once (the CPU's).
//   avgpool_act_bwd the LeNet-5 block's (conv2d_avgpool's) first step, element-wise over
//                   the full-resolution dz: dy of the pooled output above it / window
//                   area * act'(a), 0 where the pooling's floor dropped the pixel; then
//                   the three kernels below.
//   bwd_data        direct (the gather): one thread per input pixel gathers the outputs
//                   whose windows reach it (first_out_reaching / last_out_reaching, then
//                   the dilation divisibility test), for each filter of its group; the
//                   CPU's bwd_data_direct with the filter loop moved innermost. Gathering
//                   instead of scattering col2im-style is what removes the atomics. The
//                   readable spec, and the choice for few channels (LeNet, depthwise):
//                   every multiply-add loads its weight and dy element from memory, and
//                   every pixel re-reads the weight of its channel.
//                   implicit_gemm: the transposed convolution as the forward's GEMM, per
//                   stride phase and group, dx_g (N*Hs*Ws pixels x Cg) = gather of dy (x
//                   taps*Kg) . the weight at the phase's taps (taps*Kg x Cg), in 64 x 64
//                   tiles of 256 threads, 4 x 4 a thread, slices of 16 filters of one tap
//                   staged in shared memory, so every loaded value feeds 64 multiply-adds.
//                   The input pixels are split by phase (h % stride_h, w % stride_w)
//                   (implicit_gemm.cuh): the pixels of a tile share one set of taps, so a
//                   stride-2 layer does the forward's multiply-adds, not 4x them, and the
//                   main loop has no divisibility test and no division. Deterministic:
//                   one thread per dx element, taps and filters summed in a fixed order.
//                   Auto: the GEMM from 16 channels and 16 filters a group
//                   (conv2d_bwd_data_auto_variant; provisional until timed on a GPU).
//                   implicit_gemm on tensor cores (p.precision TF32 / TF32x3;
//                   conv2d_bwd_tc.cu): the same phase split and per-element contract
//                   through tc_gemm.cuh's main loop, 128 pixels x 64 channels a tile,
//                   the reduction padded to 32 filters a tap, dy and the weight moved by
//                   16-byte async copies in NHWC (Kg a multiple of 4): each k-step of a
//                   warp feeds 4 (TF32) or 12 (TF32x3) MMAs of 16 x 16 x 8 from 4 fragment
//                   loads, where the SIMT tile does 16 FMAs a thread for 8 shared loads.
//   bwd_filter      reduce: one block per weight element (k, c, r, s): its 256 threads
//                   stride over the N*P*Q products dy * x, then block_sum. Every thread
//                   re-reads dy for each weight element, so large layers crawl (ResNet's
//                   3x3: 590k blocks over 6272 products each). The readable spec, and the
//                   choice for small weights.
//                   gemm: per group, dW_g (Kg x Cg*R*S) = dy_g^T (Kg x M) . col (M x
//                   Cg*R*S), M = N*P*Q, in 64 x 64 tiles of 256 threads (4 x 4 a thread,
//                   the forward's implicit GEMM with the reduction over pixels; col is
//                   gathered, never built). Split-K with a fixed order: the pixels go in
//                   chunks of kSplitPixels, each chunk's partial tile is written to a
//                   scratch, and a second kernel adds the partials in chunk order, so the
//                   bits depend on the shapes only. The scratch is the caller's (the
//                   Python layer allocates conv2d_bwd_filter_workspace bytes through
//                   torch's or CuPy's allocator, which keep it); without one it comes
//                   from the stream-ordered pool, which hands memory back to the driver
//                   at every synchronisation (7-10 MB re-mapped per ResNet call).
//                   gemm on tensor cores (p.precision TF32 / TF32x3; conv2d_bwd_tc.cu):
//                   the same chunks, partials and sum (so the same workspace), each
//                   chunk's 128 filters x 64 columns through tc_gemm.cuh's main loop;
//                   NHWC's dy^T and im2col tiles move by 16-byte async copies (Kg, Cg
//                   multiples of 4), 3 tiles of 32 pixels in flight.
//   bwd_bias        one block per filter k: the same over dy alone, in double (the CPU's).
//
// Every kernel comes in two index types (cuda_common.cuh): int32_t where conv_extent
// (implicit_gemm.cuh; for activation_bwd the element count, for the split sum the
// partials) fits, int64_t otherwise. Their per-element (n, c, h, w) takes multiply-highs
// (Unravel4), and bwd_filter_reduce walks its pixels with counters instead of three
// divisions and three remainders per multiply-add.
#include "../common/activation.h"
#include "../common/check.h"
#include "../common/shapes.h"
#include "conv2d_bwd_tc.cuh"
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "implicit_gemm.cuh"
#include "winograd.cuh"

namespace fastconv {
namespace cuda {

namespace {

template <typename I>
__global__ void __launch_bounds__(kThreads)
    activation_bwd_kernel(Activation act, I count, const float* __restrict__ y,
                          const float* __restrict__ dy, float* __restrict__ dz) {
    // In double, rounded once, as the CPU: 1 - y*y in float loses most of its digits
    // where tanh saturates (y = 0.9999), and grad bias sums these with heavy cancellation.
    for (I i = thread_index<I>(); i < count; i += thread_count<I>())
        dz[i] = float(double(dy[i]) * activate_grad(act, double(y[i])));
}

// One thread per element of dz (N, K, P, Q), in its memory order; the CPU's formula.
// un unravels (K, P, Q); by_ph, by_pw divide by the pooling window.
template <typename I>
__global__ void __launch_bounds__(kThreads)
    avgpool_act_bwd_kernel(Conv2dPoolParams bp, Unravel4<I> un, DivMod<I> by_ph,
                           DivMod<I> by_pw, const float* __restrict__ dy,
                           const float* __restrict__ a, float* __restrict__ dz) {
    const Conv2dParams& p = bp.conv;
    const I K = I(p.K), PP = I(p.P / bp.pool_h), QQ = I(p.Q / bp.pool_w);
    const I count = I(p.N * p.K * p.P * p.Q);
    const double area = double(bp.pool_h * bp.pool_w);
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> o = un(i);
        const I pi = by_ph.div(o.h), qi = by_pw.div(o.w);
        if (pi >= PP || qi >= QQ) {
            dz[i] = 0.f;
            continue;
        }
        const double d = double(dy[offset4i(p.layout, o.n, o.c, pi, qi, K, PP, QQ)]) / area;
        dz[i] = float(a ? d * activate_grad(p.act, double(a[i])) : d);
    }
}

// One thread per element of dx, in dx's memory order. un unravels (C, H, W); by_cg
// divides by C / groups.
template <typename I>
__global__ void __launch_bounds__(kThreads)
    bwd_data_gather(Conv2dParams p, Unravel4<I> un, DivMod<I> by_cg, const float* __restrict__ dy,
                    const float* __restrict__ w, float* __restrict__ dx) {
    const I Cg = by_cg.d, Kg = I(p.K / p.groups);
    const I K = I(p.K), P = I(p.P), Q = I(p.Q), R = I(p.R), S = I(p.S);
    const I sh = I(p.stride_h), sw = I(p.stride_w), ph = I(p.pad_h), pw = I(p.pad_w);
    const I dh = I(p.dil_h), dw = I(p.dil_w);
    const I count = I(p.N * p.C * p.H * p.W);
    const bool nchw = p.layout == Layout::NCHW;
    // Distance between filters k and k + 1 in dy and in w.
    const I dy_step = nchw ? P * Q : I(1), w_step = nchw ? Cg * R * S : I(1);
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> at = un(i);  // (n, c, h, wi)
        I g;
        const I cg = by_cg.divmod(at.c, g);
        // Once per element, in 64 bits (shapes.h's helpers); the loops below are in I.
        const I p0 = I(first_out_reaching(at.h, p.R, p.stride_h, p.pad_h, p.dil_h));
        const I p1 = I(last_out_reaching(at.h, p.stride_h, p.pad_h, p.P));
        const I q0 = I(first_out_reaching(at.w, p.S, p.stride_w, p.pad_w, p.dil_w));
        const I q1 = I(last_out_reaching(at.w, p.stride_w, p.pad_w, p.Q));
        // The filters are the innermost loop (the CPU's is the outermost): the dilation
        // tests then run once per output rather than once per filter, and the filter loop
        // is two strided loads. The order is still fixed, so the result is too.
        float acc = 0.f;
        for (I oh = p0; oh < p1; ++oh) {
            const I rr = at.h + ph - oh * sh;  // = r * dil_h
            if (rr % dh) continue;
            for (I ow = q0; ow < q1; ++ow) {
                const I ss = at.w + pw - ow * sw;  // = s * dil_w
                if (ss % dw) continue;
                const float* dyk = dy + offset4i(p.layout, at.n, I(g * Kg), oh, ow, K, P, Q);
                const I r = rr / dh, s = ss / dw;
                const float* wk = w + (nchw ? ((g * Kg * Cg + cg) * R + r) * S + s
                                            : ((r * S + s) * Cg + cg) * K + g * Kg);
                for (I k = 0; k < Kg; ++k) acc += dyk[k * dy_step] * wk[k * w_step];
            }
        }
        dx[i] = acc;
    }
}

// ------------------------------------------------------------------- grad input, GEMM
//
// Per phase and group, dx_g (M pixels x Cg) = A (M x taps*Kg, dy gathered) . B (taps*Kg
// x Cg, the weight at the phase's taps), implicit_gemm.cuh's transposed problem, with the
// forward's tiling: 64 pixels x 64 channels a tile, 16 filters of one tap a slice, 256
// threads as a 16 x 16 grid each owning rows tm + 16 i and columns tn + 16 j (i, j < 4),
// so the shared reads of the inner loop are conflict-free. A slice is one tap and up to
// 16 consecutive filters, so a group's Kg not a multiple of 16 leaves its last slice of
// each tap partly zero: the variant wants Kg >= 16 (conv2d_bwd_data's Auto).
constexpr int kDBM = 64, kDBN = 64, kDBK = 16;
constexpr int kDGrid = 16, kDPer = 4;
static_assert(kDGrid * kDGrid == kThreads && kDGrid * kDPer == kDBM && kDBM == kDBN);
static_assert(kDBM * kDBK == 4 * kThreads);  // each thread loads 4 elements of each tile

// __launch_bounds__'s minimum blocks an SM where ptxas's default spills: by default it
// held bwd_data_gemm<NCHW, int64_t> to 48 registers with 32/32 B of spills; with 3 it
// takes 80 and spills nothing (sm_90, CUDA 13.0). The others keep the default (NHWC
// int32_t 64, NCHW int32_t 62, NHWC int64_t 128 registers, no spills).
template <Layout L, typename I>
constexpr int kDgradMinBlocks = L == Layout::NCHW && sizeof(I) == 8 ? 3 : 0;

// Loaders, along what is contiguous in memory. NCHW: dy is contiguous along the pixels
// of a phase row (consecutive j read consecutive ow), so A's threads run along pixels,
// one pixel each for the whole tile; the weight (K, Cg, R, S) is nearest to contiguous
// along c (stride R*S), so B's threads run along channels. NHWC: dy and the weight
// (R, S, Cg, K) are both contiguous along k, so both loaders run along k, each thread
// keeping four pixels (A) or four channels (B).
// Every tile writes all of its pixels that lie in the image, a phase without taps too
// (zeros): each dx element is written by exactly one thread, after its sum over the
// taps in order and, within a tap, over k in order, so the bits depend on the shapes
// only.
template <Layout L, typename I>
__global__ void __launch_bounds__(kThreads, kDgradMinBlocks<L, I>)
    bwd_data_gemm(Conv2dParams p, DgradShape ds, DgradDiv<I> dv, const float* __restrict__ dy,
                  const float* __restrict__ w, float* __restrict__ dx) {
    constexpr bool nchw = L == Layout::NCHW;
    constexpr int kPixels = nchw ? 1 : 4;
    // +1 column: the loaders that run along k write 16 rows of one column at a time.
    __shared__ float As[kDBK][kDBM + 1];  // dy slice:     [k][pixel]
    __shared__ float Bs[kDBK][kDBN + 1];  // weight slice: [k][channel]
    const int tid = threadIdx.x;
    const int tm = nchw ? tid % kDGrid : tid / kDGrid;
    const int tn = nchw ? tid / kDGrid : tid % kDGrid;
    const I Kg = I(ds.Kg), Cg = I(ds.Cg);
    const I m_tiles = I(ds.m_tiles), n_tiles = I(ds.n_tiles), groups = I(p.groups);
    for (I tile = blockIdx.x; tile < I(ds.tiles); tile += gridDim.x) {
        // Once per tile: plain divisions. The phase is outermost, so the blocks of one
        // phase (one set of taps) run together.
        const I m0 = tile % m_tiles * kDBM;
        const I c0 = tile / m_tiles % n_tiles * kDBN;
        const I g = tile / (m_tiles * n_tiles) % groups;
        const DgradPhase<I> ph = dgrad_phase(p, ds, I(tile / (m_tiles * n_tiles * groups)));
        const float* dyg = dy + g * Kg * (nchw ? I(p.P) * I(p.Q) : I(1));
        const float* wg = w + g * Kg * (nchw ? Cg * I(p.R) * I(p.S) : I(1));

        DgradPixel<I> px[kPixels];
#pragma unroll
        for (int i = 0; i < kPixels; ++i)
            px[i] = dgrad_pixel(p, ds, dv, ph, I(m0 + (nchw ? tid % kDBM : tid / kDBK + 16 * i)));

        float acc[kDPer][kDPer] = {};
        for (I tr = 0; tr < ph.h.taps; ++tr)
            for (I ts = 0; ts < ph.w.taps; ++ts) {
                const DgradTap<I> tap = dgrad_tap(ds, ph, tr, ts);
                I row[kPixels];
#pragma unroll
                for (int i = 0; i < kPixels; ++i) row[i] = dgrad_row<L>(p, px[i], tap);
                for (I k0 = 0; k0 < Kg; k0 += kDBK) {
                    if (nchw) {
                        // A and B: row k = tid / 64 + 4 i; column pixel / channel tid % 64.
                        const I c = c0 + tid % kDBN;
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            const int r = tid / kDBM + 4 * i;
                            const I k = k0 + r;
                            As[r][tid % kDBM] = k < Kg ? dgrad_gather<L>(p, dyg, row[0], k) : 0.f;
                            Bs[r][tid % kDBN] =
                                k < Kg && c < Cg ? dgrad_weight<L>(p, ds, wg, tap, k, c) : 0.f;
                        }
                    } else {
                        // A and B: row k = tid % 16; column pixel / channel tid / 16 + 16 i.
                        const I k = k0 + tid % kDBK;
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            const int col = tid / kDBK + 16 * i;
                            const I c = c0 + col;
                            As[tid % kDBK][col] = k < Kg ? dgrad_gather<L>(p, dyg, row[i], k) : 0.f;
                            Bs[tid % kDBK][col] =
                                k < Kg && c < Cg ? dgrad_weight<L>(p, ds, wg, tap, k, c) : 0.f;
                        }
                    }
                    __syncthreads();
#pragma unroll
                    for (int kk = 0; kk < kDBK; ++kk) {
                        float a[kDPer], b[kDPer];
#pragma unroll
                        for (int i = 0; i < kDPer; ++i) a[i] = As[kk][tm + kDGrid * i];
#pragma unroll
                        for (int j = 0; j < kDPer; ++j) b[j] = Bs[kk][tn + kDGrid * j];
#pragma unroll
                        for (int i = 0; i < kDPer; ++i)
#pragma unroll
                            for (int j = 0; j < kDPer; ++j) acc[i][j] += a[i] * b[j];
                    }
                    __syncthreads();  // the tiles are overwritten by the next slice
                }
            }

        // Epilogue: the pixels inside the image, the channels inside the group.
#pragma unroll
        for (int i = 0; i < kDPer; ++i) {
            // Channel c's element lies c * step past channel 0's.
            const I at = dgrad_dx_offset<L>(p, ds, dv, ph, I(m0 + tm + kDGrid * i), I(g * Cg));
            if (at < 0) continue;
            const I step = nchw ? I(p.H) * I(p.W) : I(1);
#pragma unroll
            for (int j = 0; j < kDPer; ++j) {
                const I c = c0 + tn + kDGrid * j;
                if (c < Cg) dx[at + c * step] = acc[i][j];
            }
        }
    }
}

void launch_bwd_data_gather(const Conv2dParams& p, const float* dy, const float* w, float* dx,
                            cudaStream_t stream) {
    with_index_type(conv_extent(p), [&](auto index) {
        using I = decltype(index);
        bwd_data_gather<I><<<blocks_for(p.N * p.C * p.H * p.W, kThreads), kThreads, 0, stream>>>(
            p, Unravel4<I>(p.layout, p.C, p.H, p.W), DivMod<I>(p.C / p.groups), dy, w, dx);
    });
    FC_CUDA_CHECK_LAUNCH();
}

void launch_bwd_data_gemm(const Conv2dParams& p, const float* dy, const float* w, float* dx,
                          cudaStream_t stream) {
    const DgradShape ds = dgrad_shape(p, kDBM, kDBN);
    // + the tiles' overhang (kDBM pixels, kDBK filters) past M and Kg.
    with_index_type(max64(conv_extent(p), ds.tiles + ds.M + kDBM + ds.Kg + kDBK), [&](auto index) {
        using I = decltype(index);
        const DgradDiv<I> dv(ds);
        const unsigned int blocks = blocks_for(ds.tiles, 1);
        if (p.layout == Layout::NCHW)
            bwd_data_gemm<Layout::NCHW, I><<<blocks, kThreads, 0, stream>>>(p, ds, dv, dy, w, dx);
        else
            bwd_data_gemm<Layout::NHWC, I><<<blocks, kThreads, 0, stream>>>(p, ds, dv, dy, w, dx);
    });
    FC_CUDA_CHECK_LAUNCH();
}

// A walk over the output pixels (n, oh, ow) of N x P x Q in steps of `step` pixels with
// no division: the step is split once into (dn, doh, dow), and each advance adds the
// parts with one carry per digit (ow + dow < 2Q, oh + doh + 1 < 2P).
template <typename I>
struct PixelWalk {
    I n, oh, ow;
    I dn, doh, dow, P, Q;
    __device__ __forceinline__ PixelWalk(I j, I step, I P_, I Q_) : P(P_), Q(Q_) {
        const I PQ = P * Q;
        n = j / PQ, oh = j % PQ / Q, ow = j % Q;
        dn = step / PQ, doh = step % PQ / Q, dow = step % Q;
    }
    __device__ __forceinline__ void advance() {
        ow += dow, oh += doh, n += dn;
        if (ow >= Q) ow -= Q, ++oh;
        if (oh >= P) oh -= P, ++n;
    }
};

// One block per element of dw, in dw's memory order; blockDim.x == kReduceThreads.
// wu unravels a weight element as a dense 4-D (NCHW) index: (K, Cg, R, S) for NCHW,
// (R, S, Cg, K) for NHWC.
template <typename I>
__global__ void __launch_bounds__(kReduceThreads)
    bwd_filter_reduce(Conv2dParams p, Unravel4<I> wu, const float* __restrict__ dy,
                      const float* __restrict__ x, float* __restrict__ dw) {
    __shared__ float partial[kReduceThreads];
    const I C = I(p.C), H = I(p.H), W = I(p.W), K = I(p.K), P = I(p.P), Q = I(p.Q);
    const I R = I(p.R), S = I(p.S);
    const I Cg = I(p.C / p.groups), Kg = I(p.K / p.groups);
    const I NPQ = I(p.N) * P * Q, count = K * Cg * R * S;
    const I sh = I(p.stride_h), sw = I(p.stride_w), ph = I(p.pad_h), pw = I(p.pad_w);
    const PixelWalk<I> first(I(threadIdx.x), I(blockDim.x), P, Q);  // the same for every e
    for (I e = blockIdx.x; e < count; e += gridDim.x) {
        // (k, c, r, s) of weight element e.
        const Coord4I<I> we = wu(e);
        const bool nchw = p.layout == Layout::NCHW;
        const I k = nchw ? we.n : we.w, c = nchw ? we.c : we.h;
        const I r = nchw ? we.h : we.n, s = nchw ? we.w : we.c;
        const I ci = (k / Kg) * Cg + c;
        const I h_off = r * I(p.dil_h) - ph, w_off = s * I(p.dil_w) - pw;
        float acc = 0.f;
        PixelWalk<I> px = first;
        for (I j = threadIdx.x; j < NPQ; j += blockDim.x, px.advance()) {
            const I h = px.oh * sh + h_off, wi = px.ow * sw + w_off;
            if (h < 0 || h >= H || wi < 0 || wi >= W) continue;
            acc += dy[offset4i(p.layout, px.n, k, px.oh, px.ow, K, P, Q)] *
                   x[offset4i(p.layout, px.n, ci, h, wi, C, H, W)];
        }
        const float total = block_sum(acc, partial);
        if (threadIdx.x == 0) dw[e] = total;
    }
}

// One block per filter k; blockDim.x == kReduceThreads. Accumulated in double, as the
// CPU: a long sum of gradients that largely cancel, whose float32 result then stays
// within one rounding of the exact sum.
template <typename I>
__global__ void __launch_bounds__(kReduceThreads)
    bwd_bias_reduce(Conv2dParams p, DivMod<I> by_pq, const float* __restrict__ dy,
                    float* __restrict__ db) {
    __shared__ double partial[kReduceThreads];
    const I PQ = by_pq.d, NPQ = I(p.N) * PQ, K = I(p.K);
    for (I k = blockIdx.x; k < K; k += gridDim.x) {
        double acc = 0.0;
        for (I j = threadIdx.x; j < NPQ; j += blockDim.x) {
            I n;
            const I pq = by_pq.divmod(j, n);
            acc += p.layout == Layout::NCHW ? dy[(n * K + k) * PQ + pq] : dy[j * K + k];
        }
        const double total = block_sum(acc, partial);
        if (threadIdx.x == 0) db[k] = float(total);
    }
}


// ------------------------------------------------------------------ grad weight, GEMM

constexpr int kFBM = 64;   // filters per tile
constexpr int kFBN = 64;   // reduction indices (c, r, s) per tile
constexpr int kFBK = 16;   // pixels per slice
constexpr int kFGrid = 16, kFPer = 4;
constexpr int64_t kSplitPixels = 2048;  // pixels per split-K chunk (a multiple of kFBK)
static_assert(kFGrid * kFGrid == kThreads && kFGrid * kFPer == kFBM && kFBM == kFBN);
static_assert(kSplitPixels % kFBK == 0);

struct FilterGemm {
    GemmShape gs;               // M = N*P*Q pixels, red = Cg*R*S
    int64_t j_tiles, kk_tiles;  // tiles over Kg and red
    int64_t splits;             // pixel chunks
    int64_t tiles;              // j_tiles * kk_tiles * groups * splits
};

// Block (j tile, kk tile, group, split) sums dy[m][g*Kg + j] * col[m][kk] over its chunk
// of pixels, slice by slice in order, and writes the partial tile: into ws[split] (in
// (K, red) order) when there are several splits, else straight into dw.
// On index type I with the forward's gathers (implicit_gemm.cuh), dv's divisions by
// multiply-high.
template <Layout L, typename I>
__global__ void __launch_bounds__(kThreads)
    bwd_filter_gemm(Conv2dParams p, FilterGemm fg, GemmDiv<I> dv, const float* __restrict__ dy,
                    const float* __restrict__ x, float* __restrict__ ws, float* __restrict__ dw) {
    constexpr bool nchw = L == Layout::NCHW;
    __shared__ float As[kFBK][kFBM + 1];  // dy^T slice: [pixel][filter]
    __shared__ float Bs[kFBK][kFBN + 1];  // col slice:  [pixel][kk]
    const GemmShape& gs = fg.gs;
    const int tid = threadIdx.x;
    const int tj = tid % kFGrid, tk = tid / kFGrid;  // the thread's rows / columns of the tile
    const I K = I(p.K), Kg = I(gs.Kg), red = I(gs.red), PQ = I(gs.PQ), M = I(gs.M);
    const I j_tiles = I(fg.j_tiles), kk_tiles = I(fg.kk_tiles), groups = I(p.groups);
    for (I tile = blockIdx.x; tile < I(fg.tiles); tile += gridDim.x) {
        // Once per tile: plain divisions.
        const I j0 = tile % j_tiles * kFBM;
        const I k0 = tile / j_tiles % kk_tiles * kFBN;
        const I g = tile / (j_tiles * kk_tiles) % groups;
        const I split = tile / (j_tiles * kk_tiles * groups);
        const I m_begin = split * I(kSplitPixels);
        const I m_end = M < m_begin + I(kSplitPixels) ? M : I(m_begin + kSplitPixels);
        const float* xg = x + g * I(gs.Cg) * (nchw ? I(p.H) * I(p.W) : I(1));
        float acc[kFPer][kFPer] = {};
        for (I m0 = m_begin; m0 < m_end; m0 += kFBK) {
            // A: dy[m][g*Kg + j]. NCHW: pixels contiguous, so threads run along m
            // (m = tid % 16, j = tid / 16 + 16 i); NHWC: filters contiguous, along j.
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = nchw ? tid % kFBK : tid / kFBM + 4 * i;
                const int col = nchw ? tid / kFBK + 16 * i : tid % kFBM;
                const I m = m0 + row, j = j0 + col;
                float v = 0.f;
                if (m < m_end && j < Kg) {
                    const I k = g * Kg + j;
                    if (nchw) {
                        I n;
                        const I pq = dv.pq.divmod(m, n);
                        v = dy[(n * K + k) * PQ + pq];
                    } else {
                        v = dy[m * K + k];
                    }
                }
                As[row][col] = v;
            }
            // B: col[m][kk], gathered. NCHW: along m (neighbouring pixels are neighbouring
            // columns of x for stride 1); NHWC: along kk (contiguous channels).
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = nchw ? tid % kFBK : tid / kFBN + 4 * i;
                const int col = nchw ? tid / kFBK + 16 * i : tid % kFBN;
                const I m = m0 + row, kk = k0 + col;
                float v = 0.f;
                if (m < m_end && kk < red) {
                    const Pixel<I> px = pixel_of(p, gs, dv, m);
                    I c, rs, r;
                    if (nchw)
                        rs = dv.rs.divmod(kk, c);
                    else
                        c = dv.cg.divmod(kk, rs);
                    const I s = dv.s.divmod(rs, r);
                    v = gather<L>(p, xg, px, c, r, s);
                }
                Bs[row][col] = v;
            }
            __syncthreads();
#pragma unroll
            for (int q = 0; q < kFBK; ++q) {
                float a[kFPer], b[kFPer];
#pragma unroll
                for (int i = 0; i < kFPer; ++i) a[i] = As[q][tj + kFGrid * i];
#pragma unroll
                for (int i = 0; i < kFPer; ++i) b[i] = Bs[q][tk + kFGrid * i];
#pragma unroll
                for (int i = 0; i < kFPer; ++i)
#pragma unroll
                    for (int jj = 0; jj < kFPer; ++jj) acc[i][jj] += a[i] * b[jj];
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < kFPer; ++i) {
            const I j = j0 + tj + kFGrid * i;
            if (j >= Kg) continue;
            const I k = g * Kg + j;
#pragma unroll
            for (int jj = 0; jj < kFPer; ++jj) {
                const I kk = k0 + tk + kFGrid * jj;
                if (kk >= red) continue;
                if (fg.splits > 1)
                    ws[(split * K + k) * red + kk] = acc[i][jj];
                else
                    dw[nchw ? k * red + kk : kk * K + k] = acc[i][jj];
            }
        }
    }
}

// dw = the split partials added in split order, one thread per weight element of
// the (K, red) order. by_red divides by red (NHWC's dw is in (red, K) order).
template <typename I>
__global__ void __launch_bounds__(kThreads)
    bwd_filter_sum_splits(Conv2dParams p, FilterGemm fg, DivMod<I> by_red,
                          const float* __restrict__ ws, float* __restrict__ dw) {
    const I K = I(p.K), count = K * by_red.d, splits = I(fg.splits);
    const bool nchw = p.layout == Layout::NCHW;
    for (I e = thread_index<I>(); e < count; e += thread_count<I>()) {
        float acc = 0.f;
        for (I sp = 0; sp < splits; ++sp) acc += ws[sp * count + e];
        if (nchw) {
            dw[e] = acc;
        } else {
            I k;
            const I kk = by_red.divmod(e, k);
            dw[kk * K + k] = acc;
        }
    }
}

FilterGemm filter_gemm_shape(const Conv2dParams& p) {
    FilterGemm fg{};
    fg.gs.PQ = p.P * p.Q;
    fg.gs.M = p.N * fg.gs.PQ;
    fg.gs.Cg = p.C / p.groups;
    fg.gs.Kg = p.K / p.groups;
    fg.gs.red = fg.gs.Cg * p.R * p.S;
    fg.j_tiles = ceil_div(fg.gs.Kg, kFBM);
    fg.kk_tiles = ceil_div(fg.gs.red, kFBN);
    fg.splits = max64(1, ceil_div(fg.gs.M, kSplitPixels));
    fg.tiles = fg.j_tiles * fg.kk_tiles * p.groups * fg.splits;
    return fg;
}

int64_t split_partials(const FilterGemm& fg, const Conv2dParams& p) {
    return fg.splits > 1 ? fg.splits * p.K * fg.gs.red : 0;
}

void launch_bwd_filter_gemm(const Conv2dParams& p, const float* dy, const float* x, float* dw,
                            float* workspace, cudaStream_t stream) {
    const FilterGemm fg = filter_gemm_shape(p);
    struct Scratch {  // stream-ordered; freed on every path, exceptions included
        float* dev = nullptr;
        cudaStream_t stream;
        ~Scratch() { if (dev) cudaFreeAsync(dev, stream); }
    } own{nullptr, stream};
    float* ws = workspace;
    if (split_partials(fg, p) > 0 && ws == nullptr) {
        FC_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&own.dev),
                                      sizeof(float) * split_partials(fg, p), stream));
        ws = own.dev;
    }
    if (p.precision != Precision::Strict) {
        // Tensor cores (conv2d_bwd_tc.cu): the same chunks, so the same workspace.
        implicit_gemm_tc_bwd_filter(p, kSplitPixels, fg.splits, dy, x, ws, dw, stream);
    } else {
        // + the split partials and the tiles' overhang past Kg and red.
        const int64_t extent = max64(max64(conv_extent(p), split_partials(fg, p) + kFBN),
                                     fg.tiles + (p.K + kFBM) * (fg.gs.red + kFBN));
        with_index_type(extent, [&](auto index) {
            using I = decltype(index);
            const GemmDiv<I> dv(p, fg.gs);
            const unsigned int blocks = blocks_for(fg.tiles, 1);
            if (p.layout == Layout::NCHW)
                bwd_filter_gemm<Layout::NCHW, I><<<blocks, kThreads, 0, stream>>>(p, fg, dv, dy, x, ws, dw);
            else
                bwd_filter_gemm<Layout::NHWC, I><<<blocks, kThreads, 0, stream>>>(p, fg, dv, dy, x, ws, dw);
        });
        FC_CUDA_CHECK_LAUNCH();
    }
    if (fg.splits > 1) {
        with_index_type(split_partials(fg, p), [&](auto index) {  // its largest offset
            using I = decltype(index);
            bwd_filter_sum_splits<I><<<blocks_for(p.K * fg.gs.red, kThreads), kThreads, 0, stream>>>(
                p, fg, DivMod<I>(fg.gs.red), ws, dw);
        });
        FC_CUDA_CHECK_LAUNCH();
    }
}

}  // namespace

void activation_bwd(Activation act, int64_t count, const float* y, const float* dy, float* dz,
                    cudaStream_t stream) {
    if (count <= 0) return;
    with_index_type(count, [&](auto index) {
        using I = decltype(index);
        activation_bwd_kernel<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
            act, I(count), y, dy, dz);
    });
    FC_CUDA_CHECK_LAUNCH();
}

void avgpool_act_bwd(const Conv2dPoolParams& p, const float* dy, const float* a, float* dz,
                     cudaStream_t stream) {
    const int64_t count = p.conv.N * p.conv.K * p.conv.P * p.conv.Q;
    if (count <= 0) return;
    with_index_type(conv_extent(p.conv), [&](auto index) {
        using I = decltype(index);
        avgpool_act_bwd_kernel<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
            p, Unravel4<I>(p.conv.layout, p.conv.K, p.conv.P, p.conv.Q), DivMod<I>(p.pool_h),
            DivMod<I>(p.pool_w), dy, a, dz);
    });
    FC_CUDA_CHECK_LAUNCH();
}

// Auto's choice for grad input (provisional: written before any GPU run, from the
// kernels' shapes, not from timings; see benchmarks/NOTES.md, "Grad input as an implicit
// GEMM"). The gather reads a weight element and a dy element from memory for every
// multiply-add, and re-reads the whole weight for every pixel; the GEMM reads each
// loaded value from shared memory for 64 multiply-adds, but fills its 64-wide channel
// tile only with Cg channels a group and its 16-deep slices only with Kg filters (each
// tap's last slice is partly zero where Kg % 16 != 0). So the GEMM from Cg >= 16 and Kg
// >= 16 (a quarter of the tile, full slices), the gather below that (LeNet-5's C2 with
// Cg = 6, depthwise layers with Cg = 1).
ConvVariant conv2d_bwd_data_auto_variant(const Conv2dParams& p) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
    return Cg >= 16 && Kg >= 16 ? ConvVariant::ImplicitGemm : ConvVariant::Direct;
}

void conv2d_bwd_data(const Conv2dParams& p, ConvVariant v, const float* dy, const float* w,
                     float* dx, cudaStream_t stream) {
    if (p.N * p.C * p.H * p.W <= 0) return;
    if (v == ConvVariant::Auto) v = conv2d_bwd_data_auto_variant(p);
    switch (v) {
        case ConvVariant::ImplicitGemm:
            if (p.precision != Precision::Strict) return implicit_gemm_tc_bwd_data(p, dy, w, dx, stream);
            return launch_bwd_data_gemm(p, dy, w, dx, stream);
        case ConvVariant::Winograd2: return winograd_conv2d_bwd_data(p, 2, dy, w, dx, stream);
        case ConvVariant::Winograd4: return winograd_conv2d_bwd_data(p, 4, dy, w, dx, stream);
        default: return launch_bwd_data_gather(p, dy, w, dx, stream);  // Direct, Depthwise
    }
}

// Auto: the GEMM once a group's weight has 4096 elements (a 64 x 64 tile's worth);
// below that the per-element reduction has blocks enough. Both need outputs.
static bool bwd_filter_uses_gemm(const Conv2dParams& p, ConvVariant v) {
    const int64_t count = p.K * (p.C / p.groups) * p.R * p.S;
    // Winograd has no grad weight of its own: a layer run with it takes Auto's kernel.
    const bool automatic = v == ConvVariant::Auto || v == ConvVariant::Winograd2 ||
                           v == ConvVariant::Winograd4;
    const bool gemm = v == ConvVariant::ImplicitGemm || (automatic && count / p.groups >= 4096);
    return gemm && count > 0 && p.N * p.P * p.Q > 0;
}

// The same for every precision: the tensor-core GEMM uses the SIMT GEMM's chunks.
int64_t conv2d_bwd_filter_workspace(const Conv2dParams& p, ConvVariant v) {
    if (!bwd_filter_uses_gemm(p, v)) return 0;
    return int64_t(sizeof(float)) * split_partials(filter_gemm_shape(p), p);
}

void conv2d_bwd_filter(const Conv2dParams& p, ConvVariant v, const float* dy, const float* x,
                       float* dw, cudaStream_t stream, float* workspace) {
    const int64_t count = p.K * (p.C / p.groups) * p.R * p.S;
    if (count <= 0) return;
    if (bwd_filter_uses_gemm(p, v)) return launch_bwd_filter_gemm(p, dy, x, dw, workspace, stream);
    // With no outputs every block writes a zero sum, which is the gradient.
    with_index_type(conv_extent(p), [&](auto index) {
        using I = decltype(index);
        const int64_t Cg = p.C / p.groups;
        const Unravel4<I> wu = p.layout == Layout::NCHW ? Unravel4<I>(Layout::NCHW, Cg, p.R, p.S)
                                                        : Unravel4<I>(Layout::NCHW, p.S, Cg, p.K);
        bwd_filter_reduce<I><<<blocks_for(count, 1), kReduceThreads, 0, stream>>>(p, wu, dy, x, dw);
    });
    FC_CUDA_CHECK_LAUNCH();
}

void conv2d_bwd_bias(const Conv2dParams& p, const float* dy, float* db, cudaStream_t stream) {
    if (p.K <= 0) return;
    with_index_type(conv_extent(p), [&](auto index) {
        using I = decltype(index);
        bwd_bias_reduce<I><<<blocks_for(p.K, 1), kReduceThreads, 0, stream>>>(
            p, DivMod<I>(p.P * p.Q), dy, db);
    });
    FC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace fastconv

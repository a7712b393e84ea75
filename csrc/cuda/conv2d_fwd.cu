// conv2d_fwd.cu: conv2d forward on the GPU, float32 (and float16 / bfloat16 through the
// tensor-core GEMM), NCHW and NHWC. The CPU twin is csrc/cpu/conv2d_fwd.cpp.
//
//   y = act(bias + x (*) w + residual)   (cross-correlation; see params.h for the index
//                                         formula; residual, y-shaped, is optional)
//
// Weight layouts: NCHW -> (K, Cg, R, S), NHWC -> (R, S, Cg, K). Any stride, padding,
// dilation and group count.
//
// Variants:
//   direct         one thread per output, looping over (c, r, s) with every tap bounds-
//                  checked: the readable spec, and the right kernel for LeNet-sized layers
//                  whose few filters would leave a GEMM tile mostly empty.
//   implicit_gemm  per group, the GEMM  y (M x Kg) = col (M x red) . w_g (red x Kg)  with
//                  M = N*P*Q output pixels and red = Cg*R*S, in 64 x 64 output tiles of 256
//                  threads. The im2col matrix is never built: each 64 x 16 slice of col is
//                  gathered from x straight into shared memory (zeros for padding), next to
//                  the 16 x 64 slice of w_g, and each thread accumulates a 4 x 4 block of
//                  outputs from them, so every loaded value feeds 64 multiply-adds instead
//                  of one. Bias, residual and activation are fused into the store.
//                  The float32 SIMT kernel for p.precision Strict.
//   implicit_gemm (tensor cores)  p.precision TF32 / TF32x3, and every float16 / bfloat16
//                  call: conv2d_fwd_tc.cu, the same GEMM in 128 x 64 tiles through WMMA
//                  with a 3-stage cp.async pipeline (see its header for its variants).
//   depthwise      groups == C: depthwise.cu, one thread per output with the channel's taps
//                  staged in shared memory (NCHW) or read coalesced along k (NHWC).
// Auto picks depthwise when C == groups > 1, direct for LeNet-sized layers (see
// conv2d_auto_variant), implicit_gemm otherwise.
//
// conv2d_avgpool (the LeNet-5 block: conv + bias + activation + average pool):
//   fused          one thread per pooled output computes the pool window's convolution
//                  outputs as direct does, activates and averages them: one launch, and
//                  the full-resolution activation is written only when the backward
//                  will need it. Auto's choice wherever auto would pick direct.
//   (any other)    that conv variant into the full-resolution activation, then pool.cu's
//                  average pool over it: two launches.
#include "../common/activation.h"
#include "../common/check.h"
#include "../common/shapes.h"
#include "conv2d_fwd_tc.cuh"
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "depthwise.cuh"
#include "implicit_gemm.cuh"
#include "winograd.cuh"

namespace fastconv {
namespace cuda {

namespace {

// __launch_bounds__'s minimum blocks an SM for the instantiations whose registers ptxas's
// default choice spills; 0 leaves the default (nvcc then emits no .minnctapersm). With 3
// blocks of 256 threads ptxas may take 85 registers and spills nothing, where by default
// it spilled conv2d_avgpool_fused<int64_t> (80 registers, 76/80 B) and
// conv2d_implicit_gemm<NCHW, int64_t> (64, 20/24 B); both now take 80 (sm_90, CUDA 13.0).
// The int32_t instantiations keep the default (3 would raise them: the fused 48 -> 59,
// the GEMMs 64 -> 72), and so does the NHWC GEMM's int64_t (106, no spills; 3 would
// spill it).
template <typename I>
constexpr int kFusedMinBlocks = sizeof(I) == 8 ? 3 : 0;

// ---------------------------------------------------------------------------------- direct

// bias + the window sum of output (n, k, oh, ow), every tap bounds-checked; in the
// kernel's index type I (int32_t where conv_extent fits). g = k / Kg by a plain
// division, once per output: through a DivMod, ptxas spilled conv2d_avgpool_fused<int>
// (32 registers, 32/48 B) where the division leaves it at 48 registers and none.
template <typename I>
__device__ __forceinline__ float direct_output(const Conv2dParams& p,
                                               const float* __restrict__ x,
                                               const float* __restrict__ w,
                                               const float* __restrict__ b, I n, I k, I oh,
                                               I ow) {
    const I C = I(p.C), H = I(p.H), W = I(p.W), K = I(p.K), R = I(p.R), S = I(p.S);
    const I Cg = I(p.C / p.groups), g = k / I(p.K / p.groups);
    const I h0 = oh * I(p.stride_h) - I(p.pad_h), w0 = ow * I(p.stride_w) - I(p.pad_w);
    const bool nchw = p.layout == Layout::NCHW;
    float acc = p.has_bias ? b[k] : 0.f;
    for (I c = 0; c < Cg; ++c)
        for (I r = 0; r < R; ++r) {
            const I h = h0 + r * I(p.dil_h);
            if (h < 0 || h >= H) continue;
            for (I s = 0; s < S; ++s) {
                const I wi = w0 + s * I(p.dil_w);
                if (wi < 0 || wi >= W) continue;
                acc += x[offset4i(p.layout, n, I(g * Cg + c), h, wi, C, H, W)] *
                       w[nchw ? ((k * Cg + c) * R + r) * S + s : ((r * S + s) * Cg + c) * K + k];
            }
        }
    return acc;
}

// One thread per output, in y's memory order; un unravels (K, P, Q). residual (y's
// shape, or null) is added before the activation.
template <typename I>
__global__ void __launch_bounds__(kThreads)
    conv2d_direct(Conv2dParams p, Unravel4<I> un, const float* __restrict__ x,
                  const float* __restrict__ w, const float* __restrict__ b,
                  const float* __restrict__ residual, float* __restrict__ y) {
    const I count = I(p.N * p.K * p.P * p.Q);
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> o = un(i);  // (n, k, oh, ow)
        float z = direct_output(p, x, w, b, o.n, o.c, o.h, o.w);
        if (residual != nullptr) z += residual[i];
        y[i] = activate(p.act, z);
    }
}

// The LeNet-5 block in one kernel: one thread per pooled output, in y's memory order.
// It computes the pool_h x pool_w convolution outputs under its window as direct does,
// each through the activation (kept in `a` when save_activation), and averages them:
// summed in row-major order and divided, as pool.cu's avg_pool_fwd_kernel, so the
// fused and composed paths differ only where the convolution sums do.
// un unravels (K, P / pool_h, Q / pool_w).
template <typename I>
__global__ void __launch_bounds__(kThreads, kFusedMinBlocks<I>)
    conv2d_avgpool_fused(Conv2dPoolParams bp, Unravel4<I> un, const float* __restrict__ x, const float* __restrict__ w,
                         const float* __restrict__ b, float* __restrict__ y,
                         float* __restrict__ a) {
    const Conv2dParams& p = bp.conv;
    const I K = I(p.K), P = I(p.P), Q = I(p.Q), ph = I(bp.pool_h), pw = I(bp.pool_w);
    const I PP = P / ph, QQ = Q / pw;
    const I count = I(p.N) * K * PP * QQ;
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> o = un(i);  // (n, k, pooled row, col)
        // When saving, the last pooled row / column also covers the rows / columns the
        // floor drops, so the whole activation is written.
        const bool save = bp.save_activation;
        const I rows = save && o.h == PP - 1 ? I(P - o.h * ph) : ph;
        const I cols = save && o.w == QQ - 1 ? I(Q - o.w * pw) : pw;
        float sum = 0.f;
        for (I dr = 0; dr < rows; ++dr)
            for (I ds = 0; ds < cols; ++ds) {
                const I oh = o.h * ph + dr, ow = o.w * pw + ds;
                const float v =
                    activate(p.act, direct_output(p, x, w, b, o.n, o.c, oh, ow));
                if (save) a[offset4i(p.layout, o.n, o.c, oh, ow, K, P, Q)] = v;
                if (dr < bp.pool_h && ds < bp.pool_w) sum += v;
            }
        y[i] = sum / float(bp.pool_h * bp.pool_w);
    }
}

// --------------------------------------------------------------------------- implicit GEMM
//
// Tile of kBM output pixels x kBN filters of one group, reduced kBK at a time. The 256
// threads form a 16 x 16 grid; thread (tm, tn) owns rows tm + 16 i and columns tn + 16 j
// (i, j < 4) of the tile, so for each (i, j) the threads of a warp touch neighbouring
// rows or columns: shared-memory reads are conflict-free and the stores of y coalesce
// along the axis that is contiguous in y (pixels in NCHW, filters in NHWC).
constexpr int kBM = 64, kBN = 64, kBK = 16;
constexpr int kGemmThreads = 256;
constexpr int kGrid = 16;          // threads per tile side
constexpr int kPerThread = 4;      // kBM / kGrid == kBN / kGrid
static_assert(kGrid * kGrid == kGemmThreads && kGrid * kPerThread == kBM && kBM == kBN);
static_assert(kBM * kBK == 4 * kGemmThreads);  // each thread loads 4 elements of each tile

// See kFusedMinBlocks.
template <Layout L, typename I>
constexpr int kGemmMinBlocks = L == Layout::NCHW && sizeof(I) == 8 ? 3 : 0;

// The reduction index kk follows the weight's memory order, so the B tile loads are
// contiguous along kk (NCHW, weight (K, Cg, R, S): kk = (c*R + r)*S + s) or along the
// filters (NHWC, weight (R, S, Cg, K): kk = (r*S + s)*Cg + c, which also makes the A
// gather contiguous along c).
//
// Instantiated on the index type I (cuda_common.cuh): int32_t where conv_extent fits,
// int64_t otherwise. The gathers' divisions (pixel m -> (n, oh, ow), kk -> (c, r, s))
// are multiply-highs through dv.
template <Layout L, typename I>
__global__ void __launch_bounds__(kGemmThreads, kGemmMinBlocks<L, I>)
    conv2d_implicit_gemm(Conv2dParams p, GemmShape gs, GemmDiv<I> dv, const float* __restrict__ x,
                         const float* __restrict__ w, const float* __restrict__ b,
                         const float* __restrict__ residual, float* __restrict__ y) {
    constexpr bool nchw = L == Layout::NCHW;
    // NCHW: the A tile is loaded by threads along pixels (contiguous in x), so each
    // thread keeps one pixel across the whole reduction. NHWC: along kk (contiguous c),
    // so each thread keeps four pixels and one kk per slice.
    constexpr int kPixels = nchw ? 1 : 4;
    // +1 column of padding: the loaders that run along kk (NHWC's A, NCHW's B) write 16
    // rows of one column at a time, which the padding spreads over 16 banks.
    __shared__ float As[kBK][kBM + 1];
    __shared__ float Bs[kBK][kBN + 1];

    const int tid = threadIdx.x;
    const int tm = nchw ? tid % kGrid : tid / kGrid;
    const int tn = nchw ? tid / kGrid : tid % kGrid;
    const I red = I(gs.red), Kg = I(gs.Kg), K = I(p.K), M = I(gs.M), PQ = I(gs.PQ);
    const I m_tiles = I(gs.m_tiles), n_tiles = I(gs.n_tiles), tiles = I(gs.tiles);

    for (I tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        // Once per tile: plain divisions.
        const I m0 = (tile % m_tiles) * kBM;
        const I j0 = (tile / m_tiles % n_tiles) * kBN;
        const I g = tile / (m_tiles * n_tiles);
        const float* xg = x + g * I(gs.Cg) * (nchw ? I(p.H) * I(p.W) : I(1));

        Pixel<I> px[kPixels];
#pragma unroll
        for (int i = 0; i < kPixels; ++i)
            px[i] = pixel_of(p, gs, dv, I(m0 + (nchw ? tid % kBM : tid / kBK + 16 * i)));

        float acc[kPerThread][kPerThread] = {};
        for (I k0 = 0; k0 < red; k0 += kBK) {
            if (nchw) {
                // A: row kk = tid / 64 + 4 i, column pixel tid % 64.
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int row = tid / kBM + 4 * i;
                    const I kk = k0 + row;
                    float v = 0.f;
                    if (kk < red) {
                        I c, r;
                        const I rs = dv.rs.divmod(kk, c);
                        const I s = dv.s.divmod(rs, r);
                        v = gather<L>(p, xg, px[0], c, r, s);
                    }
                    As[row][tid % kBM] = v;
                }
                // B: row kk = tid % 16, column filter tid / 16 + 16 i.
                const I kk = k0 + tid % kBK;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int col = tid / kBK + 16 * i;
                    const I j = j0 + col;
                    Bs[tid % kBK][col] = (kk < red && j < Kg) ? w[(g * Kg + j) * red + kk] : 0.f;
                }
            } else {
                // A: row kk = tid % 16, column pixel tid / 16 + 16 i.
                const I kk = k0 + tid % kBK;
                I rs, r;
                const I c = dv.cg.divmod(kk, rs);
                const I s = dv.s.divmod(rs, r);
#pragma unroll
                for (int i = 0; i < kPixels; ++i)
                    As[tid % kBK][tid / kBK + 16 * i] =
                        kk < red ? gather<L>(p, xg, px[i], c, r, s) : 0.f;
                // B: row kk = tid / 64 + 4 i, column filter tid % 64.
                const I j = j0 + tid % kBN;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int row = tid / kBN + 4 * i;
                    const I kr = k0 + row;
                    Bs[row][tid % kBN] = (kr < red && j < Kg) ? w[kr * K + g * Kg + j] : 0.f;
                }
            }
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < kBK; ++kk) {
                float a[kPerThread], bv[kPerThread];
#pragma unroll
                for (int i = 0; i < kPerThread; ++i) a[i] = As[kk][tm + kGrid * i];
#pragma unroll
                for (int j = 0; j < kPerThread; ++j) bv[j] = Bs[kk][tn + kGrid * j];
#pragma unroll
                for (int i = 0; i < kPerThread; ++i)
#pragma unroll
                    for (int j = 0; j < kPerThread; ++j) acc[i][j] += a[i] * bv[j];
            }
            __syncthreads();  // the tiles are overwritten by the next slice
        }

        // Epilogue: y = act(acc + bias + residual), as the CPU's bias_activation after its
        // GEMM.
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
            const I m = m0 + tm + kGrid * i;
            if (m >= M) continue;
            I n;
            const I pq = dv.pq.divmod(m, n);
#pragma unroll
            for (int j = 0; j < kPerThread; ++j) {
                const I jj = j0 + tn + kGrid * j;
                if (jj >= Kg) continue;
                const I k = g * Kg + jj;
                const I o = nchw ? (n * K + k) * PQ + pq : m * K + k;
                float z = acc[i][j] + (p.has_bias ? b[k] : 0.f);
                if (residual != nullptr) z += residual[o];
                y[o] = activate(p.act, z);
            }
        }
    }
}

void launch_direct(const Conv2dParams& p, const float* x, const float* w, const float* b,
                   const float* residual, float* y, cudaStream_t stream) {
    with_index_type(conv_extent(p), [&](auto index) {
        using I = decltype(index);
        conv2d_direct<I><<<blocks_for(p.N * p.K * p.P * p.Q, kThreads), kThreads, 0, stream>>>(
            p, Unravel4<I>(p.layout, p.K, p.P, p.Q), x, w, b, residual, y);
    });
    FC_CUDA_CHECK_LAUNCH();
}

void launch_implicit_gemm(const Conv2dParams& p, const float* x, const float* w, const float* b,
                          const float* residual, float* y, cudaStream_t stream) {
    const GemmShape gs = gemm_shape(p, kBM, kBN);
    const unsigned int blocks = blocks_for(gs.tiles, 1);
    // + the tiles' overhang (kBM pixels, kBK reduction indices) past M and red.
    with_index_type(max64(conv_extent(p), gs.tiles + gs.M + gs.red + kBM + kBK), [&](auto index) {
        using I = decltype(index);
        const GemmDiv<I> dv(p, gs);
        if (p.layout == Layout::NCHW)
            conv2d_implicit_gemm<Layout::NCHW, I><<<blocks, kGemmThreads, 0, stream>>>(p, gs, dv, x, w, b, residual, y);
        else
            conv2d_implicit_gemm<Layout::NHWC, I><<<blocks, kGemmThreads, 0, stream>>>(p, gs, dv, x, w, b, residual, y);
    });
    FC_CUDA_CHECK_LAUNCH();
}

}  // namespace

// Auto's choice. A 64-wide filter tile with at most 16 filters per group is three
// quarters empty, and a short reduction (red <= 256: LeNet-5's 1x5x5 and 6x5x5) gives it
// few slices to amortise its loads over, so direct wins there.
ConvVariant conv2d_auto_variant(const Conv2dParams& p) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
    if (p.C == p.groups && p.groups > 1) return ConvVariant::Depthwise;
    if (Kg <= 16 && Cg * p.R * p.S <= 256) return ConvVariant::Direct;
    return ConvVariant::ImplicitGemm;
}

void conv2d_fwd(const Conv2dParams& p, ConvVariant v, const float* x, const float* w,
                const float* b, float* y, cudaStream_t stream, const float* residual) {
    FC_CHECK(v != ConvVariant::Depthwise || p.C == p.groups,
             "the depthwise variant needs groups == channels");
    FC_CHECK(v != ConvVariant::Fused, "the fused variant is conv2d_avgpool's alone");
    if (v == ConvVariant::Winograd2 || v == ConvVariant::Winograd4)
        return winograd_conv2d_fwd(p, v == ConvVariant::Winograd2 ? 2 : 4, x, w, b, residual, y,
                                   stream);
    if (p.N * p.K * p.P * p.Q <= 0) return;
    if (v == ConvVariant::Auto) v = conv2d_auto_variant(p);
    switch (v) {
        case ConvVariant::Direct: return launch_direct(p, x, w, b, residual, y, stream);
        case ConvVariant::Depthwise: return depthwise_conv2d_fwd(p, x, w, b, residual, y, stream);
        default:
            if (p.precision != Precision::Strict)
                return implicit_gemm_tc_fwd(p, x, w, b, residual, y, stream);
            return launch_implicit_gemm(p, x, w, b, residual, y, stream);
    }
}

namespace {

const char* variant_name(ConvVariant v) {
    switch (v) {
        case ConvVariant::Auto: return "auto";
        case ConvVariant::Direct: return "direct";
        case ConvVariant::ImplicitGemm: return "implicit_gemm";
        case ConvVariant::Depthwise: return "depthwise";
        case ConvVariant::Fused: return "fused";
        case ConvVariant::Winograd2: return "winograd2";
        case ConvVariant::Winograd4: return "winograd4";
    }
    return "unknown";
}

// float16 / bfloat16: the tensor-core implicit GEMM is the only kernel (Auto picks it).
template <typename T>
void conv2d_fwd_16(const Conv2dParams& p, ConvVariant v, const char* type, const T* x, const T* w,
                   const T* b, T* y, cudaStream_t stream, const T* residual) {
    FC_CHECK(v == ConvVariant::Auto || v == ConvVariant::ImplicitGemm,
             std::string("conv2d forward has no ") + variant_name(v) + " variant for " + type +
                 " (auto and implicit_gemm run it on tensor cores)");
    if (p.N * p.K * p.P * p.Q <= 0) return;
    implicit_gemm_tc_fwd(p, x, w, b, residual, y, stream);
}

}  // namespace

void conv2d_fwd(const Conv2dParams& p, ConvVariant v, const __half* x, const __half* w,
                const __half* b, __half* y, cudaStream_t stream, const __half* residual) {
    conv2d_fwd_16(p, v, "float16", x, w, b, y, stream, residual);
}

void conv2d_fwd(const Conv2dParams& p, ConvVariant v, const __nv_bfloat16* x,
                const __nv_bfloat16* w, const __nv_bfloat16* b, __nv_bfloat16* y,
                cudaStream_t stream, const __nv_bfloat16* residual) {
    conv2d_fwd_16(p, v, "bfloat16", x, w, b, y, stream, residual);
}

void conv2d_avgpool_fwd(const Conv2dPoolParams& p, ConvVariant v, const float* x,
                        const float* w, const float* b, float* y, float* a,
                        cudaStream_t stream) {
    const Conv2dParams& c = p.conv;
    if (c.N * c.K * c.P * c.Q <= 0) return;
    if (v == ConvVariant::Auto)
        v = conv2d_auto_variant(c) == ConvVariant::Direct ? ConvVariant::Fused : ConvVariant::Auto;
    if (v == ConvVariant::Fused) {
        const int64_t count = c.N * c.K * (c.P / p.pool_h) * (c.Q / p.pool_w);
        with_index_type(conv_extent(c), [&](auto index) {
            using I = decltype(index);
            conv2d_avgpool_fused<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
                p, Unravel4<I>(c.layout, c.K, c.P / p.pool_h, c.Q / p.pool_w), x, w, b, y, a);
        });
        FC_CUDA_CHECK_LAUNCH();
        return;
    }
    conv2d_fwd(c, v, x, w, b, a, stream);
    avg_pool_fwd(block_pool(p), a, y, stream);
}

}  // namespace cuda
}  // namespace fastconv

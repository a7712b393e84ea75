// depthwise.cu: conv2d forward for depthwise layers (groups == C), float32, the CUDA
// twin of the depthwise variant in csrc/cpu/conv2d_fwd.cpp. Called from conv2d_fwd.cu.
//
//   y[n, k, p, q] = act(b[k] + sum_{r,s} x[n, k / Kg, p*sh - ph + r*dh, q*sw - pw + s*dw]
//                                        * w[k, 0, r, s]  + residual[n, k, p, q])
// with Kg = K / C the channel multiplier (1 for MobileNet, 2 for "depthwise-mult2").
// Layouts: NCHW with weight (K, 1, R, S), NHWC with weight (R, S, 1, K).
//
// A GEMM of a one-channel reduction per group wastes its tiles, so depthwise gets its own
// kernels, one thread per output, summing the taps in (r, s) order from the bias as the
// CPU does (the residual, where given, added after them):
//   nchw  a block covers a run of up to 256 pixels of one output plane (n, k): its
//         threads read neighbouring input pixels, and the plane's R*S weights are staged
//         once in shared memory (in chunks of kTapChunk taps, so any kernel size works)
//         instead of being fetched by every thread. Blocks shrink to the plane for small
//         planes (7x7 late MobileNet layers) so fewer threads idle.
//   nhwc  threads run along k, the fastest axis of both y and the (R, S, 1, K) weight:
//         every load of x (channel k / Kg) and of w is coalesced, and neighbouring threads
//         share input rows through L1.
// Both come in two index types (cuda_common.cuh): int32_t where depthwise_extent fits,
// int64_t otherwise; the divisions by launch constants (runs per plane, K, Q, Kg) are
// multiply-highs (DivMod, Unravel4), and the tap loops walk (r, s) with counters.
#include "../common/activation.h"
#include "../common/check.h"
#include "../common/shapes.h"
#include "cuda_common.cuh"
#include "depthwise.cuh"
#include "implicit_gemm.cuh"

namespace fastconv {
namespace cuda {

namespace {

// Taps staged in shared memory at a time: 4 KiB, all of any kernel up to 32 x 32.
constexpr int64_t kTapChunk = 1024;

// One block per (plane, run of pixels) in a grid-stride loop over those pairs.
// by_runs divides by the runs per plane, by_k by K, by_q by Q, by_kg by K / C.
template <typename I>
__global__ void __launch_bounds__(kThreads)
    depthwise_nchw(Conv2dParams p, DivMod<I> by_runs, DivMod<I> by_k, DivMod<I> by_q,
                   DivMod<I> by_kg, const float* __restrict__ x, const float* __restrict__ w,
                   const float* __restrict__ b, const float* __restrict__ residual,
                   float* __restrict__ y) {
    __shared__ float taps[kTapChunk];
    const I S = I(p.S), H = I(p.H), W = I(p.W), RS = I(p.R) * S, PQ = I(p.P) * by_q.d;
    const I sh = I(p.stride_h), sw = I(p.stride_w), dh = I(p.dil_h), dw = I(p.dil_w);
    const I work = I(p.N) * by_k.d * by_runs.d;
    // The loop bound is the same for every thread of a block, so all of them reach each
    // __syncthreads below, active or not.
    for (I item = blockIdx.x; item < work; item += gridDim.x) {
        I plane, n, oh;  // plane = n * K + k
        const I pq = by_runs.divmod(item, plane) * I(blockDim.x) + I(threadIdx.x);
        const I k = by_k.divmod(plane, n);
        const bool active = pq < PQ;
        const I ow = by_q.divmod(pq, oh);
        const I h0 = oh * sh - I(p.pad_h), w0 = ow * sw - I(p.pad_w);
        const float* xp = x + (n * I(p.C) + by_kg.div(k)) * H * W;
        float acc = p.has_bias ? b[k] : 0.f;
        I r = 0, s = 0;  // tap t = r * S + s, carried from chunk to chunk
        for (I t0 = 0; t0 < RS; t0 += I(kTapChunk)) {
            const I t1 = RS < t0 + I(kTapChunk) ? RS : I(t0 + kTapChunk);
            __syncthreads();  // the previous chunk or item is no longer being read
            for (I t = t0 + I(threadIdx.x); t < t1; t += I(blockDim.x)) taps[t - t0] = w[k * RS + t];
            __syncthreads();
            if (!active) continue;
            for (I t = t0; t < t1; ++t) {
                const I h = h0 + r * dh, wi = w0 + s * dw;
                if (h >= 0 && h < H && wi >= 0 && wi < W) acc += taps[t - t0] * xp[h * W + wi];
                if (++s == S) s = 0, ++r;
            }
        }
        if (!active) continue;
        if (residual != nullptr) acc += residual[plane * PQ + pq];
        y[plane * PQ + pq] = activate(p.act, acc);
    }
}

// One thread per output, in y's memory order (k fastest). un unravels (K, P, Q);
// by_kg divides by K / C.
template <typename I>
__global__ void __launch_bounds__(kThreads)
    depthwise_nhwc(Conv2dParams p, Unravel4<I> un, DivMod<I> by_kg, const float* __restrict__ x,
                   const float* __restrict__ w, const float* __restrict__ b,
                   const float* __restrict__ residual, float* __restrict__ y) {
    const I C = I(p.C), H = I(p.H), W = I(p.W), K = I(p.K), R = I(p.R), S = I(p.S);
    const I count = I(p.N * p.P * p.Q * p.K);
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> o = un(i);  // (n, k, oh, ow)
        const float* xn = x + o.n * H * W * C + by_kg.div(o.c);  // channel k / Kg of image n
        const I h0 = o.h * I(p.stride_h) - I(p.pad_h), w0 = o.w * I(p.stride_w) - I(p.pad_w);
        float acc = p.has_bias ? b[o.c] : 0.f;
        for (I r = 0; r < R; ++r) {
            const I h = h0 + r * I(p.dil_h);
            if (h < 0 || h >= H) continue;
            for (I s = 0; s < S; ++s) {
                const I wi = w0 + s * I(p.dil_w);
                if (wi < 0 || wi >= W) continue;
                acc += w[(r * S + s) * K + o.c] * xn[(h * W + wi) * C];
            }
        }
        if (residual != nullptr) acc += residual[i];
        y[i] = activate(p.act, acc);
    }
}

// The largest index, offset or window coordinate the two kernels form: conv_extent's,
// and the NCHW kernel's items x threads (a plane's last run overhangs it).
int64_t depthwise_extent(const Conv2dParams& p, int64_t runs, int64_t threads) {
    return max64(conv_extent(p), p.N * p.K * runs * threads);
}

}  // namespace

void depthwise_conv2d_fwd(const Conv2dParams& p, const float* x, const float* w, const float* b,
                          const float* residual, float* y, cudaStream_t stream) {
    FC_CHECK(p.groups == p.C, "the depthwise kernel needs groups == channels");
    const int64_t PQ = p.P * p.Q;
    if (p.N * p.K * PQ <= 0) return;
    if (p.layout == Layout::NCHW) {
        // Whole warps, at most kThreads, no more than the plane needs.
        const int threads = int(min64(kThreads, ceil_div(PQ, 32) * 32));
        const int64_t runs = ceil_div(PQ, threads);
        with_index_type(depthwise_extent(p, runs, threads), [&](auto index) {
            using I = decltype(index);
            depthwise_nchw<I><<<blocks_for(p.N * p.K * runs, 1), threads, 0, stream>>>(
                p, DivMod<I>(runs), DivMod<I>(p.K), DivMod<I>(p.Q), DivMod<I>(p.K / p.C), x, w,
                b, residual, y);
        });
        FC_CUDA_CHECK_LAUNCH();
    } else {
        with_index_type(depthwise_extent(p, 1, 1), [&](auto index) {
            using I = decltype(index);
            depthwise_nhwc<I><<<blocks_for(p.N * PQ * p.K, kThreads), kThreads, 0, stream>>>(
                p, Unravel4<I>(Layout::NHWC, p.K, p.P, p.Q), DivMod<I>(p.K / p.C), x, w, b, residual, y);
        });
        FC_CUDA_CHECK_LAUNCH();
    }
}

}  // namespace cuda
}  // namespace fastconv

// depthwise.cu: conv2d forward for depthwise layers (groups == C), float32, the CUDA
// twin of the depthwise variant in csrc/cpu/conv2d_fwd.cpp. Called from conv2d_fwd.cu.
//
//   y[n, k, p, q] = act(b[k] + sum_{r,s} x[n, k / Kg, p*sh - ph + r*dh, q*sw - pw + s*dw]
//                                        * w[k, 0, r, s])
// with Kg = K / C the channel multiplier (1 for MobileNet, 2 for "depthwise-mult2").
// Layouts: NCHW with weight (K, 1, R, S), NHWC with weight (R, S, 1, K).
//
// A GEMM of a one-channel reduction per group wastes its tiles, so depthwise gets its own
// kernels, one thread per output, summing the taps in (r, s) order from the bias as the
// CPU does:
//   nchw  a block covers a run of up to 256 pixels of one output plane (n, k): its
//         threads read neighbouring input pixels, and the plane's R*S weights are staged
//         once in shared memory (in chunks of kTapChunk taps, so any kernel size works)
//         instead of being fetched by every thread. Blocks shrink to the plane for small
//         planes (7x7 late MobileNet layers) so fewer threads idle.
//   nhwc  threads run along k, the fastest axis of both y and the (R, S, 1, K) weight:
//         every load of x (channel k / Kg) and of w is coalesced, and neighbouring threads
//         share input rows through L1.
#include "../common/activation.h"
#include "../common/check.h"
#include "../common/shapes.h"
#include "cuda_common.cuh"
#include "depthwise.cuh"

namespace fastconv {
namespace cuda {

namespace {

// Taps staged in shared memory at a time: 4 KiB, all of any kernel up to 32 x 32.
constexpr int64_t kTapChunk = 1024;

// One block per (plane, run of pixels) in a grid-stride loop over those pairs.
__global__ void __launch_bounds__(kThreads)
    depthwise_nchw(Conv2dParams p, int64_t runs_per_plane, const float* __restrict__ x,
                   const float* __restrict__ w, const float* __restrict__ b,
                   float* __restrict__ y) {
    __shared__ float taps[kTapChunk];
    const int64_t RS = p.R * p.S, PQ = p.P * p.Q, Kg = p.K / p.C;
    const int64_t work = p.N * p.K * runs_per_plane;
    // The loop bound is the same for every thread of a block, so all of them reach each
    // __syncthreads below, active or not.
    for (int64_t item = blockIdx.x; item < work; item += gridDim.x) {
        const int64_t plane = item / runs_per_plane;  // n * K + k
        const int64_t pq = (item % runs_per_plane) * blockDim.x + threadIdx.x;
        const int64_t n = plane / p.K, k = plane % p.K;
        const bool active = pq < PQ;
        const int64_t h0 = (pq / p.Q) * p.stride_h - p.pad_h;
        const int64_t w0 = (pq % p.Q) * p.stride_w - p.pad_w;
        const float* xp = x + (n * p.C + k / Kg) * p.H * p.W;
        float acc = p.has_bias ? b[k] : 0.f;
        for (int64_t t0 = 0; t0 < RS; t0 += kTapChunk) {
            const int64_t t1 = min64(RS, t0 + kTapChunk);
            __syncthreads();  // the previous chunk or item is no longer being read
            for (int64_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) taps[t - t0] = w[k * RS + t];
            __syncthreads();
            if (!active) continue;
            int64_t r = t0 / p.S, s = t0 % p.S;
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t h = h0 + r * p.dil_h, wi = w0 + s * p.dil_w;
                if (h >= 0 && h < p.H && wi >= 0 && wi < p.W) acc += taps[t - t0] * xp[h * p.W + wi];
                if (++s == p.S) s = 0, ++r;
            }
        }
        if (active) y[plane * PQ + pq] = activate(p.act, acc);
    }
}

// One thread per output, in y's memory order (k fastest).
__global__ void __launch_bounds__(kThreads)
    depthwise_nhwc(Conv2dParams p, const float* __restrict__ x, const float* __restrict__ w,
                   const float* __restrict__ b, float* __restrict__ y) {
    const int64_t Kg = p.K / p.C, count = p.N * p.P * p.Q * p.K;
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const Coord4 o = unravel4(Layout::NHWC, i, p.K, p.P, p.Q);
        const int64_t c = o.c / Kg;
        float acc = p.has_bias ? b[o.c] : 0.f;
        for (int64_t r = 0; r < p.R; ++r) {
            const int64_t h = o.h * p.stride_h - p.pad_h + r * p.dil_h;
            if (h < 0 || h >= p.H) continue;
            for (int64_t s = 0; s < p.S; ++s) {
                const int64_t wi = o.w * p.stride_w - p.pad_w + s * p.dil_w;
                if (wi < 0 || wi >= p.W) continue;
                acc += w[(r * p.S + s) * p.K + o.c] * x[((o.n * p.H + h) * p.W + wi) * p.C + c];
            }
        }
        y[i] = activate(p.act, acc);
    }
}

}  // namespace

void depthwise_conv2d_fwd(const Conv2dParams& p, const float* x, const float* w, const float* b,
                          float* y, cudaStream_t stream) {
    FC_CHECK(p.groups == p.C, "the depthwise kernel needs groups == channels");
    const int64_t PQ = p.P * p.Q;
    if (p.N * p.K * PQ <= 0) return;
    if (p.layout == Layout::NCHW) {
        // Whole warps, at most kThreads, no more than the plane needs.
        const int threads = int(min64(kThreads, ceil_div(PQ, 32) * 32));
        const int64_t runs = ceil_div(PQ, threads);
        depthwise_nchw<<<blocks_for(p.N * p.K * runs, 1), threads, 0, stream>>>(p, runs, x, w, b,
                                                                                  y);
        FC_CUDA_CHECK_LAUNCH();
    } else {
        depthwise_nhwc<<<blocks_for(p.N * PQ * p.K, kThreads), kThreads, 0, stream>>>(p, x, w, b,
                                                                                        y);
        FC_CUDA_CHECK_LAUNCH();
    }
}

}  // namespace cuda
}  // namespace fastconv

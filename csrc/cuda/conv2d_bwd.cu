// conv2d_bwd.cu: conv2d backward on the GPU, float32, NCHW and NHWC: the activation's
// derivative, grad input, grad weight and grad bias. The CPU twin is
// csrc/cpu/conv2d_bwd.cpp; the layouts and weight layouts are the forward's.
//
// Every result is deterministic without atomics: each element is produced by one thread,
// or by one block whose threads take fixed strided shares of the sum and meet in
// block_sum's fixed tree, so identical runs give identical bits.
//
// Kernels (one per result; the ConvVariant argument is accepted and ignored, every
// variant runs these):
//   activation_bwd  element-wise dz = dy * act'(y), in double rounded once (the CPU's).
//   avgpool_act_bwd the LeNet-5 block's (conv2d_avgpool's) first step, element-wise over
//                   the full-resolution dz: dy of the pooled output above it / window
//                   area * act'(a), 0 where the pooling's floor dropped the pixel; then
//                   the three kernels below.
//   bwd_data        gather, one thread per input pixel: the outputs whose windows reach
//                   it (first_out_reaching / last_out_reaching, then the dilation
//                   divisibility test), for each filter of its group; the CPU's
//                   bwd_data_direct with the filter loop moved innermost. Gathering
//                   instead of scattering col2im-style is what removes the atomics.
//   bwd_filter      one block per weight element (k, c, r, s): its 256 threads stride over
//                   the N*P*Q products dy * x, then block_sum.
//   bwd_bias        one block per filter k: the same over dy alone, in double (the CPU's).
#include "../common/activation.h"
#include "../common/check.h"
#include "../common/shapes.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

namespace fastconv {
namespace cuda {

namespace {

__global__ void __launch_bounds__(kThreads)
    activation_bwd_kernel(Activation act, int64_t count, const float* __restrict__ y,
                          const float* __restrict__ dy, float* __restrict__ dz) {
    // In double, rounded once, as the CPU: 1 - y*y in float loses most of its digits
    // where tanh saturates (y = 0.9999), and grad bias sums these with heavy cancellation.
    for (int64_t i = thread_index(); i < count; i += thread_count())
        dz[i] = float(double(dy[i]) * activate_grad(act, double(y[i])));
}

// One thread per element of dz (N, K, P, Q), in its memory order; the CPU's formula.
__global__ void __launch_bounds__(kThreads)
    avgpool_act_bwd_kernel(Conv2dPoolParams bp, const float* __restrict__ dy,
                           const float* __restrict__ a, float* __restrict__ dz) {
    const Conv2dParams& p = bp.conv;
    const int64_t PP = p.P / bp.pool_h, QQ = p.Q / bp.pool_w;
    const int64_t count = p.N * p.K * p.P * p.Q;
    const double area = double(bp.pool_h * bp.pool_w);
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const Coord4 o = unravel4(p.layout, i, p.K, p.P, p.Q);
        const int64_t pi = o.h / bp.pool_h, qi = o.w / bp.pool_w;
        if (pi >= PP || qi >= QQ) {
            dz[i] = 0.f;
            continue;
        }
        const double d = double(dy[offset4(p.layout, o.n, o.c, pi, qi, p.K, PP, QQ)]) / area;
        dz[i] = float(a ? d * activate_grad(p.act, double(a[i])) : d);
    }
}

// One thread per element of dx, in dx's memory order.
__global__ void __launch_bounds__(kThreads)
    bwd_data_gather(Conv2dParams p, const float* __restrict__ dy, const float* __restrict__ w,
                    float* __restrict__ dx) {
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
    const int64_t count = p.N * p.C * p.H * p.W;
    const bool nchw = p.layout == Layout::NCHW;
    // Distance between filters k and k + 1 in dy and in w.
    const int64_t dy_step = nchw ? p.P * p.Q : 1, w_step = nchw ? Cg * p.R * p.S : 1;
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const Coord4 at = unravel4(p.layout, i, p.C, p.H, p.W);  // (n, c, h, wi)
        const int64_t g = at.c / Cg, cg = at.c % Cg;
        const int64_t p0 = first_out_reaching(at.h, p.R, p.stride_h, p.pad_h, p.dil_h);
        const int64_t p1 = last_out_reaching(at.h, p.stride_h, p.pad_h, p.P);
        const int64_t q0 = first_out_reaching(at.w, p.S, p.stride_w, p.pad_w, p.dil_w);
        const int64_t q1 = last_out_reaching(at.w, p.stride_w, p.pad_w, p.Q);
        // The filters are the innermost loop (the CPU's is the outermost): the dilation
        // tests then run once per output rather than once per filter, and the filter loop
        // is two strided loads. The order is still fixed, so the result is too.
        float acc = 0.f;
        for (int64_t oh = p0; oh < p1; ++oh) {
            const int64_t rr = at.h + p.pad_h - oh * p.stride_h;  // = r * dil_h
            if (rr % p.dil_h) continue;
            for (int64_t ow = q0; ow < q1; ++ow) {
                const int64_t ss = at.w + p.pad_w - ow * p.stride_w;  // = s * dil_w
                if (ss % p.dil_w) continue;
                const float* dyk = dy + offset4(p.layout, at.n, g * Kg, oh, ow, p.K, p.P, p.Q);
                const float* wk = w + weight_offset(p.layout, g * Kg, cg, rr / p.dil_h,
                                                    ss / p.dil_w, p.K, Cg, p.R, p.S);
                for (int64_t k = 0; k < Kg; ++k) acc += dyk[k * dy_step] * wk[k * w_step];
            }
        }
        dx[i] = acc;
    }
}

// One block per element of dw, in dw's memory order; blockDim.x == kReduceThreads.
__global__ void __launch_bounds__(kReduceThreads)
    bwd_filter_reduce(Conv2dParams p, const float* __restrict__ dy, const float* __restrict__ x,
                      float* __restrict__ dw) {
    __shared__ float partial[kReduceThreads];
    const int64_t Cg = p.C / p.groups, Kg = p.K / p.groups;
    const int64_t PQ = p.P * p.Q, NPQ = p.N * PQ, count = p.K * Cg * p.R * p.S;
    for (int64_t e = blockIdx.x; e < count; e += gridDim.x) {
        // (k, c, r, s) of weight element e: (K, Cg, R, S) for NCHW, (R, S, Cg, K) for NHWC.
        int64_t k, c, r, s;
        if (p.layout == Layout::NCHW) {
            s = e % p.S, r = e / p.S % p.R, c = e / (p.S * p.R) % Cg, k = e / (p.S * p.R * Cg);
        } else {
            k = e % p.K, c = e / p.K % Cg, s = e / (p.K * Cg) % p.S, r = e / (p.K * Cg * p.S);
        }
        const int64_t ci = (k / Kg) * Cg + c;
        float acc = 0.f;
        for (int64_t j = threadIdx.x; j < NPQ; j += blockDim.x) {
            const int64_t n = j / PQ, oh = j % PQ / p.Q, ow = j % p.Q;
            const int64_t h = oh * p.stride_h - p.pad_h + r * p.dil_h;
            const int64_t wi = ow * p.stride_w - p.pad_w + s * p.dil_w;
            if (h < 0 || h >= p.H || wi < 0 || wi >= p.W) continue;
            acc += dy[offset4(p.layout, n, k, oh, ow, p.K, p.P, p.Q)] *
                   x[offset4(p.layout, n, ci, h, wi, p.C, p.H, p.W)];
        }
        const float total = block_sum(acc, partial);
        if (threadIdx.x == 0) dw[e] = total;
    }
}

// One block per filter k; blockDim.x == kReduceThreads. Accumulated in double, as the
// CPU: a long sum of gradients that largely cancel, whose float32 result then stays
// within one rounding of the exact sum.
__global__ void __launch_bounds__(kReduceThreads)
    bwd_bias_reduce(Conv2dParams p, const float* __restrict__ dy, float* __restrict__ db) {
    __shared__ double partial[kReduceThreads];
    const int64_t PQ = p.P * p.Q, NPQ = p.N * PQ;
    for (int64_t k = blockIdx.x; k < p.K; k += gridDim.x) {
        double acc = 0.0;
        for (int64_t j = threadIdx.x; j < NPQ; j += blockDim.x)
            acc += p.layout == Layout::NCHW ? dy[(j / PQ * p.K + k) * PQ + j % PQ] : dy[j * p.K + k];
        const double total = block_sum(acc, partial);
        if (threadIdx.x == 0) db[k] = float(total);
    }
}

}  // namespace

void activation_bwd(Activation act, int64_t count, const float* y, const float* dy, float* dz,
                    cudaStream_t stream) {
    if (count <= 0) return;
    activation_bwd_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(act, count, y, dy,
                                                                                dz);
    FC_CUDA_CHECK_LAUNCH();
}

void avgpool_act_bwd(const Conv2dPoolParams& p, const float* dy, const float* a, float* dz,
                     cudaStream_t stream) {
    const int64_t count = p.conv.N * p.conv.K * p.conv.P * p.conv.Q;
    if (count <= 0) return;
    avgpool_act_bwd_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(p, dy, a, dz);
    FC_CUDA_CHECK_LAUNCH();
}

void conv2d_bwd_data(const Conv2dParams& p, ConvVariant, const float* dy, const float* w,
                     float* dx, cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.H * p.W;
    if (count <= 0) return;
    bwd_data_gather<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(p, dy, w, dx);
    FC_CUDA_CHECK_LAUNCH();
}

void conv2d_bwd_filter(const Conv2dParams& p, ConvVariant, const float* dy, const float* x,
                       float* dw, cudaStream_t stream) {
    const int64_t count = p.K * (p.C / p.groups) * p.R * p.S;
    if (count <= 0) return;
    // With no outputs every block writes a zero sum, which is the gradient.
    bwd_filter_reduce<<<blocks_for(count, 1), kReduceThreads, 0, stream>>>(p, dy, x, dw);
    FC_CUDA_CHECK_LAUNCH();
}

void conv2d_bwd_bias(const Conv2dParams& p, const float* dy, float* db, cudaStream_t stream) {
    if (p.K <= 0) return;
    bwd_bias_reduce<<<blocks_for(p.K, 1), kReduceThreads, 0, stream>>>(p, dy, db);
    FC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace fastconv

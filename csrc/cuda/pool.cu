// pool.cu: max, average and global average pooling on the GPU, forward and backward,
// float32, NCHW and NHWC. The CPU twin is csrc/cpu/pool.cpp, whose semantics (PyTorch's)
// these kernels reproduce:
//   max      the first maximum of the window in row-major scan order wins; a NaN wins over
//            any number (the last NaN met), so NaN propagates. The index is h * W + w; a
//            window entirely in the padding gives -inf and index -1.
//   average  sum over the window clipped to the image, divided by divisor (if set), else by
//            the window clipped to [-pad, H + pad_end) (count_include_pad) or to the image.
//   global   the mean of each (n, c) plane, accumulated in double as on the CPU.
//
// Kernels, one thread per output element in the output's memory order unless said:
//   max_pool_fwd         scans its window; writes the index only when idx is not null.
//   max_pool_bwd         gather, one thread per input pixel: sums dy over the outputs
//                        whose window can hold the pixel (first_out_reaching /
//                        last_out_reaching) and whose index names it, in output raster
//                        order, the order in which the CPU's scatter adds them: same bits,
//                        no atomics.
//   max_pool_bad_indices counts indices a caller passed that name no pixel of their
//                        output's window (shapes.h pool_window_holds, the CPU's rule):
//                        the gather would silently drop them, so the API refuses them.
//   avg_pool_fwd         sums its clipped window.
//   avg_pool_bwd         gather as max_pool_bwd, adding dy / divisor of every output whose
//                        window holds the pixel, in raster order (again the CPU's bits).
//   global_avg_pool_fwd  NCHW: one block per plane, threads stride over the contiguous
//                        plane and meet in block_sum's fixed tree. NHWC: one thread per
//                        (n, c), threads along c so each step over the pixels is one
//                        coalesced read; each sums its plane in the CPU's order.
//   global_avg_pool_bwd  element-wise dx = dy / (H * W).
#include <cmath>

#include "../common/check.h"
#include "../common/shapes.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

namespace fastconv {
namespace cuda {

namespace {

__global__ void __launch_bounds__(kThreads)
    max_pool_fwd_kernel(Pool2dParams p, const float* __restrict__ x, float* __restrict__ y,
                        int64_t* __restrict__ idx) {
    const int64_t count = p.N * p.C * p.P * p.Q;
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const Coord4 o = unravel4(p.layout, i, p.C, p.P, p.Q);  // (n, c, oh, ow)
        const PoolTaps th = pool_taps(o.h, p.stride_h, p.pad_h, p.kh, p.dil_h, p.H);
        const PoolTaps tw = pool_taps(o.w, p.stride_w, p.pad_w, p.kw, p.dil_w, p.W);
        float best = -INFINITY;
        int64_t arg = -1;
        for (int64_t a = th.t0; a < th.t1; ++a) {
            const int64_t h = th.start + a * p.dil_h;
            for (int64_t b = tw.t0; b < tw.t1; ++b) {
                const int64_t w = tw.start + b * p.dil_w;
                const float v = x[offset4(p.layout, o.n, o.c, h, w, p.C, p.H, p.W)];
                if (v > best || isnan(v)) best = v, arg = h * p.W + w;
            }
        }
        y[i] = best;
        if (idx) idx[i] = arg;
    }
}

// One thread per element of dx, in dx's memory order.
__global__ void __launch_bounds__(kThreads)
    max_pool_bwd_gather(Pool2dParams p, const float* __restrict__ dy,
                        const int64_t* __restrict__ idx, float* __restrict__ dx) {
    const int64_t count = p.N * p.C * p.H * p.W;
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const Coord4 at = unravel4(p.layout, i, p.C, p.H, p.W);  // (n, c, h, w)
        const int64_t self = at.h * p.W + at.w;
        const int64_t p0 = first_out_reaching(at.h, p.kh, p.stride_h, p.pad_h, p.dil_h);
        const int64_t p1 = last_out_reaching(at.h, p.stride_h, p.pad_h, p.P);
        const int64_t q0 = first_out_reaching(at.w, p.kw, p.stride_w, p.pad_w, p.dil_w);
        const int64_t q1 = last_out_reaching(at.w, p.stride_w, p.pad_w, p.Q);
        // Windows that skip the pixel (dilation) cannot have chosen it: the index test
        // alone decides.
        float acc = 0.f;
        for (int64_t oh = p0; oh < p1; ++oh)
            for (int64_t ow = q0; ow < q1; ++ow) {
                const int64_t o = offset4(p.layout, at.n, at.c, oh, ow, p.C, p.P, p.Q);
                if (idx[o] == self) acc += dy[o];
            }
        dx[i] = acc;
    }
}

__global__ void __launch_bounds__(kThreads)
    max_pool_bad_indices_kernel(Pool2dParams p, const int64_t* __restrict__ idx,
                                unsigned long long* __restrict__ bad) {
    const int64_t count = p.N * p.C * p.P * p.Q;
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const Coord4 o = unravel4(p.layout, i, p.C, p.P, p.Q);
        const int64_t at = idx[i];
        if (at != -1 && !pool_window_holds(p, o.h, o.w, at)) atomicAdd(bad, 1ull);
    }
}

__global__ void __launch_bounds__(kThreads)
    avg_pool_fwd_kernel(Pool2dParams p, const float* __restrict__ x, float* __restrict__ y) {
    const int64_t count = p.N * p.C * p.P * p.Q;
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const Coord4 o = unravel4(p.layout, i, p.C, p.P, p.Q);
        const PoolTaps th = pool_taps(o.h, p.stride_h, p.pad_h, p.kh, 1, p.H);
        const PoolTaps tw = pool_taps(o.w, p.stride_w, p.pad_w, p.kw, 1, p.W);
        float acc = 0.f;
        for (int64_t a = th.t0; a < th.t1; ++a)
            for (int64_t b = tw.t0; b < tw.t1; ++b)
                acc += x[offset4(p.layout, o.n, o.c, th.start + a, tw.start + b, p.C, p.H, p.W)];
        y[i] = acc / float(pool_avg_divisor(p, o.h, o.w));
    }
}

// One thread per element of dx, in dx's memory order. The outputs whose (undilated)
// window holds row h are exactly [first_out_reaching, last_out_reaching), and likewise
// for columns, so no tap test is needed.
__global__ void __launch_bounds__(kThreads)
    avg_pool_bwd_gather(Pool2dParams p, const float* __restrict__ dy, float* __restrict__ dx) {
    const int64_t count = p.N * p.C * p.H * p.W;
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const Coord4 at = unravel4(p.layout, i, p.C, p.H, p.W);
        const int64_t p0 = first_out_reaching(at.h, p.kh, p.stride_h, p.pad_h, 1);
        const int64_t p1 = last_out_reaching(at.h, p.stride_h, p.pad_h, p.P);
        const int64_t q0 = first_out_reaching(at.w, p.kw, p.stride_w, p.pad_w, 1);
        const int64_t q1 = last_out_reaching(at.w, p.stride_w, p.pad_w, p.Q);
        float acc = 0.f;
        for (int64_t oh = p0; oh < p1; ++oh)
            for (int64_t ow = q0; ow < q1; ++ow)
                acc += dy[offset4(p.layout, at.n, at.c, oh, ow, p.C, p.P, p.Q)] /
                       float(pool_avg_divisor(p, oh, ow));
        dx[i] = acc;
    }
}

// NCHW: one block per plane n * C + c; blockDim.x == kReduceThreads.
__global__ void __launch_bounds__(kReduceThreads)
    global_avg_pool_nchw(GlobalPoolParams p, const float* __restrict__ x, float* __restrict__ y) {
    __shared__ double partial[kReduceThreads];
    const int64_t HW = p.H * p.W, planes = p.N * p.C;
    for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const float* xp = x + plane * HW;
        double acc = 0.0;
        for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) acc += xp[j];
        const double total = block_sum(acc, partial);
        if (threadIdx.x == 0) y[plane] = float(total / double(HW));
    }
}

// NHWC: one thread per (n, c), i = n * C + c.
__global__ void __launch_bounds__(kThreads)
    global_avg_pool_nhwc(GlobalPoolParams p, const float* __restrict__ x, float* __restrict__ y) {
    const int64_t HW = p.H * p.W, count = p.N * p.C;
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const int64_t n = i / p.C, c = i % p.C;
        const float* xn = x + n * HW * p.C + c;
        double acc = 0.0;
        for (int64_t j = 0; j < HW; ++j) acc += xn[j * p.C];
        y[i] = float(acc / double(HW));
    }
}

__global__ void __launch_bounds__(kThreads)
    global_avg_pool_bwd_kernel(GlobalPoolParams p, const float* __restrict__ dy,
                               float* __restrict__ dx) {
    const int64_t count = p.N * p.C * p.H * p.W;
    const float HW = float(p.H * p.W);
    for (int64_t i = thread_index(); i < count; i += thread_count()) {
        const Coord4 at = unravel4(p.layout, i, p.C, p.H, p.W);
        dx[i] = dy[at.n * p.C + at.c] / HW;
    }
}

}  // namespace

void max_pool_fwd(const Pool2dParams& p, const float* x, float* y, int64_t* idx,
                  cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.P * p.Q;
    if (count <= 0) return;
    max_pool_fwd_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(p, x, y, idx);
    FC_CUDA_CHECK_LAUNCH();
}

int64_t max_pool_bad_indices(const Pool2dParams& p, const int64_t* idx, cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.P * p.Q;
    if (count <= 0) return 0;
    struct Counter {  // freed on every path, exceptions included
        unsigned long long* dev = nullptr;
        cudaStream_t stream;
        ~Counter() { if (dev) cudaFreeAsync(dev, stream); }
    } counter{nullptr, stream};
    FC_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&counter.dev), sizeof(unsigned long long), stream));
    FC_CUDA_CHECK(cudaMemsetAsync(counter.dev, 0, sizeof(unsigned long long), stream));
    max_pool_bad_indices_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(p, idx, counter.dev);
    FC_CUDA_CHECK_LAUNCH();
    unsigned long long bad = 0;
    FC_CUDA_CHECK(cudaMemcpyAsync(&bad, counter.dev, sizeof bad, cudaMemcpyDeviceToHost, stream));
    FC_CUDA_CHECK(cudaStreamSynchronize(stream));
    return int64_t(bad);
}

void max_pool_bwd(const Pool2dParams& p, const float* dy, const int64_t* idx, float* dx,
                  cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.H * p.W;
    if (count <= 0) return;
    max_pool_bwd_gather<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(p, dy, idx, dx);
    FC_CUDA_CHECK_LAUNCH();
}

void avg_pool_fwd(const Pool2dParams& p, const float* x, float* y, cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.P * p.Q;
    if (count <= 0) return;
    avg_pool_fwd_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(p, x, y);
    FC_CUDA_CHECK_LAUNCH();
}

void avg_pool_bwd(const Pool2dParams& p, const float* dy, float* dx, cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.H * p.W;
    if (count <= 0) return;
    avg_pool_bwd_gather<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(p, dy, dx);
    FC_CUDA_CHECK_LAUNCH();
}

void global_avg_pool_fwd(const GlobalPoolParams& p, const float* x, float* y,
                         cudaStream_t stream) {
    const int64_t count = p.N * p.C;
    if (count <= 0) return;
    if (p.layout == Layout::NCHW)
        global_avg_pool_nchw<<<blocks_for(count, 1), kReduceThreads, 0, stream>>>(p, x, y);
    else
        global_avg_pool_nhwc<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(p, x, y);
    FC_CUDA_CHECK_LAUNCH();
}

void global_avg_pool_bwd(const GlobalPoolParams& p, const float* dy, float* dx,
                         cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.H * p.W;
    if (count <= 0) return;
    global_avg_pool_bwd_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(p, dy, dx);
    FC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace fastconv

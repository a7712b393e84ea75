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
//
// Fast paths for the large-tensor case, 2x2 windows moved by 2 with no padding, where
// both image sides are even and every pointer is 16-byte aligned (pool2x2_applies):
// every byte moves once, 16 bytes an access, and a thread takes several outputs.
//   pool2x2_nchw_*       (W % 4 == 0) two neighbouring windows of one output row: a
//                        float4 from each of the two input rows, two outputs (float2,
//                        indices as longlong2); the backward writes the two float4 rows.
//   pool2x2_nhwc_*       (C % 4 == 0) one window, four channels: four float4 pixels,
//                        one float4 output; the backward the reverse.
// The taps are visited in the generic kernels' order with their arithmetic, so the
// bits are the same (the CUDA emulation compares the two exactly).
//
// Every kernel comes in two index types (cuda_common.cuh): int32_t where pool_extent
// (global pooling: the element count) fits, int64_t otherwise; in int32_t each element's
// (n, c, h, w) takes multiply-highs (Unravel4) and the window loops run in 32 bits. The
// window bounds of the generic kernels (pool_taps, first_out_reaching) are still
// shapes.h's 64-bit helpers, once per element.
#include <cmath>

#include "../common/check.h"
#include "../common/shapes.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

namespace fastconv {
namespace cuda {

namespace {

// The largest index, offset or window coordinate the generic kernels form.
int64_t pool_extent(const Pool2dParams& p) {
    const int64_t tensors = max64(p.N * p.C * p.H * p.W, p.N * p.C * p.P * p.Q);
    const int64_t rows = p.H + p.pad_h + p.pad_h_end + (p.P + 1) * p.stride_h + (p.kh + 1) * p.dil_h;
    const int64_t cols = p.W + p.pad_w + p.pad_w_end + (p.Q + 1) * p.stride_w + (p.kw + 1) * p.dil_w;
    return max64(tensors, 2 * max64(rows, cols));
}

// un unravels (C, P, Q).
template <typename I>
__global__ void __launch_bounds__(kThreads)
    max_pool_fwd_kernel(Pool2dParams p, Unravel4<I> un, const float* __restrict__ x,
                        float* __restrict__ y, int64_t* __restrict__ idx) {
    const I C = I(p.C), H = I(p.H), W = I(p.W), dh = I(p.dil_h), dw = I(p.dil_w);
    const I count = I(p.N * p.C * p.P * p.Q);
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> o = un(i);  // (n, c, oh, ow)
        const PoolTaps th = pool_taps(o.h, p.stride_h, p.pad_h, p.kh, p.dil_h, p.H);
        const PoolTaps tw = pool_taps(o.w, p.stride_w, p.pad_w, p.kw, p.dil_w, p.W);
        float best = -INFINITY;
        I arg = -1;
        for (I a = I(th.t0); a < I(th.t1); ++a) {
            const I h = I(th.start) + a * dh;
            for (I b = I(tw.t0); b < I(tw.t1); ++b) {
                const I w = I(tw.start) + b * dw;
                const float v = x[offset4i(p.layout, o.n, o.c, h, w, C, H, W)];
                if (v > best || isnan(v)) best = v, arg = h * W + w;
            }
        }
        y[i] = best;
        if (idx) idx[i] = arg;
    }
}

// One thread per element of dx, in dx's memory order. un unravels (C, H, W).
template <typename I>
__global__ void __launch_bounds__(kThreads)
    max_pool_bwd_gather(Pool2dParams p, Unravel4<I> un, const float* __restrict__ dy,
                        const int64_t* __restrict__ idx, float* __restrict__ dx) {
    const I C = I(p.C), W = I(p.W), P = I(p.P), Q = I(p.Q);
    const I count = I(p.N * p.C * p.H * p.W);
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> at = un(i);  // (n, c, h, w)
        const int64_t self = at.h * W + at.w;
        const I p0 = I(first_out_reaching(at.h, p.kh, p.stride_h, p.pad_h, p.dil_h));
        const I p1 = I(last_out_reaching(at.h, p.stride_h, p.pad_h, p.P));
        const I q0 = I(first_out_reaching(at.w, p.kw, p.stride_w, p.pad_w, p.dil_w));
        const I q1 = I(last_out_reaching(at.w, p.stride_w, p.pad_w, p.Q));
        // Windows that skip the pixel (dilation) cannot have chosen it: the index test
        // alone decides.
        float acc = 0.f;
        for (I oh = p0; oh < p1; ++oh)
            for (I ow = q0; ow < q1; ++ow) {
                const I o = offset4i(p.layout, at.n, at.c, oh, ow, C, P, Q);
                if (idx[o] == self) acc += dy[o];
            }
        dx[i] = acc;
    }
}

// un unravels (C, P, Q); by_w divides by W, by_dh and by_dw by the dilations.
// pool_window_holds (shapes.h) in I: an index in the plane names pixel (h, w), and
// pool_taps' clipping to the image removes no pixel of the plane from the window, so
// the pixel is a tap exactly when its offsets from the window's start are multiples of
// the dilation below kernel size x dilation. (The emulator compares the count with
// pool_window_holds on the host.)
template <typename I>
__global__ void __launch_bounds__(kThreads)
    max_pool_bad_indices_kernel(Pool2dParams p, Unravel4<I> un, DivMod<I> by_w, DivMod<I> by_dh,
                                DivMod<I> by_dw, const int64_t* __restrict__ idx,
                                unsigned long long* __restrict__ bad) {
    const int64_t HW = p.H * p.W;
    const I count = I(p.N * p.C * p.P * p.Q);
    const I span_h = I(p.kh) * by_dh.d, span_w = I(p.kw) * by_dw.d;
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const int64_t at = idx[i];
        if (at == -1) continue;
        bool holds = at >= 0 && at < HW;  // compared in 64 bits: a caller's value
        if (holds) {
            const Coord4I<I> o = un(i);  // (n, c, oh, ow)
            I h, q;
            const I w = by_w.divmod(I(at), h);
            const I dh = h - (o.h * I(p.stride_h) - I(p.pad_h));
            const I dw = w - (o.w * I(p.stride_w) - I(p.pad_w));
            holds = dh >= 0 && dw >= 0 && dh < span_h && dw < span_w &&
                    by_dh.divmod(dh, q) == 0 && by_dw.divmod(dw, q) == 0;
        }
        if (!holds) atomicAdd(bad, 1ull);
    }
}

// un unravels (C, P, Q).
template <typename I>
__global__ void __launch_bounds__(kThreads)
    avg_pool_fwd_kernel(Pool2dParams p, Unravel4<I> un, const float* __restrict__ x,
                        float* __restrict__ y) {
    const I C = I(p.C), H = I(p.H), W = I(p.W);
    const I count = I(p.N * p.C * p.P * p.Q);
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> o = un(i);
        const PoolTaps th = pool_taps(o.h, p.stride_h, p.pad_h, p.kh, 1, p.H);
        const PoolTaps tw = pool_taps(o.w, p.stride_w, p.pad_w, p.kw, 1, p.W);
        float acc = 0.f;
        for (I a = I(th.t0); a < I(th.t1); ++a)
            for (I b = I(tw.t0); b < I(tw.t1); ++b)
                acc += x[offset4i(p.layout, o.n, o.c, I(th.start + a), I(tw.start + b), C, H, W)];
        y[i] = acc / float(pool_avg_divisor(p, o.h, o.w));
    }
}

// One thread per element of dx, in dx's memory order. The outputs whose (undilated)
// window holds row h are exactly [first_out_reaching, last_out_reaching), and likewise
// for columns, so no tap test is needed.
// un unravels (C, H, W).
template <typename I>
__global__ void __launch_bounds__(kThreads)
    avg_pool_bwd_gather(Pool2dParams p, Unravel4<I> un, const float* __restrict__ dy,
                        float* __restrict__ dx) {
    const I C = I(p.C), P = I(p.P), Q = I(p.Q);
    const I count = I(p.N * p.C * p.H * p.W);
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> at = un(i);
        const I p0 = I(first_out_reaching(at.h, p.kh, p.stride_h, p.pad_h, 1));
        const I p1 = I(last_out_reaching(at.h, p.stride_h, p.pad_h, p.P));
        const I q0 = I(first_out_reaching(at.w, p.kw, p.stride_w, p.pad_w, 1));
        const I q1 = I(last_out_reaching(at.w, p.stride_w, p.pad_w, p.Q));
        float acc = 0.f;
        for (I oh = p0; oh < p1; ++oh)
            for (I ow = q0; ow < q1; ++ow)
                acc += dy[offset4i(p.layout, at.n, at.c, oh, ow, C, P, Q)] /
                       float(pool_avg_divisor(p, oh, ow));
        dx[i] = acc;
    }
}

// NCHW: one block per plane n * C + c; blockDim.x == kReduceThreads.
template <typename I>
__global__ void __launch_bounds__(kReduceThreads)
    global_avg_pool_nchw(GlobalPoolParams p, const float* __restrict__ x, float* __restrict__ y) {
    __shared__ double partial[kReduceThreads];
    const I HW = I(p.H * p.W), planes = I(p.N * p.C);
    for (I plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const float* xp = x + plane * HW;
        double acc = 0.0;
        for (I j = threadIdx.x; j < HW; j += I(blockDim.x)) acc += xp[j];
        const double total = block_sum(acc, partial);
        if (threadIdx.x == 0) y[plane] = float(total / double(HW));
    }
}

// NHWC: one thread per (n, c), i = n * C + c; by_c divides by C.
template <typename I>
__global__ void __launch_bounds__(kThreads)
    global_avg_pool_nhwc(GlobalPoolParams p, DivMod<I> by_c, const float* __restrict__ x,
                         float* __restrict__ y) {
    const I C = by_c.d, HW = I(p.H * p.W), count = I(p.N) * C;
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        I n;
        const I c = by_c.divmod(i, n);
        const float* xn = x + n * HW * C + c;
        double acc = 0.0;
        for (I j = 0; j < HW; ++j) acc += xn[j * C];
        y[i] = float(acc / double(HW));
    }
}

// un unravels (C, H, W).
template <typename I>
__global__ void __launch_bounds__(kThreads)
    global_avg_pool_bwd_kernel(GlobalPoolParams p, Unravel4<I> un, const float* __restrict__ dy,
                               float* __restrict__ dx) {
    const I count = I(p.N * p.C * p.H * p.W), C = I(p.C);
    const float HW = float(p.H * p.W);
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> at = un(i);
        dx[i] = dy[at.n * C + at.c] / HW;
    }
}

// ------------------------------------------------------------------ 2x2 / stride 2

__device__ __forceinline__ void max_tap(float v, int64_t at, float& best, int64_t& arg) {
    if (v > best || isnan(v)) best = v, arg = at;
}

// The max / mean of one window whose taps, in row-major order, are a, b (top row) and
// c, d (bottom row), top-left at input position `at` of a plane W wide.
struct Window {
    float v;
    int64_t arg;
};

template <bool kMax>
__device__ __forceinline__ Window window2x2(float a, float b, float c, float d, int64_t at,
                                            int64_t W, float div) {
    Window r{-INFINITY, -1};
    if (kMax) {
        max_tap(a, at, r.v, r.arg), max_tap(b, at + 1, r.v, r.arg);
        max_tap(c, at + W, r.v, r.arg), max_tap(d, at + W + 1, r.v, r.arg);
    } else {
        float acc = 0.f;
        acc += a, acc += b, acc += c, acc += d;
        r.v = acc / div;
    }
    return r;
}

// The gradient the window's tap at `self` receives: dy if it was the maximum (max), or
// dy / div (average); the generic gather's 0.f + ... kept for the same bits.
template <bool kMax>
__device__ __forceinline__ float tap_grad(float g, int64_t arg, int64_t self, float div) {
    if (kMax) return arg == self ? 0.f + g : 0.f;
    return 0.f + g / div;
}

// Item i = (plane * P + oh) * (Q / 2) + j: by_pairs divides by Q / 2, by_p by P.
template <bool kMax, typename I>
__global__ void __launch_bounds__(kThreads)
    pool2x2_nchw_fwd(Pool2dParams p, DivMod<I> by_pairs, DivMod<I> by_p,
                     const float* __restrict__ x, float* __restrict__ y,
                     int64_t* __restrict__ idx, float div) {
    const I H = I(p.H), W = I(p.W), P = I(p.P), Q = I(p.Q);
    const I count = I(p.N * p.C) * P * by_pairs.d;
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        I row, plane;
        const I j = by_pairs.divmod(i, row), oh = by_p.divmod(row, plane);
        const I at = 2 * oh * W + 4 * j;  // top-left tap of the first window
        const float* xp = x + plane * H * W + at;
        const float4 a = *reinterpret_cast<const float4*>(xp);
        const float4 b = *reinterpret_cast<const float4*>(xp + W);
        const Window w0 = window2x2<kMax>(a.x, a.y, b.x, b.y, at, W, div);
        const Window w1 = window2x2<kMax>(a.z, a.w, b.z, b.w, at + 2, W, div);
        const I o = plane * P * Q + oh * Q + 2 * j;
        *reinterpret_cast<float2*>(y + o) = make_float2(w0.v, w1.v);
        if (kMax && idx) *reinterpret_cast<longlong2*>(idx + o) = make_longlong2(w0.arg, w1.arg);
    }
}

template <bool kMax, typename I>
__global__ void __launch_bounds__(kThreads)
    pool2x2_nchw_bwd(Pool2dParams p, DivMod<I> by_pairs, DivMod<I> by_p,
                     const float* __restrict__ dy, const int64_t* __restrict__ idx,
                     float* __restrict__ dx, float div) {
    const I H = I(p.H), W = I(p.W), P = I(p.P), Q = I(p.Q);
    const I count = I(p.N * p.C) * P * by_pairs.d;
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        I row, plane;
        const I j = by_pairs.divmod(i, row), oh = by_p.divmod(row, plane);
        const I at = 2 * oh * W + 4 * j;
        const I o = plane * P * Q + oh * Q + 2 * j;
        const float2 g = *reinterpret_cast<const float2*>(dy + o);
        longlong2 arg{-1, -1};
        if (kMax) arg = *reinterpret_cast<const longlong2*>(idx + o);
        float* dp = dx + plane * H * W + at;
        *reinterpret_cast<float4*>(dp) =
            make_float4(tap_grad<kMax>(g.x, arg.x, at, div), tap_grad<kMax>(g.x, arg.x, at + 1, div),
                        tap_grad<kMax>(g.y, arg.y, at + 2, div), tap_grad<kMax>(g.y, arg.y, at + 3, div));
        const I below = at + W;
        *reinterpret_cast<float4*>(dp + W) = make_float4(
            tap_grad<kMax>(g.x, arg.x, below, div), tap_grad<kMax>(g.x, arg.x, below + 1, div),
            tap_grad<kMax>(g.y, arg.y, below + 2, div), tap_grad<kMax>(g.y, arg.y, below + 3, div));
    }
}

// NHWC: item i is (n, oh, ow, four channels), and 4 * i is its offset in y.
// un unravels item i as a dense (N, P, Q, C / 4) index: {n, oh, ow, c4}.
template <bool kMax, typename I>
__global__ void __launch_bounds__(kThreads)
    pool2x2_nhwc_fwd(Pool2dParams p, Unravel4<I> un, const float* __restrict__ x,
                     float* __restrict__ y, int64_t* __restrict__ idx, float div) {
    const I C = I(p.C), H = I(p.H), W = I(p.W);
    const I count = I(p.N * p.P * p.Q * (p.C / 4));
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> u = un(i);
        const I n = u.n, oh = u.c, ow = u.h, c4 = u.w;
        const I at = 2 * oh * W + 2 * ow;
        const float* x00 = x + (n * H * W + at) * C + 4 * c4;
        const float4 a = *reinterpret_cast<const float4*>(x00);
        const float4 b = *reinterpret_cast<const float4*>(x00 + C);
        const float4 c = *reinterpret_cast<const float4*>(x00 + W * C);
        const float4 d = *reinterpret_cast<const float4*>(x00 + (W + 1) * C);
        const Window r0 = window2x2<kMax>(a.x, b.x, c.x, d.x, at, W, div);
        const Window r1 = window2x2<kMax>(a.y, b.y, c.y, d.y, at, W, div);
        const Window r2 = window2x2<kMax>(a.z, b.z, c.z, d.z, at, W, div);
        const Window r3 = window2x2<kMax>(a.w, b.w, c.w, d.w, at, W, div);
        *reinterpret_cast<float4*>(y + 4 * i) = make_float4(r0.v, r1.v, r2.v, r3.v);
        if (kMax && idx) {
            *reinterpret_cast<longlong2*>(idx + 4 * i) = make_longlong2(r0.arg, r1.arg);
            *reinterpret_cast<longlong2*>(idx + 4 * i + 2) = make_longlong2(r2.arg, r3.arg);
        }
    }
}

template <bool kMax, typename I>
__global__ void __launch_bounds__(kThreads)
    pool2x2_nhwc_bwd(Pool2dParams p, Unravel4<I> un, const float* __restrict__ dy,
                     const int64_t* __restrict__ idx, float* __restrict__ dx, float div) {
    const I C = I(p.C), H = I(p.H), W = I(p.W);
    const I count = I(p.N * p.P * p.Q * (p.C / 4));
    for (I i = thread_index<I>(); i < count; i += thread_count<I>()) {
        const Coord4I<I> u = un(i);
        const I n = u.n, oh = u.c, ow = u.h, c4 = u.w;
        const I at = 2 * oh * W + 2 * ow;
        const float4 g = *reinterpret_cast<const float4*>(dy + 4 * i);
        longlong2 a01{-1, -1}, a23{-1, -1};
        if (kMax) {
            a01 = *reinterpret_cast<const longlong2*>(idx + 4 * i);
            a23 = *reinterpret_cast<const longlong2*>(idx + 4 * i + 2);
        }
        float* d00 = dx + (n * H * W + at) * C + 4 * c4;
        const I taps[4] = {at, I(at + 1), I(at + W), I(at + W + 1)};
        float* dst[4] = {d00, d00 + C, d00 + W * C, d00 + (W + 1) * C};
#pragma unroll
        for (int t = 0; t < 4; ++t)
            *reinterpret_cast<float4*>(dst[t]) = make_float4(
                tap_grad<kMax>(g.x, a01.x, taps[t], div), tap_grad<kMax>(g.y, a01.y, taps[t], div),
                tap_grad<kMax>(g.z, a23.x, taps[t], div), tap_grad<kMax>(g.w, a23.y, taps[t], div));
    }
}

bool aligned16(const void* ptr) { return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Whether the 2x2 fast paths apply to p and these arrays.
bool pool2x2_applies(const Pool2dParams& p, const void* a, const void* b, const void* c) {
    const bool nchw = p.layout == Layout::NCHW;
    return p.kh == 2 && p.kw == 2 && p.stride_h == 2 && p.stride_w == 2 && p.pad_h == 0 &&
           p.pad_w == 0 && p.dil_h == 1 && p.dil_w == 1 && p.H % 2 == 0 && p.W % 2 == 0 &&
           p.P == p.H / 2 && p.Q == p.W / 2 && (nchw ? p.W % 4 == 0 : p.C % 4 == 0) &&
           aligned16(a) && aligned16(b) && aligned16(c);
}

// Every 2x2 window is inside the image: one divisor for all.
float pool2x2_divisor(const Pool2dParams& p) { return float(pool_avg_divisor(p, 0, 0)); }

template <bool kMax>
void launch_pool2x2_fwd(const Pool2dParams& p, const float* x, float* y, int64_t* idx,
                        cudaStream_t stream) {
    const float div = pool2x2_divisor(p);
    with_index_type(pool_extent(p), [&](auto index) {
        using I = decltype(index);
        if (p.layout == Layout::NCHW) {
            const int64_t items = p.N * p.C * p.P * (p.Q / 2);
            pool2x2_nchw_fwd<kMax, I><<<blocks_for(items, kThreads), kThreads, 0, stream>>>(
                p, DivMod<I>(p.Q / 2), DivMod<I>(p.P), x, y, idx, div);
        } else {
            const int64_t items = p.N * p.P * p.Q * (p.C / 4);
            pool2x2_nhwc_fwd<kMax, I><<<blocks_for(items, kThreads), kThreads, 0, stream>>>(
                p, Unravel4<I>(Layout::NCHW, p.P, p.Q, p.C / 4), x, y, idx, div);
        }
    });
    FC_CUDA_CHECK_LAUNCH();
}

template <bool kMax>
void launch_pool2x2_bwd(const Pool2dParams& p, const float* dy, const int64_t* idx, float* dx,
                        cudaStream_t stream) {
    const float div = pool2x2_divisor(p);
    with_index_type(pool_extent(p), [&](auto index) {
        using I = decltype(index);
        if (p.layout == Layout::NCHW) {
            const int64_t items = p.N * p.C * p.P * (p.Q / 2);
            pool2x2_nchw_bwd<kMax, I><<<blocks_for(items, kThreads), kThreads, 0, stream>>>(
                p, DivMod<I>(p.Q / 2), DivMod<I>(p.P), dy, idx, dx, div);
        } else {
            const int64_t items = p.N * p.P * p.Q * (p.C / 4);
            pool2x2_nhwc_bwd<kMax, I><<<blocks_for(items, kThreads), kThreads, 0, stream>>>(
                p, Unravel4<I>(Layout::NCHW, p.P, p.Q, p.C / 4), dy, idx, dx, div);
        }
    });
    FC_CUDA_CHECK_LAUNCH();
}

}  // namespace

void max_pool_fwd(const Pool2dParams& p, const float* x, float* y, int64_t* idx,
                  cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.P * p.Q;
    if (count <= 0) return;
    if (pool2x2_applies(p, x, y, idx)) return launch_pool2x2_fwd<true>(p, x, y, idx, stream);
    with_index_type(pool_extent(p), [&](auto index) {
        using I = decltype(index);
        max_pool_fwd_kernel<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
            p, Unravel4<I>(p.layout, p.C, p.P, p.Q), x, y, idx);
    });
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
    with_index_type(pool_extent(p), [&](auto index) {
        using I = decltype(index);
        max_pool_bad_indices_kernel<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
            p, Unravel4<I>(p.layout, p.C, p.P, p.Q), DivMod<I>(p.W), DivMod<I>(p.dil_h),
            DivMod<I>(p.dil_w), idx, counter.dev);
    });
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
    if (pool2x2_applies(p, dy, idx, dx)) return launch_pool2x2_bwd<true>(p, dy, idx, dx, stream);
    with_index_type(pool_extent(p), [&](auto index) {
        using I = decltype(index);
        max_pool_bwd_gather<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
            p, Unravel4<I>(p.layout, p.C, p.H, p.W), dy, idx, dx);
    });
    FC_CUDA_CHECK_LAUNCH();
}

void avg_pool_fwd(const Pool2dParams& p, const float* x, float* y, cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.P * p.Q;
    if (count <= 0) return;
    if (pool2x2_applies(p, x, y, nullptr)) return launch_pool2x2_fwd<false>(p, x, y, nullptr, stream);
    with_index_type(pool_extent(p), [&](auto index) {
        using I = decltype(index);
        avg_pool_fwd_kernel<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
            p, Unravel4<I>(p.layout, p.C, p.P, p.Q), x, y);
    });
    FC_CUDA_CHECK_LAUNCH();
}

void avg_pool_bwd(const Pool2dParams& p, const float* dy, float* dx, cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.H * p.W;
    if (count <= 0) return;
    if (pool2x2_applies(p, dy, dx, nullptr))
        return launch_pool2x2_bwd<false>(p, dy, nullptr, dx, stream);
    with_index_type(pool_extent(p), [&](auto index) {
        using I = decltype(index);
        avg_pool_bwd_gather<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
            p, Unravel4<I>(p.layout, p.C, p.H, p.W), dy, dx);
    });
    FC_CUDA_CHECK_LAUNCH();
}

void global_avg_pool_fwd(const GlobalPoolParams& p, const float* x, float* y,
                         cudaStream_t stream) {
    const int64_t count = p.N * p.C;
    if (count <= 0) return;
    with_index_type(count * p.H * p.W, [&](auto index) {
        using I = decltype(index);
        if (p.layout == Layout::NCHW)
            global_avg_pool_nchw<I><<<blocks_for(count, 1), kReduceThreads, 0, stream>>>(p, x, y);
        else
            global_avg_pool_nhwc<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
                p, DivMod<I>(p.C), x, y);
    });
    FC_CUDA_CHECK_LAUNCH();
}

void global_avg_pool_bwd(const GlobalPoolParams& p, const float* dy, float* dx,
                         cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.H * p.W;
    if (count <= 0) return;
    with_index_type(count, [&](auto index) {
        using I = decltype(index);
        global_avg_pool_bwd_kernel<I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
            p, Unravel4<I>(p.layout, p.C, p.H, p.W), dy, dx);
    });
    FC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace fastconv

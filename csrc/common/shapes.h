// shapes.h: the shape arithmetic of every op, written once for both backends.
// Output sizes, the "same" padding split, border index maps and layout offsets are
// __host__ __device__ so the CUDA kernels and the C++ CPU kernels run the same
// lines; fastconv/_shapes.py mirrors them for argument checking, and
// tests/test_shapes.py checks the mirror against this header through _cpu.
#pragma once
#include <cstdint>

#include "params.h"

#if defined(__CUDACC__)
#define FC_HD __host__ __device__ __forceinline__
#define FC_HD_NOINLINE __host__ __device__ __noinline__
#else
#define FC_HD inline
#define FC_HD_NOINLINE inline
#endif

namespace fastconv {

// std::min / std::max are host-only to nvcc (without --expt-relaxed-constexpr).
FC_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FC_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Floor division that rounds towards minus infinity for any signs.
FC_HD int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

FC_HD int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// Extent of a dilated window: dilation * (k - 1) + 1.
FC_HD int64_t dilated_extent(int64_t k, int64_t dil) { return dil * (k - 1) + 1; }

// Convolution output size, W' = (W + pads - dilated extent) / S + 1. Returns a
// value < 1 when the window does not fit (callers refuse it).
FC_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad_begin,
                            int64_t pad_end, int64_t dil) {
    int64_t span = in + pad_begin + pad_end - dilated_extent(k, dil);
    return span < 0 ? 0 : span / stride + 1;
}

// Pooling output size, PyTorch's formula: with ceil_mode the division rounds up (so a
// window may hang past the right padding), but the last window must still start
// inside the input or its left padding. Returns a value < 1 when nothing fits.
FC_HD int64_t pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad_begin,
                            int64_t pad_end, int64_t dil, bool ceil_mode) {
    int64_t span = in + pad_begin + pad_end - dilated_extent(k, dil);
    int64_t out = (ceil_mode ? ceil_div(span, stride) : floor_div(span, stride)) + 1;
    if (ceil_mode && out > 0 && (out - 1) * stride >= in + pad_begin) --out;
    return out < 0 ? 0 : out;
}

// Keras "same": out = ceil(in / stride); the padding that makes the last window
// fit, with the odd pixel at the end (bottom / right).
FC_HD int64_t same_out_size(int64_t in, int64_t stride) { return ceil_div(in, stride); }

FC_HD int64_t same_pad_total(int64_t in, int64_t k, int64_t stride, int64_t dil) {
    int64_t total = (same_out_size(in, stride) - 1) * stride + dilated_extent(k, dil) - in;
    return total > 0 ? total : 0;
}

FC_HD int64_t same_pad_begin(int64_t in, int64_t k, int64_t stride, int64_t dil) {
    return same_pad_total(in, k, stride, dil) / 2;
}

// a mod b in [0, b) for any sign of a, b > 0: one remainder where i - floor_div(i, b) * b
// takes a division and a remainder.
template <typename I>
FC_HD I floor_mod(I a, I b) {
    const I r = a % b;
    return r < 0 ? r + b : r;
}

// border_index for a coordinate more than a line's length outside the line (mirror:
// more than n - 1, or any with n == 1), which only filters wider than the image reach:
// the periodic modes' remainder. Out of line on the GPU, so that a kernel holds one copy
// of its divisions instead of one inlined at every tap.
template <typename I>
FC_HD_NOINLINE I border_index_far(I i, I n, Border mode) {
    switch (mode) {
        case Border::Reflect: {
            const I j = floor_mod(i, I(2 * n));
            return j < n ? j : I(2 * n - 1 - j);
        }
        case Border::Mirror: {
            if (n == 1) return 0;
            const I period = 2 * n - 2;
            const I j = floor_mod(i, period);
            return j < n ? j : I(period - j);
        }
        case Border::Nearest: return i < 0 ? I(0) : I(n - 1);
        case Border::Wrap: return floor_mod(i, n);
        default: return -1;
    }
}

// Border index map of scipy.ndimage for a coordinate i on a line of n samples.
// Returns the sample to read, or -1 for Border::Constant outside the line.
//   reflect  d c b a | a b c d | d c b a     (period 2n)
//   mirror     d c b | a b c d | c b a       (period 2n - 2)
//   nearest  a a a a | a b c d | d d d d
//   wrap     a b c d | a b c d | a b c d     (period n)
// I is the caller's index type: int32_t in the GPU kernels whose host checked that
// 2 * n and |i| fit, int64_t elsewhere. Both arguments the same type.
// Within one line of the edge (every Sobel tap on a line of 2 or more samples, most
// filter taps) a compare and an add or subtract; only beyond it border_index_far's
// remainder.
template <typename I>
FC_HD I border_index(I i, I n, Border mode) {
    if (i >= 0 && i < n) return i;
    const bool near = i >= -n && i < 2 * n;
    switch (mode) {
        case Border::Reflect:
            if (near) return i < 0 ? I(-1 - i) : I(2 * n - 1 - i);
            break;
        case Border::Mirror:
            if (i > -n && i < 2 * n - 1) return i < 0 ? I(-i) : I(2 * n - 2 - i);
            break;
        case Border::Nearest: return i < 0 ? I(0) : I(n - 1);
        case Border::Wrap:
            if (near) return i < 0 ? I(i + n) : I(i - n);
            break;
        default: return -1;
    }
    return border_index_far(i, n, mode);
}

// border_index for a coordinate within one sample of the line, -1 <= i <= n, n >= 1 (every
// tap of the Sobel operator): the same map with neither remainder nor far path.
template <typename I>
FC_HD I border_index1(I i, I n, Border mode) {
    if (i >= 0 && i < n) return i;
    switch (mode) {
        case Border::Reflect: return i < 0 ? I(0) : I(n - 1);
        case Border::Mirror: return n == 1 ? I(0) : i < 0 ? I(1) : I(n - 2);
        case Border::Nearest: return i < 0 ? I(0) : I(n - 1);
        case Border::Wrap: return i < 0 ? I(n - 1) : I(0);
        default: return -1;
    }
}

// Element offset of (n, c, h, w) in a dense 4-D tensor of the given layout.
FC_HD int64_t offset4(Layout layout, int64_t n, int64_t c, int64_t h, int64_t w,
                      int64_t C, int64_t H, int64_t W) {
    return layout == Layout::NCHW ? ((n * C + c) * H + h) * W + w
                                  : ((n * H + h) * W + w) * C + c;
}

// Offset of weight (k, c, r, s) for the weight layout that goes with `layout`:
// NCHW -> (K, Cg, R, S); NHWC -> (R, S, Cg, K).
FC_HD int64_t weight_offset(Layout layout, int64_t k, int64_t c, int64_t r, int64_t s,
                            int64_t K, int64_t Cg, int64_t R, int64_t S) {
    return layout == Layout::NCHW ? ((k * Cg + c) * R + r) * S + s
                                  : ((r * S + s) * Cg + c) * K + k;
}

// First output index o whose window (start o * stride - pad, taps every dil) can
// reach input index i, and the last + 1; the range of outputs a backward pass gathers
// from. Callers still test each tap, since dilation can skip i.
FC_HD int64_t first_out_reaching(int64_t i, int64_t k, int64_t stride, int64_t pad,
                                 int64_t dil) {
    int64_t o = ceil_div(i + pad - dilated_extent(k, dil) + 1, stride);
    return o < 0 ? 0 : o;
}

FC_HD int64_t last_out_reaching(int64_t i, int64_t stride, int64_t pad, int64_t out) {
    int64_t o = floor_div(i + pad, stride) + 1;
    return o > out ? out : o;
}

// For a line of outputs q in [0, out) that read input q * stride + off: the first q
// whose input is inside [0, in), and one past the last. Loops over [begin, end) need
// no bounds checks; outside it they read padding.
FC_HD int64_t valid_out_begin(int64_t off, int64_t stride) {
    int64_t q = ceil_div(-off, stride);
    return q < 0 ? 0 : q;
}

FC_HD int64_t valid_out_end(int64_t off, int64_t stride, int64_t in, int64_t out) {
    int64_t q = ceil_div(in - off, stride);
    q = q > out ? out : q;
    int64_t b = valid_out_begin(off, stride);
    return q < b ? b : q;
}

// A pooling window along one axis, clipped to the image: taps t in [t0, t1) of the
// window of output o read input start + t * dil.
struct PoolTaps {
    int64_t start, t0, t1;
};

FC_HD PoolTaps pool_taps(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t dil,
                         int64_t in) {
    const int64_t start = o * stride - pad;
    const int64_t t0 = start < 0 ? ceil_div(-start, dil) : 0;
    const int64_t t1 = min64(start >= in ? 0 : ceil_div(in - start, dil), k);
    return {start, t0, max64(t0, t1)};
}

// Whether a max-pool index `at` (h * W + w in the input plane) names a pixel of output
// (oh, ow)'s window: the rule both backends apply to indices a caller passes back.
FC_HD bool pool_window_holds(const Pool2dParams& p, int64_t oh, int64_t ow, int64_t at) {
    if (at < 0 || at >= p.H * p.W) return false;
    const int64_t h = at / p.W, w = at % p.W;
    const PoolTaps th = pool_taps(oh, p.stride_h, p.pad_h, p.kh, p.dil_h, p.H);
    const PoolTaps tw = pool_taps(ow, p.stride_w, p.pad_w, p.kw, p.dil_w, p.W);
    const int64_t dh = h - th.start, dw = w - tw.start;
    return dh >= 0 && dw >= 0 && dh % p.dil_h == 0 && dw % p.dil_w == 0 &&
           dh / p.dil_h >= th.t0 && dh / p.dil_h < th.t1 && dw / p.dil_w >= tw.t0 &&
           dw / p.dil_w < tw.t1;
}

// The average pool's divisor for output (oh, ow): divisor if set; else the window
// clipped to [-pad, in + pad_end) (count_include_pad, PyTorch's rule) or to the image.
FC_HD int64_t pool_avg_divisor(const Pool2dParams& p, int64_t oh, int64_t ow) {
    if (p.divisor > 0) return p.divisor;
    const int64_t h0 = oh * p.stride_h - p.pad_h, w0 = ow * p.stride_w - p.pad_w;
    if (p.count_include_pad) {
        const int64_t h1 = min64(h0 + p.kh, p.H + p.pad_h_end);
        const int64_t w1 = min64(w0 + p.kw, p.W + p.pad_w_end);
        return (h1 - h0) * (w1 - w0);
    }
    return (min64(h0 + p.kh, p.H) - max64(h0, 0)) * (min64(w0 + p.kw, p.W) - max64(w0, 0));
}

// conv2d_avgpool's pooling, as the Pool2dParams of an average pool over the block's
// activation (N, K, P, Q): window = stride = pool, no padding, floor.
FC_HD Pool2dParams block_pool(const Conv2dPoolParams& b) {
    const Conv2dParams& c = b.conv;
    Pool2dParams p{};
    p.N = c.N, p.C = c.K, p.H = c.P, p.W = c.Q;
    p.P = c.P / b.pool_h, p.Q = c.Q / b.pool_w;
    p.kh = p.stride_h = b.pool_h, p.kw = p.stride_w = b.pool_w;
    p.dil_h = p.dil_w = 1;
    p.count_include_pad = true;
    p.layout = c.layout;
    return p;
}

}  // namespace fastconv

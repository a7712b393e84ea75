// sobel.cu: Sobel derivatives / magnitude and filter2d on the GPU, float32 images and
// 8-bit (uint8) images filtered in float32. The CPU twin is csrc/cpu/sobel.cpp, whose
// semantics these kernels reproduce.
//
// Both work on a batch of 2-D planes (see Filter2dParams): N * C planes of H x W, the
// pixels of one plane contiguous (NCHW, C == 1 for 2-D and 3-D inputs) or C apart (NHWC).
// Borders follow scipy.ndimage (border_index):
//   filter2d  scipy.ndimage.correlate: the image is extended once by `mode`, and the
//             kernel is centred at (kh / 2, kw / 2).
//   sobel     scipy.ndimage.sobel: the derivative [-1, 0, 1] along the axis, then the
//             smoothing [1, 2, 1] across it, each 1-D pass extending its own input, so
//             with mode "constant" the smoothing pass reads cval beyond the edge (not the
//             derivative of cval). axis 0 = d/dy, 1 = d/dx, -1 = sqrt(gx^2 + gy^2) in one
//             pass.
//
// Kernels, one thread per output pixel, walking the tensor in memory order so that
// neighbouring threads read and write neighbouring addresses in either layout:
//   sobel          the exact two-pass definition at every pixel (the CPU's border
//                  path); every tap is within one sample of the plane, so its border
//                  map (border_index1) is compares and selects, and inside the plane
//                  it returns at its first test. Runs NHWC images.
//   sobel_rows     NCHW planes (and 2-D / 3-D images): a thread takes kRowPixels
//                  neighbours of one row. Away from the border it loads their 3 x 6
//                  neighbourhood once (4.5 loads a pixel instead of 12, index math once
//                  per 4 pixels) and computes them with sobel_at's operations in its
//                  order, so the bits are the same; on the border each pixel takes
//                  sobel_at. A float4 store where the address allows. Meant to bring
//                  the 4096^2 magnitude near copy bandwidth (issue 7: >= 85%).
//   filter2d  the filter's kh * kw taps are staged in shared memory once per block
//             (every thread reads every tap), in chunks of kTapChunk so any size works.
//             Not constant memory: concurrent streams may filter with different kernels.
//             Runs NHWC images and filters larger than 7 x 7.
//   filter2d_tiled NCHW planes, filters up to 7 x 7: a block filters a tile of 16 rows x
//                  64 columns. It stages the tile's input (with its halo, the border
//                  mode applied once per element as it loads) and the taps in shared
//                  memory; each thread then takes 4 neighbours of a row, sliding along
//                  a register copy of each input row segment, so a tap costs one
//                  shared load per 4 outputs. The taps are summed in the generic
//                  kernel's order from zero: the same bits. Meant for issue 7's 70% of
//                  copy bandwidth up to 7 x 7.
// Each kernel comes in two index types (cuda_common.cuh): int32_t where filter_extent
// says the batch, the planes doubled (the reflect period) and the filter fit, int64_t
// otherwise; each element's (n, c, h, w) takes three multiply-highs. No division is
// inlined per tap: Sobel's border maps take none (border_index1), filter2d's take a
// remainder only for a tap more than a plane's side outside it, in one out-of-line
// border_index_far per kernel (shapes.h), and both walk their taps with counters.
#include <cmath>

#include "../common/check.h"
#include "../common/plane.h"
#include "../common/shapes.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

namespace fastconv {
namespace cuda {

namespace {

// The largest index, offset or border coordinate (times two, for the reflect period)
// the kernels below form: the launchers choose int32_t when it fits.
int64_t filter_extent(const Filter2dParams& p) {
    const int64_t kh = max64(p.kh, 1), kw = max64(p.kw, 1);
    // + 128: filter2d_tiled's last tile overhangs the plane by less than 64 + 7.
    return max64(max64(p.N * p.C * p.H * p.W, kh * kw), 2 * (max64(p.H + kh, p.W + kw) + 128));
}

template <typename In, typename I>
__global__ void __launch_bounds__(kThreads)
    sobel_kernel(Filter2dParams p, Unravel4<I> un, const In* __restrict__ x,
                 float* __restrict__ y) {
    const I count = I(p.N * p.C * p.H * p.W);
    for (I e = thread_index<I>(); e < count; e += thread_count<I>()) {
        const Coord4I<I> at = un(e);
        const Plane<float, In, I> im = plane_of<float>(p, x, at.n, at.c);
        float out;
        if (p.axis >= 0) {
            out = sobel_at(im, p.axis, at.h, at.w);
        } else {
            const float gy = sobel_at(im, 0, at.h, at.w), gx = sobel_at(im, 1, at.h, at.w);
            out = sqrtf(gx * gx + gy * gy);
        }
        y[e] = out;
    }
}

constexpr int kRowPixels = 4;

// One pixel by the definition, out of line: sobel_rows calls it on the border only, and
// inlined its border arithmetic would take registers from the interior path (58 against
// 40, int32_t).
template <typename In, typename I>
__device__ __noinline__ float sobel_pixel(const Plane<float, In, I> im, int axis, I i, I j) {
    if (axis >= 0) return sobel_at(im, axis, i, j);
    const float gy = sobel_at(im, 0, i, j), gx = sobel_at(im, 1, i, j);
    return sqrtf(gx * gx + gy * gy);
}

// sobel_rows's __launch_bounds__ minimum blocks an SM. By default ptxas held the uint8
// kernels to 32 (int32_t) and 48 (int64_t) registers with 4 B of spills; 6 blocks
// (int32_t: 40 registers, both input types) and 4 (int64_t: 56) leave none (sm_90,
// CUDA 13.0).
template <typename I>
constexpr int kRowsMinBlocks = sizeof(I) == 4 ? 6 : 4;

// by_groups divides by ceil(W / kRowPixels), by_h by H.
template <typename In, typename I>
__global__ void __launch_bounds__(kThreads, kRowsMinBlocks<I>)
    sobel_rows(Filter2dParams p, DivMod<I> by_groups, DivMod<I> by_h, const In* __restrict__ x,
               float* __restrict__ y) {
    const I H = I(p.H), W = I(p.W);
    const I count = I(p.N * p.C) * H * by_groups.d;
    for (I e = thread_index<I>(); e < count; e += thread_count<I>()) {
        I row, plane;  // row = plane * H + i
        const I j0 = by_groups.divmod(e, row) * kRowPixels;
        const I i = by_h.divmod(row, plane);
        Plane<float, In, I> im;
        im.base = x + (row - i) * W, im.sy = W, im.sx = 1;
        im.H = H, im.W = W, im.mode = p.mode, im.cval = float(p.cval);
        float* dst = y + row * W + j0;
        if (i >= 1 && i + 1 < H && j0 >= 1 && j0 + kRowPixels < W) {
            // r[a][b] = pixel (i - 1 + a, j0 - 1 + b); pixel j0 + k sits at column k + 1.
            float r[3][kRowPixels + 2];
#pragma unroll
            for (int a = 0; a < 3; ++a) {
                const In* src = im.base + (i - 1 + a) * W + j0 - 1;
#pragma unroll
                for (int b = 0; b < kRowPixels + 2; ++b) r[a][b] = float(src[b]);
            }
            float out[kRowPixels];
#pragma unroll
            for (int k = 0; k < kRowPixels; ++k) {
                // d/dy: the row derivative at columns k, k+1, k+2, smoothed across them.
                const float gy = (r[2][k] - r[0][k]) + 2.f * (r[2][k + 1] - r[0][k + 1]) +
                                 (r[2][k + 2] - r[0][k + 2]);
                // d/dx: the column derivative on rows 0, 1, 2, smoothed across them.
                const float gx = (r[0][k + 2] - r[0][k]) + 2.f * (r[1][k + 2] - r[1][k]) +
                                 (r[2][k + 2] - r[2][k]);
                out[k] = p.axis == 0 ? gy : p.axis == 1 ? gx : sqrtf(gx * gx + gy * gy);
            }
            if (reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
                *reinterpret_cast<float4*>(dst) = make_float4(out[0], out[1], out[2], out[3]);
            } else {
#pragma unroll
                for (int k = 0; k < kRowPixels; ++k) dst[k] = out[k];
            }
            continue;
        }
        // The border: each pixel by the definition.
        const I j1 = j0 + kRowPixels < W ? I(j0 + kRowPixels) : W;
        for (I j = j0; j < j1; ++j) dst[j - j0] = sobel_pixel(im, p.axis, i, j);
    }
}

// Taps of filter2d held in shared memory at a time: 4 KiB, all of any filter up to 32 x 32.
constexpr int64_t kTapChunk = 1024;

template <typename In, typename I>
__global__ void __launch_bounds__(kThreads)
    filter2d_kernel(Filter2dParams p, Unravel4<I> un, const In* __restrict__ x,
                    const float* __restrict__ k, float* __restrict__ y) {
    __shared__ float taps[kTapChunk];
    const I H = I(p.H), W = I(p.W), kw = I(p.kw);
    const I count = I(p.N * p.C) * H * W, ntaps = I(p.kh) * kw;
    const I ch = I(p.kh) / 2, cw = kw / 2;
    const bool resident = ntaps <= kTapChunk;  // then the block loads the taps once
    if (resident) {
        for (I t = threadIdx.x; t < ntaps; t += blockDim.x) taps[t] = k[t];
        __syncthreads();
    }
    // The loop runs the same number of times in every thread of the block (its bound
    // depends on the block's first element only), so all of them reach each
    // __syncthreads below.
    for (I first = I(blockIdx.x) * I(blockDim.x); first < count; first += thread_count<I>()) {
        const I e = first + I(threadIdx.x);
        const bool active = e < count;
        const Coord4I<I> at = un(active ? e : first);
        const Plane<float, In, I> im = plane_of<float>(p, x, at.n, at.c);
        // Taps in (a, b) row-major order, summed from zero as the CPU does.
        float acc = 0.f;
        I a = 0, b = 0;  // tap t = a * kw + b, carried from chunk to chunk
        I row = border_index(I(at.h - ch), H, p.mode);
        for (I t0 = 0; t0 < ntaps; t0 += kTapChunk) {
            const I t1 = ntaps < t0 + I(kTapChunk) ? ntaps : I(t0 + kTapChunk);
            if (!resident) {
                __syncthreads();  // the previous chunk is no longer being read
                for (I t = t0 + I(threadIdx.x); t < t1; t += blockDim.x) taps[t - t0] = k[t];
                __syncthreads();
            }
            if (!active) continue;
            for (I t = t0; t < t1; ++t) {
                const I col = border_index(I(at.w + b - cw), W, p.mode);
                const float v = (row < 0 || col < 0) ? im.cval : im.get(row, col);
                acc += taps[t - t0] * v;
                if (++b == kw) {
                    b = 0, ++a;
                    row = border_index(I(at.h + a - ch), H, p.mode);
                }
            }
        }
        if (active) y[e] = acc;
    }
}

}  // namespace

// filter2d_tiled's geometry: 16 x 16 threads, each 4 outputs of a row.
constexpr int kTileRows = 16, kTileCols = 16 * kRowPixels, kMaxTaps1d = 7;
constexpr int kHaloRows = kTileRows + kMaxTaps1d - 1, kHaloCols = kTileCols + kMaxTaps1d - 1;
static_assert(kTileRows * (kTileCols / kRowPixels) == kThreads, "one thread per 4 outputs");

template <typename In, typename I>
__global__ void __launch_bounds__(kThreads)
    filter2d_tiled(Filter2dParams p, const In* __restrict__ x, const float* __restrict__ k,
                   float* __restrict__ y) {
    __shared__ float tile[kHaloRows][kHaloCols];
    __shared__ float taps[kMaxTaps1d * kMaxTaps1d];
    const int kh = int(p.kh), kw = int(p.kw), ch = kh / 2, cw = kw / 2;
    for (int t = threadIdx.x; t < kh * kw; t += blockDim.x) taps[t] = k[t];
    const I H = I(p.H), W = I(p.W);
    const I tiles_h = (H + kTileRows - 1) / kTileRows, tiles_w = (W + kTileCols - 1) / kTileCols;
    const I tiles = I(p.N * p.C) * tiles_h * tiles_w;
    const int ty = threadIdx.x / (kTileCols / kRowPixels);
    const int tx = threadIdx.x % (kTileCols / kRowPixels) * kRowPixels;
    const int rows = kTileRows + kh - 1, cols = kTileCols + kw - 1;
    // The thread's first element of the staged tile and the step of blockDim.x elements
    // as (row, column): the load loop walks them with one carry instead of a division
    // and a remainder per element.
    const int r0 = threadIdx.x / cols, c0 = threadIdx.x % cols;
    const int step_r = blockDim.x / cols, step_c = blockDim.x % cols;
    for (I t = blockIdx.x; t < tiles; t += gridDim.x) {  // the same count in every thread
        // Once per tile of 1024 outputs: plain divisions.
        const I plane = t / (tiles_h * tiles_w), rest = t - plane * (tiles_h * tiles_w);
        const I h0 = rest / tiles_w * kTileRows, w0 = rest % tiles_w * kTileCols;
        Plane<float, In, I> im;
        im.base = x + plane * H * W, im.sy = W, im.sx = 1;
        im.H = H, im.W = W, im.mode = p.mode, im.cval = float(p.cval);
        __syncthreads();  // the previous tile is no longer being read
        for (int e = threadIdx.x, r = r0, c = c0; e < rows * cols; e += blockDim.x) {
            tile[r][c] = im.at(I(h0 + r - ch), I(w0 + c - cw));
            c += step_c, r += step_r;
            if (c >= cols) c -= cols, ++r;
        }
        __syncthreads();
        float acc[kRowPixels] = {0.f, 0.f, 0.f, 0.f};
        for (int a = 0; a < kh; ++a) {
            float seg[kMaxTaps1d + kRowPixels - 1];  // the row's inputs under the 4 outputs
#pragma unroll
            for (int b = 0; b < kMaxTaps1d + kRowPixels - 1; ++b)
                seg[b] = b < kw + kRowPixels - 1 ? tile[ty + a][tx + b] : 0.f;
#pragma unroll
            for (int b = 0; b < kMaxTaps1d; ++b) {
                if (b >= kw) break;
                const float tap = taps[a * kw + b];
#pragma unroll
                for (int o = 0; o < kRowPixels; ++o) acc[o] += tap * seg[b + o];
            }
        }
        const I h = h0 + ty, w = w0 + tx;
        if (h >= H) continue;
        float* dst = y + (plane * H + h) * W + w;
        if (w + kRowPixels <= W && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
            *reinterpret_cast<float4*>(dst) = make_float4(acc[0], acc[1], acc[2], acc[3]);
        } else {
#pragma unroll
            for (int o = 0; o < kRowPixels; ++o)
                if (w + o < W) dst[o] = acc[o];
        }
    }
}

template <typename In>
void sobel_launch(const Filter2dParams& p, const In* x, float* y, cudaStream_t stream) {
    FC_CHECK(p.axis == 0 || p.axis == 1 || p.axis == -1, "sobel axis must be 0, 1 or -1");
    const int64_t count = p.N * p.C * p.H * p.W;
    if (count <= 0) return;
    with_index_type(filter_extent(p), [&](auto index) {
        using I = decltype(index);
        if (p.layout == Layout::NCHW) {
            const int64_t groups = ceil_div(p.W, int64_t(kRowPixels));
            const int64_t items = p.N * p.C * p.H * groups;
            sobel_rows<In, I><<<blocks_for(items, kThreads), kThreads, 0, stream>>>(
                p, DivMod<I>(groups), DivMod<I>(p.H), x, y);
        } else {
            sobel_kernel<In, I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
                p, Unravel4<I>(p.layout, p.C, p.H, p.W), x, y);
        }
    });
    FC_CUDA_CHECK_LAUNCH();
}

template <typename In>
void filter2d_launch(const Filter2dParams& p, const In* x, const float* k, float* y,
                     cudaStream_t stream) {
    const int64_t count = p.N * p.C * p.H * p.W;
    if (count <= 0) return;
    with_index_type(filter_extent(p), [&](auto index) {
        using I = decltype(index);
        if (p.layout == Layout::NCHW && p.kh <= kMaxTaps1d && p.kw <= kMaxTaps1d) {
            const int64_t tiles = p.N * p.C * ceil_div(p.H, int64_t(kTileRows)) *
                                  ceil_div(p.W, int64_t(kTileCols));
            filter2d_tiled<In, I><<<blocks_for(tiles, 1), kThreads, 0, stream>>>(p, x, k, y);
        } else {
            filter2d_kernel<In, I><<<blocks_for(count, kThreads), kThreads, 0, stream>>>(
                p, Unravel4<I>(p.layout, p.C, p.H, p.W), x, k, y);
        }
    });
    FC_CUDA_CHECK_LAUNCH();
}

void sobel(const Filter2dParams& p, const float* x, float* y, cudaStream_t stream) {
    sobel_launch(p, x, y, stream);
}
void sobel(const Filter2dParams& p, const uint8_t* x, float* y, cudaStream_t stream) {
    sobel_launch(p, x, y, stream);
}
void filter2d(const Filter2dParams& p, const float* x, const float* k, float* y,
              cudaStream_t stream) {
    filter2d_launch(p, x, k, y, stream);
}
void filter2d(const Filter2dParams& p, const uint8_t* x, const float* k, float* y,
              cudaStream_t stream) {
    filter2d_launch(p, x, k, y, stream);
}

}  // namespace cuda
}  // namespace fastconv

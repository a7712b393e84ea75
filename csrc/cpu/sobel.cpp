// sobel.cpp: Sobel derivatives / magnitude and filter2d on the CPU: float and double
// images, and 8-bit images (uint8) filtered in float, as photographs come.
// The CUDA twin is csrc/cuda/sobel.cu.
//
// Both work plane by plane (see Filter2dParams). Borders follow scipy.ndimage:
//   filter2d  scipy.ndimage.correlate: the image is extended once by `mode`, and the
//             kernel is centred at (kh / 2, kw / 2).
//   sobel     scipy.ndimage.sobel: the derivative [-1, 0, 1] along the axis, then the
//             smoothing [1, 2, 1] across it, each 1-D pass extending its own input, so
//             with mode "constant" the smoothing pass reads cval beyond the edge (not the
//             derivative of cval). Magnitude = sqrt(gx^2 + gy^2), one pass.
// Variants: the interior of each plane (every tap inside) runs a branch-free loop over
// contiguous rows, which the compiler vectorises; border pixels, and planes whose rows
// are strided (NHWC), go through the exact per-pixel definition.
#include <algorithm>
#include <cmath>

#include "../common/plane.h"
#include "../common/shapes.h"
#include "cpu_ops.h"

namespace fastconv {
namespace cpu {

namespace {

template <typename T, typename In>
T sobel_out(const Plane<T, In>& im, int axis, int64_t i, int64_t j) {
    if (axis >= 0) return sobel_at(im, axis, i, j);
    const T gy = sobel_at(im, 0, i, j), gx = sobel_at(im, 1, i, j);
    return std::sqrt(gx * gx + gy * gy);
}

// Interior row i of a plane with contiguous rows: columns [1, W - 1). One loop per
// axis, so each vectorises (a per-pixel test of the axis kept the magnitude scalar).
template <typename T, typename In>
void sobel_row_interior(const In* r0_, const In* r1_, const In* r2_, int axis, int64_t W, T* out) {
    auto r0 = [&](int64_t j) { return T(r0_[j]); };
    auto r1 = [&](int64_t j) { return T(r1_[j]); };
    auto r2 = [&](int64_t j) { return T(r2_[j]); };
    auto gy = [&](int64_t j) {
        return (r2(j - 1) + T(2) * r2(j) + r2(j + 1)) - (r0(j - 1) + T(2) * r0(j) + r0(j + 1));
    };
    auto gx = [&](int64_t j) {
        return (r0(j + 1) - r0(j - 1)) + T(2) * (r1(j + 1) - r1(j - 1)) + (r2(j + 1) - r2(j - 1));
    };
    if (axis == 0) {
        for (int64_t j = 1; j < W - 1; ++j) out[j] = gy(j);
    } else if (axis == 1) {
        for (int64_t j = 1; j < W - 1; ++j) out[j] = gx(j);
    } else {
        for (int64_t j = 1; j < W - 1; ++j) {
            const T a = gx(j), b = gy(j);
            out[j] = std::sqrt(a * a + b * b);
        }
    }
}

}  // namespace

template <typename In, typename T>
void sobel(const Filter2dParams& p, const In* x, T* y) {
    const int64_t planes = p.N * p.C;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t plane = 0; plane < planes; ++plane)
        for (int64_t i = 0; i < p.H; ++i) {
            const Plane<T, In> im = plane_of<T>(p, x, plane / p.C, plane % p.C);
            T* out = y + (im.base - x) + i * im.sy;
            if (im.sx == 1 && i > 0 && i < p.H - 1 && p.W > 2) {
                const In* r1 = im.base + i * im.sy;
                sobel_row_interior(r1 - im.sy, r1, r1 + im.sy, p.axis, p.W, out);
                out[0] = sobel_out(im, p.axis, i, 0);
                out[p.W - 1] = sobel_out(im, p.axis, i, p.W - 1);
            } else {
                for (int64_t j = 0; j < p.W; ++j) out[j * im.sx] = sobel_out(im, p.axis, i, j);
            }
        }
}

template <typename In, typename T>
void filter2d(const Filter2dParams& p, const In* x, const T* k, T* y) {
    const int64_t planes = p.N * p.C, ch = p.kh / 2, cw = p.kw / 2;
    // Rows and columns whose every tap is inside the plane.
    const int64_t i0 = ch, i1 = p.H - (p.kh - 1 - ch), j0 = cw, j1 = p.W - (p.kw - 1 - cw);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t plane = 0; plane < planes; ++plane)
        for (int64_t i = 0; i < p.H; ++i) {
            const Plane<T, In> im = plane_of<T>(p, x, plane / p.C, plane % p.C);
            T* out = y + (im.base - x) + i * im.sy;
            auto exact = [&](int64_t j) {
                T acc = T(0);
                for (int64_t a = 0; a < p.kh; ++a)
                    for (int64_t b = 0; b < p.kw; ++b)
                        acc += k[a * p.kw + b] * im.at(i + a - ch, j + b - cw);
                out[j * im.sx] = acc;
            };
            if (im.sx == 1 && i >= i0 && i < i1 && j0 < j1) {
                for (int64_t j = 0; j < j0; ++j) exact(j);
                std::fill(out + j0, out + j1, T(0));
                for (int64_t a = 0; a < p.kh; ++a) {
                    const In* row = im.base + (i + a - ch) * im.sy - cw;
                    for (int64_t b = 0; b < p.kw; ++b) {
                        const T kv = k[a * p.kw + b];
                        for (int64_t j = j0; j < j1; ++j) out[j] += kv * T(row[j + b]);
                    }
                }
                for (int64_t j = j1; j < p.W; ++j) exact(j);
            } else {
                for (int64_t j = 0; j < p.W; ++j) exact(j);
            }
        }
}

template void sobel(const Filter2dParams&, const float*, float*);
template void sobel(const Filter2dParams&, const double*, double*);
template void sobel(const Filter2dParams&, const uint8_t*, float*);
template void filter2d(const Filter2dParams&, const float*, const float*, float*);
template void filter2d(const Filter2dParams&, const double*, const double*, double*);
template void filter2d(const Filter2dParams&, const uint8_t*, const float*, float*);

}  // namespace cpu
}  // namespace fastconv

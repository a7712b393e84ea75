// plane.h: filter2d's and sobel's view of one 2-D plane of a batch, extended by a
// scipy.ndimage border mode, and scipy's two-pass Sobel at one pixel. Written once,
// __host__ __device__, for csrc/cpu/sobel.cpp and csrc/cuda/sobel.cu.
#pragma once
#include <cstdint>

#include "params.h"
#include "shapes.h"

namespace fastconv {

// Element (i, j) of the plane is base[i * sy + j * sx], stored as In (the image's
// type: float, double, or uint8 for 8-bit photographs) and read as T (the arithmetic
// type: float for uint8).
template <typename T, typename In = T>
struct Plane {
    const In* base;
    int64_t sy, sx, H, W;
    Border mode;
    T cval;

    FC_HD T get(int64_t i, int64_t j) const { return T(base[i * sy + j * sx]); }

    // The plane extended by the border mode, for any (i, j).
    FC_HD T at(int64_t i, int64_t j) const {
        const int64_t bi = border_index(i, H, mode), bj = border_index(j, W, mode);
        return (bi < 0 || bj < 0) ? cval : get(bi, bj);
    }
};

// Plane (n, c) of x, laid out as p says (a 2-D or 3-D input has C == 1, NCHW).
template <typename T, typename In>
FC_HD Plane<T, In> plane_of(const Filter2dParams& p, const In* x, int64_t n, int64_t c) {
    Plane<T, In> im;
    if (p.layout == Layout::NCHW)
        im.base = x + (n * p.C + c) * p.H * p.W, im.sy = p.W, im.sx = 1;
    else
        im.base = x + n * p.H * p.W * p.C + c, im.sy = p.W * p.C, im.sx = p.C;
    im.H = p.H, im.W = p.W, im.mode = p.mode, im.cval = T(p.cval);
    return im;
}

// scipy.ndimage.sobel at pixel (i, j): the derivative [-1, 0, 1] along `axis` (0: rows,
// d/dy; 1: columns, d/dx), then the smoothing [1, 2, 1] across it, each 1-D pass
// extending its own input by the border mode, so with Border::Constant the smoothing
// reads cval beyond the edge rather than a derivative of cval.
template <typename T, typename In>
FC_HD T sobel_at(const Plane<T, In>& im, int axis, int64_t i, int64_t j) {
    // The derivative at (a, b) of the smoothing pass's neighbourhood.
    auto deriv = [&](int64_t a, int64_t b) -> T {
        if (axis == 0) {
            const int64_t bb = border_index(b, im.W, im.mode);
            if (bb < 0) return im.cval;
            return im.at(a + 1, bb) - im.at(a - 1, bb);
        }
        const int64_t aa = border_index(a, im.H, im.mode);
        if (aa < 0) return im.cval;
        return im.at(aa, b + 1) - im.at(aa, b - 1);
    };
    if (axis == 0) return deriv(i, j - 1) + T(2) * deriv(i, j) + deriv(i, j + 1);
    return deriv(i - 1, j) + T(2) * deriv(i, j) + deriv(i + 1, j);
}

}  // namespace fastconv

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
// type: float for uint8). I is the index type (see border_index): the GPU kernels use
// int32_t where their host checked that the batch fits.
template <typename T, typename In = T, typename I = int64_t>
struct Plane {
    const In* base;
    I sy, sx, H, W;
    Border mode;
    T cval;

    FC_HD T get(I i, I j) const { return T(base[i * sy + j * sx]); }

    // The plane extended by the border mode, for any (i, j).
    FC_HD T at(I i, I j) const {
        const I bi = border_index(i, H, mode), bj = border_index(j, W, mode);
        return (bi < 0 || bj < 0) ? cval : get(bi, bj);
    }

    // at(i, j) for -1 <= i <= H and -1 <= j <= W (border_index1).
    FC_HD T at1(I i, I j) const {
        const I bi = border_index1(i, H, mode), bj = border_index1(j, W, mode);
        return (bi < 0 || bj < 0) ? cval : get(bi, bj);
    }
};

// Plane (n, c) of x, laid out as p says (a 2-D or 3-D input has C == 1, NCHW).
template <typename T, typename I = int64_t, typename In>
FC_HD Plane<T, In, I> plane_of(const Filter2dParams& p, const In* x, I n, I c) {
    Plane<T, In, I> im;
    const I C = I(p.C), H = I(p.H), W = I(p.W);
    if (p.layout == Layout::NCHW)
        im.base = x + (n * C + c) * H * W, im.sy = W, im.sx = 1;
    else
        im.base = x + n * H * W * C + c, im.sy = W * C, im.sx = C;
    im.H = H, im.W = W, im.mode = p.mode, im.cval = T(p.cval);
    return im;
}

// scipy.ndimage.sobel at pixel (i, j) of the plane: the derivative [-1, 0, 1] along
// `axis` (0: rows, d/dy; 1: columns, d/dx), then the smoothing [1, 2, 1] across it, each
// 1-D pass extending its own input by the border mode, so with Border::Constant the
// smoothing reads cval beyond the edge rather than a derivative of cval. Every tap is
// within one sample of the plane: border_index1, no remainder.
template <typename T, typename In, typename I>
FC_HD T sobel_at(const Plane<T, In, I>& im, int axis, I i, I j) {
    // The derivative at (a, b) of the smoothing pass's neighbourhood.
    auto deriv = [&](I a, I b) -> T {
        if (axis == 0) {
            const I bb = border_index1(b, im.W, im.mode);
            if (bb < 0) return im.cval;
            return im.at1(a + 1, bb) - im.at1(a - 1, bb);
        }
        const I aa = border_index1(a, im.H, im.mode);
        if (aa < 0) return im.cval;
        return im.at1(aa, b + 1) - im.at1(aa, b - 1);
    };
    if (axis == 0) return deriv(i, I(j - 1)) + T(2) * deriv(i, j) + deriv(i, I(j + 1));
    return deriv(I(i - 1), j) + T(2) * deriv(i, j) + deriv(I(i + 1), j);
}

}  // namespace fastconv

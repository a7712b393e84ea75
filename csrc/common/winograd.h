// winograd.h: Winograd's minimal filtering F(m x m, 3 x 3) for both backends: the transform
// matrices, the three 2-D transforms of one tile, and the tile index math. __host__
// __device__: csrc/cpu/winograd.cpp and csrc/cuda/winograd.cu run the same lines.
//
// A 3x3, stride-1 cross-correlation is cut into output tiles of m x m pixels; tile (th, tw)
// reads the alpha x alpha input patch (alpha = m + 2) whose top-left pixel is
// (th * m - pad_h, tw * m - pad_w). In one dimension (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016):
//     y = A^T [ (G g) . (B^T d) ]        y: m outputs, g: 3 taps, d: alpha inputs
// and in two, with U = G g G^T (per filter and channel) and V = B^T d B (per tile and channel),
//     Y = A^T [ sum_c U_c . V_c ] A,
// the sum over channels being, for each of the alpha^2 positions, one GEMM (K x C) . (C x tiles).
// Multiplies per output: 9 directly, alpha^2 / m^2 here: 16/4 = 4 for F(2x2) (2.25x fewer),
// 36/16 = 2.25 for F(4x4) (4x fewer), before the transforms' additions.
//
// Where the matrices come from (Toom-Cook): choose alpha - 1 finite points p_j plus the point
// at infinity. Then
//     A^T[i][j] = p_j^i               (the infinity column picks the last output: 0 ... 0 1)
//     G[j]      = (1, p_j, p_j^2) / s_j  (infinity row: 0 0 1)
//     B^T       = V^-T, V the alpha x alpha Vandermonde matrix of the points (infinity row:
//                 0 ... 0 1), each row scaled by s_j to primitive integers.
// The scale s_j moves between B^T and G without changing the product; it is put where the
// arithmetic is cheapest: B^T and A^T hold integers and binary fractions, exact in any
// floating-point type, and every non-binary fraction sits in G, applied once per filter and
// call rather than once per tile.
//
// F(2, 3): points 0, 1, -1, infinity. Every entry is 0, +-1 or +-1/2, so on small integers
// the whole algorithm is exact in binary floating point, like a direct convolution.
//
// F(4, 3): points 0, 1, -1, 2, -1/2, infinity. Lavin & Gray use +-2 (B^T with 22 nonzero
// entries, here 26), and +-1/2 is the other classic choice. A float32 simulation of all three
// (`python benchmarks/winograd_accuracy.py points`: random normal tiles and filters, 2 seeds)
// gives relative errors (2-norm) at C = 64 / 512 / 2048 of
//     +-2        1.55e-6  2.73e-6  2.57e-6    largest element error 7.8e-6
//     +-1/2      1.56e-6  2.72e-6  2.59e-6                          9.2e-6
//     2, -1/2    1.03e-6  1.74e-6  1.71e-6                          3.0e-6
// A point and minus its inverse keep the powers in A^T balanced (8 and -1/8 rather than 8 and
// -8), so the output transform, which amplifies the GEMM's rounding by the size of A^T's
// entries, amplifies less. Four more nonzeros in B^T cost a few percent of the input
// transform; 1.5x less error on average, 2.6x at the worst element, is worth it.
//
// NaN and infinity: a transform skips its zero coefficients (decided at compile time), so a
// value reaches only what its nonzero coefficients connect it to. F(2, 3)'s sparsity makes
// that exactly the outputs whose 3x3 window reads the pixel. In F(4, 3) a pixel in the
// middle of a patch feeds every position, so a NaN or infinity reaches all outputs of the
// tiles whose patch holds it, including some whose window does not read it; and finite
// inputs near the type's largest value can overflow in the transforms (the direct
// convolution does not). tests/test_conv2d.py holds both variants to these rules.
#pragma once
#include <cstdint>

#include "params.h"
#include "shapes.h"

// Everything here inlines into the caller's loop, so that a tile's values stay in registers
// (and, on the CPU, the loop over channels around them vectorises): the transforms'
// lambdas too, which GCC otherwise left as calls from the AVX2 clones of winograd.cpp
// (callgrind: 10.9 M instructions for a LeNet-sized layer, 35% of them in lambda calls).
#if defined(__CUDACC__)
#define FC_WINO_HD __host__ __device__ __forceinline__
#define FC_WINO_LAMBDA
#elif defined(__GNUC__)
#define FC_WINO_HD __attribute__((always_inline)) inline
#define FC_WINO_LAMBDA __attribute__((always_inline))
#else
#define FC_WINO_HD inline
#define FC_WINO_LAMBDA
#endif

namespace fastconv {
namespace winograd {

template <int m>
struct Tables;

template <>
struct Tables<2> {
    static constexpr int m = 2, alpha = 4;
    static constexpr double BT[4][4] = {
        {1, 0, -1, 0},
        {0, 1, 1, 0},
        {0, -1, 1, 0},
        {0, -1, 0, 1},
    };
    static constexpr double G[4][3] = {
        {1, 0, 0},
        {0.5, 0.5, 0.5},
        {0.5, -0.5, 0.5},
        {0, 0, 1},
    };
    static constexpr double AT[2][4] = {
        {1, 1, 1, 0},
        {0, 1, -1, 1},
    };
};

template <>
struct Tables<4> {
    static constexpr int m = 4, alpha = 6;
    static constexpr double BT[6][6] = {
        {2, 3, -4, -3, 2, 0},
        {0, 2, 5, 1, -2, 0},
        {0, 2, 1, -5, 2, 0},
        {0, -1, -2, 1, 2, 0},
        {0, -2, 1, 2, -1, 0},
        {0, 2, 3, -4, -3, 2},
    };
    static constexpr double G[6][3] = {
        {1.0 / 2, 0, 0},
        {1.0 / 6, 1.0 / 6, 1.0 / 6},
        {1.0 / 6, -1.0 / 6, 1.0 / 6},
        {1.0 / 30, 1.0 / 15, 2.0 / 15},
        {16.0 / 15, -8.0 / 15, 4.0 / 15},
        {0, 0, 1.0 / 2},
    };
    static constexpr double AT[4][6] = {
        {1, 1, 1, 1, 1, 0},
        {0, 1, -1, 2, -1.0 / 2, 0},
        {0, 1, 1, 4, 1.0 / 4, 0},
        {0, 1, -1, 8, -1.0 / 8, 1},
    };
};

// The three tables as types, so that an entry is a compile-time constant in apply().
template <int m>
struct BTOf {
    static constexpr int rows = m + 2, cols = m + 2;
    FC_WINO_HD static constexpr double at(int i, int j) { return Tables<m>::BT[i][j]; }
};
template <int m>
struct GOf {
    static constexpr int rows = m + 2, cols = 3;
    FC_WINO_HD static constexpr double at(int i, int j) { return Tables<m>::G[i][j]; }
};
template <int m>
struct ATOf {
    static constexpr int rows = m, cols = m + 2;
    FC_WINO_HD static constexpr double at(int i, int j) { return Tables<m>::AT[i][j]; }
};

// A table read transposed (grad weight's transforms, below).
template <typename Mat>
struct TransposeOf {
    static constexpr int rows = Mat::cols, cols = Mat::rows;
    FC_WINO_HD static constexpr double at(int i, int j) { return Mat::at(j, i); }
};

// f(Index<I>{}) for I in [I0, I1): loops whose index is a compile-time constant, read in the
// body as decltype(i)::value (Index has no conversion operator: nvcc would not run a host
// constexpr one in device code).
template <int I>
struct Index {
    static constexpr int value = I;
};

template <int I0, int I1, typename F>
FC_WINO_HD void static_for(F&& f) {
    if constexpr (I0 < I1) {
        f(Index<I0>{});
        static_for<I0 + 1, I1>(f);
    }
}

template <typename Mat>
FC_WINO_HD constexpr int first_nonzero(int i) {
    int j = 0;
    while (j < Mat::cols && Mat::at(i, j) == 0) ++j;
    return j;
}

// y[i * ys] = sum_j Mat[i][j] * x[j * xs], in T. Zero entries are left out, +-1 entries add
// or subtract, and each row starts from its first term: no 0 * x, no 0 + x.
template <typename Mat, typename T>
FC_WINO_HD void apply(const T* x, int xs, T* y, int ys) {
    static_for<0, Mat::rows>([&](auto i_) FC_WINO_LAMBDA {
        constexpr int i = decltype(i_)::value;
        constexpr int j0 = first_nonzero<Mat>(i);
        static_assert(j0 < Mat::cols, "a transform matrix has no zero row");
        constexpr double c0 = Mat::at(i, j0);
        T acc = c0 == 1 ? x[j0 * xs] : c0 == -1 ? -x[j0 * xs] : T(c0) * x[j0 * xs];
        static_for<j0 + 1, Mat::cols>([&](auto j_) FC_WINO_LAMBDA {
            constexpr int j = decltype(j_)::value;
            constexpr double c = Mat::at(i, j);
            if constexpr (c == 1)
                acc = acc + x[j * xs];
            else if constexpr (c == -1)
                acc = acc - x[j * xs];
            else if constexpr (c != 0)
                acc = acc + T(c) * x[j * xs];
        });
        y[i * ys] = acc;
    });
}

// The 2-D transforms of one tile; every array is row-major and dense.

// v (alpha x alpha) = B^T d B for the input patch d (alpha x alpha).
template <int m, typename T>
FC_WINO_HD void input_transform(const T* d, T* v) {
    constexpr int a = m + 2;
    T t[a * a];
    static_for<0, a>([&](auto j_) FC_WINO_LAMBDA {  // t = B^T d, column by column
        constexpr int j = decltype(j_)::value;
        apply<BTOf<m>>(d + j, a, t + j, a);
    });
    static_for<0, a>([&](auto i_) FC_WINO_LAMBDA {  // v = t B, row by row
        constexpr int i = decltype(i_)::value;
        apply<BTOf<m>>(t + i * a, 1, v + i * a, 1);
    });
}

// u (alpha x alpha) = G g G^T for the 3 x 3 filter g (taps g[r * 3 + s]).
template <int m, typename T>
FC_WINO_HD void filter_transform(const T* g, T* u) {
    constexpr int a = m + 2;
    T t[a * 3];
    static_for<0, 3>([&](auto s_) FC_WINO_LAMBDA {  // t = G g, column by column
        constexpr int s = decltype(s_)::value;
        apply<GOf<m>>(g + s, 3, t + s, 3);
    });
    static_for<0, a>([&](auto i_) FC_WINO_LAMBDA {  // u = t G^T, row by row
        constexpr int i = decltype(i_)::value;
        apply<GOf<m>>(t + i * 3, 1, u + i * a, 1);
    });
}

// y (m x m) = A^T z A for the tile's alpha x alpha products z; z[e] is read at z[e * zs].
template <int m, typename T>
FC_WINO_HD void output_transform(const T* z, int zs, T* y) {
    constexpr int a = m + 2;
    T t[m * a];
    static_for<0, a>([&](auto j_) FC_WINO_LAMBDA {  // t = A^T z, column by column
        constexpr int j = decltype(j_)::value;
        apply<ATOf<m>>(z + j * zs, a * zs, t + j, a);
    });
    static_for<0, m>([&](auto i_) FC_WINO_LAMBDA {  // y = t A, row by row
        constexpr int i = decltype(i_)::value;
        apply<ATOf<m>>(t + i * a, 1, y + i * m, 1);
    });
}

// Float F(4x4, 3x3) on outputs of fewer elements than this runs in double, on both backends
// (csrc/cpu/winograd.cpp, csrc/cuda/winograd.cu). One output element of F(4x4) carries ~100x
// the rounding of a direct sum (its transforms cancel terms of size |w| |x| down to y), so
// where y is small against them one element's relative error reaches 1e-5 and beyond:
// measured on 1 x 1 x 3 x 3 -> 1 x 1 outputs (float32 against float64, 300 random draws, CPU)
// up to 3.2e-5, up to 6.6e-4 on a 1 x 1 image with padding 1, 2.3e-5 on 1 x 2 outputs; over
// 4 elements or more the norm-wise error stayed <= 4.2e-6, over 16 or more <= 3.7e-6, and
// ~1e-6 on ResNet-50's layers. Below 64 elements the whole call in double costs microseconds.
constexpr int64_t kFloatF4MinOutputs = 64;

// Grad weight (CPU: winograd.cpp, winograd_bwd_filter). The forward's tile is
// y = A^T (u . v) A with u = G g G^T, v = B^T d B, so for an m x m tile of output gradients
// dy: d(u . v) = A dy A^T, du = sum over tiles of (A dy A^T) . v, and dg = G^T du G.

// dz (alpha x alpha) = A dy A^T for an m x m tile of output gradients dy.
template <int m, typename T>
FC_WINO_HD void output_grad_transform(const T* dy, T* dz) {
    constexpr int a = m + 2;
    T t[a * m];
    static_for<0, m>([&](auto j_) FC_WINO_LAMBDA {  // t = A dy, column by column
        constexpr int j = decltype(j_)::value;
        apply<TransposeOf<ATOf<m>>>(dy + j, m, t + j, m);
    });
    static_for<0, a>([&](auto i_) FC_WINO_LAMBDA {  // dz = t A^T, row by row
        constexpr int i = decltype(i_)::value;
        apply<TransposeOf<ATOf<m>>>(t + i * m, 1, dz + i * a, 1);
    });
}

// dg (3 x 3) = G^T du G: a filter's gradient from that of its transform; du[e] at du[e * dus].
template <int m, typename T>
FC_WINO_HD void filter_grad_transform(const T* du, int dus, T* dg) {
    constexpr int a = m + 2;
    T t[3 * a];
    static_for<0, a>([&](auto j_) FC_WINO_LAMBDA {  // t = G^T du, column by column
        constexpr int j = decltype(j_)::value;
        apply<TransposeOf<GOf<m>>>(du + j * dus, a * dus, t + j, a);
    });
    static_for<0, 3>([&](auto i_) FC_WINO_LAMBDA {  // dg = t G, row by row
        constexpr int i = decltype(i_)::value;
        apply<TransposeOf<GOf<m>>>(t + i * a, 1, dg + i * 3, 1);
    });
}

// ------------------------------------------------------------------------ tiles

// Where Winograd applies: a 3x3 kernel, stride 1, dilation 1 (any padding, any groups).
// fastconv/_shapes.py mirrors it for the Python layer's argument check.
FC_HD bool applies(int64_t R, int64_t S, int64_t stride_h, int64_t stride_w, int64_t dil_h,
                   int64_t dil_w) {
    return R == 3 && S == 3 && stride_h == 1 && stride_w == 1 && dil_h == 1 && dil_w == 1;
}

// Tiles of m outputs along an axis of `out` outputs; the last may hang past the edge (its
// extra outputs are computed from zeros and dropped).
FC_HD int64_t tile_count(int64_t out, int m) { return ceil_div(out, m); }

// The input row (or column) of tile t's first patch row: its outputs t * m ... read from there.
// pad may be negative (the grad input of a convolution padded by more than 2).
FC_HD int64_t tile_origin(int64_t t, int m, int64_t pad) { return t * m - pad; }

// The grad input of a stride-1, dilation-1 R x S convolution p, as the forward convolution
// that computes it: dx = dy (*) w', w'[c, k, r, s] = w[k, c, R-1-r, S-1-s], padded by
// R-1-pad_h (top) and S-1-pad_w (left); the bottom / right padding follows from P, Q as usual.
FC_HD Conv2dParams bwd_data_as_forward(const Conv2dParams& p) {
    Conv2dParams q = p;
    q.C = p.K, q.H = p.P, q.W = p.Q;
    q.K = p.C, q.P = p.H, q.Q = p.W;
    q.pad_h = p.R - 1 - p.pad_h, q.pad_w = p.S - 1 - p.pad_w;
    q.act = Activation::None;
    q.has_bias = false;
    return q;
}

}  // namespace winograd
}  // namespace fastconv

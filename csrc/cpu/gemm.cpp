// Packed GEMM: C = op(A) * op(B) + beta * C, row-major, float and double (see gemm.h).
//
// Blocking (Goto / BLIS): for each NC-wide column panel of C and each KC-deep slice of the
// reduction, op(B)[KC x NC] is packed into NR-wide column slivers (k-major, zero-padded), then
// for each MC-tall row block op(A)[MC x KC] is packed into MR-tall row slivers. The packing
// absorbs the transposes (an in-register 8x8 / 4x4 transpose where the source runs along k),
// so one micro-kernel serves all four (trans_a, trans_b) cases. The micro-kernel keeps an
// MR x NR tile of C in registers and streams one B sliver (L1) against the A block (L2).
//
// Paths, one per ISA, chosen once by isa.h (FASTCONV_CPU_ISA may force a lower one); the
// blocked loops are a template over the path, so each has its own MR, NR, MC, KC, NC:
//   portable  plain C++, 6 x 16 floats / 6 x 8 doubles; edge tiles computed whole into a
//             local tile and their corner copied out.
//   avx2      AVX2 + FMA, the same tile in 12 ymm accumulators; edges as portable.
//   avx512    AVX-512, 14 x 32 floats / 14 x 16 doubles in 28 zmm accumulators, blocks for
//             Zen 5's 48 KiB L1d and 1 MiB L2. Edge tiles run a kernel of their own row count
//             (1..14) and vector count (1 or 2) with a masked last vector, so they neither
//             compute padding rows nor go through a local tile.
//
// Threads: C is cut into a tm x tn grid of rectangles, one per thread, chosen to minimise the
// per-thread work counting padding to whole micro-tiles and packing. Each thread runs the
// blocked loops above on its rectangle with its own packing buffers, so there are no barriers;
// small-M convolution shapes split N, small-N shapes split M.
//
// The avx2 path, measured on a 2-core AMD EPYC (Zen3) VM, 2 threads, GFLOP/s, vs numpy 2.4 matmul
// (OpenBLAS 0.3.31), best of many short runs each (the VM is noisy, +-10% run to run). The
// micro-kernel alone reaches 85 per core, so the machine's peak is about 170.
//   float32                                   fastconv   numpy
//   M=64  N=12544 K=147   (conv1)               116      123
//   M=64  N=3136  K=576   (3x3, 64 ch)          126      112
//   M=256 N=3136  K=64    (1x1)                 147      122
//   M=512 N=196   K=4608  (3x3, 512 ch)         139      138
//   M=128 N=784   K=1152                        133      114
//   M=6   N=784   K=25    (LeNet, 1 thread)      47       29
//   M=16  N=100   K=150   (LeNet)                55       55
//   M=576 N=3136  K=64    (3x3-64 dcol, trans_a) 143      121
//   M=64  N=576   K=3136  (3x3-64 dW, trans_b)   120      116
// float64 on the same shapes: 0.96x to 1.4x numpy (e.g. 55 vs 54 on the 3x3, 64 ch shape).
//
// avx512 against avx2, instructions of one single-thread float32 call (wall clock was not
// usable on the shared VM; benchmarks/isa_counts.py, benchmarks/NOTES.md). avx2: callgrind
// Ir; avx512: tools/inscount.c (valgrind decodes no AVX-512; on avx2 it equals callgrind
// plus the 6.4 k of the Python call between its markers, subtracted here).
//   M x N x K          avx2 Ir   (kernel share)   avx512      ratio
//   256 x 3136 x 64     13.09 M   95%               5.93 M    2.21
//   64 x 3136 x 576     30.52 M   90%              14.02 M    2.18
//   512 x 196 x 4608   121.06 M   94%              57.63 M    2.10
//   16 x 100 x 150     107.9 k    63%              63.2 k     1.71  (edges: 14 + 2 rows)
// Prediction, not measured: on Zen 5 (two 512-bit FMA pipes) 1.6-1.9x on the first three,
// 1.3-1.6x on the LeNet shape, single thread: the kernel at twice the flops per cycle, the
// packing and C traffic as before.
#include "gemm.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#include "../common/check.h"
#include "isa.h"
#include "simd.h"
#include "workspace.h"

#ifdef _OPENMP
#include <omp.h>
#include "parallel.h"
#endif

namespace fastconv { namespace cpu {
namespace {

// A path (one per ISA) is a struct the blocked loops below take as a template parameter:
//   T, MR, NR, MC, KC, NC   element type, register tile MR x NR, cache blocks MC x KC (packed
//                           A, lives in L2) and KC x NC (packed B, lives in L3; one KC x NR
//                           sliver of it in L1d)
//   kernel(kc, a, b, beta, c, ldc)            c[MR x NR] = a * b + beta * c, where a is an
//                           MR-tall packed sliver (a[k*MR + i]) and b an NR-wide packed
//                           sliver (b[k*NR + j]); beta == 0 never reads c
//   edge(kc, a, b, beta, c, ldc, mr, nr)      the same for the top-left mr x nr corner only
//                           (mr <= MR, nr <= NR, not both full); nothing outside it is
//                           read or written
//   pack_a_rows, pack_b_rows                  PackRows with W = MR and W = NR

// Packs one W-wide sliver from w (<= W) rows that are contiguous along k: row j, column k is
// src[j*sx + k]; writes dst[k*W + j], zero for j >= w. This is the transposing half of packing.
template <typename T>
using PackRows = void (*)(const T* src, int64_t sx, int64_t w, int64_t kc, T* dst);

// An edge tile for paths whose kernel computes whole tiles only: the whole tile into a
// local buffer (beta 0), then its mr x nr corner into C.
template <typename Path, typename T>
void edge_via_tile(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc, int64_t mr,
                   int64_t nr) {
    constexpr int64_t MR = Path::MR, NR = Path::NR;
    alignas(64) T tile[MR * NR];
    Path::kernel(kc, a, b, T(0), tile, NR);
    for (int64_t i = 0; i < mr; ++i)
        for (int64_t j = 0; j < nr; ++j) {
            T& out = c[i * ldc + j];
            out = beta == T(0) ? tile[i * NR + j] : tile[i * NR + j] + beta * out;
        }
}

// ---------------------------------------------------------------- portable, and AVX2's blocking

// 6 x 16 floats or 6 x 8 doubles: 12 ymm accumulators on AVX2 (see kernel_avx2). Blocks
// sized for a 32 KiB L1d and 512 KiB L2 (Zen 3).
template <typename T> struct Avx2Blocking;
template <> struct Avx2Blocking<float> {
    static constexpr int64_t MR = 6, NR = 16, MC = 144, KC = 256, NC = 4080;
};
template <> struct Avx2Blocking<double> {
    static constexpr int64_t MR = 6, NR = 8, MC = 72, KC = 256, NC = 2040;
};

template <typename T, int64_t MR, int64_t NR>
void kernel_generic(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc) {
    T acc[MR][NR] = {};
    for (int64_t k = 0; k < kc; ++k, a += MR, b += NR)
        for (int64_t i = 0; i < MR; ++i)
            for (int64_t j = 0; j < NR; ++j) acc[i][j] += a[i] * b[j];
    for (int64_t i = 0; i < MR; ++i)
        for (int64_t j = 0; j < NR; ++j)
            c[i * ldc + j] = beta == T(0) ? acc[i][j] : acc[i][j] + beta * c[i * ldc + j];
}

template <int64_t W, typename T>
void pack_rows_generic(const T* src, int64_t sx, int64_t w, int64_t kc, T* dst) {
    for (int64_t j = 0; j < W; ++j)
        for (int64_t k = 0; k < kc; ++k) dst[k * W + j] = j < w ? src[j * sx + k] : T(0);
}

// Plain C++ in the AVX2 path's shape (the compiler vectorises it for the build's baseline).
template <typename Elem>
struct PortablePath : Avx2Blocking<Elem> {
    using T = Elem;
    using B = Avx2Blocking<Elem>;
    static void kernel(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc) {
        kernel_generic<T, B::MR, B::NR>(kc, a, b, beta, c, ldc);
    }
    static void edge(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc, int64_t mr,
                     int64_t nr) {
        edge_via_tile<PortablePath>(kc, a, b, beta, c, ldc, mr, nr);
    }
    static constexpr PackRows<T> pack_a_rows = pack_rows_generic<B::MR, T>;
    static constexpr PackRows<T> pack_b_rows = pack_rows_generic<B::NR, T>;
};

#if FC_X86_ISA
// ---------------------------------------------------------------- AVX2 + FMA

// Rows (MR for a whole tile) rows x two vectors: 12 accumulators, 2 B vectors and 1
// broadcast A value in 16 ymm. Fewer rows: an edge tile as wide as a whole one (the A
// sliver's rows past Rows unread).
template <typename S, int Rows = Avx2Blocking<typename S::T>::MR>
FC_TARGET_AVX2 void kernel_avx2(int64_t kc, const typename S::T* a, const typename S::T* b,
                                typename S::T beta, typename S::T* c, int64_t ldc) {
    using T = typename S::T;
    using V = typename S::V;
    constexpr int MR = Avx2Blocking<T>::MR, L = S::L;
    static_assert(Avx2Blocking<T>::NR == 2 * L, "kernel covers two vectors per row");
    static_assert(Rows >= 1 && Rows <= MR, "tile rows");
    V c0[Rows], c1[Rows];
#pragma GCC unroll 6
    for (int i = 0; i < Rows; ++i) {
        c0[i] = c1[i] = S::zero();
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 2 * L - 1), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k, a += MR, b += 2 * L) {
        const V b0 = S::load(b), b1 = S::load(b + L);
#pragma GCC unroll 6
        for (int i = 0; i < Rows; ++i) {
            const V ai = S::bcast(a + i);
            c0[i] = S::fma(ai, b0, c0[i]);
            c1[i] = S::fma(ai, b1, c1[i]);
        }
    }
    if (beta == T(0)) {
#pragma GCC unroll 6
        for (int i = 0; i < Rows; ++i) {
            S::store(c + i * ldc, c0[i]);
            S::store(c + i * ldc + L, c1[i]);
        }
    } else {
        const V vb = S::bcast(&beta);
#pragma GCC unroll 6
        for (int i = 0; i < Rows; ++i) {
            S::store(c + i * ldc, S::fma(vb, S::load(c + i * ldc), c0[i]));
            S::store(c + i * ldc + L, S::fma(vb, S::load(c + i * ldc + L), c1[i]));
        }
    }
}

// Transposes L x L tiles in registers; rows past w read as zero. (The AVX-512 path's
// transposing pack too.)
template <int64_t W, typename S>
FC_TARGET_AVX2 void pack_rows_avx2(const typename S::T* src, int64_t sx, int64_t w, int64_t kc,
                                   typename S::T* dst) {
    using T = typename S::T;
    constexpr int64_t L = S::L, PF = 256 / sizeof(T);  // prefetch 256 bytes ahead in each row
    int64_t k = 0;
    for (; k + L <= kc; k += L) {
#pragma GCC unroll 4
        for (int64_t g = 0; g < W; g += L) {
            typename S::V r[L];
            for (int64_t i = 0; i < L; ++i) {
                const T* row = src + (g + i) * sx + k;
                _mm_prefetch(reinterpret_cast<const char*>(row + PF), _MM_HINT_T0);
                r[i] = g + i < w ? S::load(row) : S::zero();
            }
            S::transpose(r);
            for (int64_t i = 0; i < L; ++i) {
                T* d = dst + (k + i) * W + g;
                if (g + L <= W) {
                    S::store(d, r[i]);
                } else {
                    alignas(32) T tmp[L];
                    S::store(tmp, r[i]);
                    for (int64_t j = 0; j < W - g; ++j) d[j] = tmp[j];
                }
            }
        }
    }
    for (; k < kc; ++k)
        for (int64_t j = 0; j < W; ++j) dst[k * W + j] = j < w ? src[j * sx + k] : T(0);
}

template <typename S>
struct Avx2Path : Avx2Blocking<typename S::T> {
    using T = typename S::T;
    using B = Avx2Blocking<T>;
    static void kernel(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc) {
        kernel_avx2<S>(kc, a, b, beta, c, ldc);
    }
    // A tile short of rows but whole in width runs a kernel of its own row count: ResNet-50's
    // l4_3x3 at batch 1 (49 pixels x 512 filters, transposed) ends each column of tiles in
    // one row; through a whole tile, a sixth of its rows' FMAs.
    static void edge(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc, int64_t mr,
                     int64_t nr) {
        static_assert(B::MR == 6, "one kernel per row count below");
        if (nr == B::NR) switch (mr) {
            case 1: return kernel_avx2<S, 1>(kc, a, b, beta, c, ldc);
            case 2: return kernel_avx2<S, 2>(kc, a, b, beta, c, ldc);
            case 3: return kernel_avx2<S, 3>(kc, a, b, beta, c, ldc);
            case 4: return kernel_avx2<S, 4>(kc, a, b, beta, c, ldc);
            case 5: return kernel_avx2<S, 5>(kc, a, b, beta, c, ldc);
        }
        edge_via_tile<Avx2Path>(kc, a, b, beta, c, ldc, mr, nr);
    }
    static constexpr PackRows<T> pack_a_rows = pack_rows_avx2<B::MR, S>;
    static constexpr PackRows<T> pack_b_rows = pack_rows_avx2<B::NR, S>;
};

// ---------------------------------------------------------------- AVX-512 (F, BW, VL, DQ)

// 14 x 32 floats or 14 x 16 doubles: 28 zmm accumulators, 2 B vectors and 1 broadcast A
// value in the 32 zmm. Of the tiles that fit (12 x 32, 14 x 32, 6 x 64, 8 x 48), 14 x 32
// loads the fewest bytes from L1 per FMA (2 vector loads and 14 broadcasts feed 28 FMAs:
// 6.6 bytes, against 7.3, 11.7, 9.3). Wider N tiles waste more on the narrow N of
// convolution GEMMs (196 or 100 pixels; an NHWC layer's 16 or 32 channels); the M edge
// (64 = 4 x 14 + 8 channels) costs nothing extra, since edge tiles run a kernel of their
// own row count and vector count rather than a whole tile. Blocks for Zen 5
// (48 KiB L1d, 1 MiB L2, both shared by the core's two SMT threads): a KC x NR B sliver
// of 24 KiB (KC 192) plus a 10.5 KiB A sliver stay in L1d; the MC x KC A block is 252 KiB,
// a quarter of L2; the KC x NC B panel 3 MiB of L3.
template <typename T> struct Avx512Blocking;
template <> struct Avx512Blocking<float> {
    static constexpr int64_t MR = 14, NR = 32, MC = 336, KC = 192, NC = 4096;
};
template <> struct Avx512Blocking<double> {
    static constexpr int64_t MR = 14, NR = 16, MC = 168, KC = 192, NC = 2048;
};

// Rows x NV vectors of C from rows [0, Rows) of an MR-tall A sliver and the first NV
// vectors of an NR-wide B sliver. Masked: the last vector of each row is read and written
// under a mask of `last` lanes (1 <= last <= L), so an edge tile costs only its own rows
// and vectors, and C past the edge is never touched. Unmasked with Rows = MR, NV = 2: the
// full tile.
template <typename S, int Rows, int NV, bool Masked>
FC_TARGET_AVX512 void kernel_avx512(int64_t kc, const typename S::T* a, const typename S::T* b,
                                    typename S::T beta, typename S::T* c, int64_t ldc, int last) {
    using T = typename S::T;
    using V = typename S::V;
    constexpr int64_t MR = Avx512Blocking<T>::MR, NR = Avx512Blocking<T>::NR;
    constexpr int L = S::L;
    static_assert(NR == 2 * L && NV >= 1 && NV <= 2 && Rows >= 1 && Rows <= MR, "tile shape");
    V acc[Rows][NV];
#pragma GCC unroll 14
    for (int i = 0; i < Rows; ++i) {
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[i][v] = S::zero();
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NV * L - 1), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k, a += MR, b += NR) {
        V bv[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) bv[v] = S::load(b + v * L);
#pragma GCC unroll 14
        for (int i = 0; i < Rows; ++i) {
            const V ai = S::bcast(a + i);
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) acc[i][v] = S::fma(ai, bv[v], acc[i][v]);
        }
    }
    const typename S::M m = S::mask(Masked ? last : L);
    const V vb = S::bcast(&beta);
#pragma GCC unroll 14
    for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
            T* ci = c + i * ldc + v * L;
            if (Masked && v == NV - 1) {
                S::store(ci, m, beta == T(0) ? acc[i][v] : S::fma(vb, S::load(m, ci), acc[i][v]));
            } else {
                S::store(ci, beta == T(0) ? acc[i][v] : S::fma(vb, S::load(ci), acc[i][v]));
            }
        }
}

template <typename S>
using EdgeKernel = void (*)(int64_t, const typename S::T*, const typename S::T*, typename S::T,
                            typename S::T*, int64_t, int);

// Edge kernels for every row count and one or two vectors: entry (nv - 1) * MR + mr - 1.
template <typename S, int... R>
constexpr std::array<EdgeKernel<S>, 2 * sizeof...(R)> edge_kernels(std::integer_sequence<int, R...>) {
    return {{kernel_avx512<S, R + 1, 1, true>..., kernel_avx512<S, R + 1, 2, true>...}};
}

template <typename S>
struct Avx512Path : Avx512Blocking<typename S::T> {
    using T = typename S::T;
    using B = Avx512Blocking<T>;
    static void kernel(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc) {
        kernel_avx512<S, B::MR, 2, false>(kc, a, b, beta, c, ldc, S::L);
    }
    static void edge(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc, int64_t mr,
                     int64_t nr) {
        static constexpr auto table = edge_kernels<S>(std::make_integer_sequence<int, B::MR>());
        const int64_t nv = nr > S::L ? 2 : 1;
        table[(nv - 1) * B::MR + mr - 1](kc, a, b, beta, c, ldc, int(nr - (nv - 1) * S::L));
    }
    // The transposing packs stay on ymm (8 x 8 transposes; W = 14 is one whole 8-row group
    // and part of another).
    static constexpr PackRows<T> pack_a_rows =
        pack_rows_avx2<B::MR, std::conditional_t<sizeof(T) == 4, Avx2Float, Avx2Double>>;
    static constexpr PackRows<T> pack_b_rows =
        pack_rows_avx2<B::NR, std::conditional_t<sizeof(T) == 4, Avx2Float, Avx2Double>>;
};
#endif  // FC_X86_ISA

// Packs rows [0, nx) x columns [0, kc) of X, X[x][k] = src[x*sx + k*sk], into W-wide slivers:
// sliver s holds X[s*W + j][k] at dst[s*W*kc + k*W + j], rows past nx zero-filled.
template <int64_t W, typename T>
void pack(const T* src, int64_t sx, int64_t sk, int64_t nx, int64_t kc, PackRows<T> pack_rows,
          T* dst) {
    if (sk == 1 && sx != 1) {
        for (int64_t x0 = 0; x0 < nx; x0 += W)
            pack_rows(src + x0 * sx, sx, std::min(W, nx - x0), kc, dst + x0 * kc);
        return;
    }
    // Each k reads up to W values at stride sx (contiguous when sx == 1). Eight k at a time
    // across all slivers, so that the reads stream along eight rows of the source rather than
    // hopping between kc rows for every 64 bytes. Measured on M=64, N=3136, K=576 (one
    // thread): packing B fell from ~40% of the run time (sliver by sliver) to ~25%.
    for (int64_t k0 = 0; k0 < kc; k0 += 8) {
        const int64_t k1 = std::min(k0 + 8, kc);
        for (int64_t x0 = 0; x0 < nx; x0 += W) {
            const int64_t w = std::min(W, nx - x0);
            for (int64_t k = k0; k < k1; ++k) {
                const T* s = src + x0 * sx + k * sk;
                T* d = dst + x0 * kc + k * W;
                if (w == W && sx == 1) {
                    std::memcpy(d, s, sizeof(T) * W);
                    __builtin_prefetch(s + 256 / sizeof(T));  // this row, 256 bytes on
                } else {
                    for (int64_t j = 0; j < w; ++j) d[j] = s[j * sx];
                    for (int64_t j = w; j < W; ++j) d[j] = T(0);
                }
            }
        }
    }
}

// Grow-only scratch per thread (workspace.h's blocks: whole pages): 0 packs A, 1 packs B
// (float and double share them).
HeldBlock* gemm_scratch() {
    thread_local HeldBlock bufs[2];
    return bufs;
}

template <typename T>
T* scratch(int which, int64_t elems) {
    return static_cast<T*>(gemm_scratch()[which].grow((size_t(elems) * sizeof(T) + 63) / 64 * 64));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Block size for a dimension of n: at most cap, a multiple of unit, blocks of even size.
int64_t even_block(int64_t n, int64_t cap, int64_t unit) {
    return round_up(ceil_div(n, ceil_div(n, cap)), unit);
}

template <typename T>
struct Problem {
    bool trans_a, trans_b;
    int64_t M, N, K;
    const T* A;
    int64_t lda;
    const T* B;
    int64_t ldb;
    T beta;
    T* C;
    int64_t ldc;
    const T* packed_b;  // B already packed (gemm.h, PackedB), or null
    // gemm_packed_b_columns: columns [c_col0, c_col1) only, on the calling thread, C pointing
    // at column c_col0 of row 0 (c_col1 = 0: all columns, as usual)
    int64_t c_col0 = 0, c_col1 = 0;
};

// The reduction block of a K-deep problem: the same in gemm_rect and in PackedB.
template <typename Path>
int64_t k_block(int64_t K) {
    return even_block(K, Path::KC, 1);
}

// The blocked loops of one path for rows [m0, m1) and columns [n0, n1) of C, on the
// calling thread.
template <typename Path, typename T>
void gemm_rect(const Problem<T>& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    constexpr int64_t MR = Path::MR, NR = Path::NR;
    const int64_t MC = even_block(m1 - m0, Path::MC, MR);
    const int64_t NC = even_block(n1 - n0, Path::NC, NR);
    const int64_t KC = k_block<Path>(p.K);
    const int64_t padded_n = round_up(p.N, NR);
    T* pa = scratch<T>(0, MC * KC);
    T* const b_buf = p.packed_b ? nullptr : scratch<T>(1, KC * NC);
    const T* pb = b_buf;
    // Element strides of op(A)[m][k] and op(B)[k][n].
    const int64_t am = p.trans_a ? 1 : p.lda, ak = p.trans_a ? p.lda : 1;
    const int64_t bn = p.trans_b ? p.ldb : 1, bk = p.trans_b ? 1 : p.ldb;

    for (int64_t jc = n0; jc < n1; jc += NC) {
        const int64_t nc = std::min(NC, n1 - jc);
        for (int64_t pc = 0; pc < p.K; pc += KC) {
            const int64_t kc = std::min(KC, p.K - pc);
            const T beta = pc == 0 ? p.beta : T(1);
            if (p.packed_b)  // jc is a multiple of NR: its slivers start here (PackedB::offset)
                pb = p.packed_b + pc * padded_n + jc * kc;
            else
                pack<NR>(p.B + jc * bn + pc * bk, bn, bk, nc, kc, Path::pack_b_rows, b_buf);
            for (int64_t ic = m0; ic < m1; ic += MC) {
                const int64_t mc = std::min(MC, m1 - ic);
                pack<MR>(p.A + ic * am + pc * ak, am, ak, mc, kc, Path::pack_a_rows, pa);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int64_t nr = std::min(NR, nc - jr);
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int64_t mr = std::min(MR, mc - ir);
                        const T* a = pa + ir * kc;
                        const T* b = pb + jr * kc;
                        T* c = p.C + (ic + ir) * p.ldc + jc + jr - p.c_col0;
                        if (mr == MR && nr == NR)
                            Path::kernel(kc, a, b, beta, c, p.ldc);
                        else
                            Path::edge(kc, a, b, beta, c, p.ldc, mr, nr);
                    }
                }
            }
        }
    }
}

#ifdef _OPENMP
// Part i of `parts` of [0, n), cut on multiples of unit.
void split(int64_t n, int64_t parts, int64_t i, int64_t unit, int64_t& lo, int64_t& hi) {
    const int64_t units = ceil_div(n, unit);
    lo = std::min(n, units * i / parts * unit);
    hi = std::min(n, units * (i + 1) / parts * unit);
}

// Rows of the tm x tn thread grid: the tm that minimises one thread's share of micro-tile
// FMAs plus (weighted) packing per unit of K.
template <typename Path>
int64_t grid_rows(int64_t M, int64_t N, int64_t nt) {
    constexpr int64_t kPackCost = 8;  // one packed element ~ this many FMAs
    int64_t best = 1, best_cost = 0;
    for (int64_t tm = 1; tm <= nt; ++tm) {
        if (nt % tm) continue;
        const int64_t m = round_up(ceil_div(M, tm), Path::MR);
        const int64_t n = round_up(ceil_div(N, nt / tm), Path::NR);
        const int64_t cost = m * n + kPackCost * (n + m * ceil_div(n, Path::NC));
        if (tm == 1 || cost < best_cost) best = tm, best_cost = cost;
    }
    return best;
}

// Threads for one call: all of them outside any parallel region (parallel.h says why never
// nested), but at least this many flops each (measured: M=16 N=100 K=150 gains from a
// second thread, M=6 N=784 K=25 loses).
int64_t threads_for(int64_t M, int64_t N, int64_t K) {
    constexpr double kFlopsPerThread = 1 << 17;
    if (in_region()) return 1;
    const double flops = 2.0 * double(M) * double(N) * double(K);
    return std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(),
                                                  int64_t(flops / kFlopsPerThread)));
}
#endif

// One path's GEMM: the thread grid, then the blocked loops on each thread's rectangle.
template <typename Path, typename T>
void gemm_path(const Problem<T>& p) {
    if (p.c_col1 > 0) return gemm_rect<Path>(p, 0, p.M, p.c_col0, p.c_col1);
#ifdef _OPENMP
    const int64_t nt = threads_for(p.M, p.N, p.K);
    if (nt == 1) return gemm_rect<Path>(p, 0, p.M, 0, p.N);
#pragma omp parallel num_threads(int(nt))
    {
        const int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
        const int64_t tm = grid_rows<Path>(p.M, p.N, threads), tn = threads / tm;
        int64_t m0, m1, n0, n1;
        split(p.M, tm, t / tn, Path::MR, m0, m1);
        split(p.N, tn, t % tn, Path::NR, n0, n1);
        if (m0 < m1 && n0 < n1) gemm_rect<Path>(p, m0, m1, n0, n1);
    }
#else
    gemm_rect<Path>(p, 0, p.M, 0, p.N);
#endif
}

template <typename T>
using GemmPath = void (*)(const Problem<T>&);

template <typename Path>
PackedB layout_of(int64_t K, int64_t N) {
    return PackedB{K, N, Path::NR, k_block<Path>(K)};
}

// The dispatch: the path isa.h chose, fixed at the first call.
template <typename T>
GemmPath<T> pick_path() {
#if FC_X86_ISA
    using Avx2 = std::conditional_t<sizeof(T) == 4, Avx2Float, Avx2Double>;
    using Avx512 = std::conditional_t<sizeof(T) == 4, Avx512Float, Avx512Double>;
    if (isa() == Isa::Avx512) return gemm_path<Avx512Path<Avx512>, T>;
    if (isa() == Isa::Avx2) return gemm_path<Avx2Path<Avx2>, T>;
#endif
    return gemm_path<PortablePath<T>, T>;
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (beta == T(0))
            for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
        return;
    }
    static const GemmPath<T> path = pick_path<T>();
    path(Problem<T>{trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc, nullptr});
}

template <typename T>
PackedB packed_b_layout(int64_t K, int64_t N) {
#if FC_X86_ISA
    using Avx2 = std::conditional_t<sizeof(T) == 4, Avx2Float, Avx2Double>;
    using Avx512 = std::conditional_t<sizeof(T) == 4, Avx512Float, Avx512Double>;
    if (isa() == Isa::Avx512) return layout_of<Avx512Path<Avx512>>(K, N);
    if (isa() == Isa::Avx2) return layout_of<Avx2Path<Avx2>>(K, N);
#endif
    return layout_of<PortablePath<T>>(K, N);
}

void pack_sliver(int W, const float* src, int64_t sx, int64_t w, int64_t kc, float* dst) {
    auto rows = [&](auto width) {
        constexpr int64_t kW = decltype(width)::value;
#if FC_X86_ISA
        if (isa() >= Isa::Avx2) return pack_rows_avx2<kW, Avx2Float>(src, sx, w, kc, dst);
#endif
        pack_rows_generic<kW, float>(src, sx, w, kc, dst);
    };
    using std::integral_constant;
    switch (W) {
        case 8: return rows(integral_constant<int64_t, 8>{});
        case 12: return rows(integral_constant<int64_t, 12>{});
        case 16: return rows(integral_constant<int64_t, 16>{});
        case 24: return rows(integral_constant<int64_t, 24>{});
        case 32: return rows(integral_constant<int64_t, 32>{});
        case 48: return rows(integral_constant<int64_t, 48>{});
    }
    FC_CHECK(false, "pack_sliver: no build for this width");
}

template <typename T>
int64_t gemm_tile_work(int64_t M, int64_t N) {
#if FC_X86_ISA
    if (isa() == Isa::Avx512) return round_up(M, Avx512Blocking<T>::MR) * round_up(N, Avx512Blocking<T>::NR);
#endif
    return round_up(M, Avx2Blocking<T>::MR) * round_up(N, Avx2Blocking<T>::NR);
}

template <typename T>
MicroTile gemm_micro_tile() {
#if FC_X86_ISA
    if (isa() == Isa::Avx512) return {Avx512Blocking<T>::MR, Avx512Blocking<T>::NR};
#endif
    return {Avx2Blocking<T>::MR, Avx2Blocking<T>::NR};
}

template <typename T>
void gemm_packed_b(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                   const T* packed_b, T beta, T* C, int64_t ldc) {
    FC_CHECK(K > 0, "gemm_packed_b needs K > 0");
    if (M <= 0 || N <= 0) return;
    static const GemmPath<T> path = pick_path<T>();
    path(Problem<T>{trans_a, false, M, N, K, A, lda, nullptr, 0, beta, C, ldc, packed_b});
}

template <typename T>
void gemm_packed_b_columns(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                           const T* packed_b, int64_t n0, int64_t n1, T beta, T* C, int64_t ldc) {
    FC_CHECK(K > 0 && 0 <= n0 && n0 <= n1 && n1 <= N, "gemm_packed_b_columns: bad column range");
    FC_CHECK(n0 % packed_b_layout<T>(K, N).NR == 0, "gemm_packed_b_columns: n0 inside a sliver");
    if (M <= 0 || n0 == n1) return;
    static const GemmPath<T> path = pick_path<T>();
    // N the full width: the packed slivers are laid out for it (PackedB::offset).
    path(Problem<T>{trans_a, false, M, N, K, A, lda, nullptr, 0, beta, C, ldc, packed_b, n0, n1});
}

size_t gemm_scratch_release() { return gemm_scratch()[0].release() + gemm_scratch()[1].release(); }
size_t gemm_scratch_held() { return gemm_scratch()[0].bytes + gemm_scratch()[1].bytes; }

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);
template int64_t gemm_tile_work<float>(int64_t, int64_t);
template int64_t gemm_tile_work<double>(int64_t, int64_t);
template MicroTile gemm_micro_tile<float>();
template MicroTile gemm_micro_tile<double>();
template PackedB packed_b_layout<float>(int64_t, int64_t);
template PackedB packed_b_layout<double>(int64_t, int64_t);
template void gemm_packed_b<float>(bool, int64_t, int64_t, int64_t, const float*, int64_t,
                                   const float*, float, float*, int64_t);
template void gemm_packed_b<double>(bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                    const double*, double, double*, int64_t);
template void gemm_packed_b_columns<float>(bool, int64_t, int64_t, int64_t, const float*, int64_t,
                                           const float*, int64_t, int64_t, float, float*, int64_t);
template void gemm_packed_b_columns<double>(bool, int64_t, int64_t, int64_t, const double*,
                                            int64_t, const double*, int64_t, int64_t, double,
                                            double*, int64_t);

}}  // namespace fastconv::cpu

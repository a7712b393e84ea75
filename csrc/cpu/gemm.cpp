// Packed GEMM: C = op(A) * op(B) + beta * C, row-major, float and double (see gemm.h).
//
// Blocking (Goto / BLIS): for each NC-wide column panel of C and each KC-deep slice of the
// reduction, op(B)[KC x NC] is packed into NR-wide column slivers (k-major, zero-padded), then
// for each MC-tall row block op(A)[MC x KC] is packed into MR-tall row slivers. The packing
// absorbs the transposes (an in-register 8x8 / 4x4 transpose where the source runs along k),
// so one micro-kernel serves all four (trans_a, trans_b) cases. The micro-kernel keeps an
// MR x NR tile of C in registers (6 x 16 floats or 6 x 8 doubles = 12 ymm accumulators) and
// streams one B sliver (L1) against the A block (L2). Edge tiles are computed into a local
// tile and copied out. The AVX2+FMA code is picked at run time (__builtin_cpu_supports); any
// other CPU, or a non-x86 build, gets portable scalar code.
//
// Threads: C is cut into a tm x tn grid of rectangles, one per thread, chosen to minimise the
// per-thread work counting padding to whole micro-tiles and packing. Each thread runs the
// blocked loops above on its rectangle with its own packing buffers, so there are no barriers;
// small-M convolution shapes split N, small-N shapes split M.
//
// Measured on a 2-core AMD EPYC (Zen3) VM, 2 threads, GFLOP/s, this gemm vs numpy 2.4 matmul
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
#include "gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#include "parallel.h"
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fastconv { namespace cpu {
namespace {

// Register tile MR x NR; cache blocks MC x KC (packed A, lives in the 512 KiB L2) and
// KC x NC (packed B, lives in L3; one KC x NR sliver of it in the 32 KiB L1d).
template <typename T> struct Block;
template <> struct Block<float> {
    static constexpr int64_t MR = 6, NR = 16, MC = 144, KC = 256, NC = 4080;
};
template <> struct Block<double> {
    static constexpr int64_t MR = 6, NR = 8, MC = 72, KC = 256, NC = 2040;
};

// c[MR x NR] = a * b + beta * c, where a is an MR-tall packed sliver (a[k*MR + i]) and b an
// NR-wide packed sliver (b[k*NR + j]). beta == 0 never reads c.
template <typename T>
using Kernel = void (*)(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc);

// Packs one W-wide sliver from w (<= W) rows that are contiguous along k: row j, column k is
// src[j*sx + k]; writes dst[k*W + j], zero for j >= w. This is the transposing half of packing.
template <typename T>
using PackRows = void (*)(const T* src, int64_t sx, int64_t w, int64_t kc, T* dst);

template <typename T>
struct Isa {
    Kernel<T> kernel;
    PackRows<T> pack_a_rows, pack_b_rows;  // W = MR and W = NR
};

template <typename T>
void kernel_generic(int64_t kc, const T* a, const T* b, T beta, T* c, int64_t ldc) {
    constexpr int64_t MR = Block<T>::MR, NR = Block<T>::NR;
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

#if defined(__x86_64__)
#define FASTCONV_AVX2 __attribute__((target("avx2,fma")))

struct Avx2Float {
    using T = float;
    using V = __m256;
    static constexpr int L = 8;
    FASTCONV_AVX2 static V zero() { return _mm256_setzero_ps(); }
    FASTCONV_AVX2 static V load(const T* p) { return _mm256_loadu_ps(p); }
    FASTCONV_AVX2 static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
    FASTCONV_AVX2 static V bcast(const T* p) { return _mm256_broadcast_ss(p); }
    FASTCONV_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    FASTCONV_AVX2 static void transpose(V r[8]) {
        V t[8], u[8];
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
            u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
            u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
            u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
            u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        for (int i = 0; i < 4; ++i) {
            r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
            r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
        }
    }
};

struct Avx2Double {
    using T = double;
    using V = __m256d;
    static constexpr int L = 4;
    FASTCONV_AVX2 static V zero() { return _mm256_setzero_pd(); }
    FASTCONV_AVX2 static V load(const T* p) { return _mm256_loadu_pd(p); }
    FASTCONV_AVX2 static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
    FASTCONV_AVX2 static V bcast(const T* p) { return _mm256_broadcast_sd(p); }
    FASTCONV_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
    FASTCONV_AVX2 static void transpose(V r[4]) {
        const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
        const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
        r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
        r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
        r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
        r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
    }
};

// MR rows x two vectors: 12 accumulators, 2 B vectors and 1 broadcast A value in 16 ymm.
template <typename S>
FASTCONV_AVX2 void kernel_avx2(int64_t kc, const typename S::T* a, const typename S::T* b,
                               typename S::T beta, typename S::T* c, int64_t ldc) {
    using T = typename S::T;
    using V = typename S::V;
    constexpr int MR = Block<T>::MR, L = S::L;
    static_assert(Block<T>::NR == 2 * L, "kernel covers two vectors per row");
    V c0[MR], c1[MR];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
        c0[i] = c1[i] = S::zero();
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 2 * L - 1), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k, a += MR, b += 2 * L) {
        const V b0 = S::load(b), b1 = S::load(b + L);
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
            const V ai = S::bcast(a + i);
            c0[i] = S::fma(ai, b0, c0[i]);
            c1[i] = S::fma(ai, b1, c1[i]);
        }
    }
    if (beta == T(0)) {
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
            S::store(c + i * ldc, c0[i]);
            S::store(c + i * ldc + L, c1[i]);
        }
    } else {
        const V vb = S::bcast(&beta);
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
            S::store(c + i * ldc, S::fma(vb, S::load(c + i * ldc), c0[i]));
            S::store(c + i * ldc + L, S::fma(vb, S::load(c + i * ldc + L), c1[i]));
        }
    }
}

// Transposes L x L tiles in registers; rows past w read as zero.
template <int64_t W, typename S>
FASTCONV_AVX2 void pack_rows_avx2(const typename S::T* src, int64_t sx, int64_t w, int64_t kc,
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

template <typename T, typename S>
Isa<T> pick_isa() {
    constexpr int64_t MR = Block<T>::MR, NR = Block<T>::NR;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return {kernel_avx2<S>, pack_rows_avx2<MR, S>, pack_rows_avx2<NR, S>};
    return {kernel_generic<T>, pack_rows_generic<MR, T>, pack_rows_generic<NR, T>};
}
Isa<float> pick_isa(float*) { return pick_isa<float, Avx2Float>(); }
Isa<double> pick_isa(double*) { return pick_isa<double, Avx2Double>(); }
#else
template <typename T>
Isa<T> pick_isa(T*) {
    constexpr int64_t MR = Block<T>::MR, NR = Block<T>::NR;
    return {kernel_generic<T>, pack_rows_generic<MR, T>, pack_rows_generic<NR, T>};
}
#endif

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

// Grow-only 64-byte aligned scratch, one per thread and element type.
template <typename T>
T* scratch(int which, int64_t elems) {
    struct Buf {
        void* p = nullptr;
        size_t bytes = 0;
        ~Buf() { std::free(p); }
    };
    thread_local Buf bufs[2];
    Buf& b = bufs[which];
    const size_t need = (size_t(elems) * sizeof(T) + 63) / 64 * 64;
    if (need > b.bytes) {
        std::free(b.p);
        b.p = std::aligned_alloc(64, need);
        b.bytes = b.p ? need : 0;
        if (!b.p) throw std::bad_alloc();
    }
    return static_cast<T*>(b.p);
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
};

// The blocked loops for rows [m0, m1) and columns [n0, n1) of C, on the calling thread.
template <typename T>
void gemm_rect(const Problem<T>& p, const Isa<T>& isa, int64_t m0, int64_t m1, int64_t n0,
               int64_t n1) {
    using Bk = Block<T>;
    constexpr int64_t MR = Bk::MR, NR = Bk::NR;
    const int64_t MC = even_block(m1 - m0, Bk::MC, MR);
    const int64_t NC = even_block(n1 - n0, Bk::NC, NR);
    const int64_t KC = even_block(p.K, Bk::KC, 1);
    T* pa = scratch<T>(0, MC * KC);
    T* pb = scratch<T>(1, KC * NC);
    // Element strides of op(A)[m][k] and op(B)[k][n].
    const int64_t am = p.trans_a ? 1 : p.lda, ak = p.trans_a ? p.lda : 1;
    const int64_t bn = p.trans_b ? p.ldb : 1, bk = p.trans_b ? 1 : p.ldb;
    alignas(64) T tile[MR * NR];

    for (int64_t jc = n0; jc < n1; jc += NC) {
        const int64_t nc = std::min(NC, n1 - jc);
        for (int64_t pc = 0; pc < p.K; pc += KC) {
            const int64_t kc = std::min(KC, p.K - pc);
            const T beta = pc == 0 ? p.beta : T(1);
            pack<NR>(p.B + jc * bn + pc * bk, bn, bk, nc, kc, isa.pack_b_rows, pb);
            for (int64_t ic = m0; ic < m1; ic += MC) {
                const int64_t mc = std::min(MC, m1 - ic);
                pack<MR>(p.A + ic * am + pc * ak, am, ak, mc, kc, isa.pack_a_rows, pa);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int64_t nr = std::min(NR, nc - jr);
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int64_t mr = std::min(MR, mc - ir);
                        const T* a = pa + ir * kc;
                        const T* b = pb + jr * kc;
                        T* c = p.C + (ic + ir) * p.ldc + jc + jr;
                        if (mr == MR && nr == NR) {
                            isa.kernel(kc, a, b, beta, c, p.ldc);
                            continue;
                        }
                        isa.kernel(kc, a, b, T(0), tile, NR);
                        for (int64_t i = 0; i < mr; ++i)
                            for (int64_t j = 0; j < nr; ++j) {
                                T& out = c[i * p.ldc + j];
                                out = beta == T(0) ? tile[i * NR + j]
                                                   : tile[i * NR + j] + beta * out;
                            }
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
template <typename T>
int64_t grid_rows(int64_t M, int64_t N, int64_t nt) {
    using Bk = Block<T>;
    constexpr int64_t kPackCost = 8;  // one packed element ~ this many FMAs
    int64_t best = 1, best_cost = 0;
    for (int64_t tm = 1; tm <= nt; ++tm) {
        if (nt % tm) continue;
        const int64_t m = round_up(ceil_div(M, tm), Bk::MR);
        const int64_t n = round_up(ceil_div(N, nt / tm), Bk::NR);
        const int64_t cost = m * n + kPackCost * (n + m * ceil_div(n, Bk::NC));
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
    static const Isa<T> isa = pick_isa(static_cast<T*>(nullptr));
    const Problem<T> p{trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc};

#ifdef _OPENMP
    const int64_t nt = threads_for(M, N, K);
    if (nt == 1) return gemm_rect(p, isa, 0, M, 0, N);
#pragma omp parallel num_threads(int(nt))
    {
        const int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
        const int64_t tm = grid_rows<T>(M, N, threads), tn = threads / tm;
        int64_t m0, m1, n0, n1;
        split(M, tm, t / tn, Block<T>::MR, m0, m1);
        split(N, tn, t % tn, Block<T>::NR, n0, n1);
        if (m0 < m1 && n0 < n1) gemm_rect(p, isa, m0, m1, n0, n1);
    }
#else
    gemm_rect(p, isa, 0, M, 0, N);
#endif
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

}}  // namespace fastconv::cpu

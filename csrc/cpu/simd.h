// simd.h: the vector types of the ISA paths (isa.h) behind one small interface, so that a
// kernel written once over S runs 8 or 16 floats wide: V (the vector), L (lanes), zero,
// load, store, bcast (one value to every lane), fma (a * b + c), add; the AVX2 types add an
// in-register L x L transpose (Avx512Float too), the AVX-512 ones masked loads and stores of
// the first n lanes.
// Each function carries its path's target attribute: call them only from code built for
// that path (a function with the same attribute, or one always_inline'd into such).
#pragma once
#include "isa.h"

#if FC_X86_ISA
#include <immintrin.h>

// A kernel template over S (default target) is always_inline'd into a function built for
// S's path, so no vector ever crosses a call between targets; GCC's note that one could
// (-Wpsabi, "AVX vector return without AVX enabled changes the ABI") does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastconv {
namespace cpu {

struct Avx2Float {
    using T = float;
    using V = __m256;
    static constexpr int L = 8;
    FC_TARGET_AVX2 static V zero() { return _mm256_setzero_ps(); }
    FC_TARGET_AVX2 static V load(const T* p) { return _mm256_loadu_ps(p); }
    FC_TARGET_AVX2 static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
    // Lanes [0, m) of v to p, 0 < m <= 8: at most three plain stores (vmaskmovps is slow
    // on AMD's cores).
    FC_TARGET_AVX2 static void store_first(T* p, V v, int m) {
        if (m == 8) return _mm256_storeu_ps(p, v);
        __m128 part = _mm256_castps256_ps128(v);
        if (m >= 4) {
            _mm_storeu_ps(p, part);
            part = _mm256_extractf128_ps(v, 1), p += 4, m -= 4;
        }
        if (m >= 2) {
            _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
            part = _mm_movehl_ps(part, part), p += 2, m -= 2;
        }
        if (m) _mm_store_ss(p, part);
    }
    FC_TARGET_AVX2 static V bcast(const T* p) { return _mm256_broadcast_ss(p); }
    FC_TARGET_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    FC_TARGET_AVX2 static V add(V a, V b) { return _mm256_add_ps(a, b); }
    FC_TARGET_AVX2 static void transpose(V r[8]) {
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
    FC_TARGET_AVX2 static V zero() { return _mm256_setzero_pd(); }
    FC_TARGET_AVX2 static V load(const T* p) { return _mm256_loadu_pd(p); }
    FC_TARGET_AVX2 static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
    FC_TARGET_AVX2 static V bcast(const T* p) { return _mm256_broadcast_sd(p); }
    FC_TARGET_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
    FC_TARGET_AVX2 static V add(V a, V b) { return _mm256_add_pd(a, b); }
    FC_TARGET_AVX2 static void transpose(V r[4]) {
        const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
        const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
        r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
        r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
        r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
        r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
    }
};

struct Avx512Float {
    using T = float;
    using V = __m512;
    using M = __mmask16;
    static constexpr int L = 16;
    FC_TARGET_AVX512 static V zero() { return _mm512_setzero_ps(); }
    FC_TARGET_AVX512 static V load(const T* p) { return _mm512_loadu_ps(p); }
    FC_TARGET_AVX512 static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
    FC_TARGET_AVX512 static V bcast(const T* p) { return _mm512_set1_ps(*p); }
    FC_TARGET_AVX512 static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    FC_TARGET_AVX512 static V add(V a, V b) { return _mm512_add_ps(a, b); }
    // The first n lanes, 1 <= n <= L. Masked loads and stores touch (and fault on) only those.
    FC_TARGET_AVX512 static M mask(int n) { return M((1u << n) - 1); }
    FC_TARGET_AVX512 static V load(M m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
    FC_TARGET_AVX512 static void store(T* p, M m, V v) { _mm512_mask_storeu_ps(p, m, v); }
    FC_TARGET_AVX512 static void store_first(T* p, V v, int m) { store(p, mask(m), v); }
    // r[i][j] <- r[j][i]: unpacks and in-lane shuffles transpose the 4 x 4 blocks, two
    // rounds of 128-bit block shuffles move the blocks.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 on the shuffles' own
#pragma GCC diagnostic ignored "-Wuninitialized"        // undefined source operand
    FC_TARGET_AVX512 static void transpose(V r[16]) {
        V t[16], u[16];
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 16; i += 4) {
            u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
            u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
            u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
            u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        for (int i = 0; i < 4; ++i) {
            t[i] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0x88);
            t[i + 4] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0xDD);
            t[i + 8] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0x88);
            t[i + 12] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0xDD);
        }
        for (int i = 0; i < 4; ++i) {
            r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
            r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
            r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
            r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
        }
    }
#pragma GCC diagnostic pop
};

struct Avx512Double {
    using T = double;
    using V = __m512d;
    using M = __mmask8;
    static constexpr int L = 8;
    FC_TARGET_AVX512 static V zero() { return _mm512_setzero_pd(); }
    FC_TARGET_AVX512 static V load(const T* p) { return _mm512_loadu_pd(p); }
    FC_TARGET_AVX512 static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
    FC_TARGET_AVX512 static V bcast(const T* p) { return _mm512_set1_pd(*p); }
    FC_TARGET_AVX512 static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
    FC_TARGET_AVX512 static V add(V a, V b) { return _mm512_add_pd(a, b); }
    FC_TARGET_AVX512 static M mask(int n) { return M((1u << n) - 1); }
    FC_TARGET_AVX512 static V load(M m, const T* p) { return _mm512_maskz_loadu_pd(m, p); }
    FC_TARGET_AVX512 static void store(T* p, M m, V v) { _mm512_mask_storeu_pd(p, m, v); }
};

}  // namespace cpu
}  // namespace fastconv
#endif  // FC_X86_ISA

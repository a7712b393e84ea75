// nvcuda::wmma for the emulated kernels (tools/cuda_emu): the fragment API of CUDA's
// <mma.h> for m16n16k8 TF32 and m16n16k16 half / bf16, all with float accumulators.
//
// Every fragment operation (load_matrix_sync, store_matrix_sync, fill_fragment,
// mma_sync) is a warp collective of all 32 lanes (emu.cpp): each must call it, with the
// same pointer, ldm, layout and fill value, or the run aborts. A fragment's elements are
// spread over the lanes in an order drawn per seed (EMU_SEED) and per fragment type: a
// kernel that touches x[i] assuming which matrix element it is (rather than applying
// the same operation to every element, or loading and storing whole fragments) fails.
// Pointers must be 32-byte aligned and ldm a multiple of 16 bytes, as on the GPU.
//
// Arithmetic: mma_sync multiplies the fragments' values exactly (TF32 inputs first
// truncated to 10 mantissa bits: the tensor cores ignore the low 13 bits of a float
// that was not passed through __float_to_tf32), sums each output's K products and its
// C element in double and rounds once to float. A GPU's accumulation order and
// rounding differ; integer-valued inputs whose sums are exact in float agree bit for
// bit. __float_to_tf32 rounds to nearest, ties away from zero, as cvt.rna.tf32.f32.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace emu {
// The element order of a fragment type: order[lane * per_lane + i] is the matrix
// element (row * cols + col) that lane holds in x[i]. Drawn once per seed and id.
const int* fragment_order(int id, int elements);
[[noreturn]] void wmma_fail(const char* what, const char* why, const void* pc);
}  // namespace emu

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

inline float __float_to_tf32(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7F800000) != 0x7F800000) x = (x + 0x1000) & ~0x1FFFu;  // ties away from zero
    std::memcpy(&f, &x, 4);
    return f;
}

namespace detail {
template <class T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };
template <class Use, int M, int N, int K> struct dims;
template <int M, int N, int K> struct dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K, use = 0; };
template <int M, int N, int K> struct dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N, use = 1; };
template <int M, int N, int K> struct dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N, use = 2; };
template <class L> struct layout_code { static constexpr int value = 0; };
template <> struct layout_code<row_major> { static constexpr int value = 1; };
template <> struct layout_code<col_major> { static constexpr int value = 2; };
template <class T> struct type_code;
template <> struct type_code<precision::tf32> { static constexpr int value = 1; };
template <> struct type_code<__half> { static constexpr int value = 2; };
template <> struct type_code<__nv_bfloat16> { static constexpr int value = 3; };
template <> struct type_code<float> { static constexpr int value = 4; };
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
    using D = detail::dims<Use, M, N, K>;
    static constexpr bool kAcc = D::use == 2;
    static_assert(M == 16 && N == 16 && (K == 8 || K == 16), "cuda_emu models m16n16k8 and m16n16k16");
    static_assert(kAcc ? std::is_same<T, float>::value
                       : (K == 8 ? std::is_same<T, precision::tf32>::value
                                 : (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value)),
                  "cuda_emu models tf32 (m16n16k8) and half / bf16 (m16n16k16) with float accumulators");
    static_assert(kAcc == std::is_same<Layout, void>::value,
                  "matrix_a and matrix_b fragments take row_major or col_major; accumulators no layout");

public:
    using element_type = typename detail::storage<T>::type;
    static constexpr int rows = D::rows, cols = D::cols, num_elements = rows * cols / 32;
    static constexpr int kind_id = D::use + 3 * detail::layout_code<Layout>::value +
                                   9 * detail::type_code<T>::value + 64 * K;
    using precision_type = T;
    element_type x[num_elements];
};

namespace detail {
template <class F> struct is_tf32 : std::false_type {};
template <class U, int M, int N, int K, class L>
struct is_tf32<fragment<U, M, N, K, precision::tf32, L>> : std::true_type {};

inline float tf32_truncate(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7F800000) != 0x7F800000) x &= ~0x1FFFu;
    std::memcpy(&f, &x, 4);
    return f;
}

// The collectives' bodies, run once for the warp by emu.cpp; not instrumented (each
// element's access is told to the race detector as its lane's).
template <class F, bool kStore>
__attribute__((no_sanitize("thread"), noinline)) void move_exec(emu::WarpOp** lanes) {
    using E = typename F::element_type;
    const emu::WarpOp* op0 = lanes[0];
    E* ptr = reinterpret_cast<E*>(op0->uniform[0]);
    const unsigned ldm = unsigned(op0->uniform[1]);
    const bool row = op0->uniform[2] == 0;
    const int* order = emu::fragment_order(F::kind_id, F::rows * F::cols);
    for (int l = 0; l < 32; ++l) {
        F& f = *static_cast<F*>(lanes[l]->self[0]);
        for (int i = 0; i < F::num_elements; ++i) {
            const int e = order[l * F::num_elements + i], r = e / F::cols, c = e % F::cols;
            E* at = ptr + (row ? size_t(r) * ldm + c : size_t(c) * ldm + r);
            emu::note_shared(at, sizeof(E), kStore, lanes[l]->thread);
            if (kStore) *at = f.x[i];
            else f.x[i] = *at;
        }
    }
}

template <class F>
__attribute__((no_sanitize("thread"), noinline)) void fill_exec(emu::WarpOp** lanes) {
    typename F::element_type v;
    std::memcpy(&v, &lanes[0]->uniform[0], sizeof v);
    for (int l = 0; l < 32; ++l) {
        F& f = *static_cast<F*>(lanes[l]->self[0]);
        for (int i = 0; i < F::num_elements; ++i) f.x[i] = v;
    }
}

template <class F>
void gather(emu::WarpOp** lanes, int slot, double* m) {
    const int* order = emu::fragment_order(F::kind_id, F::rows * F::cols);
    for (int l = 0; l < 32; ++l) {
        const F& f = *static_cast<const F*>(lanes[l]->self[slot]);
        for (int i = 0; i < F::num_elements; ++i) {
            const float v = float(f.x[i]);
            m[order[l * F::num_elements + i]] = is_tf32<F>::value ? tf32_truncate(v) : v;
        }
    }
}

template <class FD, class FA, class FB, class FC>
__attribute__((no_sanitize("thread"), noinline)) void mma_exec(emu::WarpOp** lanes) {
    constexpr int M = FA::rows, K = FA::cols, N = FB::cols;
    double a[M * K], b[K * N], c[M * N];
    gather<FA>(lanes, 1, a);
    gather<FB>(lanes, 2, b);
    gather<FC>(lanes, 3, c);  // before any write: d may be c
    const int* order = emu::fragment_order(FD::kind_id, M * N);
    for (int l = 0; l < 32; ++l) {
        FD& d = *static_cast<FD*>(lanes[l]->self[0]);
        for (int i = 0; i < FD::num_elements; ++i) {
            const int e = order[l * FD::num_elements + i], r = e / N, col = e % N;
            double s = c[e];
            for (int k = 0; k < K; ++k) s += a[r * K + k] * b[k * N + col];
            d.x[i] = float(s);
        }
    }
}

template <class F, class E>
inline void check_move(const char* what, const E* p, unsigned ldm) {
    if (reinterpret_cast<uintptr_t>(p) % 32)
        emu::wmma_fail(what, "the pointer is not 32-byte aligned", __builtin_return_address(0));
    if (ldm * sizeof(E) % 16)
        emu::wmma_fail(what, "ldm is not a multiple of 16 bytes", __builtin_return_address(0));
}

template <class F, bool kStore, class E>
inline void move(const char* what, F& f, const E* p, unsigned ldm, int layout) {
    check_move<F>(what, p, ldm);
    emu::WarpOp op{emu::WarpKind::Wmma, 0xFFFFFFFFu, what};
    op.uniform[0] = reinterpret_cast<uintptr_t>(p), op.uniform[1] = ldm, op.uniform[2] = unsigned(layout);
    op.uniform[3] = F::kind_id;
    op.exec = &move_exec<F, kStore>;
    op.self[0] = &f;
    emu::warp_collective(op);
}
}  // namespace detail

template <class U, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<U, M, N, K, T, L>& f, const typename fragment<U, M, N, K, T, L>::element_type* p,
                             unsigned ldm) {
    static_assert(!std::is_same<L, void>::value, "an accumulator's load names its layout_t");
    detail::move<fragment<U, M, N, K, T, L>, false>("wmma::load_matrix_sync", f, p, ldm,
                                                    std::is_same<L, row_major>::value ? 0 : 1);
}
template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
    detail::move<fragment<accumulator, M, N, K, float>, false>("wmma::load_matrix_sync", f, p, ldm,
                                                               layout == mem_row_major ? 0 : 1);
}
template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
    detail::move<fragment<accumulator, M, N, K, float>, true>(
        "wmma::store_matrix_sync", const_cast<fragment<accumulator, M, N, K, float>&>(f), p, ldm,
        layout == mem_row_major ? 0 : 1);
}
template <class U, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<U, M, N, K, T, L>& f, const V& v) {
    using F = fragment<U, M, N, K, T, L>;
    const typename F::element_type e = typename F::element_type(v);
    emu::WarpOp op{emu::WarpKind::Wmma, 0xFFFFFFFFu, "wmma::fill_fragment"};
    std::memcpy(&op.uniform[0], &e, sizeof e);
    op.uniform[3] = F::kind_id;
    op.exec = &detail::fill_exec<F>;
    op.self[0] = &f;
    emu::warp_collective(op);
}
template <int M, int N, int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
    using FD = fragment<accumulator, M, N, K, float>;
    emu::WarpOp op{emu::WarpKind::Wmma, 0xFFFFFFFFu, "wmma::mma_sync"};
    op.uniform[3] = FD::kind_id;
    op.exec = &detail::mma_exec<FD, fragment<matrix_a, M, N, K, T, LA>, fragment<matrix_b, M, N, K, T, LB>, FD>;
    op.self[0] = &d, op.self[1] = const_cast<void*>(static_cast<const void*>(&a));
    op.self[2] = const_cast<void*>(static_cast<const void*>(&b));
    op.self[3] = const_cast<void*>(static_cast<const void*>(&c));
    emu::warp_collective(op);
}

}  // namespace wmma
}  // namespace nvcuda

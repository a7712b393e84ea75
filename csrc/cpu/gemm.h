// Packed, register-blocked GEMM for the CPU backend (the engine behind im2col convolution).
// Implementation, blocking scheme and measured speed: gemm.cpp.
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastconv { namespace cpu {

// C = op(A) * op(B) + beta * C, all row-major.
// op(A) is M x K: A[m*lda + k] if !trans_a, else A[k*lda + m].
// op(B) is K x N: B[k*ldb + n] if !trans_b, else B[n*ldb + k].
// beta is 0 or 1 only (0: C is overwritten and never read, so it may hold NaN garbage; 1: accumulate).
// Threads: uses OpenMP across blocks when called outside any parallel region; runs on the
// calling thread alone when called inside one, active or not (parallel.h), so callers may
// parallelise over images themselves.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
          const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// A K x N matrix B packed once, the way gemm's blocked loops read it, for many GEMMs that
// share it (Winograd's transformed filters: winograd.cpp writes them in this layout, so no
// GEMM packs them again). Reduction blocks of KC rows (the last may be shorter), each cut
// into NR-wide slivers, k-major within a sliver; columns past N are padding (zero them).
struct PackedB {
    int64_t K, N, NR, KC;
    int64_t padded_n() const { return (N + NR - 1) / NR * NR; }
    int64_t size() const { return padded_n() * K; }  // elements
    // Where element (k, n) lives; n .. the end of its sliver follow it contiguously.
    int64_t offset(int64_t k, int64_t n) const {
        const int64_t pc = k / KC * KC, kc = K - pc < KC ? K - pc : KC;
        return pc * padded_n() + n / NR * NR * kc + (k - pc) * NR + n % NR;
    }
};

// The layout gemm_packed_b reads on this machine's path (isa.h) for a K x N matrix.
template <typename T>
PackedB packed_b_layout(int64_t K, int64_t N);

// C = op(A) * B + beta * C with B given packed (layout from packed_b_layout(K, N)); otherwise
// as gemm.
template <typename T>
void gemm_packed_b(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                   const T* packed_b, T beta, T* C, int64_t ldc);

// Columns [n0, n1) of gemm_packed_b's product, on the calling thread (n0 at the start of a
// sliver of the packed layout: a multiple of its NR); C points at column n0 of row 0 and holds
// n1 - n0 columns (ldc apart). What one thread of a product split by columns computes.
template <typename T>
void gemm_packed_b_columns(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                           const T* packed_b, int64_t n0, int64_t n1, T beta, T* C, int64_t ldc);

// Rows [0, w) of a row-major matrix (row j at src + j * sx), w <= W, as one W-wide sliver
// the way the GEMM packs its operands: dst[k * W + j] = src[j * sx + k] for k < kc, zero for
// rows j >= w. Through the path's in-register transposes (the blocked convolution's filter
// blocks: W one of 8, 12, 16, 24, 32, 48).
void pack_sliver(int W, const float* src, int64_t sx, int64_t w, int64_t kc, float* dst);

// Multiply-adds per unit of K that this machine's path spends on an M x N product, counting
// its micro-tiles whole (M rounded up to MR rows, N to NR columns): what an edge costs.
template <typename T>
int64_t gemm_tile_work(int64_t M, int64_t N);

// This machine's micro-tile: MR rows of C by NR columns (gemm_tile_work rounds to them).
struct MicroTile {
    int64_t MR, NR;
};
template <typename T>
MicroTile gemm_micro_tile();

// The calling thread's packing scratch (kept from call to call): freed, or its size in bytes.
size_t gemm_scratch_release();
size_t gemm_scratch_held();

}}  // namespace fastconv::cpu

// Packed, register-blocked GEMM for the CPU backend (the engine behind im2col convolution).
// Implementation, blocking scheme and measured speed: gemm.cpp.
#pragma once
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

}}  // namespace fastconv::cpu

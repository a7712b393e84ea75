// selftest_wmma.cu: a small GEMM through the WMMA API in each modelled precision (TF32
// m16n16k8, half and bf16 m16n16k16, float accumulators), translated and run like the
// kernels; test_device.cpp compares it with a float64 product on small integers (exact
// in every precision), and mutate.py plants bugs in copies of it.
#include <mma.h>

#include "cuda_common.cuh"

namespace fastconv {
namespace cuda {

// d = 2 (a b + c0) (TF32: inputs rounded by __float_to_tf32 when to_tf32): a is M x K (row-major, or column-major: a[k * M + m]), b is K x N
// (row-major, or column-major: b[n * K + k]), c0 and d M x N row-major (d column-major
// when col_out). One warp per 16 x 16 tile of d, grid-stride over the tiles.
template <class Prec, class T, int KS, class LA, class LB>
__global__ void wmma_gemm(const T* a, const T* b, const float* c0, float* d, int M, int N, int K,
                          bool col_out, bool to_tf32) {
    using namespace nvcuda;
    constexpr bool kRowA = std::is_same<LA, wmma::row_major>::value;
    constexpr bool kRowB = std::is_same<LB, wmma::row_major>::value;
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32, tiles_n = N / 16;
    for (int tile = blockIdx.x * warps + warp; tile < M / 16 * tiles_n; tile += gridDim.x * warps) {
        const int tm = tile / tiles_n * 16, tn = tile % tiles_n * 16;
        wmma::fragment<wmma::accumulator, 16, 16, KS, float> acc;
        wmma::load_matrix_sync(acc, c0 + tm * N + tn, N, wmma::mem_row_major);
        for (int k = 0; k < K; k += KS) {
            wmma::fragment<wmma::matrix_a, 16, 16, KS, Prec, LA> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, KS, Prec, LB> fb;
            wmma::load_matrix_sync(fa, kRowA ? a + tm * K + k : a + k * M + tm, kRowA ? K : M);
            wmma::load_matrix_sync(fb, kRowB ? b + k * N + tn : b + tn * K + k, kRowB ? N : K);
            if (std::is_same<Prec, wmma::precision::tf32>::value && to_tf32) {
                for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
                for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
            }
            wmma::mma_sync(acc, fa, fb, acc);
        }
        for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 2.f;
        if (col_out) wmma::store_matrix_sync(d + tn * M + tm, acc, M, wmma::mem_col_major);
        else wmma::store_matrix_sync(d + tm * N + tn, acc, N, wmma::mem_row_major);
    }
}

// A tile staged in shared memory by plain stores, then loaded as a fragment: a zero
// fragment (fill_fragment) times it, plus the staged tile as the accumulator.
__global__ void wmma_shared(const float* c0, float* d) {
    using namespace nvcuda;
    __shared__ __align__(32) float tile[16 * 16];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) tile[i] = c0[i];
    __syncthreads();
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
    wmma::load_matrix_sync(acc, tile, 16, wmma::mem_row_major);
    wmma::fill_fragment(fa, 0.f);
    wmma::load_matrix_sync(fb, tile, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_col_major);
}

void selftest_wmma_gemm(int precision, const void* a, const void* b, const float* c0, float* d, int M,
                        int N, int K, bool col_out, bool to_tf32) {
    using namespace nvcuda;
    const unsigned blocks = blocks_for(M / 16 * (N / 16), 2);
    if (precision == 0)
        wmma_gemm<wmma::precision::tf32, float, 8, wmma::row_major, wmma::col_major><<<blocks, 64, 0, nullptr>>>(
            static_cast<const float*>(a), static_cast<const float*>(b), c0, d, M, N, K, col_out, to_tf32);
    else if (precision == 1)
        wmma_gemm<__half, __half, 16, wmma::col_major, wmma::row_major><<<blocks, 64, 0, nullptr>>>(
            static_cast<const __half*>(a), static_cast<const __half*>(b), c0, d, M, N, K, col_out, to_tf32);
    else
        wmma_gemm<__nv_bfloat16, __nv_bfloat16, 16, wmma::row_major, wmma::row_major><<<blocks, 64, 0, nullptr>>>(
            static_cast<const __nv_bfloat16*>(a), static_cast<const __nv_bfloat16*>(b), c0, d, M, N, K, col_out, to_tf32);
}

void selftest_wmma_shared(const float* c0, float* d) { wmma_shared<<<1, 32, 0, nullptr>>>(c0, d); }

}  // namespace cuda
}  // namespace fastconv

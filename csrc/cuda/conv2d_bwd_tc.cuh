// conv2d_bwd_tc.cuh: the tensor-core grad input and grad weight (conv2d_bwd_tc.cu), called
// by conv2d_bwd.cu's dispatchers where p.precision is TF32 or TF32x3. Private to csrc/cuda/.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

#include "../common/params.h"

namespace fastconv {
namespace cuda {

// dx = the transposed convolution of dy with w, split by stride phase (implicit_gemm.cuh),
// any layout, stride, padding, dilation and group count; each dx element written once.
void implicit_gemm_tc_bwd_data(const Conv2dParams& p, const float* dy, const float* w, float* dx,
                               cudaStream_t stream);

// The grad weight's split-K GEMM: the pixels in `splits` chunks of split_pixels (a multiple
// of 32), chunk s's partial dW in ws[s] in (K, Cg*R*S) order where splits > 1 (the caller
// adds them in chunk order), dw itself (in the layout's weight order) where splits == 1.
void implicit_gemm_tc_bwd_filter(const Conv2dParams& p, int64_t split_pixels, int64_t splits,
                                 const float* dy, const float* x, float* ws, float* dw,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace fastconv

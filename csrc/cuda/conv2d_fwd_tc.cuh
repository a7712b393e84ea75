// conv2d_fwd_tc.cuh: the tensor-core implicit-GEMM forward's launchers
// (conv2d_fwd_tc.cu), called by conv2d_fwd.cu's dispatcher. Private to csrc/cuda/.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "../common/params.h"

namespace fastconv {
namespace cuda {

// y = act(conv2d(x, w) + b + residual) on tensor cores, any layout, stride, padding,
// dilation and group count. float: p.precision TF32 or TF32x3 (not Strict: the caller
// runs the SIMT kernel for that). b and residual may be null; the caller has checked
// that y is not empty.
void implicit_gemm_tc_fwd(const Conv2dParams& p, const float* x, const float* w, const float* b,
                          const float* residual, float* y, cudaStream_t stream);
void implicit_gemm_tc_fwd(const Conv2dParams& p, const __half* x, const __half* w, const __half* b,
                          const __half* residual, __half* y, cudaStream_t stream);
void implicit_gemm_tc_fwd(const Conv2dParams& p, const __nv_bfloat16* x, const __nv_bfloat16* w,
                          const __nv_bfloat16* b, const __nv_bfloat16* residual, __nv_bfloat16* y,
                          cudaStream_t stream);

}  // namespace cuda
}  // namespace fastconv

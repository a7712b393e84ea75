// winograd.cuh: the Winograd launchers (winograd.cu), called by conv2d_fwd.cu's and
// conv2d_bwd.cu's dispatchers. Private to csrc/cuda/.
#pragma once
#include <cuda_runtime_api.h>

#include "../common/params.h"

namespace fastconv {
namespace cuda {

// F(m x m, 3 x 3), m = 2 or 4, for a 3x3, stride-1, undilated p (checked: std::invalid_argument
// otherwise). y = act(x (*) w + b + residual); b and residual may be null.
void winograd_conv2d_fwd(const Conv2dParams& p, int m, const float* x, const float* w,
                         const float* b, const float* residual, float* y, cudaStream_t stream);
// p's grad input dx from dy, through the same kernels (winograd.h, bwd_data_as_forward).
void winograd_conv2d_bwd_data(const Conv2dParams& p, int m, const float* dy, const float* w,
                              float* dx, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastconv

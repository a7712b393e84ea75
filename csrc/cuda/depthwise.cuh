// depthwise.cuh: the depthwise conv2d launcher (depthwise.cu), called by
// conv2d_fwd.cu's dispatcher. Private to csrc/cuda/.
#pragma once
#include <cuda_runtime_api.h>

#include "../common/params.h"

namespace fastconv {
namespace cuda {

// conv2d forward for groups == C (one input channel per group, K / C filters each).
// The caller has checked p.groups == p.C. b may be null when !p.has_bias; residual (y's
// shape) may be null.
void depthwise_conv2d_fwd(const Conv2dParams& p, const float* x, const float* w, const float* b,
                          const float* residual, float* y, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastconv

// cuda_ops.h: the entry points of the CUDA backend, one group per kernel file, the
// twins of csrc/cpu/cpu_ops.h. float32, and float16 / bfloat16 where an overload says so.
// Every launcher runs on the stream it is
// given (the caller's: CuPy's current stream or torch.cuda.current_stream()), on the
// current device (the binding sets it from the arrays), checks every launch, and
// throws std::runtime_error carrying the CUDA error string on failure. Pointers are
// device pointers to dense arrays of the shapes the params describe. Outputs are the
// caller's; the two launchers that need scratch (max_pool_bad_indices' counter, the
// split-K grad weight's partial sums) take it stream-ordered (cudaMallocAsync on the
// same stream) and free it the same way on every path.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "../common/params.h"

namespace fastconv {
namespace cuda {

// Fused: conv2d_avgpool's one-kernel block only. Winograd2 / Winograd4: F(2x2, 3x3) and
// F(4x4, 3x3), float32 3x3 stride-1 undilated layers only (csrc/common/winograd.h).
// ImplicitGemm runs on tensor cores where p.precision is not Strict or the type is
// float16 / bfloat16, on the SIMT FMA kernel otherwise.
enum class ConvVariant : int {
    Auto = 0, Direct = 1, ImplicitGemm = 2, Depthwise = 3, Fused = 4, Winograd2 = 5, Winograd4 = 6
};

// conv2d_fwd.cu (direct, implicit_gemm) and depthwise.cu. b and residual may be null;
// residual, of y's shape and layout, is added before the activation:
//   y = act(conv2d(x, w) + b + residual)   (a ResNet block's last convolution and its add).
void conv2d_fwd(const Conv2dParams& p, ConvVariant v, const float* x, const float* w,
                const float* b, float* y, cudaStream_t stream, const float* residual = nullptr);
// float16 / bfloat16: the tensor-core implicit GEMM (v Auto or ImplicitGemm), float32
// accumulation, bias and residual added in float32, y rounded once to the type.
void conv2d_fwd(const Conv2dParams& p, ConvVariant v, const __half* x, const __half* w,
                const __half* b, __half* y, cudaStream_t stream, const __half* residual = nullptr);
void conv2d_fwd(const Conv2dParams& p, ConvVariant v, const __nv_bfloat16* x,
                const __nv_bfloat16* w, const __nv_bfloat16* b, __nv_bfloat16* y,
                cudaStream_t stream, const __nv_bfloat16* residual = nullptr);
// The variant Auto runs for these params.
ConvVariant conv2d_auto_variant(const Conv2dParams& p);
// The LeNet-5 block: y = avg_pool(a), a = act(conv2d(x)) (N, K, P, Q), written by every
// variant but Fused, and by Fused when p.save_activation.
void conv2d_avgpool_fwd(const Conv2dPoolParams& p, ConvVariant v, const float* x,
                        const float* w, const float* b, float* y, float* a,
                        cudaStream_t stream);

// conv2d_bwd.cu: deterministic (no atomics; a fixed summation order per element).
void activation_bwd(Activation act, int64_t count, const float* y, const float* dy, float* dz,
                    cudaStream_t stream);
// The block's backward, first step: dz from the pooled gradient dy and a (null when
// the activation is None), as csrc/cpu's avgpool_act_bwd.
void avgpool_act_bwd(const Conv2dPoolParams& p, const float* dy, const float* a, float* dz,
                     cudaStream_t stream);
// v: ImplicitGemm the phase-split GEMM (the transposed convolution; on tensor cores where
// p.precision is TF32 or TF32x3), Direct (or Depthwise) the per-pixel gather, Auto as
// conv2d_bwd_data_auto_variant says.
void conv2d_bwd_data(const Conv2dParams& p, ConvVariant v, const float* dy, const float* w,
                     float* dx, cudaStream_t stream);
ConvVariant conv2d_bwd_data_auto_variant(const Conv2dParams& p);
// v: ImplicitGemm the split-K GEMM (on tensor cores where p.precision is TF32 or TF32x3,
// with the same chunks and workspace), Direct (or Depthwise) the per-element reduction,
// Auto the GEMM once a group's weight has 4096 elements. workspace: at least
// conv2d_bwd_filter_workspace(p, v) bytes of device memory for the GEMM's split
// partials (where that is 0, or workspace is null, none is needed or one is taken from
// the stream-ordered pool for the call).
int64_t conv2d_bwd_filter_workspace(const Conv2dParams& p, ConvVariant v);
void conv2d_bwd_filter(const Conv2dParams& p, ConvVariant v, const float* dy, const float* x,
                       float* dw, cudaStream_t stream, float* workspace = nullptr);
void conv2d_bwd_bias(const Conv2dParams& p, const float* dy, float* db, cudaStream_t stream);

// pool.cu. Indices are flat h * W + w positions in each input plane (PyTorch's);
// max_pool_bwd gathers (no atomics).
void max_pool_fwd(const Pool2dParams& p, const float* x, float* y, int64_t* idx,
                  cudaStream_t stream);
// How many of a caller's indices name no pixel of their output's window (synchronises
// the stream: called only for indices that did not come from max_pool_fwd).
int64_t max_pool_bad_indices(const Pool2dParams& p, const int64_t* idx, cudaStream_t stream);
void max_pool_bwd(const Pool2dParams& p, const float* dy, const int64_t* idx, float* dx,
                  cudaStream_t stream);
void avg_pool_fwd(const Pool2dParams& p, const float* x, float* y, cudaStream_t stream);
void avg_pool_bwd(const Pool2dParams& p, const float* dy, float* dx, cudaStream_t stream);
void global_avg_pool_fwd(const GlobalPoolParams& p, const float* x, float* y,
                         cudaStream_t stream);
void global_avg_pool_bwd(const GlobalPoolParams& p, const float* dy, float* dx,
                         cudaStream_t stream);

// sobel.cu
// x float32, or uint8 (8-bit images) filtered in float32.
void sobel(const Filter2dParams& p, const float* x, float* y, cudaStream_t stream);
void sobel(const Filter2dParams& p, const uint8_t* x, float* y, cudaStream_t stream);
void filter2d(const Filter2dParams& p, const uint8_t* x, const float* k, float* y,
              cudaStream_t stream);
void filter2d(const Filter2dParams& p, const float* x, const float* k, float* y,
              cudaStream_t stream);

// conv1d.cu
void conv1d(const Conv1dParams& p, const float* x, const float* w, float* y,
            cudaStream_t stream);

}  // namespace cuda
}  // namespace fastconv

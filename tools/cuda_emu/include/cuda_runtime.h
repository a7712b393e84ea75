// The CUDA runtime surface the fastconv kernels use, emulated on the host (tools/cuda_emu).
#pragma once
#include <math.h>
#include <cstdint>
#include <functional>
typedef struct CUstream_st* cudaStream_t;
typedef int cudaError_t;
enum { cudaSuccess = 0 };
inline cudaError_t cudaGetLastError() { return 0; }
inline const char* cudaGetErrorString(cudaError_t) { return "emu"; }
struct dim3 { unsigned x = 1, y = 1, z = 1; };
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
void __syncthreads();
void emu_launch(unsigned grid, unsigned block, std::function<void()> body);
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __shared__ static

// The CUDA runtime surface the fastconv kernels use, emulated on the host (tools/cuda_emu).
#pragma once
#include "cuda_runtime.h"

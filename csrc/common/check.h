// check.h: turning failures into C++ exceptions that pybind11 raises in Python.
// std::invalid_argument becomes ValueError, std::runtime_error RuntimeError. Never
// exit() or abort() inside the extension.
#pragma once
#include <stdexcept>
#include <string>

#define FC_STR2(x) #x
#define FC_STR(x) FC_STR2(x)

// A broken internal promise (the Python layer validates user input first).
#define FC_CHECK(cond, msg)                                                        \
    do {                                                                           \
        if (!(cond))                                                               \
            throw std::invalid_argument(std::string("fastconv: ") + (msg) +        \
                                        " (" __FILE__ ":" FC_STR(__LINE__) ")");   \
    } while (0)

#if defined(__CUDACC__) || defined(FASTCONV_CUDA_RUNTIME)
#include <cuda_runtime_api.h>

// Every CUDA runtime call goes through this: the CUDA error string, file and line
// reach Python as a RuntimeError.
#define FC_CUDA_CHECK(call)                                                        \
    do {                                                                           \
        cudaError_t fc_err_ = (call);                                              \
        if (fc_err_ != cudaSuccess)                                                \
            throw std::runtime_error(std::string("CUDA error: ") +                 \
                                     cudaGetErrorString(fc_err_) + " in " #call    \
                                     " (" __FILE__ ":" FC_STR(__LINE__) ")");      \
    } while (0)

// After every <<<...>>> launch.
#define FC_CUDA_CHECK_LAUNCH() FC_CUDA_CHECK(cudaGetLastError())
#endif

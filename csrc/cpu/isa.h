// isa.h: the CPU backend's one run-time dispatch point for the instruction set.
//
// Three paths, best first:
//   avx512    AVX-512 F + BW + VL + DQ (with AVX2 + FMA): 512-bit GEMM micro-kernel, 16-wide
//             blocked convolution, 512-bit epilogue and pooling loops.
//   avx2      AVX2 + FMA: the 256-bit kernels.
//   portable  whatever the compiler makes of plain C++ for the build's baseline (SSE2 on
//             x86-64); the only path of a non-x86 build.
// The CPU's features are read once (__builtin_cpu_supports, which also checks that the OS
// saves the ymm / zmm state) and the best path it supports is taken, unless the
// environment variable FASTCONV_CPU_ISA=avx512|avx2|portable asks for a lower one ("auto" or
// empty: the best). Asking for a path this CPU lacks, or for an unknown name, is an error,
// not a fallback: a test or a measurement that forced a path must never run another one
// unknowingly. The error is raised when fastconv._cpu loads (bind_cpu.cpp calls isa()
// first), so `import fastconv._cpu` fails with the message; nothing re-reads the variable
// later (tests that force a path run in a child process, tests/test_isa.py).
//
// Every kernel that has ISA-specific code asks isa() (a function-local static: one load
// and a well-predicted branch after the first call) and nothing else: gemm.cpp,
// conv2d_common.h (blocked variant), pool.cpp, activation_cpu.cpp.
#pragma once
#include <string>
#include <vector>

namespace fastconv {
namespace cpu {

enum class Isa { Portable = 0, Avx2 = 1, Avx512 = 2 };

// The path in use. Throws std::invalid_argument on a bad FASTCONV_CPU_ISA (first call only
// could throw; bind_cpu.cpp makes that call at load).
Isa isa();

// The paths this CPU supports, best first; "portable" always.
std::vector<Isa> supported_isas();

const char* isa_name(Isa);

}  // namespace cpu
}  // namespace fastconv

// Function attributes for each path's code. The AVX-512 attribute names AVX2 and FMA too,
// so AVX2 helpers inline into AVX-512 functions. Outside GCC / clang on x86-64 the ISA
// paths are not compiled at all (FC_X86_ISA 0) and isa() says portable.
#if defined(__x86_64__) && defined(__GNUC__)
#define FC_X86_ISA 1
#define FC_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FC_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define FC_X86_ISA 0
#define FC_TARGET_AVX2
#define FC_TARGET_AVX512
#endif

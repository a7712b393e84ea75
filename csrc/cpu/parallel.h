// parallel.h: how the CPU kernels use threads, in one place.
//
// fastconv runs inside other people's processes, usually beside PyTorch, whose wheel ships
// the libgomp that our DT_NEEDED libgomp.so.1 binds to: one OpenMP runtime, one pool of
// worker threads per calling thread, shared by both libraries. The rule that keeps us a good
// neighbour: every parallel region we open is a top-level one, so it runs on that pool's
// threads, the same ones PyTorch's regions use.
//
// Why (measured 2026-11-30, 2-core AMD EPYC, AVX-512, torch 2.14.1, 1x1 conv 2x64x56x56
// -> 256): the GEMM path used to open `#pragma omp parallel if (few tasks)` around a GEMM
// that opened its own region. An `if (false)` region is inactive but still a level, so
// libgomp served the GEMM's region as a nested team, with new threads created and joined
// on every call (strace: 2 clone3 per conv). Alone that cost little (0.92 ms a call); right
// after a PyTorch op, whose pool worker keeps spinning for libgomp's 300000-spin wait, the
// new thread made three runnable threads on two cores and every barrier waited out the
// spin: 6-7 ms a call, alternating with torch.nn.functional.conv2d.
//
// Same owner every call: work is shared out statically (thread t takes the t-th contiguous
// part, the same part in every call and every op), never dynamically. Why (measured
// 2026-11-30, the 2-vCPU Zen 5 VM): the host places the two vCPUs sometimes on cores that
// share an L3 (a cache line's round trip between them 75-140 ns) and sometimes on cores
// that do not (370-390 ns), and moves them while a process runs. LeNet C1 (256 images,
// schedule(dynamic)) took 0.63 ms in the near placement and 1.40 ms in the far one, slower
// than one thread (1.25): which thread wrote an image's 18 KB output changed from call to
// call, so half the output lines came from the other L3, dirty. schedule(static): 0.65 ms
// in both. This was the "slow mode" of benchmarks/NOTES.md. core_round_trip_ns() measures
// the placement; fastconv bench records it with every run.
// The same holds within a call: where threads could share a scratch (a padded image, an
// im2col matrix, a chunk's transformed tiles) each thread writes what it reads itself
// (conv2d_fwd.cpp: blocked_vk, gemm_by_filters; winograd.cpp: tiles_by_filters), and
// consecutive passes over one array split it the same way (conv2d_bwd.cpp: avgpool_act_bwd,
// conv2d_bwd_bias by images).
#pragma once
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastconv {
namespace cpu {

inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// True inside any parallel region, active or not: a GEMM called there runs on the calling
// thread, never as a nested team.
inline bool in_region() {
#ifdef _OPENMP
    return omp_get_level() > 0;
#else
    return true;
#endif
}

// Runs body(t, scratch) for t in [0, tasks). With at least two tasks per thread the tasks
// are shared out (statically: see "Same owner" above) and each thread makes its own
// scratch = make_scratch(), so
// the GEMMs inside run on one thread each; otherwise the tasks run in turn on the calling
// thread with one scratch and no region open, so a GEMM inside opens the top-level region
// and uses every thread.
template <typename MakeScratch, typename Body>
void for_each_task(int64_t tasks, MakeScratch make_scratch, Body body) {
    if (tasks >= 2 * int64_t(max_threads())) {
#pragma omp parallel
        {
            auto scratch = make_scratch();
#pragma omp for schedule(static)
            for (int64_t t = 0; t < tasks; ++t) body(t, scratch);
        }
    } else {
        auto scratch = make_scratch();
        for (int64_t t = 0; t < tasks; ++t) body(t, scratch);
    }
}

// The round trip of one cache line between threads 0 and 1 of a two-thread team, in
// nanoseconds (the median of `rounds` trips timed in batches); 0 with fewer than two threads.
double core_round_trip_ns(int rounds = 20000);

}  // namespace cpu
}  // namespace fastconv

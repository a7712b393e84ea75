// parallel.cpp: the placement probe of parallel.h.
#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

namespace fastconv {
namespace cpu {

double core_round_trip_ns(int rounds) {
#ifdef _OPENMP
    if (omp_get_max_threads() < 2 || in_region() || rounds < 1) return 0.0;
    constexpr int kBatch = 100;  // trips per timed batch
    const int batches = std::max(1, rounds / kBatch);
    struct alignas(64) Line { std::atomic<int> v{0}; };  // a line of its own
    Line line;
    std::vector<double> ns(batches);
#pragma omp parallel num_threads(2)
    {
        const int t = omp_get_thread_num();
        if (omp_get_num_threads() == 2) {
#pragma omp barrier
            for (int b = 0; b < batches; ++b) {
                const auto t0 = std::chrono::steady_clock::now();
                for (int i = 0; i < kBatch; ++i) {
                    const int serve = 2 * (b * kBatch + i);  // thread 0 serves, thread 1 returns
                    if (t == 0) {
                        line.v.store(serve + 1, std::memory_order_release);
                        while (line.v.load(std::memory_order_acquire) != serve + 2) {}
                    } else {
                        while (line.v.load(std::memory_order_acquire) != serve + 1) {}
                        line.v.store(serve + 2, std::memory_order_release);
                    }
                }
                if (t == 0)
                    ns[b] = std::chrono::duration<double, std::nano>(
                                std::chrono::steady_clock::now() - t0).count() / kBatch;
            }
        }
    }
    if (ns.empty() || ns[0] == 0.0) return 0.0;
    std::nth_element(ns.begin(), ns.begin() + batches / 2, ns.end());
    return ns[batches / 2];
#else
    (void)rounds;
    return 0.0;
#endif
}

}  // namespace cpu
}  // namespace fastconv

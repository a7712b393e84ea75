// output_cache.h: memory for the arrays the CPU backend returns to NumPy callers, kept after
// the caller drops them, for the next call's output of about the same size.
//
// Why: a fresh output of a few MB is fresh pages, a fault and a zero-fill every 4 KiB, and
// whether glibc hands out fresh pages depends on what the process freed before (it trims
// its heap and unmaps large blocks on free; PyTorch's ops free MBs each call). Measured
// (2026-11-30, Zen 5, 2 threads, ResNet-50's conv1 at batch 1, a 3.2 MB output): 0.62 ms
// and 30 faults a call alone, 1.59 ms and 909 faults a call when each call alternates with
// a PyTorch convolution; with the output (and the blocked kernel's padded image) kept,
// 0.66 ms and 0 faults alternating. benchmarks/NOTES.md, "Fresh pages".
//
// Policy: a block is taken for a request of `bytes` when it is at least that and at most a
// quarter larger; requests under kMinBytes are not kept (glibc serves those from its heap
// without faults). Returned blocks are kept up to `limit` bytes in all, oldest freed first
// (FASTCONV_CPU_CACHE_MIB; default a sixteenth of the machine's or the container's memory,
// 256 MiB to 4 GiB; 0 keeps none). Thread-safe.
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastconv {
namespace cpu {

constexpr size_t kMinCachedBytes = size_t(64) << 10;

// A 64-byte aligned block of at least `bytes` (its size in *size): a kept one or a new one.
void* output_take(size_t bytes, size_t* size);
// The block back: kept (evicting the oldest kept blocks beyond the limit) or freed.
void output_give(void* block, size_t size);

struct OutputCacheStats {
    size_t held_bytes, held_blocks, limit_bytes;
    uint64_t hits, misses;
};
OutputCacheStats output_cache_stats();
// Frees every kept block; returns the bytes freed.
size_t output_cache_release();
void output_cache_set_limit(size_t bytes);

}  // namespace cpu
}  // namespace fastconv

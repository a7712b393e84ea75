// workspace.h: scratch memory the CPU kernels keep from call to call, per thread and slot.
//
// Why: fresh memory of a few MB is fresh pages, a fault and a zero-fill every 4 KiB, at
// every call, and how often glibc hands out fresh pages depends on what the process freed
// before (it trims and re-maps its heap after large frees; PyTorch's ops free tens of MB).
// Measured (2026-11-30, Zen 5, 2 threads): the Winograd grad weight of ResNet-50's 56x56
// layer read 11-14 ms or 27 ms by the heap's history, the same kernel; with its scratch
// kept, 10.4 ms in any order. benchmarks/NOTES.md, "Winograd v2".
//
// A slot is grow-only and freed when its thread ends or by workspace_release
// (fastconv.empty_cache); the contents are undefined (never zeroed) and belong to whoever
// asked last on that thread, so what one call holds at once on one thread must use
// distinct slots. Held at most: the largest request each thread made per slot, float and
// double alike (ResNet-50 at batch 32: ~57 MB on the calling thread, for the 512-channel
// layer's Winograd filters and one chunk's V and M, a few MB on the others).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastconv {
namespace cpu {

// (gemm.cpp keeps its packing buffers in a scratch of its own, as before this header: moved
// here, ResNet-50's batch-1 GEMM layers ran in their slower of two modes in 8 of 8 processes
// against about half, unexplained; benchmarks/NOTES.md.)
enum class Slot {
    Filters,   // winograd.cpp: transformed filters U, or grad weight's dU
    TilesIn,   // winograd.cpp: a chunk's transformed inputs V
    TilesOut,  // winograd.cpp: a chunk's products M, or grad weight's transformed dy
    Bands,     // winograd.cpp: one run of tiles' input or output band (each_run)
    Columns,   // conv2d_fwd.cpp / conv2d_bwd.cpp: an im2col matrix
    Rows,      // conv2d_fwd.cpp / conv2d_bwd.cpp: a GEMM's output (or dy) rows beside Columns;
               //   the blocked grad weight's transposed dy
    Padded,    // conv2d_fwd.cpp / conv2d_bwd.cpp: the blocked kernels' zero-padded image
    Packed,    // conv2d_fwd.cpp: the blocked kernels' filters in blocks of KV (blocked_vk)
    Count
};

// Memory for scratch and outputs, in whole pages. Blocks of 4 MiB and more are 2 MiB
// aligned and advised as transparent huge pages, as NumPy does for its arrays: where the
// kernel's THP mode is "madvise" (the default on many distributions), a 537 MB pooling
// grad input otherwise faults in 131072 pages, 0.13 s, against 768. Smaller ones are page
// aligned and padded to whole pages, so no two threads' scratch shares a page. (Page
// alignment was first credited with curing a "slow mode" of LeNet C1 on the avx2 path,
// 0.63 or 1.39 ms by process; that was the host moving the two vCPUs between cores with
// and without a shared L3, cured by static work sharing: parallel.h, "Same owner".)
// Free with std::free.
inline void* alloc_block(size_t bytes) {
    constexpr size_t kHuge = size_t(2) << 20;
    void* p = nullptr;
    if (bytes >= 2 * kHuge) {
        bytes = (bytes + kHuge - 1) / kHuge * kHuge;
        p = std::aligned_alloc(kHuge, bytes);
#ifdef MADV_HUGEPAGE
        if (p) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
    } else {
        p = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    }
    if (!p) throw std::bad_alloc();
    return p;
}

struct HeldBlock {
    void* p = nullptr;
    size_t bytes = 0;
    ~HeldBlock() { std::free(p); }
    // At least `need` bytes (a multiple of 64), 64-byte aligned; the old block freed first.
    void* grow(size_t need) {
        if (need > bytes) {
            std::free(p);  // the old block first: never both at once
            p = nullptr, bytes = 0;
            p = alloc_block(need);
            bytes = need;
        }
        return p;
    }
    size_t release() {
        const size_t freed = bytes;
        std::free(p);
        p = nullptr, bytes = 0;
        return freed;
    }
};

// The calling thread's slots (float and double share them: one call holds one type).
inline HeldBlock* workspace_slots() {
    thread_local HeldBlock held[static_cast<int>(Slot::Count)];
    return held;
}

// At least `elems` elements of T, 64-byte aligned.
template <typename T>
T* workspace(Slot slot, int64_t elems) {
    const size_t need = (size_t(elems > 0 ? elems : 1) * sizeof(T) + 63) / 64 * 64;
    return static_cast<T*>(workspace_slots()[static_cast<int>(slot)].grow(need));
}

// Frees the calling thread's slots (fastconv.empty_cache runs it on every thread of the
// pool); returns the bytes freed. No kernel may be running on this thread.
inline size_t workspace_release() {
    size_t freed = 0;
    for (int i = 0; i < static_cast<int>(Slot::Count); ++i) freed += workspace_slots()[i].release();
    return freed;
}

inline size_t workspace_held() {
    size_t held = 0;
    for (int i = 0; i < static_cast<int>(Slot::Count); ++i) held += workspace_slots()[i].bytes;
    return held;
}

}  // namespace cpu
}  // namespace fastconv

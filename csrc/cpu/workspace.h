// workspace.h: scratch memory the CPU kernels keep from call to call, per thread and slot.
//
// Why: fresh memory of a few MB is fresh pages, a fault and a zero-fill every 4 KiB, at
// every call, and how often glibc hands out fresh pages depends on what the process freed
// before (it trims and re-maps its heap after large frees; PyTorch's ops free tens of MB).
// Measured (2026-11-30, Zen 5, 2 threads): the Winograd grad weight of ResNet-50's 56x56
// layer read 11-14 ms or 27 ms by the heap's history, the same kernel; with its scratch
// kept, 10.4 ms in any order. benchmarks/NOTES.md, "Winograd v2".
//
// A slot is grow-only and freed when its thread ends; the contents are undefined (never
// zeroed) and belong to whoever asked last on that thread, so what one call holds at once
// on one thread must use distinct slots. Held at most: the largest request each thread made
// per slot and element type (ResNet-50 at batch 32: ~57 MB on the calling thread, for the
// 512-channel layer's Winograd filters and one chunk's V and M, a few MB on the others).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

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
    Rows,      // conv2d_fwd.cpp / conv2d_bwd.cpp: a GEMM's output (or dy) rows beside Columns
    Count
};

// At least `elems` elements of T, 64-byte aligned.
template <typename T>
T* workspace(Slot slot, int64_t elems) {
    struct Held {
        void* p = nullptr;
        size_t bytes = 0;
        ~Held() { std::free(p); }
    };
    thread_local Held held[static_cast<int>(Slot::Count)];
    Held& h = held[static_cast<int>(slot)];
    const size_t need = (size_t(elems > 0 ? elems : 1) * sizeof(T) + 63) / 64 * 64;
    if (need > h.bytes) {
        std::free(h.p);  // the old block first: never both at once
        h.bytes = 0;
        h.p = std::aligned_alloc(64, need);
        if (!h.p) throw std::bad_alloc();
        h.bytes = need;
    }
    return static_cast<T*>(h.p);
}

}  // namespace cpu
}  // namespace fastconv

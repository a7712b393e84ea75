// emu.cpp: runs a translated <<<grid, block>>> launch on the CPU. Blocks run one after
// another; a block's threads are ucontext coroutines scheduled round-robin, and
// __syncthreads() yields to the scheduler, so every thread reaches the barrier before any
// passes it. A thread that returns while others wait at a barrier aborts the run.
#include <functional>
#include <ucontext.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "include/cuda_runtime.h"
dim3 threadIdx, blockIdx, blockDim, gridDim;
static std::vector<ucontext_t> ctx;
static ucontext_t sched;
static std::vector<char> done;
static std::vector<std::vector<char>> stacks;
static int cur;
static std::function<void()>* body_ptr;
long emu_syncs = 0;
static void trampoline() { (*body_ptr)(); done[cur] = 1; swapcontext(&ctx[cur], &sched); }
void __syncthreads() { ++emu_syncs; swapcontext(&ctx[cur], &sched); }
void emu_launch(unsigned grid, unsigned block, std::function<void()> body) {
    if (grid == 0 || block == 0 || block > 1024) { fprintf(stderr, "bad launch %u %u\n", grid, block); abort(); }
    body_ptr = &body;
    gridDim.x = grid; blockDim.x = block;
    ctx.resize(block); done.assign(block, 0); stacks.resize(block);
    for (auto& s : stacks) s.resize(1 << 16);
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx.x = b;
        for (unsigned t = 0; t < block; ++t) {
            done[t] = 0;
            getcontext(&ctx[t]);
            ctx[t].uc_stack.ss_sp = stacks[t].data();
            ctx[t].uc_stack.ss_size = stacks[t].size();
            ctx[t].uc_link = nullptr;
            makecontext(&ctx[t], trampoline, 0);
        }
        for (;;) {
            int ndone = 0;
            for (unsigned t = 0; t < block; ++t) {
                if (done[t]) { ++ndone; continue; }
                cur = t; threadIdx.x = t;
                swapcontext(&sched, &ctx[t]);
            }
            int now = 0;
            for (unsigned t = 0; t < block; ++t) now += done[t];
            if (now == (int)block) break;
            if (now != 0) { fprintf(stderr, "barrier divergence: %d of %u threads exited while others wait (block %u)\n", now, block, b); abort(); }
        }
    }
}

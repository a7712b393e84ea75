// emu.cpp: runs a translated <<<grid, block>>> launch on the CPU (see README.md).
//
// Blocks run one after another; a block's threads are coroutines on one OS thread,
// scheduled round-robin, and __syncthreads() yields to the scheduler, so every thread
// reaches the barrier before any passes it. A thread that returns while others wait at a
// barrier aborts the run.
//
// Context switch: on x86-64 a hand-written switch that saves the callee-saved registers
// and the stack pointer (glibc's swapcontext also saves and restores the signal mask, a
// system call per switch: half the run time). Elsewhere, or with -DEMU_UCONTEXT (the
// ASan build, whose runtime knows swapcontext), ucontext. Stacks come from mmap with a
// PROT_NONE guard page below each; a thread that overflows its stack is reported.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

#include "include/cuda_runtime.h"

#if !defined(__x86_64__) || defined(EMU_UCONTEXT)
#define EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

dim3 threadIdx, blockIdx, blockDim, gridDim;
long emu_syncs = 0;

namespace emu {

// ------------------------------------------------------------------ stacks

#ifndef EMU_STACK_KIB
#define EMU_STACK_KIB 64
#endif
static const size_t kStack = size_t(EMU_STACK_KIB) << 10;
static size_t page_size() { return size_t(sysconf(_SC_PAGESIZE)); }

struct Stack {
    char* guard = nullptr;  // PROT_NONE page(s), just below lo
    char* lo = nullptr;     // the usable stack [lo, lo + kStack)
};
static std::vector<Stack> stacks;

static Stack make_stack() {
    const size_t g = page_size();
    void* m = mmap(nullptr, kStack + g, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("cuda_emu: mmap"); abort(); }
    if (mprotect(m, g, PROT_NONE) != 0) { perror("cuda_emu: mprotect"); abort(); }
    return {static_cast<char*>(m), static_cast<char*>(m) + g};
}

// ------------------------------------------------------------------ the running launch

static unsigned cur;             // linear index of the running thread in its block
static std::vector<char> done;
static std::function<void()>* body_ptr;

// ------------------------------------------------------------------ context switch

#ifndef EMU_USE_UCONTEXT
// emu_ctx_switch(save, to): pushes the callee-saved registers, stores the stack pointer
// in *save, loads `to` as the stack pointer, pops that context's registers and returns
// into it. The SysV ABI leaves every other register caller-saved; MXCSR and the x87
// control word are never changed by the emulated code, so they need no saving.
extern "C" void emu_ctx_switch(void** save, void* to);
asm(R"(
    .text
    .p2align 4
    .globl emu_ctx_switch
    .type emu_ctx_switch, @function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_switch, .-emu_ctx_switch
)");
static std::vector<void*> thread_sp;
static void* sched_sp;
static void to_scheduler() { emu_ctx_switch(&thread_sp[cur], sched_sp); }
static void to_thread(unsigned t) { emu_ctx_switch(&sched_sp, thread_sp[t]); }
[[noreturn]] static void entry();
static void start_thread(unsigned t) {
    // The first switch pops six zero registers and returns into entry with the stack as
    // after a call: the return-address slot at a 16-byte boundary.
    char* top = stacks[t].lo + kStack;
    void** sp = reinterpret_cast<void**>(top - 64);
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    sp[6] = reinterpret_cast<void*>(&entry);
    sp[7] = nullptr;  // entry never returns
    thread_sp[t] = sp;
}
#else
static std::vector<ucontext_t> thread_ctx;
static ucontext_t sched_ctx;
static void to_scheduler() { swapcontext(&thread_ctx[cur], &sched_ctx); }
static void to_thread(unsigned t) { swapcontext(&sched_ctx, &thread_ctx[t]); }
static void entry();
static void start_thread(unsigned t) {
    getcontext(&thread_ctx[t]);
    thread_ctx[t].uc_stack.ss_sp = stacks[t].lo;
    thread_ctx[t].uc_stack.ss_size = kStack;
    thread_ctx[t].uc_link = nullptr;
    makecontext(&thread_ctx[t], reinterpret_cast<void (*)()>(&entry), 0);
}
#endif

static void entry() {
    (*body_ptr)();
    done[cur] = 1;
    to_scheduler();
    abort();  // a finished thread is never resumed
}

// ------------------------------------------------------------------ stack overflow

static void on_segv(int sig, siginfo_t* info, void*) {
    const char* a = static_cast<const char*>(info->si_addr);
    const size_t g = page_size();
    for (size_t t = 0; t < stacks.size(); ++t)
        if (a >= stacks[t].guard && a < stacks[t].guard + g) {
            char msg[256];
            const int n = snprintf(msg, sizeof msg,
                                   "cuda_emu: stack overflow (%zu KiB) in thread %zu of block %u\n",
                                   kStack >> 10, t, blockIdx.x);
            if (write(2, msg, n) < 0) {}
            _exit(134);
        }
    signal(sig, SIG_DFL);  // not ours: fault again, by default
}

static void install_segv_handler() {
#ifndef __SANITIZE_ADDRESS__  // ASan reports faults itself
    static bool done_once = false;
    if (done_once) return;
    done_once = true;
    static std::vector<char> alt(64 << 10);
    stack_t ss{};
    ss.ss_sp = alt.data(), ss.ss_size = alt.size();
    sigaltstack(&ss, nullptr);
    struct sigaction sa{};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
#endif
}

}  // namespace emu

using namespace emu;

void __syncthreads() {
    ++emu_syncs;
    to_scheduler();
}

void emu_launch(unsigned grid, unsigned block, std::function<void()> body) {
    if (grid == 0 || block == 0 || block > 1024) {
        fprintf(stderr, "cuda_emu: bad launch: grid %u, block %u\n", grid, block);
        abort();
    }
    install_segv_handler();
    body_ptr = &body;
    gridDim.x = grid;
    blockDim.x = block;
    while (stacks.size() < block) stacks.push_back(make_stack());
#ifndef EMU_USE_UCONTEXT
    thread_sp.resize(block);
#else
    thread_ctx.resize(block);
#endif
    done.assign(block, 0);
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx.x = b;
        for (unsigned t = 0; t < block; ++t) done[t] = 0, start_thread(t);
        for (;;) {
            for (unsigned t = 0; t < block; ++t) {
                if (done[t]) continue;
                cur = t;
                threadIdx.x = t;
                to_thread(t);
            }
            unsigned now = 0;
            for (unsigned t = 0; t < block; ++t) now += done[t];
            if (now == block) break;
            if (now != 0) {
                fprintf(stderr, "cuda_emu: barrier divergence: %u of %u threads exited while "
                        "others wait (block %u)\n", now, block, b);
                abort();
            }
        }
    }
}

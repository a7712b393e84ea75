// emu.cpp: runs a translated <<<grid, block>>> launch on the CPU (see README.md).
//
// Blocks run one after another, in a random order; a block's threads are coroutines on
// one OS thread. Each barrier interval (from one __syncthreads() to the next) runs every
// live thread once, until it reaches the barrier or returns, in a fresh random order, so
// every thread reaches the barrier before any passes it. A thread that returns while
// others wait at a barrier aborts the run. Every freedom a GPU has that the emulator
// models is drawn from one generator seeded by EMU_SEED (printed at the start):
//   - the thread order within each barrier interval, and the block order;
//   - on half the launches (a coin each) the grid is cut to 1..3 blocks (every kernel of
//     csrc/cuda is a grid-stride loop, so a block then takes several work items; kernels
//     that are not must be named in kExactGrid);
//   - __shared__ arrays are laid out in a per-block arena filled with 0xFF bytes (NaN as
//     float or double) at each block start, with canary bytes between arrays checked at
//     the block's end; device allocations (cuda_runtime.h) start as 0xFF bytes too.
//
// Context switch: on x86-64 a hand-written switch that saves the callee-saved registers
// and the stack pointer (glibc's swapcontext also saves and restores the signal mask, a
// system call per switch: half the run time), which tells ASan of each switch through
// its fiber API in the ASan build. Elsewhere, or with -DEMU_UCONTEXT, ucontext. Stacks
// come from mmap with a PROT_NONE guard page below each; a thread that overflows its
// stack is reported.
#include <algorithm>
#include <csignal>
#include <dlfcn.h>
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

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#define EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define EMU_POISON(p, n) ((void)(p), (void)(n))
#define EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#if !defined(__x86_64__) || defined(EMU_UCONTEXT)
#define EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

dim3 threadIdx, blockIdx, blockDim, gridDim;
long emu_syncs = 0;
unsigned long emu_block_serial = 0;  // one per block run, never reused

// ------------------------------------------------------------------ the seeded generator

uint64_t emu_seed() {
    const char* s = std::getenv("EMU_SEED");
    return s && *s ? std::strtoull(s, nullptr, 0) : 1;
}

namespace emu {

static const uint64_t seed = emu_seed();
static std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
static const int announce = (std::printf("cuda_emu: EMU_SEED=%llu\n", (unsigned long long)seed),
                             std::fflush(stdout), 0);

// Kernels that are not grid-stride loops (they need every block of their grid): none
// today. The grid of the others is cut on half the launches.
static const char* const kExactGrid[] = {nullptr};

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

static const char* kernel_name = "";
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
#ifdef __SANITIZE_ADDRESS__
// ASan must be told of each switch (its fiber API), or it takes the other stack's frames
// for an overflow of this one.
static const void* sched_stack_bottom;
static size_t sched_stack_size;
static void to_scheduler() {
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(done[cur] ? nullptr : &fake, sched_stack_bottom, sched_stack_size);
    emu_ctx_switch(&thread_sp[cur], sched_sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
}
static void to_thread(unsigned t) {
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, stacks[t].lo, kStack);
    emu_ctx_switch(&sched_sp, thread_sp[t]);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
}
static void entered() { __sanitizer_finish_switch_fiber(nullptr, &sched_stack_bottom, &sched_stack_size); }
#else
static void to_scheduler() { emu_ctx_switch(&thread_sp[cur], sched_sp); }
static void to_thread(unsigned t) { emu_ctx_switch(&sched_sp, thread_sp[t]); }
static void entered() {}
#endif
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
static void entered() {}
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
    entered();
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
                                   "cuda_emu: stack overflow (%zu KiB) in thread %zu of kernel %s\n",
                                   kStack >> 10, t, kernel_name);
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

// ------------------------------------------------------------------ shared memory

// Static shared memory of one block: 48 KiB, the limit of a static __shared__ total.
constexpr size_t kSharedLimit = 48 << 10;
constexpr size_t kCanary = 32;  // bytes after each array, checked at the block's end
alignas(64) static unsigned char arena[kSharedLimit + 64 * (kCanary + 64)];
static size_t arena_used = 0;
struct SharedArray {
    const char* name;
    int line;
    size_t offset, bytes;
};
static std::vector<SharedArray> shared_arrays;  // of the running block

void* shared_alloc(size_t bytes, size_t align, const char* name, int line, unsigned long* serial) {
    const size_t off = (arena_used + std::max<size_t>(align, 16) - 1) & ~(std::max<size_t>(align, 16) - 1);
    size_t total = bytes;
    for (const auto& a : shared_arrays) total += a.bytes;
    if (total > kSharedLimit || off + bytes + kCanary > sizeof arena) {
        fprintf(stderr, "cuda_emu: kernel %s: __shared__ %s (line %d) brings the block's static "
                "shared memory to %zu bytes, over the %zu-byte limit\n",
                kernel_name, name, line, total, kSharedLimit);
        abort();
    }
    std::memset(arena + off, 0xFF, bytes);            // NaN bytes: a read before any write shows
    std::memset(arena + off + bytes, 0xA5, kCanary);  // canary
    EMU_POISON(arena + off + bytes, kCanary);         // ASan: any access to it, at once
    arena_used = off + bytes + kCanary;
    shared_arrays.push_back({name, line, off, bytes});
    *serial = emu_block_serial;
    return arena + off;
}

static void check_canaries(unsigned b) {
    EMU_UNPOISON(arena, sizeof arena);
    for (const auto& a : shared_arrays)
        for (size_t i = 0; i < kCanary; ++i)
            if (arena[a.offset + a.bytes + i] != 0xA5) {
                fprintf(stderr, "cuda_emu: kernel %s block %u wrote past the end of __shared__ %s "
                        "(line %d, %zu bytes): byte %zu beyond it\n",
                        kernel_name, b, a.name, a.line, a.bytes, i);
                abort();
            }
}

// ------------------------------------------------------------------ race detector
//
// The kernel files are compiled with GCC's ThreadSanitizer instrumentation, but linked
// against these callbacks instead of its runtime: every load and store the compiled
// kernel makes calls one of them, and those that fall in the shared arena are checked.
// Each 4-byte word of the arena remembers, for the current barrier interval, which
// thread last wrote it and which thread (or several) read it. Another thread's access in
// the same interval is a race: a read of a word another thread wrote, a write of a word
// another thread wrote or read. On a GPU its outcome depends on timing.
static unsigned interval = 1;  // the barrier interval; bumped at each barrier and block
constexpr uint16_t kManyReaders = 0xFFFF;
struct WordShadow {
    unsigned w_interval = 0, r_interval = 0;
    uint16_t writer = 0, reader = 0;
    const void *w_pc = nullptr, *r_pc = nullptr;
};
static WordShadow shadow[sizeof arena / 4];

static std::string where(const void* pc) {
    if (!pc) return "?";
    Dl_info info;
    if (!dladdr(pc, &info) || !info.dli_fname) return "?";
    char cmd[512];
    // pc - 1: the call instruction, not the one after it
    snprintf(cmd, sizeof cmd, "addr2line -e '%s' -i -C -f %#lx 2>/dev/null", info.dli_fname,
             (unsigned long)(static_cast<const char*>(pc) - static_cast<const char*>(info.dli_fbase) - 1));
    std::string out;
    if (FILE* f = popen(cmd, "r")) {
        char line[1024];
        while (fgets(line, sizeof line, f)) out += line;
        pclose(f);
    }
    // addr2line -f -i prints function / file:line pairs, innermost first; keep the
    // frames in kernel sources (.cu, .cuh), the function named without its arguments.
    std::string res;
    size_t at = 0;
    while (at < out.size()) {
        const size_t e1 = out.find('\n', at), e2 = out.find('\n', e1 + 1);
        if (e1 == std::string::npos || e2 == std::string::npos) break;
        const std::string fn = out.substr(at, std::min(out.find('(', at), e1) - at);
        std::string loc = out.substr(e1 + 1, e2 - e1 - 1);
        loc = loc.substr(0, loc.find(" (discriminator"));
        const size_t colon = loc.rfind(':');
        const std::string file = loc.substr(0, colon);
        if (file.size() > 3 && (file.compare(file.size() - 3, 3, ".cu") == 0 ||
                                file.compare(file.size() - 4, 4, ".cuh") == 0))
            res += (res.empty() ? "" : " <- ") + loc + " (" + fn + ")";
        at = e2 + 1;
    }
    return res.empty() ? out.substr(0, out.find('\n')) : res;
}

[[noreturn]] static void report_race(const char* kind, size_t word, unsigned other,
                                     const void* other_pc, const void* pc) {
    const size_t off = word * 4;
    const SharedArray* arr = nullptr;
    for (const auto& a : shared_arrays)
        if (off >= a.offset && off < a.offset + a.bytes) arr = &a;
    fflush(stdout);
    fprintf(stderr, "cuda_emu: shared-memory race in kernel %s, block %u: %s\n", kernel_name,
            blockIdx.x, kind);
    if (arr)
        fprintf(stderr, "  __shared__ %s (declared at line %d), byte %zu of %zu\n", arr->name,
                arr->line, off - arr->offset, arr->bytes);
    fprintf(stderr, "  thread %u at %s\n", cur, where(pc).c_str());
    if (other == kManyReaders)
        fprintf(stderr, "  after reads by several threads, the last at %s\n", where(other_pc).c_str());
    else
        fprintf(stderr, "  thread %u, earlier in the same barrier interval, at %s\n", other,
                where(other_pc).c_str());
    abort();
}

static inline void shared_access(const void* addr, size_t n, bool write, const void* pc) {
    const size_t off = size_t(static_cast<const unsigned char*>(addr) - arena);
    if (off >= sizeof arena) return;  // not shared memory
    const uint16_t t = uint16_t(cur);
    for (size_t w = off / 4, end = std::min((off + n + 3) / 4, sizeof arena / 4); w < end; ++w) {
        WordShadow& s = shadow[w];
        const bool written = s.w_interval == interval && s.writer != t;
        if (write) {
            if (written) report_race("write after another thread's write", w, s.writer, s.w_pc, pc);
            if (s.r_interval == interval && s.reader != t)
                report_race("write after another thread's read", w, s.reader, s.r_pc, pc);
            s.w_interval = interval, s.writer = t, s.w_pc = pc;
        } else {
            if (written) report_race("read of another thread's write", w, s.writer, s.w_pc, pc);
            if (s.r_interval != interval) s.r_interval = interval, s.reader = t;
            else if (s.reader != t) s.reader = kManyReaders;
            s.r_pc = pc;
        }
    }
}

}  // namespace emu

using namespace emu;

// The instrumentation's entry points (see the race detector above).
#define EMU_TSAN_ACCESS(n)                                                                    \
    extern "C" void __tsan_read##n(void* p) { shared_access(p, n, false, __builtin_return_address(0)); } \
    extern "C" void __tsan_write##n(void* p) { shared_access(p, n, true, __builtin_return_address(0)); } \
    extern "C" void __tsan_unaligned_read##n(void* p) { shared_access(p, n, false, __builtin_return_address(0)); } \
    extern "C" void __tsan_unaligned_write##n(void* p) { shared_access(p, n, true, __builtin_return_address(0)); }
EMU_TSAN_ACCESS(1)
EMU_TSAN_ACCESS(2)
EMU_TSAN_ACCESS(4)
EMU_TSAN_ACCESS(8)
EMU_TSAN_ACCESS(16)
#undef EMU_TSAN_ACCESS
extern "C" void __tsan_read_range(void* p, unsigned long n) { shared_access(p, n, false, __builtin_return_address(0)); }
extern "C" void __tsan_write_range(void* p, unsigned long n) { shared_access(p, n, true, __builtin_return_address(0)); }
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}

void __syncthreads() {
    ++emu_syncs;
    to_scheduler();
}

void emu_launch(const char* name, unsigned grid, unsigned block, std::function<void()> body) {
    if (grid == 0 || block == 0 || block > 1024) {
        fprintf(stderr, "cuda_emu: bad launch of %s: grid %u, block %u\n", name, grid, block);
        abort();
    }
    install_segv_handler();
    // A coin per launch, not strict alternation: a test that launches kernels in a fixed
    // cycle of even length would otherwise never see some kernels cut on some seeds.
    const bool exact = std::any_of(std::begin(kExactGrid), std::end(kExactGrid),
                                   [&](const char* k) { return k && std::strcmp(k, name) == 0; });
    if (!exact && rng() % 2 == 1) grid = std::min<unsigned>(grid, 1 + unsigned(rng() % 3));
    kernel_name = name;
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
    std::vector<unsigned> blocks(grid), live;
    for (unsigned b = 0; b < grid; ++b) blocks[b] = b;
    std::shuffle(blocks.begin(), blocks.end(), rng);
    for (unsigned b : blocks) {
        blockIdx.x = b;
        ++emu_block_serial;
        arena_used = 0;
        shared_arrays.clear();
        live.resize(block);
        for (unsigned t = 0; t < block; ++t) done[t] = 0, live[t] = t, start_thread(t);
        for (;;) {
            ++interval;
            std::shuffle(live.begin(), live.end(), rng);
            for (unsigned t : live) {
                cur = t;
                threadIdx.x = t;
                to_thread(t);
            }
            size_t ended = 0;
            for (unsigned t : live) ended += done[t];
            if (ended == live.size()) break;
            if (ended != 0) {
                fprintf(stderr, "cuda_emu: barrier divergence in kernel %s: %zu of %u threads "
                        "exited while others wait (block %u)\n", name, ended, block, b);
                abort();
            }
        }
        check_canaries(b);
    }
}

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
#include <array>
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

// A uniform pick in [0, n), n <= 65536, from 16 bits of a cached draw (the scheduler
// picks at every switch; the bias, at most n / 65536, does not matter to a schedule).
static uint64_t pick_bits = 0;
static unsigned pick_left = 0;
static size_t pick(size_t n) {
    if (pick_left == 0) pick_bits = rng(), pick_left = 4;
    const size_t r = size_t((pick_bits & 0xFFFF) * n >> 16);
    pick_bits >>= 16, --pick_left;
    return r;
}

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
static unsigned nthreads = 0;    // threads of the running block
static bool in_launch = false;
// Where each thread of the running block stands: running (or ready to), waiting at
// __syncthreads, waiting at a warp collective, or returned.
enum ThreadState : char { kReady, kAtBarrier, kAtWarp, kDone };
static std::vector<char> state;
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
    __sanitizer_start_switch_fiber(state[cur] == kDone ? nullptr : &fake, sched_stack_bottom, sched_stack_size);
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
static void thread_exits();
static void start_thread(unsigned t) {
    // The first switch pops six zero registers and returns into entry with the stack as
    // after a call: the return-address slot at a 16-byte boundary.
    char* top = stacks[t].lo + kStack;
    // ASan: entry's frame never returns, so its redzones (if it has any) stay poisoned.
    EMU_UNPOISON(top - 4096, 4096);
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
static void thread_exits();
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
    thread_exits();
    state[cur] = kDone;
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

// Shared memory of one block: static arrays up to 48 KiB in all, dynamic shared memory
// (the launch's third <<<>>> argument) on top, up to 48 KiB together, or up to 227 KiB
// (an H100's opt-in limit) for a kernel given cudaFuncAttributeMaxDynamicSharedMemorySize.
// The dynamic region starts the arena (128-byte aligned); static arrays follow it.
constexpr size_t kStaticLimit = 48 << 10, kOptInLimit = 227 << 10;
constexpr size_t kCanary = 32;  // bytes after each array, checked at the block's end
alignas(128) static unsigned char arena[kOptInLimit + 64 * (kCanary + 64)];
static size_t arena_used = 0, shared_limit = kStaticLimit, dynamic_bytes = 0;
struct SharedArray {
    const char* name;
    int line;
    size_t offset, bytes;
};
static std::vector<SharedArray> shared_arrays;  // of the running block
static std::vector<std::pair<const void*, int>> dynamic_opt_in;  // cudaFuncSetAttribute

static void* place(size_t bytes, size_t align, const char* name, int line) {
    align = std::max<size_t>(align, 16);
    const size_t off = (arena_used + align - 1) & ~(align - 1);
    size_t total = bytes;
    for (const auto& a : shared_arrays) total += a.bytes;
    if (total > shared_limit || off + bytes + kCanary > sizeof arena) {
        fprintf(stderr, "cuda_emu: kernel %s: __shared__ %s (line %d) brings the block's shared "
                "memory (static and dynamic) to %zu bytes, over its %zu-byte limit\n",
                kernel_name, name, line, total, shared_limit);
        abort();
    }
    std::memset(arena + off, 0xFF, bytes);            // NaN bytes: a read before any write shows
    std::memset(arena + off + bytes, 0xA5, kCanary);  // canary
    EMU_POISON(arena + off + bytes, kCanary);         // ASan: any access to it, at once
    arena_used = off + bytes + kCanary;
    shared_arrays.push_back({name, line, off, bytes});
    return arena + off;
}

void* shared_alloc(size_t bytes, size_t align, const char* name, int line, unsigned long* serial) {
    *serial = emu_block_serial;
    return place(bytes, align, name, line);
}

// Every `extern __shared__` array of a kernel is the same region, as on the GPU.
void* dynamic_shared(size_t align, const char* name, int line) {
    if (align > 128) {
        fprintf(stderr, "cuda_emu: kernel %s: extern __shared__ %s (line %d) asks for %zu-byte "
                "alignment; the dynamic region is 128-byte aligned\n", kernel_name, name, line, align);
        abort();
    }
    return arena;
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
// thread last wrote it, which thread (or several) read it, and which thread (or several)
// accessed it atomically. Another thread's access in the same interval is a race: a
// read of a word another thread wrote, a write of a word another thread wrote or read,
// a plain access to a word another thread accessed atomically, or an atomic access to a
// word another thread wrote or read plainly (atomics among themselves do not race). On
// a GPU its outcome depends on timing.
//
// Within a warp, __syncwarp(mask) orders memory among the lanes it names (and nothing
// else does: shuffles, votes and reductions exchange registers, not memory). Each
// completed __syncwarp gets a serial number; every access is stamped with the serial of
// its thread's last __syncwarp, and each thread knows, per lane of its warp, the latest
// __syncwarp of that lane it is ordered after (merged at each __syncwarp, transitively).
// Two accesses of one interval are ordered when the later thread knows a __syncwarp of
// the earlier one newer than the earlier access's stamp.
static unsigned interval = 1;  // the barrier interval; bumped at each barrier and block
constexpr uint16_t kMany = 0xFFFF;
constexpr uint16_t kNoWarp = 0xFFFF;
struct WordShadow {
    unsigned w_interval = 0, r_interval = 0, a_interval = 0;
    uint16_t writer = 0, reader = 0, atomic = 0;  // reader / atomic: kMany when several
    uint16_t r_warp = 0;                          // the readers' warp, kNoWarp if several
    uint32_t r_lanes = 0;                         // the readers' lanes in r_warp
    uint32_t w_stamp = 0, r_stamp = 0, a_stamp = 0;  // r_stamp: the newest reader's
    const void *w_pc = nullptr, *r_pc = nullptr, *a_pc = nullptr;
};
static WordShadow shadow[sizeof arena / 4];
static uint32_t syncwarp_serial = 0;
static std::vector<uint32_t> stamp;                    // per thread
static std::vector<std::array<uint32_t, 32>> known;  // per thread, per lane of its warp

static bool ordered(unsigned earlier, uint32_t at_stamp, unsigned later) {
    return earlier == later ||
           (earlier / 32 == later / 32 && known[later][earlier % 32] > at_stamp);
}

static bool readers_ordered(const WordShadow& s, unsigned t) {
    if (s.reader != kMany) return ordered(s.reader, s.r_stamp, t);
    if (s.r_warp == kNoWarp || s.r_warp != t / 32) return false;
    for (unsigned l = 0; l < 32; ++l)
        if ((s.r_lanes >> l & 1) && !ordered(s.r_warp * 32 + l, s.r_stamp, t)) return false;
    return true;
}

std::string where(const void* pc) {
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

static unsigned block_linear() { return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z); }

[[noreturn]] static void report_race(const char* kind, size_t word, unsigned other,
                                     const void* other_pc, const void* pc) {
    const size_t off = word * 4;
    const SharedArray* arr = nullptr;
    for (const auto& a : shared_arrays)
        if (off >= a.offset && off < a.offset + a.bytes) arr = &a;
    fflush(stdout);
    fprintf(stderr, "cuda_emu: shared-memory race in kernel %s, block %u: %s\n", kernel_name,
            block_linear(), kind);
    if (arr)
        fprintf(stderr, "  __shared__ %s (declared at line %d), byte %zu of %zu\n", arr->name,
                arr->line, off - arr->offset, arr->bytes);
    else if (off < dynamic_bytes)
        fprintf(stderr, "  extern __shared__ (dynamic), byte %zu of %zu\n", off, dynamic_bytes);
    fprintf(stderr, "  thread %u at %s\n", cur, where(pc).c_str());
    if (other == kMany)
        fprintf(stderr, "  after accesses by several threads, the last at %s\n", where(other_pc).c_str());
    else
        fprintf(stderr, "  thread %u, earlier in the same barrier interval, at %s\n", other,
                where(other_pc).c_str());
    abort();
}

enum Access { kRead, kWrite, kAtomic };

// An access of n bytes at addr by thread t (the running one unless a warp collective
// acts for a lane); nothing outside the shared arena.
static inline void shared_access(const void* addr, size_t n, Access kind, const void* pc,
                                 unsigned t = cur) {
    const size_t off = size_t(static_cast<const unsigned char*>(addr) - arena);
    if (off >= sizeof arena || !in_launch) return;  // not shared memory
    const uint32_t st = stamp[t];
    for (size_t w = off / 4, end = std::min((off + n + 3) / 4, sizeof arena / 4); w < end; ++w) {
        WordShadow& s = shadow[w];
        // (lazily: most accesses meet words of an earlier interval, or their own)
        const auto written = [&] { return s.w_interval == interval && !ordered(s.writer, s.w_stamp, t); };
        const auto read = [&] { return s.r_interval == interval && !readers_ordered(s, t); };
        const auto atomic = [&] {
            return s.a_interval == interval && (s.atomic == kMany || !ordered(s.atomic, s.a_stamp, t));
        };
        if (kind == kWrite) {
            if (written()) report_race("write after another thread's write", w, s.writer, s.w_pc, pc);
            if (read()) report_race("write after another thread's read", w, s.reader, s.r_pc, pc);
            if (atomic()) report_race("write after another thread's atomic", w, s.atomic, s.a_pc, pc);
            s.w_interval = interval, s.writer = uint16_t(t), s.w_stamp = st, s.w_pc = pc;
        } else if (kind == kRead) {
            if (written()) report_race("read of another thread's write", w, s.writer, s.w_pc, pc);
            if (atomic()) report_race("read after another thread's atomic", w, s.atomic, s.a_pc, pc);
            if (s.r_interval != interval) {
                s.r_interval = interval, s.reader = uint16_t(t), s.r_warp = uint16_t(t / 32);
                s.r_lanes = 1u << (t % 32), s.r_stamp = st;
            } else {
                if (s.reader != t) s.reader = kMany;
                if (s.r_warp != t / 32) s.r_warp = kNoWarp;
                s.r_lanes |= 1u << (t % 32), s.r_stamp = std::max(s.r_stamp, st);
            }
            s.r_pc = pc;
        } else {
            if (written()) report_race("atomic after another thread's write", w, s.writer, s.w_pc, pc);
            if (read()) report_race("atomic after another thread's read", w, s.reader, s.r_pc, pc);
            if (s.a_interval != interval) s.a_interval = interval, s.atomic = uint16_t(t);
            else if (s.atomic != t) s.atomic = kMany;
            s.a_stamp = st, s.a_pc = pc;
        }
    }
}

void note_shared(const void* addr, size_t n, bool write, unsigned thread) {
    shared_access(addr, n, write ? kWrite : kRead, nullptr, thread);
}

// ------------------------------------------------------------------ warp collectives
//
// A warp is 32 threads of consecutive linear index. A collective is a meeting point of
// the lanes its mask names: each arriving lane waits (kAtWarp) until every named lane
// has arrived at a collective of the same kind with the same mask and the same
// warp-uniform arguments; the last one to arrive completes it for all. A named lane
// that returns, waits at __syncthreads, or arrives at a different collective aborts the
// run, as does a mask that leaves out the caller or names a lane the block lacks.
static std::vector<WarpOp*> waiting;  // per thread, while kAtWarp
static bool block_used_warps = false, block_used_async = false;
static std::vector<unsigned> ready;   // threads the scheduler may run

static unsigned warp_lanes(unsigned warp) { return std::min(32u, nthreads - warp * 32); }

static std::string op_where(const WarpOp* op) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s(mask %#x)", op->name, op->mask);
    return std::string(buf) + " at " + where(op->pc);
}

[[noreturn]] static void warp_fail(unsigned t, const WarpOp* op, const std::string& why) {
    fflush(stdout);
    fprintf(stderr, "cuda_emu: warp collective in kernel %s, block %u, thread %u (warp %u lane %u): "
            "%s\n  %s\n", kernel_name, block_linear(), t, t / 32, t % 32, why.c_str(),
            op_where(op).c_str());
    abort();
}

static bool same_op(const WarpOp* a, const WarpOp* b) {
    return a->kind == b->kind && a->mask == b->mask && a->exec == b->exec &&
           std::memcmp(a->uniform, b->uniform, sizeof a->uniform) == 0;
}

static void complete_syncwarp(unsigned warp, unsigned mask) {
    ++syncwarp_serial;
    block_used_warps = true;
    std::array<uint32_t, 32> merged{};
    for (unsigned l = 0; l < 32; ++l)
        if (mask >> l & 1)
            for (unsigned k = 0; k < 32; ++k) merged[k] = std::max(merged[k], known[warp * 32 + l][k]);
    for (unsigned l = 0; l < 32; ++l)
        if (mask >> l & 1) merged[l] = syncwarp_serial;
    for (unsigned l = 0; l < 32; ++l)
        if (mask >> l & 1) known[warp * 32 + l] = merged, stamp[warp * 32 + l] = syncwarp_serial;
}

// The built-in collectives: every lane's result from the lanes' inputs.
static void complete_builtin(unsigned warp, WarpOp** lanes) {
    unsigned m = 0;
    for (unsigned l = 0; l < 32; ++l) if (lanes[l]) m |= 1u << l;
    const WarpOp* first = lanes[__builtin_ctz(m)];
    switch (first->kind) {
    case WarpKind::Sync:
        complete_syncwarp(warp, m);
        return;
    case WarpKind::Shfl: case WarpKind::ShflUp: case WarpKind::ShflDown: case WarpKind::ShflXor: {
        const int width = int(first->uniform[0]);
        if (width < 1 || width > 32 || (width & (width - 1)))
            warp_fail(warp * 32 + __builtin_ctz(m), first, "width must be a power of two in 1..32");
        for (unsigned l = 0; l < 32; ++l) {
            if (!lanes[l]) continue;
            const int seg = int(l) & ~(width - 1), arg = lanes[l]->arg;
            int src = int(l);
            switch (first->kind) {
            case WarpKind::Shfl: src = seg + (arg & (width - 1)); break;
            case WarpKind::ShflUp: src = int(l) - arg >= seg ? int(l) - arg : int(l); break;
            case WarpKind::ShflDown: src = int(l) + arg < seg + width ? int(l) + arg : int(l); break;
            default: src = (int(l) ^ (arg & 31)) < seg + width ? int(l) ^ (arg & 31) : int(l); break;
            }
            if (!lanes[src]) {
                char why[128];
                snprintf(why, sizeof why, "lane %u reads lane %d, which the mask does not name", l, src);
                warp_fail(warp * 32 + l, lanes[l], why);
            }
            lanes[l]->result = lanes[src]->value;
        }
        return;
    }
    case WarpKind::Ballot: case WarpKind::Any: case WarpKind::All: {
        unsigned bits = 0;
        for (unsigned l = 0; l < 32; ++l) if (lanes[l] && lanes[l]->value) bits |= 1u << l;
        const uint64_t r = first->kind == WarpKind::Ballot ? bits
                           : first->kind == WarpKind::Any ? bits != 0 : bits == m;
        for (unsigned l = 0; l < 32; ++l) if (lanes[l]) lanes[l]->result = r;
        return;
    }
    default: {  // the __reduce_*_sync family, on 32-bit values
        const bool is_signed = first->uniform[0] != 0;
        int64_t acc = 0;
        bool have = false;
        for (unsigned l = 0; l < 32; ++l) {
            if (!lanes[l]) continue;
            const uint32_t u = uint32_t(lanes[l]->value);
            const int64_t v = is_signed ? int64_t(int32_t(u)) : int64_t(u);
            if (!have) { acc = v, have = true; continue; }
            switch (first->kind) {
            case WarpKind::ReduceAdd: acc = int64_t(uint32_t(acc) + u); break;
            case WarpKind::ReduceMin: acc = std::min(acc, v); break;
            case WarpKind::ReduceMax: acc = std::max(acc, v); break;
            case WarpKind::ReduceAnd: acc = int64_t(uint32_t(acc) & u); break;
            case WarpKind::ReduceOr: acc = int64_t(uint32_t(acc) | u); break;
            default: acc = int64_t(uint32_t(acc) ^ u); break;
            }
        }
        for (unsigned l = 0; l < 32; ++l) if (lanes[l]) lanes[l]->result = uint32_t(acc);
        return;
    }
    }
}

void warp_collective(WarpOp& op) {
    if (!in_launch) { fprintf(stderr, "cuda_emu: %s called outside a kernel\n", op.name); abort(); }
    op.pc = __builtin_return_address(0);
    op.thread = cur;
    const unsigned t = cur, warp = t / 32, lane = t % 32, n = warp_lanes(warp);
    if (!(op.mask >> lane & 1)) warp_fail(t, &op, "the mask leaves out the calling lane");
    if (n < 32 && (op.mask >> n)) {
        char why[128];
        snprintf(why, sizeof why, "the mask names lanes beyond the %u threads of this warp", n);
        warp_fail(t, &op, why);
    }
    // A lane already waiting that this collective names and that names this lane must
    // be at the same one (else neither can complete). A named lane waiting at another
    // collective that leaves this lane out may still come (report_stuck says if not).
    for (unsigned l = 0; l < n; ++l) {
        const unsigned u = warp * 32 + l;
        if (u == t || state[u] != kAtWarp) continue;
        const WarpOp* other = waiting[u];
        if ((op.mask >> l & 1) && (other->mask >> lane & 1) && !same_op(&op, other)) {
            char why[160];
            snprintf(why, sizeof why, "lane %u waits at a different collective, or with a different "
                     "mask or different warp-uniform arguments:", l);
            warp_fail(t, &op, std::string(why) + "\n  lane " + std::to_string(l) + ": " + op_where(other));
        }
    }
    waiting[t] = &op;
    state[t] = kAtWarp;
    to_scheduler();  // back here once every named lane has arrived and the op completed
}

// Called by the scheduler after thread t stopped at a collective: completes it when the
// last named lane has arrived, and readies them all.
static void try_complete(unsigned t) {
    const WarpOp* op = waiting[t];
    const unsigned warp = t / 32;
    WarpOp* lanes[32] = {};
    for (unsigned l = 0; l < 32; ++l) {
        if (!(op->mask >> l & 1)) continue;
        const unsigned u = warp * 32 + l;
        // not yet: a named lane still runs, or waits at another collective (of a
        // subset of the warp that leaves this lane out)
        if (state[u] != kAtWarp || !same_op(op, waiting[u])) return;
        lanes[l] = waiting[u];
    }
    if (op->exec) op->exec(lanes);
    else complete_builtin(warp, lanes);
    for (unsigned l = 0; l < 32; ++l)
        if (lanes[l]) state[warp * 32 + l] = kReady, ready.push_back(warp * 32 + l);
}

// When no thread can run and some still wait at a collective: which named lane is
// missing, and where it is.
[[noreturn]] static void report_stuck(unsigned t) {
    const WarpOp* op = waiting[t];
    const unsigned warp = t / 32;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(op->mask >> l & 1)) continue;
        const unsigned u = warp * 32 + l;
        if (state[u] == kAtWarp && same_op(op, waiting[u])) continue;
        char why[160];
        snprintf(why, sizeof why, "lane %u, named in the mask, never arrived (it %s)", l,
                 state[u] == kDone ? "returned" : state[u] == kAtBarrier ? "waits at __syncthreads"
                                                                        : "waits at another collective:");
        warp_fail(t, op, std::string(why) + (state[u] == kAtWarp ? "\n  lane " + std::to_string(l) +
                                             ": " + op_where(waiting[u]) : ""));
    }
    warp_fail(t, op, "the collective never completed");
}

// WMMA (include/mma.h): each fragment type's element order, drawn per seed.
const int* fragment_order(int id, int elements) {
    static std::vector<std::pair<int, std::vector<int>>> orders;
    for (const auto& o : orders)
        if (o.first == id) return o.second.data();
    std::vector<int> order(elements);
    for (int i = 0; i < elements; ++i) order[i] = i;
    std::mt19937_64 g(seed * 0x100000001b3ull + uint64_t(id));
    std::shuffle(order.begin(), order.end(), g);
    orders.emplace_back(id, std::move(order));
    return orders.back().second.data();
}

[[noreturn]] void wmma_fail(const char* what, const char* why, const void* pc) {
    fflush(stdout);
    fprintf(stderr, "cuda_emu: %s in kernel %s, block %u, thread %u: %s\n  at %s\n", what, kernel_name,
            block_linear(), cur, why, where(pc).c_str());
    abort();
}

unsigned active_mask() {
    const unsigned warp = cur / 32;
    unsigned m = 0;
    for (unsigned l = 0; l < warp_lanes(warp); ++l)
        if (state[warp * 32 + l] != kDone) m |= 1u << l;
    return m;
}

// ------------------------------------------------------------------ atomics
//
// A scheduling point: the thread yields, and any ready thread of the block may run
// before the read-modify-write, which then happens without interruption.
void atomic_point(void* p, size_t n, const void* pc) {
    if (!in_launch) return;
    to_scheduler();
    shared_access(p, n, kAtomic, pc);
}

// ------------------------------------------------------------------ asynchronous copies
//
// async_copy.cuh's copies in the emulator: queued per thread at issue (the destination
// filled with 0xFF bytes, which a read before the wait shows as NaN), grouped by
// commit, and made (source read, destination written, both seen by the race detector as
// this thread's) only at the wait_group that covers their group. A thread that returns
// with copies not yet waited for aborts the run.
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes, src_bytes;
    unsigned long group;  // 0: not yet committed
    const void* pc;
};
static std::vector<std::vector<AsyncCopy>> async_copies;  // per thread
static std::vector<unsigned long> async_groups;           // per thread: groups committed

[[noreturn]] static void async_fail(const void* pc, const std::string& why) {
    fflush(stdout);
    fprintf(stderr, "cuda_emu: async copy in kernel %s, block %u, thread %u: %s\n  at %s\n",
            kernel_name, block_linear(), cur, why.c_str(), where(pc).c_str());
    abort();
}

void async_copy(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
    const void* pc = __builtin_return_address(0);
    if (!in_launch) async_fail(pc, "outside a kernel");
    const size_t off = size_t(static_cast<unsigned char*>(dst) - arena);
    if (off >= sizeof arena) async_fail(pc, "the destination is not shared memory");
    const size_t soff = size_t(static_cast<const unsigned char*>(src) - arena);
    if (soff < sizeof arena) async_fail(pc, "the source is shared memory, not global");
    if (uintptr_t(dst) % bytes || (src_bytes && uintptr_t(src) % bytes))
        async_fail(pc, "a " + std::to_string(bytes) + "-byte copy between addresses not so aligned");
    if (src_bytes > bytes) async_fail(pc, "src_bytes larger than the copy");
    shared_access(dst, bytes, kWrite, pc);
    std::memset(dst, 0xFF, bytes);  // undefined until the wait
    block_used_async = true;
    async_copies[cur].push_back({dst, src, bytes, src_bytes, 0, pc});
}

void async_commit() {
    if (!in_launch) return;
    block_used_async = true;
    const unsigned long g = ++async_groups[cur];
    for (auto& c : async_copies[cur])
        if (c.group == 0) c.group = g;
}

void async_wait(int pending) {
    const void* pc = __builtin_return_address(0);
    if (!in_launch) return;
    auto& q = async_copies[cur];
    const unsigned long last = async_groups[cur] > unsigned(pending) ? async_groups[cur] - pending : 0;
    size_t kept = 0;
    for (auto& c : q) {
        if (c.group == 0 || c.group > last) { q[kept++] = c; continue; }
        shared_access(c.dst, c.bytes, kWrite, pc);
        std::memcpy(c.dst, c.src, c.src_bytes);
        std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
    q.resize(kept);
}

__attribute__((noinline)) static void thread_exits() {
    if (!async_copies.empty() && !async_copies[cur].empty())
        async_fail(async_copies[cur][0].pc, "the thread returned with " +
                   std::to_string(async_copies[cur].size()) +
                   " copies never waited for (the first issued here)");
}

}  // namespace emu

using namespace emu;

// The instrumentation's entry points (see the race detector above).
#define EMU_TSAN_ACCESS(n)                                                                    \
    extern "C" void __tsan_read##n(void* p) { shared_access(p, n, kRead, __builtin_return_address(0)); } \
    extern "C" void __tsan_write##n(void* p) { shared_access(p, n, kWrite, __builtin_return_address(0)); } \
    extern "C" void __tsan_unaligned_read##n(void* p) { shared_access(p, n, kRead, __builtin_return_address(0)); } \
    extern "C" void __tsan_unaligned_write##n(void* p) { shared_access(p, n, kWrite, __builtin_return_address(0)); }
EMU_TSAN_ACCESS(1)
EMU_TSAN_ACCESS(2)
EMU_TSAN_ACCESS(4)
EMU_TSAN_ACCESS(8)
EMU_TSAN_ACCESS(16)
#undef EMU_TSAN_ACCESS
extern "C" void __tsan_read_range(void* p, unsigned long n) { shared_access(p, n, kRead, __builtin_return_address(0)); }
extern "C" void __tsan_write_range(void* p, unsigned long n) { shared_access(p, n, kWrite, __builtin_return_address(0)); }
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}

void __syncthreads() {
    ++emu_syncs;
    state[cur] = kAtBarrier;
    to_scheduler();
}

// The atomics, each a scheduling point, then a plain read-modify-write.
#define EMU_ATOMIC(T, fn, expr)                          \
    T fn(T* p, T v) {                                    \
        atomic_point(p, sizeof(T), __builtin_return_address(0)); \
        const T old = *p;                                \
        *p = (expr);                                     \
        return old;                                      \
    }
#define EMU_ATOMIC_INT(T)                                \
    EMU_ATOMIC(T, atomicAdd, static_cast<T>(old + v))                 \
    EMU_ATOMIC(T, atomicExch, v)                         \
    EMU_ATOMIC(T, atomicMin, std::min(old, v))           \
    EMU_ATOMIC(T, atomicMax, std::max(old, v))           \
    EMU_ATOMIC(T, atomicAnd, static_cast<T>(old & v))                 \
    EMU_ATOMIC(T, atomicOr, static_cast<T>(old | v))                  \
    EMU_ATOMIC(T, atomicXor, static_cast<T>(old ^ v))                 \
    T atomicCAS(T* p, T compare, T v) {                  \
        atomic_point(p, sizeof(T), __builtin_return_address(0)); \
        const T old = *p;                                \
        if (old == compare) *p = v;                      \
        return old;                                      \
    }
EMU_ATOMIC_INT(int)
EMU_ATOMIC_INT(unsigned)
EMU_ATOMIC_INT(unsigned long long)
EMU_ATOMIC(int, atomicSub, int(unsigned(old) - unsigned(v)))
EMU_ATOMIC(unsigned, atomicSub, old - v)
EMU_ATOMIC(long long, atomicMin, std::min(old, v))
EMU_ATOMIC(long long, atomicMax, std::max(old, v))
EMU_ATOMIC(float, atomicAdd, old + v)
EMU_ATOMIC(float, atomicExch, v)
EMU_ATOMIC(double, atomicAdd, old + v)
EMU_ATOMIC(unsigned, atomicInc, old >= v ? 0u : old + 1)
EMU_ATOMIC(unsigned, atomicDec, (old == 0 || old > v) ? v : old - 1)
#undef EMU_ATOMIC_INT
#undef EMU_ATOMIC

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || size_t(value) > kOptInLimit) return 1;  // cudaErrorInvalidValue
        dynamic_opt_in.emplace_back(func, value);
    }
    return cudaSuccess;
}

static void set_thread_index(unsigned t) {
    threadIdx.x = t % blockDim.x;
    threadIdx.y = t / blockDim.x % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

void emu_launch(const char* name, const void* func, dim3 grid, dim3 block, size_t shmem,
                std::function<void()> body) {
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7FFFFFFFu || grid.y > 65535 ||
        grid.z > 65535 || threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 ||
        block.z > 64) {
        fprintf(stderr, "cuda_emu: bad launch of %s: grid (%u, %u, %u), block (%u, %u, %u)\n", name,
                grid.x, grid.y, grid.z, block.x, block.y, block.z);
        abort();
    }
    // Dynamic shared memory: static + dynamic within 48 KiB, or within the kernel's
    // cudaFuncAttributeMaxDynamicSharedMemorySize (dynamic alone, as on the GPU).
    shared_limit = kStaticLimit;
    size_t opt_in = 0;
    for (const auto& o : dynamic_opt_in)
        if (o.first == func) opt_in = size_t(o.second);
    if (shmem > std::max(kStaticLimit, opt_in)) {
        fprintf(stderr, "cuda_emu: launch of %s asks for %zu bytes of dynamic shared memory: over "
                "48 KiB without cudaFuncAttributeMaxDynamicSharedMemorySize (set: %zu)\n",
                name, shmem, opt_in);
        abort();
    }
    if (opt_in) shared_limit = std::max(kStaticLimit, std::min(kOptInLimit, opt_in + kStaticLimit));
    install_segv_handler();
    // A coin per launch, not strict alternation: a test that launches kernels in a fixed
    // cycle of even length would otherwise never see some kernels cut on some seeds.
    // Only 1-D grids are cut: a 2-D or 3-D grid is taken to cover its work exactly.
    const bool exact = std::any_of(std::begin(kExactGrid), std::end(kExactGrid),
                                   [&](const char* k) { return k && std::strcmp(k, name) == 0; });
    if (!exact && grid.y == 1 && grid.z == 1 && rng() % 2 == 1)
        grid.x = std::min<unsigned>(grid.x, 1 + unsigned(rng() % 3));
    kernel_name = name;
    body_ptr = &body;
    gridDim = grid;
    blockDim = block;
    nthreads = unsigned(threads);
    const unsigned T = nthreads;
    while (stacks.size() < T) stacks.push_back(make_stack());
#ifndef EMU_USE_UCONTEXT
    thread_sp.resize(T);
#else
    thread_ctx.resize(T);
#endif
    state.assign(T, kReady);
    waiting.assign(T, nullptr);
    stamp.assign(T, 0);
    known.assign(T, {});
    async_copies.assign(T, {});
    async_groups.assign(T, 0);
    const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    std::vector<unsigned long long> blocks(nblocks);
    for (unsigned long long b = 0; b < nblocks; ++b) blocks[b] = b;
    std::shuffle(blocks.begin(), blocks.end(), rng);
    in_launch = true;
    for (unsigned long long b : blocks) {
        blockIdx.x = unsigned(b % grid.x);
        blockIdx.y = unsigned(b / grid.x % grid.y);
        blockIdx.z = unsigned(b / ((unsigned long long)grid.x * grid.y));
        ++emu_block_serial;
        arena_used = 0;
        shared_arrays.clear();
        dynamic_bytes = shmem;
        if (shmem) place(shmem, 128, "extern (dynamic, the launch's size)", 0);
        for (unsigned t = 0; t < T; ++t) state[t] = kReady, start_thread(t);
        if (block_used_warps) {  // (per-block resets only where they matter: speed)
            for (unsigned t = 0; t < T; ++t) stamp[t] = 0, known[t] = {};
            block_used_warps = false;
        }
        if (block_used_async) {
            for (unsigned t = 0; t < T; ++t) async_copies[t].clear(), async_groups[t] = 0;
            block_used_async = false;
        }
        for (;;) {
            ++interval;
            ready.clear();
            for (unsigned t = 0; t < T; ++t)
                if (state[t] == kAtBarrier || state[t] == kReady) state[t] = kReady, ready.push_back(t);
            // Any ready thread may run next: the order within the interval, and at each
            // atomic or warp collective, is drawn.
            while (!ready.empty()) {
                const size_t i = ready.size() == 1 ? 0 : pick(ready.size());
                const unsigned t = ready[i];
                ready[i] = ready.back();
                ready.pop_back();
                cur = t;
                set_thread_index(t);
                to_thread(t);
                if (state[t] == kReady) ready.push_back(t);  // an atomic's scheduling point
                else if (state[t] == kAtWarp) try_complete(t);
            }
            size_t ended = 0, at_barrier = 0;
            for (unsigned t = 0; t < T; ++t) {
                if (state[t] == kAtWarp) { cur = t, set_thread_index(t); report_stuck(t); }
                ended += state[t] == kDone;
                at_barrier += state[t] == kAtBarrier;
            }
            if (ended == T) break;
            if (ended != 0) {
                fprintf(stderr, "cuda_emu: barrier divergence in kernel %s: %zu of %u threads "
                        "exited while others wait (block %u)\n", name, ended, T, unsigned(b));
                abort();
            }
        }
        check_canaries(unsigned(b));
    }
    in_launch = false;
}

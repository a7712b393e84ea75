/* inscount: counts the user-mode instructions a program executes between two markers, by
 * single-stepping it under ptrace. For machines where neither tool below works:
 *   - valgrind (callgrind's Ir) decodes no AVX-512 (3.19 stops on the first EVEX
 *     instruction), so it cannot count the avx512 path;
 *   - perf stat needs a PMU, which the 2-core VM does not expose ("<not supported>").
 *
 *   cc -O2 -o inscount tools/inscount.c
 *   inscount PROGRAM ARGS...
 *
 * The program marks the region itself: each SIGUSR1 it sends itself (os.kill(os.getpid(),
 * signal.SIGUSR1) in Python) is swallowed here and toggles counting, which starts off.
 * Between regions the program runs at full speed (PTRACE_CONT); inside, one step per
 * instruction (~30 us a step on the VM: about 30 k instructions a second). Prints one
 * line per region, "inscount: N", on stderr. Only the main thread is traced: run the
 * program single-threaded (OMP_NUM_THREADS=1). A rep-prefixed string instruction counts
 * once per iteration, as callgrind counts it.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: inscount PROGRAM ARGS...\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        execvp(argv[1], argv + 1);
        perror("inscount: exec");
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0); /* stopped at exec */
    int counting = 0, regions = 0;
    unsigned long long n = 0;
    int deliver = 0;
    for (;;) {
        if (ptrace(counting ? PTRACE_SINGLESTEP : PTRACE_CONT, pid, 0, (void*)(long)deliver) < 0) {
            perror("inscount: ptrace");
            return 1;
        }
        deliver = 0;
        if (waitpid(pid, &status, 0) < 0) {
            perror("inscount: waitpid");
            return 1;
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) break;
        const int sig = WSTOPSIG(status);
        if (sig == SIGTRAP) {
            n += counting;
        } else if (sig == SIGUSR1) {
            if (counting) fprintf(stderr, "inscount: %llu\n", n), ++regions;
            counting = !counting;
            n = 0;
        } else {
            deliver = sig; /* anything else goes to the program */
        }
    }
    if (counting) fprintf(stderr, "inscount: %llu (region not closed)\n", n);
    if (!regions && !counting) fprintf(stderr, "inscount: no region marked (send SIGUSR1 twice)\n");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

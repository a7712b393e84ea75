"""fastconv as a neighbour inside someone else's process (csrc/cpu/parallel.h): its parallel
regions run on the OpenMP pool's threads, the ones PyTorch's regions use too, never on
threads made and joined per call. Timing belongs to `fastconv bench --suite neighbour`;
these tests check the mechanism, which a timing on a noisy 2-core host could not."""

import os
import subprocess
import sys

import pytest

# A child process, so the thread count and the pool are its own: runs a GEMM-path
# convolution (tasks < 2 per thread: the GEMM itself is the parallel region) and prints
# the CPU ticks of the threads still alive afterwards, main thread first.
CHILD = r"""
import os, numpy as np, fastconv
x = np.random.default_rng(0).standard_normal(({n}, 64, 56, 56)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((256, 64, {r}, {r})).astype(np.float32)
for _ in range({calls}):
    fastconv.conv2d(x, w, padding={pad}, variant="gemm")
def ticks(tid):
    fields = open(f"/proc/self/task/{{tid}}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
main = os.getpid()
others = [t for t in map(int, os.listdir("/proc/self/task")) if t != main]
print(ticks(main), sum(ticks(t) for t in others), os.times().user + os.times().system)
"""


def _run_child(n, r, pad, calls):
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="passive")
    out = subprocess.run([sys.executable, "-c", CHILD.format(n=n, r=r, pad=pad, calls=calls)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    main, others, total = out.stdout.split()
    return int(main), int(others), float(total)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
@pytest.mark.parametrize("n, r, pad, calls", [(2, 1, 0, 300), (1, 3, 1, 40)], ids=["pointwise", "im2col"])
def test_the_gemm_runs_on_the_pools_threads_not_threads_made_per_call(n, r, pad, calls):
    """The second thread's share of a 2-thread GEMM stays with a thread that outlives the
    calls. When the GEMM's region was nested in an inactive one, libgomp gave it a new
    thread each call, which exited with its CPU time: the living threads then held ~0 of
    it (and beside PyTorch that new thread fought PyTorch's spinning pool thread)."""
    from fastconv import _cpu

    if _cpu.num_threads() < 2 and os.cpu_count() < 2:
        pytest.skip("one CPU: OpenMP may not make a second thread")
    main, others, total = _run_child(n, r, pad, calls)
    print("ticks: main", main, "others", others, "process seconds", total)
    assert main + others > 0
    # The split is static (half the C tiles each), so the pool's thread holds about half.
    assert others >= 0.25 * (main + others), (main, others, total)

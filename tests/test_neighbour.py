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


def test_work_is_shared_out_statically():
    """Every CPU work-sharing loop is static: thread t owns the same part in every call
    (parallel.h, "Same owner every call"). With schedule(dynamic), which thread wrote an
    image's output changed from call to call, and where the host put the two vCPUs on
    cores without a shared L3 LeNet C1 ran 1.40 ms instead of 0.65."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "csrc" / "cpu"
    found = [f"{p.name}:{i}: {line.strip()}"
             for p in sorted(root.glob("*.[ch]*"))
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"#pragma omp .*schedule\s*\(\s*(dynamic|guided|runtime|auto)", line)]
    assert not found, "work shared out dynamically:\n" + "\n".join(found)


PROBE = r"""
from fastconv import _cpu
print(_cpu.core_round_trip_ns(2000))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_the_placement_probe_times_a_round_trip_with_two_threads(threads):
    """core_round_trip_ns: a line's round trip between the pool's first two threads (what
    fastconv bench records beside every CPU row); 0 with one thread, never a hang."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ns = float(out.stdout)
    if threads == 1:
        assert ns == 0.0
    else:
        assert 1.0 < ns < 1e6, ns  # 75-390 ns on the 2-vCPU Zen 5 VM

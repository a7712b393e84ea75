"""Instruction counts of the CPU GEMM on each ISA path (csrc/cpu/isa.h), one thread: the
before/after figure for a path change on a machine whose wall clock cannot be trusted
(shared, or stopped and resumed by others). Counts are exact and repeatable; they are not
time (a zmm FMA and a ymm FMA count alike), so they bound the work, not the speed.

    python benchmarks/isa_counts.py                    # the shapes of gemm.cpp's header
    python benchmarks/isa_counts.py --shapes 16x100x150 --isas avx2,portable

Two counters, each where it works:
  callgrind  valgrind's Ir inside fastconv::cpu::gemm, two calls less one call, for
             the avx2 and portable paths: valgrind decodes no AVX-512.
  inscount   tools/inscount.c, ptrace single steps between two SIGUSR1 markers around the
             second call (about 30 k instructions a second on the 2-core VM), every path.
A K that is a whole number (3 or more) of the path's KC blocks is counted by inscount as
c(KC) + (K/KC - 1) * (c(2 KC) - c(KC)) where M*N*K > --extrapolate-over (5e7): each
later KC block repeats the same packing and kernels exactly (no branch depends on data
or addresses), and callgrind's full-K count checks the rule on the avx2 path.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's fastconv, not an installed one
SHAPES = ["256x3136x64", "64x3136x576", "512x196x4608", "16x100x150"]  # M x N x K
KC = {"avx512": 192, "avx2": 256, "portable": 256}  # csrc/cpu/gemm.cpp, float


def child(M, N, K, dtype, calls):
    """calls - 1 warm-up GEMMs (scratch allocation, the path's static), then the counted one."""
    import numpy as np

    from fastconv import _cpu

    rng = np.random.default_rng(0)
    A = rng.standard_normal((M, K)).astype(dtype)
    B = rng.standard_normal((K, N)).astype(dtype)
    C = np.empty((M, N), dtype)
    args = (False, False, M, N, K, dtype, A.ctypes.data, K, B.ctypes.data, N, 0.0, C.ctypes.data, N)
    signal.signal(signal.SIGUSR1, lambda *_: None)  # harmless when no counter is attached
    for _ in range(calls - 1):
        _cpu.gemm(*args)
    os.kill(os.getpid(), signal.SIGUSR1)
    _cpu.gemm(*args)
    os.kill(os.getpid(), signal.SIGUSR1)
    print(_cpu.isa())


def env_for(isa):
    return dict(os.environ, FASTCONV_CPU_ISA=isa, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(sys.path))


def inscount_binary():
    out = Path(tempfile.gettempdir()) / "fastconv-inscount"
    src = ROOT / "tools" / "inscount.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-o", str(out), str(src)], check=True)
    return out


def run_inscount(isa, M, N, K, dtype):
    cmd = [str(inscount_binary()), sys.executable, __file__, "--child", f"{M}x{N}x{K}", dtype, "2"]
    p = subprocess.run(cmd, env=env_for(isa), capture_output=True, text=True)
    counts = re.findall(r"inscount: (\d+)", p.stderr)
    if p.returncode or p.stdout.split()[-1:] != [isa] or len(counts) != 1:
        raise RuntimeError(f"inscount {isa} {M}x{N}x{K}: {p.stdout}\n{p.stderr}")
    return int(counts[0])


def run_callgrind(isa, M, N, K, dtype):
    """Ir inside fastconv::cpu::gemm: a run with two calls less a run with the first alone."""
    if not shutil.which("valgrind"):
        return None
    totals = []
    for calls in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            fn = f"*fastconv::cpu::gemm<{'float' if dtype == 'float32' else 'double'}>(*"
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out",
                   "--collect-atstart=no", f"--toggle-collect={fn}",
                   sys.executable, __file__, "--child", f"{M}x{N}x{K}", dtype, str(calls)]
            p = subprocess.run(cmd, env=env_for(isa), capture_output=True, text=True)
            if p.returncode or p.stdout.split()[-1:] != [isa]:
                raise RuntimeError(f"callgrind {isa} {M}x{N}x{K}: {p.stdout}\n{p.stderr[-2000:]}")
            totals.append(int(re.search(r"^totals: (\d+)", Path(d, "cg.out").read_text(), re.M).group(1)))
    return totals[1] - totals[0]


def count(isa, M, N, K, dtype, extrapolate_over):
    """inscount of one call, extrapolated over whole KC blocks where K is large."""
    kc = KC[isa]  # the same for float and double
    blocks = K // kc
    if K % kc == 0 and blocks > 2 and M * N * K > extrapolate_over:
        one, two = run_inscount(isa, M, N, kc, dtype), run_inscount(isa, M, N, 2 * kc, dtype)
        return one + (blocks - 1) * (two - one), f"c({kc}) + {blocks - 1} x (c({2 * kc}) - c({kc}))"
    return run_inscount(isa, M, N, K, dtype), "direct"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=3, metavar=("MxNxK", "DTYPE", "CALLS"), help=argparse.SUPPRESS)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--isas", default="avx512,avx2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--counters", default="inscount,callgrind")
    ap.add_argument("--extrapolate-over", type=float, default=5e7,
                    help="M*N*K above which inscount extrapolates over KC blocks")
    a = ap.parse_args()
    if a.child:
        return child(*map(int, a.child[0].split("x")), a.child[1], int(a.child[2]))
    from fastconv import _cpu

    have = _cpu.supported_isas()
    print(f"# single thread, {a.dtype}; this CPU supports {', '.join(have)}")
    print(f"{'shape (M x N x K)':20s} {'isa':9s} {'callgrind Ir':>14s} {'inscount':>14s}  how")
    for shape in a.shapes.split(","):
        M, N, K = map(int, shape.split("x"))
        for isa in a.isas.split(","):
            if isa not in have:
                print(f"{shape:20s} {isa:9s} skipped: this CPU lacks it")
                continue
            cg = run_callgrind(isa, M, N, K, a.dtype) if "callgrind" in a.counters and isa != "avx512" else None
            ic, how = count(isa, M, N, K, a.dtype, a.extrapolate_over) if "inscount" in a.counters else (None, "")
            fmt = lambda v: f"{v:14,d}" if v is not None else f"{'-':>14s}"
            print(f"{shape:20s} {isa:9s} {fmt(cg)} {fmt(ic)}  {how}", flush=True)


if __name__ == "__main__":
    main()

"""Instruction counts (valgrind's callgrind, "Ir") of CPU conv2d variants on named 3x3 layers.

    python benchmarks/callgrind_conv.py                     the table below, every shape
    python benchmarks/callgrind_conv.py --shapes lenet_3x3 --variants gemm winograd4
    python benchmarks/callgrind_conv.py --breakdown         also Ir by kernel function

A count, unlike a time, does not move when other processes share the machine, so it is
the evidence this VM can give; it is not a time (a GEMM's FMAs retire faster than a
transform's scattered stores). Each (shape, variant) runs in its own valgrind process,
single thread (OMP_NUM_THREADS=1): the layer is called twice, callgrind collects inside
fastconv::cpu::conv2d_fwd only and dumps after each call, and the second call's count is
reported (the first pays one-time setup). Needs valgrind (apt-get install valgrind).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (N, C, H, W, K), 3x3, stride 1, padding 1. ResNet-50's four 3x3 layers at batch 1
# and a LeNet-sized 3x3 layer (LeNet-5's C2 with a 3x3 kernel, padding 1, batch 16).
SHAPES = {
    "resnet_l1_3x3": (1, 64, 56, 56, 64),
    "resnet_l2_3x3": (1, 128, 28, 28, 128),
    "resnet_l3_3x3": (1, 256, 14, 14, 256),
    "resnet_l4_3x3": (1, 512, 7, 7, 512),
    "lenet_3x3": (16, 6, 14, 14, 16),
}
VARIANTS = ("gemm", "winograd2", "winograd4")

CHILD = """
import sys
import numpy as np
import fastconv
N, C, H, W, K = {shape}
rng = np.random.default_rng(0)
x = rng.standard_normal((N, C, H, W)).astype("{dtype}")
w = rng.standard_normal((K, C, 3, 3)).astype("{dtype}")
for _ in range(2):
    fastconv.conv2d(x, w, padding=1, variant="{variant}")
"""

# The entry point measured. Valgrind 3.19 matches --dump-after against the whole name, so
# the pattern starts with the return type; and the same pattern given to --toggle-collect
# as well loses the dumps (seen: one output file), so that one is spelt differently.
FUNCTION = "void fastconv::cpu::conv2d_fwd*"

# --breakdown: self cost (Ir in the function itself, callees apart) of the functions whose
# names contain these, summed. Inlined code counts in its caller: gather_band and
# scatter_band inline into winograd.cpp's per-chunk lambda ("chunk loop" below).
PARTS = {"GEMM micro-kernel": "kernel_avx2", "GEMM packing": "pack", "GEMM loops": "gemm_rect",
         "im2col": "im2col_nchw", "filter transform": "filter_run",
         "input transform": "input_run", "output transform": "output_run",
         "NCHW transposes": "transpose", "chunk loop (gather, scatter)": "tiles_conv",
         "memset / memcpy": "mem",
         "bias / activation": "bias_activation"}


def self_costs(path):
    """{function name: self Ir} from a callgrind output file (name compression on)."""
    names, costs, fn, skip = {}, {}, None, False
    for line in Path(path).read_text().splitlines():
        if line.startswith("fn="):
            m = re.match(r"fn=\((\d+)\)(?: (.*))?", line)
            if m.group(2):
                names[m.group(1)] = m.group(2)
            fn = names.get(m.group(1), m.group(1))
        elif line.startswith("calls="):
            skip = True  # the next cost line is the call's inclusive cost
        elif fn and line[:1] in "0123456789+-*":
            if skip:
                skip = False
            elif len(line.split()) > 1:  # "position cost"; zero costs are left out
                costs[fn] = costs.get(fn, 0) + int(line.split()[1])
        elif line.startswith(("cfn=", "cfi=", "cob=")) and "(" in line:
            m = re.match(r"c?fn=\((\d+)\) (.*)", line)
            if m:
                names[m.group(1)] = m.group(2)
    return costs


def count(shape, variant, dtype, breakdown):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               "--collect-atstart=no", "--toggle-collect=*cpu::conv2d_fwd*",
               f"--dump-after={FUNCTION}", sys.executable, "-c",
               CHILD.format(shape=shape, variant=variant, dtype=dtype)]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"valgrind failed: {r.stderr[-2000:]}")
        dumps = sorted(Path(tmp).glob("cg.out.*"), key=lambda p: int(p.name.split(".")[-1]))
        last = dumps[-1]  # the second call
        total = None
        for line in last.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
        parts = {}
        if breakdown:
            for fn, ir in self_costs(last).items():
                part = next((p for p, key in PARTS.items() if key in fn), "other")
                parts[part] = parts.get(part, 0) + ir
        return total, parts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--batch", type=int, help="N for every shape instead of the table's")
    ap.add_argument("--breakdown", action="store_true", help="Ir of the main kernel functions")
    args = ap.parse_args()
    print(f"Ir of one conv2d call, {args.dtype}, NCHW, 3x3 stride 1 padding 1, OMP_NUM_THREADS=1")
    for name in args.shapes:
        base, shape = None, SHAPES[name]
        if args.batch:
            shape = (args.batch, *shape[1:])
        for v in args.variants:
            total, parts = count(shape, v, args.dtype, args.breakdown)
            base = base or total
            print(f"{name:14s} {str(shape):24s} {v:10s} {total / 1e6:10.1f} M   "
                  f"{base / total:5.2f}x fewer than {args.variants[0]}", flush=True)
            for part, ir in sorted(parts.items(), key=lambda kv: -kv[1]):
                print(f"{'':16s}{part:30s} {ir / 1e6:8.2f} M")


if __name__ == "__main__":
    main()

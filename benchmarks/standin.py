"""Stand-ins for what only a GPU machine has, so `gpu_check.py --dry-run` runs every step
of the GPU check here, on the CPU, before any device time is spent.

  python benchmarks/standin.py sanitizer --tool TOOL -- COMMAND...
      runs COMMAND as compute-sanitizer would (its output passed through, its exit
      status returned), framed by the tool's banner and the clean summary recorded in
      tests/data/sanitizer/ (what the parser reads; the recorded dirty and crashed runs
      are the CPU tests' business).
  python benchmarks/standin.py bench ARGS...
      `fastconv bench ARGS` with --device cuda answered by the GPU harness on CPU
      tensors: tiny shapes, a timer that calls each side as the CUDA timer would and
      reports fixed times, fixed ceilings. Everything but the CUDA events, graphs and
      peers (cuDNN, cupyx) runs: the suites, error rows, the JSON, the table, the plot.
  python benchmarks/standin.py sweep ARGS...
      `fastconv sweep ARGS` likewise: the tiny layers, the CPU backend's variants (the
      half types refused as the CPU refuses them), fixed times, the JSON and the table.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "tests" / "data" / "sanitizer"

TINY = {
    "LENET": {"lenet_c1": (4, 1, 12, 12, 3, 5, 1, 2, 1)},
    "RESNET50": {"r50_3x3": (2, 4, 9, 9, 5, 3, 2, 1, 1)},
    "DEPTHWISE": {"dw": (2, 4, 9, 9, 4, 3, 1, 1, 4)},
    "POOL": {"max": ("max", (2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
             "avg": ("avg", (2, 3, 8, 8), dict(kernel_size=2)),
             "gap": ("gap", (2, 5, 3, 3), {})},
    "SOBEL": {"img": (17, 19), "batch": (3, 11, 13)},
    "TRAIN_BATCHES": (4, 8),
    "NEIGHBOUR": {"conv": ("conv", (2, 4, 9, 9, 5, 1, 1, 0, 1)), "pool": ("pool", (2, 3, 9, 9)),
                  "block": ("block", (4, 3, 12, 12, 4, 5, 1, 0, 1))},
    # The smaller real model alone, at 32x32 (quick: 16x16), batch 2 (train-mode batch
    # norm needs more than one value per channel; the last maps are 1x1 here). ResNet-50
    # adds no code path and ~20 s on the 2-core machine.
    "MODELS": {"mobilenet_v3_small": 32},
    "MODEL_BATCHES": (2,),
}


def tiny_shapes(setattr_):
    """Shrinks the bench tables; setattr_ is setattr or pytest's monkeypatch.setattr."""
    from fastconv import bench

    for name, value in TINY.items():
        setattr_(bench, name, value)


class StandInTimer:
    """Calls each side a few times, as the CUDA timer would, and reports fixed times."""

    l2_bytes = 50 << 20

    def __init__(self, torch=None):
        self.torch, self.calls = torch, 0

    def eager(self, ours, theirs):
        for i in range(3):
            ours(i), theirs(i)
            self.calls += 2
        return 1e-3, 2e-3

    def first(self, ours, theirs):
        ours(0), theirs(0)
        self.calls += 2
        return 1e-3, 2e-3

    def device(self, ours, theirs):
        self.eager(ours, theirs)
        return 1e-3, 2e-3, ("loop", "loop")

    def device_many(self, fns, rounds=None):
        for fn in fns:
            for i in range(3):
                fn(i)
            self.calls += 3
        return [(1e-3 * (1 + j % 3), "loop") for j in range(len(fns))]


CEILINGS = {"copy_GBps": 10.0, "fp32_TFLOPs": 1.0, "tf32_TFLOPs": 1.5, "bf16_TFLOPs": 2.0}


def _standin_run(suites, quick=False, repeat=None):
    import torch

    from fastconv import bench_gpu

    gen = torch.Generator().manual_seed(0)
    rows = bench_gpu.suites_rows(suites, quick, torch, StandInTimer(torch), gen, CEILINGS)
    env = {"name": "stand-in (CPU tensors, fixed times)", "driver": None, "cuda": None,
           "cudnn": None, "torch": torch.__version__, "l2_bytes": StandInTimer.l2_bytes}
    return dict(CEILINGS), rows, env


def bench(args):
    from fastconv import bench_gpu, cli

    tiny_shapes(setattr)
    bench_gpu.run = _standin_run
    cli._device = lambda device: None  # the stand-in answers --device cuda
    return cli.main(["bench", *args])


def sweep(args):
    """`fastconv sweep ARGS` answered on CPU tensors: the tiny layers, the CPU backend's
    variants, fixed times; the JSON and the table fragment as on a card."""
    import torch

    from fastconv import cli, sweep as sweep_

    tiny_shapes(setattr)
    real = sweep_.run
    env = {"name": "stand-in (CPU tensors, fixed times)", "cuda": None, "cudnn": None,
           "torch": torch.__version__, "l2_bytes": StandInTimer.l2_bytes}

    def run(quick=False, log=print, **_):
        return real(quick=quick, timer=StandInTimer(torch), torch=torch,
                    gen=torch.Generator().manual_seed(0), env=env, log=log)

    sweep_.run = run
    cli._device = lambda device: None
    return cli.main(["sweep", *args])


def sanitizer(args):
    if len(args) < 4 or args[0] != "--tool" or args[2] != "--":
        sys.exit("usage: standin.py sanitizer --tool TOOL -- COMMAND...")
    tool, command = args[1], args[3:]
    clean = (RECORDED / f"{tool}-clean.txt").read_text().splitlines()
    print(clean[0], flush=True)  # the banner
    rc = subprocess.run(command).returncode
    print("\n".join(line for line in clean[1:] if line.startswith("=")), flush=True)
    return rc


if __name__ == "__main__":
    verb, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    verbs = {"sanitizer": sanitizer, "bench": bench, "sweep": sweep}
    if verb not in verbs:
        sys.exit("usage: standin.py sanitizer --tool TOOL -- COMMAND... | bench ARGS... | "
                 "sweep ARGS...")
    sys.exit(verbs[verb](rest))

"""The CUDA kernel sources, run on the CPU by tools/cuda_emu against their CPU twins.

Not a GPU proof (see tools/cuda_emu/README.md): it catches semantic slips in the
kernels (indices, borders, reductions, barriers) on machines without a GPU.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "tools" / "cuda_emu" / "run.sh"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cuda_kernels_match_cpu_twins_under_emulation(tmp_path):
    r = subprocess.run(["bash", str(RUN), str(tmp_path)], capture_output=True, text=True,
                       timeout=1200)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, f"emulated CUDA kernels differ from the CPU twins:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert last.endswith("0 failures") and int(last.split()[0]) > 1000, last

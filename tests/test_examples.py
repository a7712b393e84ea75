"""The examples run as a user runs them (a subprocess, tiny sizes) and do what they say."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

ROOT = Path(__file__).resolve().parent.parent


def test_convert_resnet50_example_converts_and_trains():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "convert_resnet50.py"),
                          "--steps", "3", "--size", "64", "--batch", "4", "--channels-last"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "converted 55 modules, left 0" in out  # ResNet-50: 53 convolutions and 2 pools
    assert float(re.search(r"relative difference (\S+)", out).group(1)) < 1e-4
    losses = [float(v) for v in re.findall(r"loss (\S+),", out)]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0], out

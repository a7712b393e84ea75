"""The benchmark harness runs: the CPU rows end to end on tiny shapes, and the GPU
harness's suites on CPU tensors with a stand-in timer (everything but CUDA events and
graphs), so a GPU session does not spend its device time on a typo."""

import json

import pytest

torch = pytest.importorskip("torch")

from fastconv import bench, bench_gpu  # noqa: E402
from fastconv.cli import main  # noqa: E402

ROW_KEYS = {"suite", "case", "op", "dtype", "layout", "mode", "fastconv_ms", "peer", "peer_ms",
            "speedup", "achieved", "unit", "of_ceiling"}


@pytest.fixture
def tiny_shapes(monkeypatch):
    monkeypatch.setattr(bench, "LENET", {"lenet_c1": (4, 1, 12, 12, 3, 5, 1, 2, 1)})
    monkeypatch.setattr(bench, "RESNET50", {"r50_3x3": (2, 4, 9, 9, 5, 3, 2, 1, 1)})
    monkeypatch.setattr(bench, "DEPTHWISE", {"dw": (2, 4, 9, 9, 4, 3, 1, 1, 4)})
    monkeypatch.setattr(bench, "POOL", {
        "max": ("max", (2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
        "avg": ("avg", (2, 3, 8, 8), dict(kernel_size=2)),
        "gap": ("gap", (2, 5, 3, 3), {})})
    monkeypatch.setattr(bench, "SOBEL", {"img": (17, 19), "batch": (3, 11, 13)})
    monkeypatch.setattr(bench, "TRAIN_BATCHES", (4, 8))


class StandInTimer:
    """Calls each side a few times, as the CUDA timer would, and reports fixed times."""

    def __init__(self):
        self.calls = 0

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


def test_gpu_harness_suites_on_cpu_tensors(tiny_shapes):
    timer = StandInTimer()
    gen = torch.Generator().manual_seed(0)
    ceilings = {"copy_GBps": 10.0, "fp32_TFLOPs": 1.0, "bf16_TFLOPs": 2.0}
    rows = bench_gpu.suites_rows(bench.SUITES, False, torch, timer, gen, ceilings)
    assert {r["suite"] for r in rows} == set(bench.SUITES)
    for r in rows:
        assert ROW_KEYS <= set(r), r
        assert r["speedup"] == pytest.approx(2.0) and r["of_ceiling"] > 0
    modes = {(r["suite"], r["mode"]) for r in rows}
    assert ("lenet", "device") in modes and ("pool", "eager") in modes
    assert ("resnet50", "first") in modes and ("backward", "first") in modes
    assert {r["op"] for r in rows if r["suite"] == "lenet"} == {"conv2d", "conv2d_bias_tanh"}
    assert {r["op"] for r in rows if r["suite"] == "resnet50"} == {"conv2d", "conv2d_bias_relu"}
    assert {r["layout"] for r in rows if r["suite"] == "pool"} == {"NCHW", "NHWC"}
    assert {r["op"] for r in rows if r["suite"] == "train"} == {"conv2d_avgpool_fwd_bwd",
                                                                "train_step"}
    assert timer.calls > 100
    bench._label(rows[0])


def test_cpu_bench_command_writes_json_and_plot(tiny_shapes, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["bench", "--device", "cpu", "--quick", "--json", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert {"commit", "date", "device", "ceilings", "rows"} <= set(result)
    assert {r["suite"] for r in result["rows"]} == set(bench.SUITES)
    assert all(ROW_KEYS <= set(r) for r in result["rows"])
    assert png.stat().st_size > 1000
    assert "speedup" in capsys.readouterr().out

"""The benchmark harness runs: the CPU rows end to end on tiny shapes, and the GPU
harness's suites on CPU tensors with a stand-in timer (everything but CUDA events and
graphs), so a GPU session does not spend its device time on a typo."""

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fastconv import bench, bench_gpu  # noqa: E402
from fastconv.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import standin  # noqa: E402

ROW_KEYS = {"suite", "case", "op", "dtype", "layout", "mode", "fastconv_ms", "peer", "peer_ms",
            "speedup", "achieved", "unit", "of_ceiling"}


@pytest.fixture
def tiny_shapes(monkeypatch):
    standin.tiny_shapes(monkeypatch.setattr)


StandInTimer = standin.StandInTimer


def test_gpu_harness_suites_on_cpu_tensors(tiny_shapes):
    timer = StandInTimer(torch)
    gen = torch.Generator().manual_seed(0)
    gpu_suites = set(bench.SUITES) - set(bench.CPU_SUITES)
    rows = bench_gpu.suites_rows(sorted(gpu_suites), False, torch, timer, gen, standin.CEILINGS)
    assert {r["suite"] for r in rows} == gpu_suites
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
    models = {(r["case"], r["op"]) for r in rows if r["suite"] == "models"}
    assert models == {("mobilenet_v3_small_32_b2", op) for op in ("forward", "forward_backward")}
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
    # Where the threads sat when each row was timed (cpu/parallel.h): beside every CPU row.
    assert result["ceilings"]["core_rtt_ns"] >= 0
    assert all(r["core_rtt_ns"] >= 0 for r in result["rows"])
    assert bench._placement_probe is None  # not left on for rows made outside run()
    assert {r["op"] for r in result["rows"] if r["suite"] == "pool"} >= {
        "max_pool2d_indices", "max_pool2d_backward", "avg_pool2d_backward",
        "global_avg_pool2d_backward"}
    r50 = {r["case"] for r in result["rows"] if r["suite"] == "resnet50"}
    assert r50 == set(bench.RESNET50) | {f"{c}_b1" for c in bench.RESNET50}
    neighbour = [r for r in result["rows"] if r["suite"] == "neighbour"]
    assert {(r["case"], r["mode"]) for r in neighbour} == {
        (case, mode) for case in bench.NEIGHBOUR for mode in ("alone", "alternating")}
    for r in neighbour:
        assert r["slowdown"]["fastconv"] > 0 and r["slowdown"]["peer"] > 0
        if r["mode"] == "alone":
            assert r["slowdown"] == {"fastconv": 1.0, "peer": 1.0}
    assert png.stat().st_size > 1000
    out = capsys.readouterr().out
    assert "speedup" in out and "x alone: fastconv" in out


def test_cpu_only_suites_are_refused_on_the_gpu_harness():
    with pytest.raises(ValueError, match="unknown GPU suite 'neighbour'"):
        bench_gpu.suites_rows(["neighbour"], False, torch, StandInTimer(torch),
                              torch.Generator(), standin.CEILINGS)


def test_gpu_rows_say_how_they_were_timed_and_a_failing_case_does_not_stop_the_run(
        tiny_shapes, monkeypatch):
    real = bench_gpu.ops.conv2d

    def conv2d(x, w, *args, **kw):
        if x.shape[1] == 4 and kw.get("activation") == "relu":  # the resnet50 case, fused
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(x, w, *args, **kw)

    monkeypatch.setattr(bench_gpu.ops, "conv2d", conv2d)
    gen = torch.Generator().manual_seed(0)
    rows = bench_gpu.suites_rows(["resnet50", "pool"], False, torch, StandInTimer(torch), gen,
                                 standin.CEILINGS)
    errors = [r for r in rows if r["mode"] == "error"]
    assert [(r["op"], r["failed_mode"]) for r in errors] == [("conv2d_bias_relu", "eager"),
                                                            ("conv2d_bias_relu", "device")]
    assert "illegal memory access" in errors[0]["error"]
    assert {r["suite"] for r in rows if r["mode"] != "error"} == {"resnet50", "pool"}
    for r in rows:
        if r["mode"] != "error":
            assert set(r["timing"]) == {"fastconv", "peer"}
            assert ("l2_resident" in r) == (r["mode"] == "device")
    result = {"commit": "x", "date": "d", "ceilings": standin.CEILINGS, "rows": rows,
              "device": {"name": "stand-in", "driver": None, "cuda": None, "torch": "t"}}
    table = bench.format_table(result)
    assert "illegal memory access" in table and "loop/loop" in table


def test_input_copies_span_twice_the_l2_at_most_one_per_graph_call():
    l2 = 60 << 20
    assert bench_gpu._copies(1 << 20, l2) == 20  # small: one per call
    assert bench_gpu._copies(40 << 20, l2) == 3  # 120 MB of copies
    assert bench_gpu._copies(1 << 30, l2) == 1
    assert bench_gpu._l2_resident(1 << 20, 20, l2) and not bench_gpu._l2_resident(40 << 20, 3, l2)


def test_the_bench_names_the_commit_it_was_given(monkeypatch):
    monkeypatch.setenv("FASTCONV_COMMIT", "c0ffee" * 6 + "1234")
    assert bench._environment()[0] == "c0ffee" * 6 + "1234"

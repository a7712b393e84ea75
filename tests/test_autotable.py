"""auto's measured table (fastconv/_autotable.py) and the sweep that writes it
(fastconv/sweep.py): the layer classes, the choice per class, the merge, and the lookup a
GPU call makes. The sweep's run on a card is benchmarks/gpu_check.py's; its dry run
(tests/test_gpu_check.py) goes through the same code on CPU tensors."""

import json

import pytest

from fastconv import _autotable, bench, sweep


def test_layer_classes_separate_what_a_variant_speed_depends_on():
    cls = lambda name, op="fwd", layout="NCHW", dtype="float32", prec="tf32": (  # noqa: E731
        _autotable.layer_class(op, sweep.params_of(sweep.layers()[name], layout), dtype, prec))
    assert cls("r50_l2_3x3") == "fwd/float32-tf32/NCHW/dense/3x3s1/wide/large"
    assert cls("r50_l2_3x3") == cls("r50_l4_3x3")  # one class: one choice for both
    assert cls("r50_l2_3x3_b1").endswith("/small")
    assert cls("r50_l2_3x3s2") == "fwd/float32-tf32/NCHW/dense/3x3s2+/wide/large"
    assert cls("r50_l1_1x1", layout="NHWC", dtype="bfloat16", prec=None) == \
        "fwd/bfloat16/NHWC/dense/1x1s1/wide/large"
    assert cls("lenet_c1", op="bwd_data", prec="strict") == \
        "bwd_data/float32-strict/NCHW/dense/others1/narrow/small"
    assert cls("dw3x3_mbv2").split("/")[3] == "depthwise"
    assert cls("r50_conv1").split("/")[4] == "others2+"


def _choice(layer, times, op="fwd", mode="tf32"):
    best = min(times, key=times.get)
    return dict(layer=layer, shape=list(sweep.layers()[layer]), op=op, layout="NCHW",
                dtype="float32", mode=mode, variant=best, ms=times[best], times=times)


def test_a_class_takes_the_least_geometric_slowdown_among_variants_measured_on_all_its_layers():
    best = [_choice("r50_l2_3x3", {"implicit_gemm": 1.0, "winograd2": 0.9, "direct": 5.0}),
            _choice("r50_l3_3x3", {"implicit_gemm": 1.0, "winograd2": 1.5, "direct": 5.0}),
            _choice("r50_l4_3x3", {"implicit_gemm": 1.0, "winograd4": 0.1, "direct": 5.0})]
    frag = sweep.table_fragment("Card X", best, commit="abc")
    (entry,) = frag["cards"]["Card X"]["classes"].values()
    # winograd4 is fastest on one layer but was not measured on the others; winograd2
    # loses 1.5x on l3 for 0.9x on l2 (geomean 1.23x vs implicit_gemm's 1.11x).
    assert entry["variant"] == "implicit_gemm"
    assert entry["layers"] == ["r50_l2_3x3", "r50_l3_3x3", "r50_l4_3x3"]
    assert frag["cards"]["Card X"]["commit"] == "abc"


def test_choices_count_a_precision_free_variant_in_every_float32_mode():
    rows = []
    for variant, prec, ms in (("implicit_gemm", "strict", 2.0), ("implicit_gemm", "tf32", 0.5),
                              ("implicit_gemm", "3xtf32", 1.5), ("winograd2", "strict", 1.0)):
        rows.append(dict(layer="r50_l2_3x3", shape=[1], layout="NCHW", dtype="float32", op="fwd",
                         variant=variant, precision=prec, side="fastconv", ms=ms))
    rows.append(dict(layer="r50_l2_3x3", shape=[1], layout="NCHW", dtype="float32", op="fwd",
                     variant=None, precision="tf32", side="cudnn-tf32", ms=1.0))
    got = {c["mode"]: c for c in sweep.choices(rows)}
    assert got["strict"]["variant"] == "winograd2" and got["strict"]["peer_ms"] is None
    assert got["tf32"]["variant"] == "implicit_gemm" and got["tf32"]["speedup"] == 2.0
    assert got["3xtf32"]["variant"] == "winograd2"
    assert got["3xtf32"]["times"] == {"implicit_gemm": 1.5, "winograd2": 1.0}


class _FakeModule:
    conv2d_variants = ("direct", "implicit_gemm", "depthwise")

    @staticmethod
    def device_info(index):
        return {"name": "Card X"}


class _FakeBackend:
    module, dtype, device, is_cuda = _FakeModule, "float32", ("cuda", 7), True


def test_auto_reads_the_cards_table_and_keeps_its_rules_where_the_table_is_silent(
        tmp_path, monkeypatch):
    path = tmp_path / "autotable.json"
    params = sweep.params_of(sweep.layers()["r50_l2_3x3"], "NCHW")
    key = _autotable.layer_class("fwd", params, "float32", "tf32")
    frag = {"cards": {"Card X": {"classes": {key: {"variant": "direct"}}}}}
    assert _autotable.merge(frag, path) == ["Card X"]
    _autotable.merge({"cards": {"Card Y": {"classes": {}}}}, path)  # another card kept apart
    table = json.loads(path.read_text())
    assert set(table["cards"]) == {"Card X", "Card Y"} and "about" in table
    monkeypatch.setattr(_autotable, "TABLE", path)
    monkeypatch.setattr(_autotable, "_names", {})
    choose = lambda *a: _autotable.choose(_FakeBackend, *a)  # noqa: E731
    assert choose("fwd", "auto", params, "tf32") == "direct"
    assert choose("fwd", "implicit_gemm", params, "tf32") == "implicit_gemm"  # asked for
    assert choose("fwd", "auto", params, "strict") == "auto"  # no entry: the kernel rules
    assert choose("bwd_data", "auto", params, "tf32") == "auto"
    # A name this build lacks (a table from a newer build) leaves auto to the rules.
    key2 = _autotable.layer_class("fwd", params, "float32", "strict")
    _autotable.merge({"cards": {"Card X": {"classes": {key2: {"variant": "winograd9"}}}}}, path)
    assert choose("fwd", "auto", params, "strict") == "auto"


def test_no_table_means_the_rules(tmp_path, monkeypatch):
    monkeypatch.setattr(_autotable, "TABLE", tmp_path / "missing.json")
    params = sweep.params_of(bench.RESNET50["r50_l1_1x1"], "NHWC")
    assert _autotable.choose(_FakeBackend, "fwd", "auto", params, "tf32") == "auto"


@pytest.mark.parametrize("name", sorted(sweep.layers()))
def test_the_sweep_params_match_the_argument_checks(name):
    """params_of builds what fastconv/_args.py builds for the same layer."""
    from fastconv import _args

    shape = sweep.layers()[name]
    N, C, H, W, K, R, stride, pad, groups = shape
    got = sweep.params_of(shape, "NCHW")
    want, _ = _args.conv2d("t", (N, C, H, W), (K, C // groups, R, R), None, stride, pad, 1,
                           groups, None, "NCHW")
    assert {k: want[k] for k in got} == got

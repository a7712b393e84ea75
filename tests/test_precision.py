"""precision=: the GPU's float32 arithmetic ("strict", "tf32", "3xtf32"; None: PyTorch's
default, read from torch.backends.cudnn.allow_tf32 at every call). The resolution rule
and its reach into every op's params (through a recording stand-in for the GPU binding),
the CPU's strict float32 whatever is asked, the checks, and on a GPU every precision x
layout x variant against the reference with a bound per precision."""

import sys

import numpy as np
import pytest

import fastconv
from fastconv import _args
from fastconv import reference as ref
from conftest import BACKENDS, assert_close, random, to_backend, to_numpy
from test_errors import raises

PRECISIONS = ("strict", "tf32", "3xtf32")


def _cudnn_tf32(on):
    """torch.backends.cudnn.allow_tf32 set to `on` for a with-block, the other flags kept."""
    import torch

    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                       deterministic=cudnn.deterministic, allow_tf32=on)


# ----------------------------------------------------------------------- resolution


def test_none_resolves_to_strict_under_the_tests():
    """conftest runs the torch peers in strict float32 (allow_tf32 False): precision=None
    then means "strict", so the GPU tests written before precision= keep their meaning."""
    torch = pytest.importorskip("torch")
    assert not torch.backends.cudnn.allow_tf32
    assert _args.default_precision() == "strict"


def test_none_follows_the_torch_flag_and_is_tf32_without_torch(monkeypatch):
    pytest.importorskip("torch")
    with _cudnn_tf32(True):
        assert _args.default_precision() == "tf32"
        assert _args.precision("conv2d", None) == PRECISIONS.index("tf32")
    with _cudnn_tf32(False):
        assert _args.default_precision() == "strict"
        assert _args.precision("conv2d", None) == PRECISIONS.index("strict")
    monkeypatch.delitem(sys.modules, "torch")  # as if torch were never imported
    assert _args.default_precision() == "tf32"


def _conv_calls(fake, name="conv2d_fwd"):
    return [args for fn, args in fake.calls if fn == name]


def test_every_precision_reaches_the_forward_params(fake_gpu):
    rng = np.random.default_rng(0)
    x, w = random(rng, (2, 3, 7, 6), "float32"), random(rng, (4, 3, 3, 3), "float32")
    for p in PRECISIONS:
        fastconv.conv2d(x, w, precision=p)
    assert [c[0]["precision"] for c in _conv_calls(fake_gpu)] == [0, 1, 2]


def test_the_plan_cache_keys_on_the_resolved_precision(fake_gpu):
    """One call plan per resolved precision: a flag turned between two calls with the
    same arrays changes what the second call runs."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, w = random(rng, (2, 3, 7, 6), "float32"), random(rng, (4, 3, 3, 3), "float32")
    dy = random(rng, (2, 4, 5, 4), "float32")
    for on in (True, False, True):
        with _cudnn_tf32(on):
            fastconv.conv2d(x, w)
            fastconv.conv2d_backward(dy, x, w)
            fastconv.conv2d_avgpool(x, w, pool=2)
            fastconv.conv2d_avgpool_backward(dy[:, :, :2, :2], x, w, pool=2)
    want = [1, 0, 1]
    twice = [p for p in want for _ in range(2)]  # conv2d's backward, then the block's
    assert [c[0]["precision"] for c in _conv_calls(fake_gpu)] == want
    assert [c[0]["precision"] for c in _conv_calls(fake_gpu, "conv2d_bwd_data")] == twice
    assert [c[0]["precision"] for c in _conv_calls(fake_gpu, "conv2d_bwd_filter")] == twice
    assert [c[0]["precision"] for c in _conv_calls(fake_gpu, "conv2d_avgpool_fwd")] == want


def test_the_torch_entry_points_pass_precision_on(fake_gpu):
    torch = pytest.importorskip("torch")
    import fastconv.torch as fct

    x = torch.randn(2, 3, 7, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    fct.conv2d(x, w, precision="3xtf32").sum().backward()
    fct.conv2d_avgpool(x, w, precision="tf32").sum().backward()
    fct.Conv2d(3, 4, 3, precision="3xtf32")(x.detach())
    fastconv.conv2d(x, w, precision="tf32")  # requires grad: through fastconv.torch
    assert [c[0]["precision"] for c in _conv_calls(fake_gpu)] == [2, 2, 1]
    assert [c[0]["precision"] for c in _conv_calls(fake_gpu, "conv2d_bwd_data")] == [2, 1]
    assert [c[0]["precision"] for c in _conv_calls(fake_gpu, "conv2d_avgpool_fwd")] == [1]
    assert "precision='3xtf32'" in repr(fct.Conv2d(3, 4, 3, precision="3xtf32"))


# ----------------------------------------------------------------------- the CPU


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["direct", "gemm", "blocked", "winograd2"])
def test_the_cpu_computes_strict_whatever_is_asked(variant, dtype):
    rng = np.random.default_rng(2)
    x, w, b = (random(rng, s, dtype) for s in ((2, 3, 9, 8), (5, 3, 3, 3), (5,)))
    dy = random(rng, (2, 5, 9, 8), dtype)
    outs = [fastconv.conv2d(x, w, b, padding=1, activation="tanh", precision=p, variant=variant)
            for p in (None,) + PRECISIONS]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    grads = [fastconv.conv2d_backward(dy, x, w, padding=1, precision=p, variant=variant)
             for p in PRECISIONS]
    for g in grads[1:]:
        for a, b_ in zip(g, grads[0]):
            np.testing.assert_array_equal(a, b_)


BAD = [("fp32", "'fp32'"), ("TF32", "'TF32'"), (1, "1"), ("", "''"), (True, "True")]


@pytest.mark.parametrize("value,shown", BAD)
def test_bad_precision_is_refused_by_every_entry_point(value, shown):
    rng = np.random.default_rng(3)
    x, w = random(rng, (2, 3, 6, 6), "float32"), random(rng, (4, 3, 3, 3), "float32")
    dy = random(rng, (2, 4, 4, 4), "float32")
    words = ("precision", "None, 'strict', 'tf32' or '3xtf32'", f"got {shown}")
    calls = {
        "conv2d": lambda: fastconv.conv2d(x, w, precision=value),
        "conv2d_backward": lambda: fastconv.conv2d_backward(dy, x, w, precision=value),
        "conv2d_avgpool": lambda: fastconv.conv2d_avgpool(x, w, precision=value),
        "conv2d_avgpool_backward": lambda: fastconv.conv2d_avgpool_backward(
            dy[:, :, :2, :2], x, w, precision=value),
    }
    for op, call in calls.items():
        with raises(ValueError, f"{op}:", *words):
            call()


@pytest.mark.parametrize("value,shown", BAD[:2])
def test_bad_precision_is_refused_by_the_torch_entry_points(value, shown):
    torch = pytest.importorskip("torch")
    import fastconv.torch as fct

    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    words = ("precision", "'3xtf32'", f"got {shown}")
    with raises(ValueError, "conv2d:", *words):
        fct.conv2d(x, w, precision=value)
    with raises(ValueError, "conv2d_avgpool:", *words):
        fct.conv2d_avgpool(x, w, precision=value)
    with raises(ValueError, "Conv2d:", *words):
        fct.Conv2d(3, 4, 3, precision=value)


# ----------------------------------------------------------------------- on a GPU


def tf32(a):
    """a rounded to TF32 as the card rounds it (cvt.rna.tf32.f32): 10 mantissa bits,
    nearest, ties away from zero; float32 in and out."""
    bits = np.asarray(a, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def test_tf32_rounding_is_nearest_ties_away_from_zero():
    one = np.float32(1)
    ulp = np.float32(2.0 ** -10)  # TF32's spacing at 1
    cases = {one + ulp / 2: one + ulp, -(one + ulp / 2): -(one + ulp),  # ties: away from 0
             one + ulp / 2 - np.float32(2.0 ** -23): one,  # just under: down
             one + 3 * ulp / 2: one + 2 * ulp, 3.0: 3.0, -8.0: -8.0, 0.0: 0.0}
    for a, want in cases.items():
        assert tf32(np.float32(a)) == np.float32(want), a
    r = random(np.random.default_rng(4), 1000, "float32")
    t = tf32(r)
    assert np.all((t.view(np.uint32) & 0x1FFF) == 0)
    assert np.all(np.abs(t - r) <= np.abs(r) * 2.0 ** -11)


# Where a precision other than strict may use tensor cores (csrc/cuda/cuda_ops.h); the
# other variants compute strict float32 whatever is asked.
TENSOR_CORE_VARIANTS = ("implicit_gemm",)
GPU = [b for b in BACKENDS if b.values[0] != "cpu"]
GPU_CONFIGS = {
    "implicit_gemm": dict(N=2, C=13, K=37, H=11, W=9, R=3, S=3, groups=1, padding=1),
    "direct": dict(N=2, C=5, K=7, H=11, W=9, R=3, S=3, groups=1, padding=1),
    "depthwise": dict(N=2, C=6, K=12, H=11, W=9, R=3, S=3, groups=6, padding=1),
}


def _gpu_inputs(cfg, layout, rng, gen):
    x = gen(rng, (cfg["N"], cfg["C"], cfg["H"], cfg["W"]))
    w = gen(rng, (cfg["K"], cfg["C"] // cfg["groups"], cfg["R"], cfg["S"]))
    b = gen(rng, (cfg["K"],))
    if layout == "NHWC":
        x, w = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0)
    return [np.ascontiguousarray(a, np.float32) for a in (x, w, b)]


def _run(backend, variant, layout, precision, cfg, x, w, b, activation):
    return fastconv.conv2d(*(to_backend(a, backend) for a in (x, w, b)), padding=1,
                           groups=cfg["groups"], activation=activation, precision=precision,
                           layout=layout, variant=variant)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("variant", sorted(GPU_CONFIGS))
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", GPU)
def test_gpu_precision_exact_on_small_integers(backend, precision, variant, layout):
    """Integers in [-8, 7] are exact in TF32 (and their split's small part is zero), their
    products exact and their float32 sums too: every precision gives the exact result."""
    cfg = GPU_CONFIGS[variant]
    rng = np.random.default_rng(5)
    x, w, b = _gpu_inputs(cfg, layout, rng, lambda g, s: g.integers(-8, 8, s))
    out = _run(backend, variant, layout, precision, cfg, x, w, b, None)
    expect = ref.conv2d(x, w, b, padding=1, groups=cfg["groups"], layout=layout)
    np.testing.assert_array_equal(to_numpy(out), expect)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("variant", sorted(GPU_CONFIGS))
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", GPU)
def test_gpu_precision_matches_reference(backend, precision, variant, layout):
    """strict and 3xtf32: float32's bound against the float64 reference. tf32 on tensor
    cores: the reference on the inputs rounded to TF32 as the card rounds them (their
    products are then exact in float32; the bias joins in float32), within float32's
    bound (the unrounded inputs' result is 7e-4 away); elsewhere tf32 computes strict."""
    cfg = GPU_CONFIGS[variant]
    rng = np.random.default_rng(6)
    x, w, b = _gpu_inputs(cfg, layout, rng, lambda g, s: g.standard_normal(s))
    out = _run(backend, variant, layout, precision, cfg, x, w, b, "tanh")
    if precision == "tf32" and variant in TENSOR_CORE_VARIANTS:
        x, w = tf32(x), tf32(w)
    expect = ref.conv2d(x, w, b, padding=1, groups=cfg["groups"], activation="tanh",
                        layout=layout)
    assert_close(out, expect, "float32", f"{precision} {variant} {layout}")

"""conv2d_avgpool, the LeNet-5 block (convolution + bias + activation + average pool in
one call): every backend x block variant x layout x dtype against fastconv.reference,
forward (with the full-resolution activation it can return) and backward."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv
from fastconv import reference as ref
from conftest import BACKENDS, assert_close, dtypes_for, random, to_backend, to_numpy
from test_conv2d import (assume_forward_conditioned, assume_well_conditioned, conv_args,
                         conv_configs, make_inputs)


def _cases():
    """(backend, variant, dtype): every block variant of every backend ("fused" is the
    GPU's one-kernel block; the others are a conv2d variant followed by the pool)."""
    out = []
    for b in BACKENDS:
        name = b.values[0]
        vs = ("direct", "gemm", "blocked") if name == "cpu" else ("fused", "direct", "implicit_gemm")
        for v in vs:
            for dt in dtypes_for(name):
                out.append(pytest.param(name, v, dt, id=f"{name}-{v}-{dt}", marks=b.marks))
    return out


CASES = _cases()
POOLS = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))


def _pool_fits(cfg, pool):
    x = np.zeros((1, cfg["C"], cfg["H"], cfg["W"]))
    w = np.zeros((cfg["K"], cfg["C"] // cfg["groups"], cfg["R"], cfg["S"]))
    *_, (P, Q) = ref._conv_geometry(x, w, cfg["stride"], cfg["padding"], cfg["dilation"])
    ph, pw = (pool, pool) if isinstance(pool, int) else pool
    return P >= ph and Q >= pw


def _draw(data):
    cfg = data.draw(conv_configs(depthwise=False))
    pool = data.draw(POOLS)
    assume(_pool_fits(cfg, pool))
    return cfg, pool


def _forward(backend, variant, layout, dtype, cfg, pool, x, w, b):
    return fastconv.conv2d_avgpool(
        to_backend(x, backend), to_backend(w, backend), to_backend(b, backend), **conv_args(cfg),
        activation=cfg["activation"], pool=pool, layout=layout, variant=variant,
        return_activation=True)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("backend,variant,dtype", CASES)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_forward_matches_reference(backend, variant, dtype, layout, data, seed):
    cfg, pool = _draw(data)
    x, w, b = make_inputs(cfg, layout, dtype, np.random.default_rng(seed))
    if dtype == "float32":
        assume_forward_conditioned(x, w, b, cfg, layout, pool)
    y, act = _forward(backend, variant, layout, dtype, cfg, pool, x, w, b)
    args = dict(**conv_args(cfg), activation=cfg["activation"], layout=layout)
    assert_close(y, ref.conv2d_avgpool(x, w, b, pool=pool, **args), dtype, f"block {cfg} pool {pool}")
    # The activation is written in full, rows and columns the pool's floor drops included.
    assert_close(act, ref.conv2d(x, w, b, **args), dtype, f"block activation {cfg} pool {pool}")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("backend,variant,dtype", CASES)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_forward_exact_on_small_integers(backend, variant, dtype, layout, data, seed):
    """Integer inputs: every window sum is exact, and the one division by the window's
    area rounds as the reference's does, so any indexing slip is a mismatch."""
    cfg, pool = _draw(data)
    cfg["activation"] = None
    x, w, b = make_inputs(cfg, layout, dtype, np.random.default_rng(seed), integer=True)
    y, act = _forward(backend, variant, layout, dtype, cfg, pool, x, w, b)
    args = dict(**conv_args(cfg), layout=layout)
    np.testing.assert_array_equal(to_numpy(y), ref.conv2d_avgpool(x, w, b, pool=pool, **args).astype(dtype))
    np.testing.assert_array_equal(to_numpy(act), ref.conv2d(x, w, b, **args))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("backend,variant,dtype", CASES)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_backward_matches_reference(backend, variant, dtype, layout, data, seed):
    cfg, pool = _draw(data)
    if variant == "fused":
        variant = "auto"  # the backward runs the convolution's gradient kernels
    rng = np.random.default_rng(seed)
    x, w, b = make_inputs(cfg, layout, dtype, rng)
    args = dict(**conv_args(cfg), activation=cfg["activation"], layout=layout)
    # The activation as the backward receives it: rounded to dtype, as in test_conv2d.
    act = ref.conv2d(x, w, b, **args).astype(dtype)
    dy = random(rng, ref.avg_pool2d(act, pool, layout=layout).shape, dtype)
    da = ref.avg_pool2d_backward(dy, act, pool, layout=layout)
    expect = ref.conv2d_backward(da, x, w, **args, output=act)
    assume_well_conditioned(expect, da, x, w, act, cfg, layout, dtype)
    got = fastconv.conv2d_avgpool_backward(
        to_backend(dy, backend), to_backend(x, backend), to_backend(w, backend), **args, pool=pool,
        activation_output=to_backend(act, backend), variant=variant)
    for name, g, e in zip(("grad_input", "grad_weight", "grad_bias"), got, expect):
        assert_close(g, e, dtype, f"block {name} {cfg} pool {pool}")


def test_reference_backward_is_the_adjoint_of_the_forward():
    """The reference's chained backward against a finite difference of its forward."""
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    args = dict(padding="same", activation="tanh", pool=(2, 3))
    dy = rng.standard_normal(ref.conv2d_avgpool(x, w, b, **args).shape)
    gx, gw, gb = ref.conv2d_avgpool_backward(dy, x, w, b, **args)
    for arr, grad in ((x, gx), (w, gw), (b, gb)):
        d = rng.standard_normal(arr.shape)
        eps = 1e-6
        arr += eps * d
        up = (ref.conv2d_avgpool(x, w, b, **args) * dy).sum()
        arr -= 2 * eps * d
        down = (ref.conv2d_avgpool(x, w, b, **args) * dy).sum()
        arr += eps * d
        np.testing.assert_allclose((up - down) / (2 * eps), (grad * d).sum(), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lenet_layers(backend):
    """LeNet-5's two blocks at their real sizes (batch shrunk), tanh, 2x2 pool."""
    rng = np.random.default_rng(3)
    for shape, wshape, padding in (((5, 1, 28, 28), (6, 1, 5, 5), "same"),
                                   ((5, 6, 14, 14), (16, 6, 5, 5), "valid")):
        x, w, b = (random(rng, s, "float32") for s in (shape, wshape, wshape[:1]))
        y, act = fastconv.conv2d_avgpool(to_backend(x, backend), to_backend(w, backend),
                                         to_backend(b, backend), padding=padding,
                                         activation="tanh", return_activation=True)
        assert_close(y, ref.conv2d_avgpool(x, w, b, padding=padding, activation="tanh"), "float32")
        dy = random(rng, y.shape, "float32")
        got = fastconv.conv2d_avgpool_backward(
            to_backend(dy, backend), to_backend(x, backend), to_backend(w, backend),
            padding=padding, activation="tanh", activation_output=act)
        expect = ref.conv2d_avgpool_backward(dy, x, w, b, padding=padding, activation="tanh")
        for g, e in zip(got, expect):
            assert_close(g, e, "float32", "lenet block backward")


def test_backward_is_deterministic():
    rng = np.random.default_rng(5)
    x, w, b = (random(rng, s, "float32") for s in ((9, 6, 14, 14), (16, 6, 5, 5), (16,)))
    _, act = fastconv.conv2d_avgpool(x, w, b, activation="tanh", return_activation=True)
    dy = random(rng, (9, 16, 5, 5), "float32")
    runs = [fastconv.conv2d_avgpool_backward(dy, x, w, activation="tanh", activation_output=act)
            for _ in range(3)]
    for r in runs[1:]:
        for g, g0 in zip(r, runs[0]):
            np.testing.assert_array_equal(g, g0)


def test_bad_arguments_name_what_is_wrong():
    x = np.ones((1, 1, 6, 6), np.float32)
    w = np.ones((2, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv2d_avgpool: the 5x5 pool window does not fit the "
                                         r"convolution's 4x4 output"):
        fastconv.conv2d_avgpool(x, w, pool=5)
    with pytest.raises(ValueError, match=r"conv2d_avgpool: pool must be >= 1, got 0"):
        fastconv.conv2d_avgpool(x, w, pool=0)
    with pytest.raises(ValueError, match=r"variant must be 'auto' or one of .*got 'fused'"):
        fastconv.conv2d_avgpool(x, w, variant="fused")  # the GPU's alone
    y = fastconv.conv2d_avgpool(x, w)
    with pytest.raises(TypeError, match=r"activation_output .* is required with activation='tanh'"):
        fastconv.conv2d_avgpool_backward(y, x, w, activation="tanh")
    with pytest.raises(ValueError,
                       match=r"activation_output must have shape \(1, 2, 4, 4\), got \(1, 2, 2, 2\)"):
        fastconv.conv2d_avgpool_backward(y, x, w, activation="tanh", activation_output=y)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(1, 2, 2, 2\)"):
        fastconv.conv2d_avgpool_backward(x, x, w)

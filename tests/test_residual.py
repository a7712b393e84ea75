"""conv2d's residual: act(conv + bias + residual), a ResNet block's last convolution and
its skip add. Every backend x kernel variant x layout x dtype against fastconv.reference
(random shapes, small integers, named edge cases), the residual's own layout, batch and
memory-format paths, and its gradient through autograd (finite differences)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from fastconv import reference as ref
from conftest import BACKENDS, assert_close, permute, random, small_ints, to_backend
from test_conv2d import (CASES, EDGE, assert_exact_on_integers, assume_forward_conditioned,
                         conv_and_reference, configs_for, make_inputs, skip_unless_applies)


def output_shape(cfg, layout):
    x = np.zeros((1, cfg["C"], cfg["H"], cfg["W"]))
    w = np.zeros((cfg["K"], cfg["C"] // cfg["groups"], cfg["R"], cfg["S"]))
    *_, (P, Q) = ref._conv_geometry(x, w, cfg["stride"], cfg["padding"], cfg["dilation"])
    N, K = cfg["N"], cfg["K"]
    return (N, K, P, Q) if layout == "NCHW" else (N, P, Q, K)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("backend,variant,dtype", CASES)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_residual_matches_reference(backend, variant, dtype, layout, data, seed):
    cfg = data.draw(configs_for(variant))
    rng = np.random.default_rng(seed)
    x, w, b = make_inputs(cfg, layout, dtype, rng)
    r = random(rng, output_shape(cfg, layout), dtype)
    if dtype == "float32":
        # The residual is one more term of each sum: it joins the bias in the guard.
        assume_forward_conditioned(x, w, b, cfg, layout, residual=r)
    out, expect = conv_and_reference(backend, variant, layout, cfg, x, w, b, r)
    assert_close(out, expect, dtype, f"conv2d + residual {cfg}")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("backend,variant,dtype", CASES)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_residual_exact_on_small_integers(backend, variant, dtype, layout, data, seed):
    """Integer inputs and residual make every sum exact: a residual element added to the
    wrong output (a layout or offset slip) shows as a mismatch."""
    cfg = dict(data.draw(configs_for(variant)), activation=None)
    rng = np.random.default_rng(seed)
    x, w, b = make_inputs(cfg, layout, dtype, rng, integer=True)
    r = small_ints(rng, output_shape(cfg, layout), dtype, -50, 50)
    out, expect = conv_and_reference(backend, variant, layout, cfg, x, w, b, r)
    assert_exact_on_integers(out, expect, variant, f"conv2d + residual {cfg}")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", ["lenet-c1", "depthwise", "k20-strided-dilated", "3x3-c300",
                                  "1x1-grouped", "batch1-prime"])
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("backend,variant,dtype", CASES)
def test_residual_edge_cases(backend, variant, dtype, layout, name, activation):
    """Each variant's epilogue paths (the register-blocked shapes, grouped and pointwise
    GEMMs, the depthwise rows, many channels) with every activation, bias on."""
    cfg = dict(EDGE[name], activation=activation, bias=True)
    skip_unless_applies(variant, cfg)
    rng = np.random.default_rng(17)
    x, w, b = make_inputs(cfg, layout, dtype, rng)
    r = random(rng, output_shape(cfg, layout), dtype)
    out, expect = conv_and_reference(backend, variant, layout, cfg, x, w, b, r)
    assert_close(out, expect, dtype, f"{name} {activation}")


def test_the_residual_is_added_before_the_activation():
    """relu(conv + residual), not relu(conv) + residual: a residual that cancels the
    convolution's positive outputs turns them to zero."""
    rng = np.random.default_rng(2)
    x = random(rng, (1, 2, 6, 5), "float32")
    w = random(rng, (3, 2, 3, 3), "float32")
    z = fastconv.conv2d(x, w)
    out = fastconv.conv2d(x, w, residual=-z, activation="relu")
    np.testing.assert_array_equal(out, np.zeros_like(z))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_residual(backend):
    rng = np.random.default_rng(4)
    x, w, b = (random(rng, s, "float32") for s in ((3, 7, 9), (4, 3, 3, 3), (4,)))
    r = random(rng, (4, 5, 7), "float32")
    out = fastconv.conv2d(*(to_backend(a, backend) for a in (x, w, b)), activation="tanh",
                          residual=to_backend(r, backend))
    expect = ref.conv2d(x[None], w, b, activation="tanh", residual=r[None])[0]
    assert_close(out, expect, "float32", "unbatched")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_residual(backend):
    """A strided view of a residual gives the result of its dense copy."""
    rng = np.random.default_rng(5)
    x, w = random(rng, (2, 3, 8, 9), "float32"), random(rng, (4, 3, 3, 3), "float32")
    big = random(rng, (2, 7, 9, 4), "float32")  # (N, Q, P + 3, K) -> an (N, K, P, Q) view
    r_b = permute(to_backend(big, backend), (0, 3, 2, 1))[:, :, :6]
    r = big.transpose(0, 3, 2, 1)[:, :, :6]
    out = fastconv.conv2d(to_backend(x, backend), to_backend(w, backend), residual=r_b)
    assert_close(out, ref.conv2d(x, w, residual=r), "float32", "strided residual")


# ----------------------------------------------------------------------- PyTorch


def test_residual_on_channels_last_tensors():
    """A channels_last input runs the NHWC kernels on its memory; the residual, in either
    memory format, is the same logical (N, K, P, Q) array."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x, w, b = (random(rng, s, "float32") for s in ((2, 3, 9, 8), (5, 3, 3, 3), (5,)))
    r = random(rng, (2, 5, 9, 8), "float32")
    expect = ref.conv2d(x, w, b, padding=1, activation="sigmoid", residual=r)
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    for rt in (torch.from_numpy(r), torch.from_numpy(r).contiguous(memory_format=torch.channels_last)):
        out = fastconv.conv2d(xt, torch.from_numpy(w), torch.from_numpy(b), padding=1,
                              activation="sigmoid", residual=rt)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert_close(out, expect, "float32", "channels_last")
    with pytest.raises(TypeError, match="residual is a numpy array but input is a torch array"):
        fastconv.conv2d(xt, torch.from_numpy(w), residual=r)


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("entry", ["fastconv.conv2d", "fastconv.torch.conv2d"])
def test_residual_gradient_by_finite_differences(entry, activation):
    """gradcheck (float64, central differences) of all four inputs, residual included:
    its gradient is the gradient before the activation."""
    torch = pytest.importorskip("torch")
    from torch.autograd import gradcheck

    import fastconv.torch as fct

    conv = fastconv.conv2d if entry == "fastconv.conv2d" else fct.conv2d
    g = torch.Generator().manual_seed(8)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
               for s in ((2, 3, 7, 6), (4, 3, 3, 2), (4,)))
    r = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda *a: conv(*a[:3], activation=activation, residual=a[3]),
                     (x, w, b, r))


@pytest.mark.parametrize("activation", [None, "tanh"])
def test_residual_gradient_alone_and_under_compile(activation):
    """Only the residual requires grad (the convolution's gradients are not computed);
    and the registered op under torch.compile gives the eager gradients."""
    torch = pytest.importorskip("torch")
    import fastconv.torch as fct

    g = torch.Generator().manual_seed(9)
    x, w = torch.randn(2, 3, 6, 6, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    r = torch.randn(2, 4, 4, 4, generator=g, requires_grad=True)
    dy = torch.randn(2, 4, 4, 4, generator=g)

    def f(r):
        return fct.conv2d(x, w, activation=activation, residual=r)

    y = f(r)
    (gr,) = torch.autograd.grad(y, r, dy)
    dz = dy if activation is None else dy * (1 - y.detach() ** 2)
    assert torch.allclose(gr, dz, rtol=1e-6, atol=1e-7)
    torch._dynamo.reset()
    yc = torch.compile(f, backend="aot_eager", fullgraph=True)(r)
    (gc,) = torch.autograd.grad(yc, r, dy)
    assert torch.equal(yc.detach(), y.detach()) and torch.equal(gc, gr)


def test_conv2d_module_takes_a_residual():
    torch = pytest.importorskip("torch")
    import fastconv.torch as fct

    torch.manual_seed(3)
    conv = fct.Conv2d(4, 4, 3, padding=1, activation="relu", padding_mode="reflect")
    x = torch.randn(2, 4, 7, 7)
    r = torch.randn(2, 4, 7, 7)
    expect = torch.relu(torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), conv.weight, conv.bias) + r)
    assert (conv(x, r) - expect).abs().max() < 1e-5
    assert torch.equal(conv(x), fct.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1),
                                                                   mode="reflect"),
                                           conv.weight, conv.bias, activation="relu"))


@pytest.mark.parametrize("activation", ["none", "sigmoid"])
def test_opcheck_conv2d_with_residual_and_activation_backward(activation):
    """The registered ops' schemas, fake implementations and autograd registration."""
    torch = pytest.importorskip("torch")
    from torch.library import opcheck

    g = torch.Generator().manual_seed(10)
    x, w, b = (torch.randn(*s, generator=g, requires_grad=True)
               for s in ((2, 3, 7, 6), (4, 3, 3, 3), (4,)))
    r = torch.randn(2, 4, 7, 6, generator=g, requires_grad=True)
    opcheck(torch.ops.fastconv.conv2d.default,
            (x, w, b, [1, 1], [1, 1], False, [1, 1], 1, activation, r, "3xtf32"))
    y = torch.sigmoid(torch.randn(2, 4, 7, 6, generator=g))
    opcheck(torch.ops.fastconv.activation_backward.default, (torch.randn_like(y), y, "sigmoid"))

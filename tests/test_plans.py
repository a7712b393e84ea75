"""Call plans (fastconv/_arrays.py): a call whose arrays have the kinds (library, shape,
dtype, device) and other arguments of an earlier call reuses its checked params. These
tests make sure a reused plan is never wrong: what the checks did not look at (strides,
values, the stream) is read afresh on every call, and what they did look at is in the key."""

import numpy as np
import pytest

import fastconv
from fastconv import _arrays
from fastconv import reference as ref

torch = pytest.importorskip("torch")


def test_a_reused_plan_reads_new_strides_and_values():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((2, 3, 9, 8)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    fastconv.conv2d(x, w, padding=1)  # makes the plan
    x2 = torch.from_numpy(rng.standard_normal((2, 9, 8, 3)).astype(np.float32)).permute(0, 3, 1, 2)
    assert x2.shape == x.shape and not x2.is_contiguous()
    y = fastconv.conv2d(x2, w, padding=1)  # same kinds: the plan, on a strided view
    np.testing.assert_allclose(y.numpy(), ref.conv2d(x2.numpy(), w.numpy(), padding=1), rtol=1e-5,
                               atol=1e-5)


def test_what_the_checks_looked_at_is_in_the_key():
    x = np.ones((1, 3, 6, 6), np.float32)
    w = np.ones((2, 3, 3, 3), np.float32)
    fastconv.conv2d(x, w, np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\)"):
        fastconv.conv2d(x, w, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        fastconv.conv2d(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="torch array but input is a numpy array"):
        fastconv.conv2d(x, torch.from_numpy(w))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fastconv.conv2d(x, w, stride=0)
    with pytest.raises(TypeError, match="activation_output .* is required"):
        fastconv.conv2d_avgpool_backward(np.ones((1, 2, 2, 2), np.float32), x, w,
                                         activation="tanh")
    # A failed call leaves no plan behind: the same call fails again, a good one works.
    with pytest.raises(ValueError, match=r"bias must have shape"):
        fastconv.conv2d(x, w, np.ones(3, np.float32))
    assert fastconv.conv2d(x, w).shape == (1, 2, 4, 4)


def test_unhashable_and_converted_arguments_take_the_full_path():
    x = np.ones((1, 1, 5, 5), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    assert _arrays.plan_key("conv2d", (x, w), ([1, 1],)) is None
    assert _arrays.plan_key("conv2d", (x.tolist(), w), (1,)) is None
    y = fastconv.conv2d(x, w, stride=[1, 1])  # a list stride: checked every time, still right
    np.testing.assert_array_equal(y, np.full((1, 1, 3, 3), 9, np.float32))
    np.testing.assert_array_equal(fastconv.avg_pool2d(x.tolist(), 5), np.ones((1, 1, 1, 1)))


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(_arrays, "_PLAN_LIMIT", 3)
    monkeypatch.setattr(_arrays, "_PLANS", {})
    x = np.ones((1, 1, 8, 8), np.float32)
    for k in range(1, 8):
        fastconv.avg_pool2d(x, k)
        assert len(_arrays._PLANS) <= 3


def test_eager_autograd_takes_no_custom_op_dispatch():
    """In eager mode the torch ops run as autograd.Functions (a custom op's dispatch costs
    tens of microseconds); the graph shows which."""
    import fastconv.torch as fct

    x = torch.rand(1, 1, 6, 6, requires_grad=True)
    w = torch.rand(2, 1, 3, 3, requires_grad=True)
    y = fct.conv2d_avgpool(x, w, activation="tanh")
    assert "conv2d_avgpool_impl" in type(y.grad_fn).__name__
    y.sum().backward()
    assert x.grad is not None and w.grad is not None

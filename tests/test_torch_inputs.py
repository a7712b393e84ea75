"""Every input torch accepts (issue 16, item 1): unbatched images, empty batches, one-int
tuples, stride=() / None, Keras' spellings, a differentiable global average pool and
Conv2d's padding modes, on every Python path: the plain fastconv.* functions on NumPy
arrays and on tensors, the autograd path (tensors that require grad, fastconv.torch.*)
and the fastconv.torch modules, each against torch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402


def rel_error(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != torch's {tuple(b.shape)}"
    return ((a - b).norm() / b.norm()).item()


def grads_of(fn, *tensors):
    """fn(*copies) and the gradients of <fn(...), a fixed random dy> w.r.t. the copies."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    return y.detach(), torch.autograd.grad(y, leaves, dy)


def assert_matches_torch(ours, theirs, *tensors, bound=1e-12):
    """Forward and every gradient of ours(*tensors) against theirs(*tensors)."""
    y, g = grads_of(ours, *tensors)
    y_ref, g_ref = grads_of(theirs, *tensors)
    assert rel_error(y, y_ref) < bound
    for a, b in zip(g, g_ref):
        assert rel_error(a, b) < bound


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------- unbatched


UNBATCHED = {
    # name: (fastconv function, torch function, extra tensor arguments)
    "conv2d": (lambda x, w, b: fastconv.conv2d(x, w, b, 2, 1),
               lambda x, w, b: F.conv2d(x, w, b, 2, 1), True),
    "max_pool2d": (lambda x: fastconv.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                   lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), False),
    "avg_pool2d": (lambda x: fastconv.avg_pool2d(x, 2, count_include_pad=False),
                   lambda x: F.avg_pool2d(x, 2, count_include_pad=False), False),
    "global_avg_pool2d": (fastconv.global_avg_pool2d,
                          lambda x: F.adaptive_avg_pool2d(x, 1)[..., 0, 0], False),
}


@pytest.mark.parametrize("name", sorted(UNBATCHED))
def test_unbatched_inputs_give_unbatched_results(name):
    ours, theirs, has_weights = UNBATCHED[name]
    x = rand(3, 11, 9)
    args = (x, rand(4, 3, 3, 3, seed=1), rand(4, seed=2)) if has_weights else (x,)
    want = theirs(*args)
    assert want.dim() == (3 if name != "global_avg_pool2d" else 1)
    # NumPy arrays, plain tensors, tensors that require grad (the autograd path).
    got = ours(*(a.numpy() for a in args))
    assert isinstance(got, np.ndarray) and rel_error(got, want) < 1e-12
    assert rel_error(ours(*args), want) < 1e-12
    assert_matches_torch(ours, theirs, *args)


def test_unbatched_max_pool_indices_and_modules():
    x = rand(2, 9, 8)
    y, idx = fastconv.max_pool2d(x.numpy(), 2, return_indices=True)
    y_ref, idx_ref = F.max_pool2d(x, 2, return_indices=True)
    assert y.shape == (2, 4, 4) and np.array_equal(idx, idx_ref.numpy())
    y, idx = fct.max_pool2d(x.requires_grad_(), 2, return_indices=True)
    assert torch.equal(idx, idx_ref) and rel_error(y, y_ref) < 1e-12
    torch.manual_seed(0)
    for ref in (nn.Conv2d(2, 3, 3, padding=1).double(), nn.MaxPool2d(3, 2, 1),
                nn.AvgPool2d(2, ceil_mode=True)):
        ours = {nn.Conv2d: fct.Conv2d(2, 3, 3, padding=1).double(),
                nn.MaxPool2d: fct.MaxPool2d(3, 2, 1),
                nn.AvgPool2d: fct.AvgPool2d(2, ceil_mode=True)}[type(ref)]
        ours.load_state_dict(ref.state_dict())
        assert_matches_torch(ours, ref, x.detach())


def test_unbatched_lists_take_the_numpy_path():
    x = rand(2, 6, 6).numpy()
    np.testing.assert_allclose(fastconv.avg_pool2d(x.tolist(), 2), fastconv.avg_pool2d(x, 2))


# ----------------------------------------------------------------------- N = 0


def test_empty_batch_forward_and_backward_like_torch():
    x, w, b = torch.empty(0, 3, 9, 8, dtype=torch.float64), rand(4, 3, 3, 3), rand(4)
    cases = [
        (lambda x, w, b: fct.conv2d(x, w, b, padding="same", activation="tanh"),
         lambda x, w, b: torch.tanh(F.conv2d(x, w, b, padding="same")), (x, w, b)),
        (lambda x, w, b: fct.conv2d_avgpool(x, w, b, padding=1, pool=2),
         lambda x, w, b: F.avg_pool2d(F.conv2d(x, w, b, padding=1), 2), (x, w, b)),
        (lambda x: fct.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), (x,)),
        (lambda x: fct.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2), (x,)),
        (fct.global_avg_pool2d, lambda x: F.adaptive_avg_pool2d(x, 1)[..., 0, 0], (x,)),
    ]
    for ours, theirs, args in cases:
        y, grads = grads_of(ours, *args)
        y_ref, grads_ref = grads_of(theirs, *args)
        assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
        for g, g_ref in zip(grads, grads_ref):
            assert g.shape == g_ref.shape
            assert torch.equal(g, torch.zeros_like(g_ref))  # not NaN (outputs are poisoned)


def test_empty_batch_on_numpy_arrays():
    x = np.empty((0, 3, 9, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    assert fastconv.conv2d(x, w, padding=1).shape == (0, 4, 9, 8)
    assert fastconv.conv2d(np.empty((0, 9, 8, 3), np.float32), np.ones((3, 3, 3, 4), np.float32),
                           layout="NHWC").shape == (0, 7, 6, 4)
    gx, gw, gb = fastconv.conv2d_backward(np.empty((0, 4, 7, 6), np.float32), x, w)
    assert gx.shape == x.shape and np.array_equal(gw, np.zeros_like(w)) and \
        np.array_equal(gb, np.zeros(4, np.float32))
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    assert y.shape == idx.shape == (0, 3, 4, 4)
    assert fastconv.max_pool2d_backward(y, x, 2).shape == x.shape
    assert fastconv.avg_pool2d_backward(y, x, 2).shape == x.shape
    assert fastconv.global_avg_pool2d(x).shape == (0, 3)
    # Only the batch may be empty: an empty channel or image axis is refused, as torch does.
    with pytest.raises(ValueError, match="zero-size dimension"):
        fastconv.conv2d(np.empty((1, 3, 0, 8), np.float32), w)


# ----------------------------------------------------------------------- one-int tuples, stride


def test_one_int_tuples_broadcast_and_empty_stride_means_the_kernel():
    x = rand(2, 3, 11, 9)
    w = rand(4, 3, 3, 2, seed=1)
    conv = (lambda f: lambda x, w: f(x, w, None, (2,), (1,), (2,)))
    assert_matches_torch(conv(fastconv.conv2d), conv(F.conv2d), x, w)
    assert rel_error(conv(fastconv.conv2d)(x.numpy(), w.numpy()), conv(F.conv2d)(x, w)) < 1e-12
    for stride in (None, (), []):
        for ours, theirs in ((fastconv.max_pool2d, F.max_pool2d), (fct.max_pool2d, F.max_pool2d),
                             (fastconv.avg_pool2d, F.avg_pool2d), (fct.avg_pool2d, F.avg_pool2d)):
            want = theirs(x, (3,), stride, (1,))
            if ours.__module__.startswith("fastconv.ops."):  # the plain path takes NumPy arrays too
                assert rel_error(ours(x.numpy(), (3,), stride, (1,)), want) < 1e-12
            assert rel_error(ours(x, (3,), stride, (1,)), want) < 1e-12
            assert_matches_torch(lambda t: ours(t, (3,), stride, (1,)),
                                 lambda t: theirs(t, (3,), stride, (1,)), x)
    for stride in (None, (), (2,)):
        ref, ours = nn.MaxPool2d((3,), stride, (1,)), fct.MaxPool2d((3,), stride, (1,))
        assert rel_error(ours(x), ref(x)) < 1e-12
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        fastconv.max_pool2d(x, (2, 2, 2))
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        fastconv.conv2d(x, w, stride=())


# ----------------------------------------------------------------------- global average pool


def test_global_avg_pool_keeps_the_gradient():
    """A model ending in fastconv.global_avg_pool2d must keep training below it."""
    x = rand(2, 5, 7, 6)
    y = fastconv.global_avg_pool2d(x.clone().requires_grad_())
    assert y.requires_grad and y.grad_fn is not None
    assert_matches_torch(fastconv.global_avg_pool2d,
                         lambda t: F.adaptive_avg_pool2d(t, 1).flatten(1), x)
    with torch.no_grad():
        assert fastconv.global_avg_pool2d(x.requires_grad_()).grad_fn is None
    with pytest.raises(ValueError, match="layout"):
        fastconv.global_avg_pool2d(x, layout="NHWC")


# ----------------------------------------------------------------------- Keras spellings


@pytest.mark.parametrize("padding", ["SAME", "Same", "VALID", "Valid"])
def test_keras_padding_spellings_in_any_case(padding):
    x, w = rand(2, 3, 9, 8), rand(4, 3, 3, 3, seed=1)
    lower = padding.lower()
    want = fastconv.conv2d(x.numpy(), w.numpy(), stride=2, padding=lower)
    for got in (fastconv.conv2d(x.numpy(), w.numpy(), stride=2, padding=padding),
                fastconv.conv2d(x, w, stride=2, padding=padding),
                fct.conv2d(x.requires_grad_(), w, stride=2, padding=padding).detach()):
        assert rel_error(got, want) < 1e-12
    for pool in (fastconv.max_pool2d, fastconv.avg_pool2d):
        want = pool(x.detach().numpy(), 3, 2, lower)
        assert rel_error(pool(x.detach().numpy(), 3, 2, padding), want) < 1e-12
        assert rel_error(pool(x.detach().requires_grad_(), 3, 2, padding).detach(), want) < 1e-12
    m = fct.Conv2d(3, 4, 3, padding=padding)
    assert m.padding == lower if lower == "same" else m.padding in ("valid", (0, 0))
    with pytest.raises(ValueError, match="padding must be"):
        fastconv.conv2d(x, w, padding="full")


def test_keras_linear_activation_is_none():
    x, w = rand(2, 3, 9, 8), rand(4, 3, 3, 3, seed=1)
    want = F.conv2d(x, w)
    assert rel_error(fastconv.conv2d(x.numpy(), w.numpy(), activation="linear"), want) < 1e-12
    assert_matches_torch(lambda x, w: fct.conv2d(x, w, activation="linear"), F.conv2d, x, w)
    m = fct.Conv2d(3, 4, 3, activation="linear")
    assert m.activation is None and "activation" not in repr(m)
    with pytest.raises(ValueError, match="activation must be"):
        fastconv.conv2d(x, w, activation="Linear")


# ----------------------------------------------------------------------- padding_mode


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("conf", [dict(padding=1), dict(padding=(2, 1), stride=2),
                                  dict(padding="same", dilation=(1, 2)),
                                  dict(padding=(1, 2), groups=3)])
def test_conv2d_padding_modes_match_torch(mode, conf):
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 6, (3, 4), padding_mode=mode, **conf).double()
    ours = fct.Conv2d(3, 6, (3, 4), padding_mode=mode, **conf).double()
    ours.load_state_dict(ref.state_dict())
    params = list(ours.parameters())
    for shape in ((2, 3, 11, 9), (3, 10, 8)):
        x = rand(*shape)
        ours.zero_grad(), ref.zero_grad()
        assert_matches_torch(ours, ref, x)
        dy = rand(*ref(x).shape, seed=3)
        ours(x).backward(dy), ref(x).backward(dy)
        for p, q in zip(params, ref.parameters()):
            assert rel_error(p.grad, q.grad) < 1e-12


def test_strided_same_with_a_padding_mode_splits_as_keras():
    torch.manual_seed(0)
    m = fct.Conv2d(2, 3, 4, stride=2, padding="same", padding_mode="reflect").double()
    x = rand(1, 2, 9, 8)
    # Keras: out = ceil(in / stride); total pad = (out - 1) * stride + k - in, odd pixel last.
    # H: out 5, total 3 -> (1, 2); W: out 4, total 2 -> (1, 1).
    want = F.conv2d(F.pad(x, (1, 1, 1, 2), mode="reflect"), m.weight, m.bias, 2)
    assert m(x).shape == (1, 3, 5, 4) and rel_error(m(x), want) < 1e-12

"""torch.channels_last tensors (issue 16, item 4): they run fastconv's NHWC kernels on
their own memory (the kernels are handed the tensors' data pointers: no copy of the
activations) and come back channels_last, as cuDNN answers; values and gradients are
torch's. Plain calls and autograd, forward and backward, convolution and pools, the
modules and torch.compile."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402
from fastconv import _arrays  # noqa: E402

CL = torch.channels_last
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
               not fastconv.cuda_available() or not torch.cuda.is_available(),
               reason="no CUDA GPU")])]


def rel_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture
def pointers(monkeypatch):
    """The data pointers every binding call is handed, in order."""
    seen = []
    real = _arrays._Torch.pointer

    def pointer(a):
        seen.append(real(a))
        return seen[-1]

    monkeypatch.setattr(_arrays._Torch, "pointer", staticmethod(pointer))
    return seen


def channels_last(*shape, device="cpu", dtype=torch.float32):
    return torch.randn(*shape, device=device, dtype=dtype).contiguous(memory_format=CL)


def dtype_for(device):
    return torch.float64 if device == "cpu" else torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [1, 3])
def test_conv2d_plain_call_runs_on_the_tensors_own_memory(device, groups, pointers):
    torch.manual_seed(0)
    dt = dtype_for(device)
    x = channels_last(2, 6, 13, 11, device=device, dtype=dt)
    w = torch.randn(9, 6 // groups, 3, 5, device=device, dtype=dt)
    b = torch.randn(9, device=device, dtype=dt)
    y = fastconv.conv2d(x, w, b, stride=(2, 1), padding=1, groups=groups, activation="relu")
    assert not x.is_contiguous() and y.is_contiguous(memory_format=CL) and not y.is_contiguous()
    assert x.data_ptr() in pointers and y.data_ptr() in pointers  # read and written in place
    ref = F.relu(F.conv2d(x.contiguous(), w, b, (2, 1), 1, 1, groups))
    assert rel_error(y, ref) < (1e-13 if dt == torch.float64 else 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_conv2d_autograd_forward_and_backward_in_channels_last(device, activation, pointers):
    torch.manual_seed(1)
    dt = dtype_for(device)
    x = channels_last(3, 4, 9, 10, device=device, dtype=dt).requires_grad_()
    w = torch.randn(5, 4, 3, 3, device=device, dtype=dt, requires_grad=True)
    b = torch.randn(5, device=device, dtype=dt, requires_grad=True)
    y = fct.conv2d(x, w, b, 1, "same", activation=activation)
    assert y.is_contiguous(memory_format=CL) and not y.is_contiguous()
    dy = channels_last(*y.shape, device=device, dtype=dt)
    del pointers[:]
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy)
    assert x.data_ptr() in pointers and dy.data_ptr() in pointers and gx.data_ptr() in pointers
    if activation:
        assert y.data_ptr() in pointers  # the activation's derivative read from y in place
    assert gx.is_contiguous(memory_format=CL) and gw.shape == w.shape and gw.is_contiguous()

    xr, wr, br = (t.detach().contiguous().requires_grad_() for t in (x, w, b))
    yr = F.conv2d(xr, wr, br, 1, "same")
    yr = torch.tanh(yr) if activation else yr
    refs = torch.autograd.grad(yr, (xr, wr, br), dy.contiguous())
    bound = 1e-12 if dt == torch.float64 else 1e-5
    assert rel_error(y, yr) < bound
    for ours, ref in zip((gx, gw, gb), refs):
        assert rel_error(ours, ref) < bound


@pytest.mark.parametrize("device", DEVICES)
def test_a_channels_last_weight_gets_a_channels_last_gradient(device):
    dt = dtype_for(device)
    x = channels_last(2, 3, 7, 7, device=device, dtype=dt).requires_grad_()
    w = channels_last(4, 3, 3, 3, device=device, dtype=dt).requires_grad_()
    fct.conv2d(x, w, None, 1, 1).sum().backward()
    assert w.grad.is_contiguous(memory_format=CL)
    wr = w.detach().contiguous().requires_grad_()
    F.conv2d(x.detach(), wr, None, 1, 1).sum().backward()
    assert rel_error(w.grad, wr.grad) < (1e-12 if dt == torch.float64 else 1e-5)


POOLS = {
    "max": (lambda x: fct.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)),
    "max_ceil": (lambda x: fct.max_pool2d(x, (2, 3), 2, 0, 1, True),
                 lambda x: F.max_pool2d(x, (2, 3), 2, 0, 1, True)),
    "avg": (lambda x: fct.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
            lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    "global": (lambda x: fct.global_avg_pool2d(x), lambda x: x.mean((2, 3))),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_pools_forward_and_backward_in_channels_last(device, pool, pointers):
    ours_fn, ref_fn = POOLS[pool]
    torch.manual_seed(2)
    dt = dtype_for(device)
    x = channels_last(2, 5, 11, 9, device=device, dtype=dt).requires_grad_()
    y = ours_fn(x)
    assert x.data_ptr() in pointers and y.data_ptr() in pointers
    if pool != "global":
        assert y.is_contiguous(memory_format=CL) and not y.is_contiguous()
    dy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, dy)
    assert gx.is_contiguous(memory_format=CL) and gx.data_ptr() in pointers
    xr = x.detach().contiguous().requires_grad_()
    yr = ref_fn(xr)
    (gr,) = torch.autograd.grad(yr, xr, dy.contiguous())
    assert rel_error(y, yr) < 1e-6 and rel_error(gx, gr) < 1e-6


def test_max_pool2d_indices_are_torchs_in_channels_last():
    x = channels_last(2, 3, 8, 8)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    y_ref, idx_ref = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(y, y_ref) and torch.equal(idx, idx_ref)
    assert idx.is_contiguous(memory_format=CL)


def test_modules_and_a_converted_model_in_channels_last():
    """A small model moved to channels_last (its weights too), converted: every
    convolution's and pool's output stays channels_last, and outputs and gradients
    are the unconverted model's."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1, groups=8),
                          nn.AvgPool2d(2), nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten()).double().to(memory_format=CL)
    converted = fct.convert(model)
    formats = []
    for m in converted.modules():
        if isinstance(m, (fct.Conv2d, fct.MaxPool2d, fct.AvgPool2d)):
            m.register_forward_hook(
                lambda m, i, o: formats.append(o.is_contiguous(memory_format=CL)
                                               and not o.is_contiguous()))
    x = channels_last(2, 3, 17, 19, dtype=torch.float64)
    grads = []
    for m in (model, converted):
        m.zero_grad()
        y = m(x)
        (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        grads.append((y, [p.grad for p in m.parameters()]))
    assert formats == [True] * 5
    assert rel_error(grads[1][0], grads[0][0]) < 1e-12
    for a, b in zip(grads[1][1], grads[0][1]):
        assert rel_error(a, b) < 1e-10


def test_torch_compile_keeps_channels_last():
    """The fake implementations give the strides the kernels' results have."""
    torch.manual_seed(4)
    conv = fct.Conv2d(4, 6, 3, padding=1).to(memory_format=CL)
    pool = fct.MaxPool2d(2)

    def f(x):
        return pool(conv(x))

    x = channels_last(2, 4, 10, 10).requires_grad_()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    y, y_ref = compiled(x), f(x)
    assert y.is_contiguous(memory_format=CL) and rel_error(y, y_ref) < 1e-6
    g = torch.autograd.grad(y.square().sum(), x)[0]
    g_ref = torch.autograd.grad(y_ref.square().sum(), x)[0]
    assert g.is_contiguous(memory_format=CL) and rel_error(g, g_ref) < 1e-6

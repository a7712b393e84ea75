"""Mixed precision (issue 16, item 5): under torch.autocast every fastconv.torch op takes
float16 / bfloat16 inputs as float32, computes in float32 and returns float32 (there are
no half-precision kernels yet); in eager mode and under torch.compile alike; a model of
fastconv's modules trains under autocast; outside autocast a float16 / bfloat16 tensor
is refused with a TypeError naming its dtype."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402

def params(device, dtype=torch.float32):
    """The ops' weights, float32 as a model's are (or dtype, for the refusal test)."""
    torch.manual_seed(3)
    conv = fct.Conv2d(3, 4, 3, padding=1, padding_mode="reflect").to(device, dtype)
    return {"w": torch.randn(4, 3, 3, 3, device=device, dtype=dtype),
            "b": torch.randn(4, device=device, dtype=dtype),
            "k": torch.randn(3, 5, device=device, dtype=dtype), "conv": conv}


OPS = {
    "conv2d": lambda x, p: fct.conv2d(x, p["w"], p["b"], 1, 1, activation="tanh"),
    "conv2d_avgpool": lambda x, p: fct.conv2d_avgpool(x, p["w"], None, 1, 1, pool=2),
    "max_pool2d": lambda x, p: fct.max_pool2d(x, 3, 2, 1),
    "avg_pool2d": lambda x, p: fct.avg_pool2d(x, 2),
    "global_avg_pool2d": lambda x, p: fct.global_avg_pool2d(x),
    "sobel": lambda x, p: fct.sobel(x, None, "wrap"),
    "filter2d": lambda x, p: fct.filter2d(x, p["k"], "mirror"),
    "Conv2d": lambda x, p: p["conv"](x),
}

DEVICE_DTYPES = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cpu", torch.float16, id="cpu-float16"),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not fastconv.cuda_available() or not torch.cuda.is_available(), reason="no CUDA GPU")]),
]


@pytest.mark.parametrize("device,low", DEVICE_DTYPES)
@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_under_autocast_low_precision_inputs_compute_in_float32(name, device, low, compiled):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8).to(device, low).requires_grad_()
    p = params(device)

    def fn(t):
        return OPS[name](t, p)

    if compiled:
        torch._dynamo.reset()  # fn's code object is the same in every case: no recompile limit
    run = torch.compile(fn, backend="aot_eager", fullgraph=True) if compiled else fn
    with torch.autocast(device, dtype=low):
        y = run(x)
    expected = fn(x.detach().float())  # the same float32 computation, autocast off
    assert y.dtype == torch.float32
    assert torch.equal(y.detach(), expected)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.dtype == low and torch.isfinite(g).all()


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(OPS))
def test_outside_autocast_half_precision_is_refused(name, low):
    x = torch.randn(2, 3, 9, 8).to(low)
    with pytest.raises(TypeError, match=str(low).replace("torch.", "")):
        OPS[name](x, params("cpu", low))


def test_float64_is_left_float64_under_autocast():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fct.max_pool2d(x, 2).dtype == torch.float64
        assert fct.sobel(x).dtype == torch.float64


def test_a_model_of_fastconv_modules_trains_under_autocast():
    torch.manual_seed(2)
    model = nn.Sequential(fct.Conv2d(1, 8, 3, padding=1, activation="relu"), nn.BatchNorm2d(8),
                          fct.MaxPool2d(2), fct.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          fct.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    x = torch.randn(32, 1, 12, 12)
    y = (x[:, :, :6].mean((1, 2, 3)) > x[:, :, 6:].mean((1, 2, 3))).long()  # top vs bottom
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)  # the Linear runs in bfloat16, fastconv's layers in float32
            loss = F.cross_entropy(logits, y)
        assert logits.dtype == torch.bfloat16
        loss.backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
                   for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])

"""fastconv.torch: the registered ops (opcheck), their gradients (gradcheck, float64),
the modules against torch.nn's with the same weights, torch.compile, and the drop-in
fastconv.conv2d on tensors that require grad."""

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402
from torch.library import opcheck  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402
from fastconv.train import keras_init_, lenet5  # noqa: E402

gpu = pytest.mark.gpu
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[gpu, pytest.mark.skipif(
               not fastconv.cuda_available() or not torch.cuda.is_available(),
               reason="no CUDA GPU")])]

CONV_CASES = {
    # name: (N, C, H, W, K, R, S, stride, padding, dilation, groups, bias, activation)
    "lenet-c1": (2, 1, 11, 9, 6, 5, 5, 1, "same", 1, 1, True, "tanh"),
    "strided-same": (2, 3, 9, 7, 4, 3, 2, 2, "same", 1, 1, True, "relu"),
    "dilated": (1, 4, 13, 11, 5, 3, 3, 1, 2, 2, 1, False, None),
    "groups": (2, 6, 7, 8, 4, 3, 3, (2, 1), (1, 0), 1, 2, True, "sigmoid"),
    "depthwise": (2, 5, 7, 7, 5, 3, 3, 1, 1, 1, 5, True, None),
    "valid": (3, 2, 8, 9, 3, 5, 5, 1, "valid", 1, 1, True, "tanh"),
}


def conv_inputs(case, dtype, device, seed=0, requires_grad=False):
    N, C, H, W, K, R, S, stride, padding, dilation, groups, bias, act = CONV_CASES[case]
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        t = torch.randn(*shape, generator=g, dtype=dtype).to(device)
        return t.requires_grad_(requires_grad)

    x, w = rand(N, C, H, W), rand(K, C // groups, R, S)
    b = rand(K) if bias else None
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups), act


def torch_conv(x, w, b, conf, act):
    padding = conf["padding"]
    if padding == "same" and conf["stride"] != 1:  # Keras' rule, the odd pixel at the end
        H, W = x.shape[-2:]
        R, S = w.shape[-2:]
        s = (conf["stride"],) * 2 if isinstance(conf["stride"], int) else conf["stride"]
        pads = []
        for size, k, st in ((W, S, s[1]), (H, R, s[0])):
            out = -(-size // st)
            total = max((out - 1) * st + k - size, 0)
            pads += [total // 2, total - total // 2]
        x, padding = F.pad(x, pads), 0
    y = F.conv2d(x, w, b, conf["stride"], padding, conf["dilation"], conf["groups"])
    return {None: y, "relu": F.relu(y), "tanh": torch.tanh(y), "sigmoid": torch.sigmoid(y)}[act]


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


# ----------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_opcheck_conv2d(case):
    x, w, b, conf, act = conv_inputs(case, torch.float32, "cpu", requires_grad=True)
    stride = list(fastconv._args.pair("t", "stride", conf["stride"], 1))
    dilation = list(fastconv._args.pair("t", "dilation", conf["dilation"], 1))
    same = conf["padding"] == "same"
    padding = [0, 0] if isinstance(conf["padding"], str) else \
        list(fastconv._args.pair("t", "padding", conf["padding"], 0))
    opcheck(torch.ops.fastconv.conv2d.default,
            (x, w, b, stride, padding, same, dilation, conf["groups"], act or "none"))
    y = fct.conv2d(x, w, b, **conf, activation=act).detach()
    opcheck(torch.ops.fastconv.conv2d_backward.default,
            (torch.randn_like(y), x.detach(), w.detach(), y if act else None, stride, padding,
             same, dilation, conf["groups"], act or "none", [True, True, b is not None]))


def test_opcheck_pooling_and_sobel():
    x = torch.randn(2, 3, 11, 9, requires_grad=True)
    # (..., padding, same, ...): same=True is Keras' "same", the padding list then unused.
    opcheck(torch.ops.fastconv.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], False, [1, 1], True))
    opcheck(torch.ops.fastconv.max_pool2d.default, (x, [3, 2], [2, 2], [0, 0], True, [1, 1], False))
    opcheck(torch.ops.fastconv.avg_pool2d.default,
            (x, [3, 2], [2, 1], [1, 1], False, True, False, None))
    opcheck(torch.ops.fastconv.avg_pool2d.default,
            (x, [2, 2], [2, 2], [0, 0], False, False, True, 3))
    opcheck(torch.ops.fastconv.avg_pool2d.default,
            (x, [3, 3], [2, 2], [0, 0], True, False, True, None))
    y, idx = torch.ops.fastconv.max_pool2d(x.detach(), [3, 3], [2, 2], [1, 1], False, [1, 1], False)
    for own in (False, True):
        opcheck(torch.ops.fastconv.max_pool2d_backward.default,
                (torch.randn_like(y), x.detach(), idx, [3, 3], [2, 2], [1, 1], False, [1, 1],
                 False, own))
    opcheck(torch.ops.fastconv.avg_pool2d_backward.default,
            (torch.randn(2, 3, 5, 4), x.detach(), [2, 2], [2, 2], [0, 0], False, False, True, None))
    opcheck(torch.ops.fastconv.global_avg_pool2d.default, (x,))
    opcheck(torch.ops.fastconv.global_avg_pool2d_backward.default,
            (torch.randn(2, 3), x.detach()))
    for axis in (None, 0, 1):  # with autograd now: opcheck tests the registration too
        opcheck(torch.ops.fastconv.sobel.default, (x, axis, "reflect", 0.0))
    for mode in ("constant", "wrap"):
        opcheck(torch.ops.fastconv.filter2d.default,
                (x, torch.randn(3, 2, requires_grad=True), mode, 0.5))


# ----------------------------------------------------------------------- gradients


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_gradcheck_conv2d(case):
    x, w, b, conf, act = conv_inputs(case, torch.float64, "cpu", requires_grad=True)
    inputs = (x, w) if b is None else (x, w, b)
    assert gradcheck(lambda *a: fct.conv2d(*a, **conf, activation=act), inputs)


@pytest.mark.parametrize("conf", [dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=(2, 3), stride=(1, 2), ceil_mode=True),
                                  dict(kernel_size=3, dilation=2, padding=1)])
def test_gradcheck_max_pool2d(conf):
    # Distinct values: finite differences are only meaningful away from ties.
    g = torch.Generator().manual_seed(1)
    x = (torch.randperm(2 * 3 * 11 * 9, generator=g).double() / 50).reshape(2, 3, 11, 9)
    assert gradcheck(lambda t: fct.max_pool2d(t, **conf), (x.requires_grad_(),))


@pytest.mark.parametrize("compiled", [False, True])
def test_max_pool2d_autograd_skips_the_index_check_only_for_its_own_indices(compiled,
                                                                             monkeypatch):
    """The backward of fastconv's own forward trusts its indices (the GPU's check is a
    stream synchronisation); the public backward with a caller's indices checks them."""
    from fastconv import ops

    seen = []
    real = ops._max_pool2d_backward

    def spy(*args, check_indices, **kw):
        seen.append(check_indices)
        return real(*args, check_indices=check_indices, **kw)

    # fastconv.torch calls it through the package, the public backward in its own module.
    monkeypatch.setattr(ops, "_max_pool2d_backward", spy)
    monkeypatch.setattr(ops.pool, "_max_pool2d_backward", spy)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    if compiled:  # the registered op, as torch.compile and the non-eager path call it
        y, idx = torch.ops.fastconv.max_pool2d(x, [3, 3], [2, 2], [1, 1], False, [1, 1], False)
    else:
        y = fct.max_pool2d(x, 3, 2, 1)
    y.sum().backward()
    assert seen == [False]
    y, idx = fastconv.max_pool2d(x.detach(), 3, 2, 1, return_indices=True)
    fastconv.max_pool2d_backward(torch.ones_like(y), x.detach(), 3, 2, 1, indices=idx)
    torch.ops.fastconv.max_pool2d_backward(torch.ones_like(y), x.detach(), idx, [3, 3], [2, 2],
                                           [1, 1], False, [1, 1], False)
    assert seen == [False, True, True]


def test_the_torch_peers_run_strict_float32():
    """conftest turns PyTorch's default TF32 convolutions off for every comparison."""
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("conf", [dict(kernel_size=2),
                                  dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                       count_include_pad=False),
                                  dict(kernel_size=(3, 2), padding=1, divisor_override=5)])
def test_gradcheck_avg_pool2d(conf):
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: fct.avg_pool2d(t, **conf), (x,))


# ----------------------------------------------------------------------- against torch.nn


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_forward_and_grads_match_torch(case, device):
    dtype = torch.float64 if device == "cpu" else torch.float32
    x, w, b, conf, act = conv_inputs(case, dtype, device, requires_grad=True)
    y = fct.conv2d(x, w, b, **conf, activation=act)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy)
    y_ref = torch_conv(x, w, b, conf, act)
    refs = torch.autograd.grad(y_ref, [t for t in (x, w, b) if t is not None], dy)
    bound = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_error(y, y_ref) < bound
    for got, want in zip(grads, refs):
        assert rel_error(got, want) < bound


def make_pair(kind):
    """(torch.nn module, fastconv.torch module) with the same constructor arguments."""
    if kind == "conv":
        return nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True), fct.Conv2d(3, 8, 3, 2, 1)
    if kind == "conv-same":
        return nn.Conv2d(3, 4, (5, 4), padding="same", dilation=(1, 2), groups=1), \
            fct.Conv2d(3, 4, (5, 4), padding="same", dilation=(1, 2))
    if kind == "max":
        return nn.MaxPool2d(3, 2, 1, ceil_mode=True), fct.MaxPool2d(3, 2, 1, ceil_mode=True)
    return nn.AvgPool2d(3, 2, 1, count_include_pad=False), fct.AvgPool2d(3, 2, 1, count_include_pad=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["conv", "conv-same", "max", "avg"])
def test_modules_swap_in_with_the_same_weights(kind, device):
    ref, ours = make_pair(kind)
    assert list(ref.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(ref.state_dict())
    ref, ours = ref.to(device), ours.to(device)
    x = torch.randn(2, 3, 13, 11, device=device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    assert ya.shape == yb.shape and rel_error(yb, ya) < 1e-5
    dy = torch.randn_like(ya)
    ya.backward(dy)
    yb.backward(dy)
    assert rel_error(xb.grad, xa.grad) < 1e-5
    for (name, pa), pb in zip(ref.named_parameters(), ours.parameters()):
        assert rel_error(pb.grad, pa.grad) < 1e-5, name


def test_conv2d_module_arguments():
    m = fct.Conv2d(3, 6, 5, stride=2, padding="same", activation="tanh")
    assert m.padding == "same" and "activation='tanh'" in repr(m)
    assert fct.Conv2d(2, 2, 3, bias=False).bias is None
    with pytest.raises(ValueError, match="padding_mode"):
        fct.Conv2d(3, 6, 5, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        fct.Conv2dAvgPool2d(3, 6, 5, padding_mode="reflect")
    with pytest.raises(ValueError, match="activation"):
        fct.Conv2d(3, 6, 5, activation="gelu")
    with pytest.raises(ValueError, match="padding"):
        fct.conv2d(torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3), padding="full")


def test_max_pool2d_module_returns_indices_like_torch():
    x = torch.randn(2, 3, 9, 9)
    y, idx = fct.MaxPool2d(3, 2, 1, return_indices=True)(x)
    y_ref, idx_ref = nn.MaxPool2d(3, 2, 1, return_indices=True)(x)
    assert torch.equal(y, y_ref) and torch.equal(idx, idx_ref)


def test_channels_last_input_gives_the_same_result():
    x = torch.randn(2, 3, 9, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3)
    assert rel_error(fct.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)) < 1e-5


# ----------------------------------------------------------------------- drop-in and compile


def test_fastconv_conv2d_is_a_drop_in_with_autograd():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = fastconv.conv2d(x, w, None, 1, 1)
    assert y.grad_fn is not None
    y.sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(x2, w2, None, 1, 1).sum().backward()
    assert rel_error(x.grad, x2.grad) < 1e-12 and rel_error(w.grad, w2.grad) < 1e-12
    with torch.no_grad():
        assert fastconv.conv2d(x, w, None, 1, 1).grad_fn is None
    pooled = fastconv.max_pool2d(x, 2)
    assert pooled.grad_fn is not None
    with pytest.raises(ValueError, match="layout"):
        fastconv.avg_pool2d(x, 2, layout="NHWC")


def test_lenet_under_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = keras_init_(lenet5("fastconv"), 0)
    x = torch.rand(8, 1, 28, 28)
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    y_eager = model(x)
    y_eager.square().sum().backward()
    assert rel_error(y, y_eager) < 1e-5
    for g, p in zip(grads, model.parameters()):
        assert rel_error(g, p.grad) < 1e-5


# ----------------------------------------------------------------------- the LeNet-5 block


def torch_block(x, w, b, conf, act, pool):
    return F.avg_pool2d(torch_conv(x, w, b, conf, act), pool)


BLOCK_CASES = [("lenet-c1", 2), ("valid", 2), ("strided-same", (1, 2)), ("groups", 3),
               ("dilated", (2, 3))]


@pytest.mark.parametrize("case,pool", BLOCK_CASES)
def test_block_opcheck(case, pool):
    x, w, b, conf, act = conv_inputs(case, torch.float32, "cpu", requires_grad=True)
    stride, padding, same, dilation, act_s = fct._conv_conf("t", conf["stride"], conf["padding"],
                                                            conf["dilation"], act)
    pool = list(fastconv._args.pair("t", "pool", pool, 1))
    for save in (True, False):
        opcheck(torch.ops.fastconv.conv2d_avgpool.default,
                (x, w, b, stride, padding, same, dilation, conf["groups"], act_s, pool, save))
    y, a = torch.ops.fastconv.conv2d_avgpool(x.detach(), w.detach(), None if b is None else b.detach(),
                                             stride, padding, same, dilation, conf["groups"], act_s,
                                             pool, True)
    opcheck(torch.ops.fastconv.conv2d_avgpool_backward.default,
            (torch.randn_like(y), x.detach(), w.detach(), a if act else None, stride, padding, same,
             dilation, conf["groups"], act_s, pool, [True, True, b is not None]))


@pytest.mark.parametrize("case,pool", BLOCK_CASES)
def test_block_gradcheck(case, pool):
    x, w, b, conf, act = conv_inputs(case, torch.float64, "cpu", requires_grad=True)
    inputs = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(
        lambda *t: fct.conv2d_avgpool(*t, **conf, activation=act, pool=pool), inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,pool", BLOCK_CASES)
def test_block_matches_torch_forward_and_gradients(case, pool, device):
    x, w, b, conf, act = conv_inputs(case, torch.float32, device, requires_grad=True)
    y = fct.conv2d_avgpool(x, w, b, **conf, activation=act, pool=pool)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy)
    want = torch_block(x, w, b, conf, act, pool)
    refs = torch.autograd.grad(want, [t for t in (x, w, b) if t is not None], dy)
    assert rel_error(y, want) < 1e-5
    for got, ref_grad in zip(grads, refs):
        assert rel_error(got, ref_grad) < 1e-5
    # fastconv.conv2d_avgpool routes tensors that require grad here too.
    assert fastconv.conv2d_avgpool(x, w, b, **conf, activation=act, pool=pool).grad_fn is not None


def test_block_module_holds_the_convolutions_parameters():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    block = fct.Conv2dAvgPool2d(3, 4, 3, padding=1, activation="tanh", pool=2)
    assert list(block.state_dict()) == list(conv.state_dict())
    block.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 9, 8)
    assert rel_error(block(x), F.avg_pool2d(torch.tanh(conv(x)), 2)) < 1e-5
    assert "pool=(2, 2)" in repr(block)
    with pytest.raises(ValueError, match="pool must be >= 1"):
        fct.Conv2dAvgPool2d(3, 4, 3, pool=0)


def test_fuse_folds_conv_activation_and_pool_into_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(
        fct.Conv2d(1, 6, 5, padding="same", activation="tanh"), fct.AvgPool2d(2),  # fused
        fct.Conv2d(6, 8, 3), nn.Tanh(), nn.Identity(), nn.AvgPool2d(2),             # fused, tanh joins
        fct.Conv2d(8, 8, 1, activation="relu"), nn.AvgPool2d(2, stride=1),          # stride != window
        fct.Conv2d(8, 8, 1), nn.AvgPool2d(1, padding=0, ceil_mode=True),            # ceil_mode
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    fused = fct.fuse(model)
    kinds = [type(m).__name__ for m in fused.children()]
    assert kinds == ["Conv2dAvgPool2d", "Conv2dAvgPool2d", "Conv2d", "AvgPool2d", "Conv2d",
                     "AvgPool2d", "Flatten", "Linear"]
    assert fused.get_submodule("2").activation == "tanh"
    assert list(fused.state_dict()) == list(model.state_dict())
    assert fused.get_submodule("0").weight is model[0].weight  # shared, not copied
    x = torch.randn(3, 1, 24, 24, requires_grad=True)
    y, y_ref = fused(x), model(x)
    assert rel_error(y, y_ref) < 1e-5
    (g,) = torch.autograd.grad(y.sum(), model[2].weight)
    (g_ref,) = torch.autograd.grad(y_ref.sum(), model[2].weight)
    assert rel_error(g, g_ref) < 1e-5


def test_fuse_leaves_a_conv_whose_output_is_used_twice():
    class TwoUses(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = fct.Conv2d(2, 2, 3, activation="tanh"), fct.AvgPool2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.pool(y), y

    fused = fct.fuse(TwoUses())
    assert type(fused.conv) is fct.Conv2d and isinstance(fused.pool, fct.AvgPool2d)


def test_lenet_uses_the_blocks_and_keeps_torchs_state_dict():
    model = lenet5("fastconv")
    assert isinstance(model.c1, fct.Conv2dAvgPool2d) and isinstance(model.c3, fct.Conv2dAvgPool2d)
    assert list(model.state_dict()) == list(lenet5("torch").state_dict())


@pytest.mark.parametrize("compiled_op", [False, True], ids=["eager", "custom-op"])
def test_the_block_backward_fills_no_gradient_for_its_saved_activation(compiled_op, monkeypatch):
    """Conv2dAvgPool2d's second output (the full-resolution activation kept for the
    backward) takes no gradient: autograd must not zero-fill one of its size every step
    (LeNet-5's C1 at batch 128: a 2.4 MB fill, 8% of the training step)."""
    from torch.profiler import ProfilerActivity, profile

    from fastconv import _arrays
    from fastconv.torch import _ops

    _arrays.set_poison(False)  # the tests' NaN poisoning fills fastconv's own outputs
    if compiled_op:  # the torch.library op's registered autograd, as torch.compile runs it
        monkeypatch.setattr(_ops, "_call", lambda op, eager, *args: op(*args))
    block = fct.Conv2dAvgPool2d(3, 6, 5, padding="same", activation="tanh", pool=2)
    x = torch.randn(4, 3, 16, 16)
    out = block(x)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out.sum().backward()
    fills = [e.input_shapes for e in prof.events()
             if e.name in ("aten::fill_", "aten::zero_", "aten::zeros") and e.input_shapes
             and list(e.input_shapes[0]) == [4, 6, 16, 16]]
    assert not fills, fills
    assert block.weight.grad is not None and torch.isfinite(block.weight.grad).all()

"""fastconv.torch.convert (issue 16, item 2) on hand-built stand-ins for torchvision's
ResNet-50 and MobileNetV3-Small (torchvision is not installed here): the same module
kinds in the same arrangement, at a size the CPU tests can afford. Outputs in eval and
train mode and parameter gradients within 1e-4 of the unconverted model, state_dict
keys unchanged, torch.compile(fullgraph=True) matching eager, and the report."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fastconv.torch as fct  # noqa: E402


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 -> 3x3 (stride) -> 1x1, batch norms, a projection."""

    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + self.downsample(x))


def resnet_like():
    return nn.Sequential(
        nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
        Bottleneck(8, 4, 16, 1), Bottleneck(16, 8, 32, 2),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(32, 10))


class SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-and-excitation: global pool, two 1x1 convs on (N, C, 1, 1)."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = self.fc2(torch.relu(self.fc1(self.avgpool(x))))
        return x * nn.functional.hardsigmoid(s)


def mobilenet_like():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),  # depthwise
        SqueezeExcite(8, 8),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16),
        nn.Conv2d(16, 16, 5, 2, 2, groups=16, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


MODELS = {"resnet-like": resnet_like, "mobilenet-like": mobilenet_like}


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def outputs_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.square().sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_converted_model_matches_the_original(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    kinds_before = [type(m) for m in model.modules()]
    converted = fct.convert(model)
    report = converted.fastconv_report
    # The original is untouched; the parameters and buffers are shared, not copied.
    assert [type(m) for m in model.modules()] == kinds_before
    assert all(p is q for p, q in zip(model.parameters(), converted.parameters()))
    assert list(converted.state_dict()) == list(model.state_dict())
    swapped = [m for m in converted.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d,
                                                                 nn.AvgPool2d, nn.AdaptiveAvgPool2d))]
    assert swapped and all(type(m).__module__ == "fastconv.torch.modules" for m in swapped)
    assert len(report.converted) == len(swapped) and not report.left
    # float32: the output and all the gradients together within 1e-4. A single small
    # gradient can cancel (a bias feeding a train-mode batch norm: ~1e-6 of the others),
    # so each parameter on its own is checked in float64, where rounding cannot hide.
    for dtype, bound, each in ((torch.float32, 1e-4, False), (torch.float64, 1e-10, True)):
        model.to(dtype), converted.to(dtype)  # buffers are replaced, not converted in place
        x = torch.randn(3, 3, 32, 32, dtype=dtype)
        for training in (True, False):
            model.train(training), converted.train(training)
            y_ref, g_ref = outputs_and_grads(model, x)
            y, g = outputs_and_grads(converted, x)
            assert rel_error(y, y_ref) < bound, (dtype, training)
            assert rel_error(torch.cat([a.flatten() for a in g]),
                             torch.cat([b.flatten() for b in g_ref])) < bound, (dtype, training)
            if each:
                for (pname, _), a, b in zip(model.named_parameters(), g, g_ref):
                    assert rel_error(a, b) < bound, (pname, training)


def test_converted_model_under_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = fct.convert(resnet_like()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_error(torch.compile(model, fullgraph=True)(x), model(x)) < 1e-4


def test_what_convert_leaves_and_why():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(3, 4, 3), MyConv(4, 4, 3), nn.AdaptiveAvgPool2d(2),
                          nn.Conv2d(4, 4, 1).half(), fct.Conv2d(4, 4, 1))
    converted = fct.convert(model)
    left = {name: why for name, _, why in converted.fastconv_report.left}
    assert set(left) == {"1", "2", "3", "4"}
    assert "subclass" in left["1"] and "output_size" in left["2"] and "float16" in left["3"] \
        and "already" in left["4"]
    assert type(converted[0]) is fct.Conv2d and type(converted[1]) is MyConv
    assert "converted 1 modules, left 4" in str(converted.fastconv_report)
    # inplace: the model itself is changed; a bare module converts too.
    assert fct.convert(model, inplace=True) is model and type(model[0]) is fct.Conv2d
    assert type(fct.convert(nn.MaxPool2d(2))) is fct.MaxPool2d
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fct.convert(lambda x: x)


def test_convert_with_fuse_forms_the_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten())
    fused = fct.convert(model, fuse=True)
    assert [type(m).__name__ for m in fused.children()] == ["Conv2dAvgPool2d", "Conv2dAvgPool2d",
                                                            "Flatten"]
    x = torch.randn(2, 1, 28, 28)
    assert rel_error(fused(x), model(x)) < 1e-5
    assert list(fused.state_dict()) == list(model.state_dict())

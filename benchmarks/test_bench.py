"""pytest-benchmark suites: every op of `fastconv bench`, fastconv and its peer as two
entries of one group, so pytest-benchmark's table shows them side by side.

    python -m pytest benchmarks --benchmark-only --benchmark-group-by=group
    python -m pytest benchmarks --benchmark-only -m gpu      # the GPU rows only

Shapes are fastconv.bench's (LeNet-5 at batch 256, ResNet-50 layers and the large
pooling cases at batch 8 to keep a CPU run short). Times are wall clock; on the GPU
every call is followed by a synchronize, so they include host overhead (the harness
`fastconv bench --device cuda` also reports device time). These are not tests: they
assert nothing but that each op ran.
"""

import numpy as np
import pytest

import fastconv
from fastconv import bench

torch = pytest.importorskip("torch")
F = torch.nn.functional

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
               not fastconv.cuda_available() or not torch.cuda.is_available(),
               reason="no CUDA GPU")])]
IMPLS = ["fastconv", "peer"]


def _sync(device):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _run(benchmark, device, fn):
    sync = _sync(device)

    def call():
        out = fn()
        sync()
        return out

    call()  # warm-up (cudnn.benchmark picks its algorithm here)
    return benchmark(call)


def _randn(device, *shape):
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g).to(device)


@pytest.fixture(autouse=True)
def _strict_fp32():
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


CONV = {**bench.LENET, **{k: (8,) + v[1:] for k, v in bench.RESNET50.items()},
        **{k: (8,) + v[1:] for k, v in bench.DEPTHWISE.items()}}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CONV))
@pytest.mark.parametrize("device", DEVICES)
def test_conv2d(benchmark, device, case, impl):
    N, C, H, W, K, R, stride, pad, groups = CONV[case]
    x, w = _randn(device, N, C, H, W), _randn(device, K, C // groups, R, R) * 0.1
    benchmark.group = f"conv2d {case} {device}"
    fn = (lambda: fastconv.conv2d(x, w, None, stride, pad, 1, groups)) if impl == "fastconv" \
        else (lambda: F.conv2d(x, w, None, stride, pad, 1, groups))
    _run(benchmark, device, fn)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(bench.LENET))
@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_backward(benchmark, device, case, impl):
    N, C, H, W, K, R, stride, pad, groups = bench.LENET[case]
    P, Q = bench.conv_out(bench.LENET[case])
    x, w, dy = _randn(device, N, C, H, W), _randn(device, K, C, R, R), _randn(device, N, K, P, Q)
    benchmark.group = f"conv2d_backward {case} {device}"
    if impl == "fastconv":
        fn = lambda: fastconv.conv2d_backward(dy, x, w, stride, pad,  # noqa: E731
                                              output_mask=(True, True, False))
    else:
        fn = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            dy, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, [True, True, False])
    _run(benchmark, device, fn)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(bench.POOL))
@pytest.mark.parametrize("device", DEVICES)
def test_pool(benchmark, device, case, impl):
    kind, shape, kw = bench.POOL[case]
    if "big" in case:
        shape = (8,) + shape[1:]
    x = _randn(device, *shape)
    benchmark.group = f"pool {case} {device}"
    ours = {"max": lambda: fastconv.max_pool2d(x, **kw), "avg": lambda: fastconv.avg_pool2d(x, **kw),
            "gap": lambda: fastconv.global_avg_pool2d(x)}[kind]
    peer = {"max": lambda: F.max_pool2d(x, **kw), "avg": lambda: F.avg_pool2d(x, **kw),
            "gap": lambda: F.adaptive_avg_pool2d(x, 1)}[kind]
    _run(benchmark, device, ours if impl == "fastconv" else peer)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(bench.SOBEL))
@pytest.mark.parametrize("device", DEVICES)
def test_sobel_magnitude(benchmark, device, case, impl):
    shape = bench.SOBEL[case]
    x = _randn(device, *shape)
    benchmark.group = f"sobel {case} {device}"
    if impl == "fastconv":
        _run(benchmark, device, lambda: fastconv.sobel(x))
    elif device == "cpu":
        ndi = pytest.importorskip("scipy.ndimage")
        planes = x.numpy().reshape(-1, *shape[-2:])
        _run(benchmark, device, lambda: [np.hypot(ndi.sobel(p, 0), ndi.sobel(p, 1)) for p in planes])
    else:
        cndi = pytest.importorskip("cupyx.scipy.ndimage")
        import cupy

        planes = cupy.from_dlpack(x).reshape(-1, *shape[-2:])
        _run(benchmark, device, lambda: [cupy.hypot(cndi.sobel(p, 1), cndi.sobel(p, 0))
                                         for p in planes])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", bench.TRAIN_BATCHES)
@pytest.mark.parametrize("device", DEVICES)
def test_lenet5_training_step(benchmark, device, batch, impl):
    from fastconv.train import keras_init_, lenet5

    model = keras_init_(lenet5("fastconv" if impl == "fastconv" else "torch"), 0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, 28, 28).to(device)
    y = torch.randint(0, 10, (batch,)).to(device)
    benchmark.group = f"train lenet5 b{batch} {device}"

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    _run(benchmark, device, step)

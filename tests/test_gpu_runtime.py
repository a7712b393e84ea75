"""The GPU backend's behaviour as a library citizen: it launches on the caller's current
stream (never the legacy default stream), its device memory stays flat over thousands
of calls, and bad indices from a caller are refused. GPU only."""

import numpy as np
import pytest

import fastconv

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not fastconv.cuda_available(), reason="no CUDA GPU")]


def _torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return torch


OPS = {
    "conv2d": lambda x, w: fastconv.conv2d(x, w, padding=1, activation="tanh"),
    "conv2d_backward": lambda x, w: fastconv.conv2d_backward(
        fastconv.conv2d(x, w, padding=1), x, w, padding=1)[1],
    "max_pool2d": lambda x, w: fastconv.max_pool2d(x, 3, 2, 1),
    "avg_pool2d": lambda x, w: fastconv.avg_pool2d(x, 2),
    "sobel": lambda x, w: fastconv.sobel(x),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_torch_work_goes_on_the_current_stream(op):
    """A long sleep queued on a side stream, then the op on that stream: until the
    sleep ends the side stream is busy and the default stream idle, and the result,
    once the side stream is done, equals the same op run on the default stream."""
    torch = _torch()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 8, 33, 31, device="cuda", generator=g)
    w = torch.randn(8, 8, 3, 3, device="cuda", generator=g)
    want = OPS[op](x, w)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles on the side stream
        got = OPS[op](x, w)
        assert not side.query(), "the side stream finished before its sleep could"
        assert torch.cuda.default_stream().query(), "work landed on the default stream"
    side.synchronize()
    assert torch.equal(got, want)


# A kernel that keeps its stream busy for a given number of clock cycles (CuPy has no
# torch.cuda._sleep); compiled by NVRTC at first use.
_SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {}
}
"""


def test_cupy_work_goes_on_the_current_stream():
    """As the torch test: a long kernel queued on a side stream, then the op on it;
    while the spin runs the side stream is busy and the null stream idle."""
    cupy = pytest.importorskip("cupy")
    spin = cupy.RawKernel(_SPIN, "spin")
    x = cupy.random.default_rng(0).standard_normal((4, 8, 33, 31), dtype=cupy.float32)
    want = fastconv.sobel(x)
    cupy.cuda.Device().synchronize()
    side = cupy.cuda.Stream(non_blocking=True)
    with side:
        spin((1,), (1,), (cupy.int64(200_000_000),))  # ~0.1 s of GPU cycles
        got = fastconv.sobel(x)
        assert not side.done, "the side stream finished before its spin could"
        assert cupy.cuda.Stream.null.done, "work landed on the null stream"
    side.synchronize()
    assert bool((got == want).all())


def test_device_memory_stays_flat_over_repeated_calls():
    torch = _torch()
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(8, 16, 29, 31, device="cuda", generator=g)
    w = torch.randn(16, 16, 3, 3, device="cuda", generator=g)

    def burst(n):
        for _ in range(n):
            for fn in OPS.values():
                fn(x, w)
        torch.cuda.synchronize()

    burst(20)
    allocated = torch.cuda.memory_allocated()
    free_before, _ = torch.cuda.mem_get_info()
    burst(1000)
    free_after, _ = torch.cuda.mem_get_info()
    assert torch.cuda.memory_allocated() == allocated, "tensors outlived their calls"
    # Memory fastconv might take outside PyTorch's allocator (cudaMalloc in a binding).
    assert free_before - free_after < 16 << 20, (free_before, free_after)


def test_max_pool_backward_refuses_indices_outside_the_plane():
    torch = _torch()
    x = torch.randn(2, 3, 9, 9, device="cuda")
    y, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    bad = idx.clone()
    bad[0, 0, 0, 0] = 81  # one past the 9 x 9 plane
    with pytest.raises(ValueError, match="indices"):
        fastconv.max_pool2d_backward(torch.ones_like(y), x, 3, 2, 1, indices=bad)
    good = fastconv.max_pool2d_backward(torch.ones_like(y), x, 3, 2, 1, indices=idx)
    want = fastconv.max_pool2d_backward(torch.ones_like(y).cpu(), x.cpu(), 3, 2, 1,
                                        indices=idx.cpu())
    np.testing.assert_array_equal(good.cpu().numpy(), want.numpy())


def test_autograd_max_pool_backward_does_not_check_its_own_indices(monkeypatch):
    """The check of caller indices allocates, copies and synchronises the stream; the
    backward of fastconv's own forward must not run it (graph capture needs that)."""
    torch = _torch()
    import fastconv.torch as fct
    from fastconv import _cuda

    calls = []
    real = _cuda.max_pool_bad_indices
    monkeypatch.setattr(_cuda, "max_pool_bad_indices",
                        lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 3, 9, 9, device="cuda", requires_grad=True)
    fct.max_pool2d(x, 3, 2, 1).sum().backward()
    assert calls == []
    y, idx = fastconv.max_pool2d(x.detach(), 3, 2, 1, return_indices=True)
    fastconv.max_pool2d_backward(torch.ones_like(y), x.detach(), 3, 2, 1, indices=idx)
    assert calls == [1]


def test_conv_and_max_pool_training_step_captures_in_a_cuda_graph():
    torch = _torch()
    import fastconv.torch as fct

    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(4, 3, 17, 15, device="cuda", generator=g)
    conv = fct.Conv2d(3, 8, 3, padding=1).cuda()
    params = list(conv.parameters())

    def step():
        loss = fct.max_pool2d(torch.tanh(conv(x)), 3, 2, 1).square().sum()
        return torch.autograd.grad(loss, params)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        want = step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # deterministic kernels: the same bits


def test_split_k_grad_weight_scratch_comes_from_the_callers_allocator():
    """N * P * Q = 3200 pixels: two splits; the partials' scratch is a torch tensor (the
    caching allocator keeps it), so device memory outside torch stays flat."""
    torch = _torch()
    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(2, 16, 40, 40, device="cuda", generator=g)
    w = torch.randn(16, 16, 3, 3, device="cuda", generator=g)
    dy = torch.randn(2, 16, 40, 40, device="cuda", generator=g)
    from fastconv import _args, _cuda

    params, _ = _args.conv2d("conv2d", tuple(x.shape), tuple(w.shape), None, 1, 1, 1, 1, None,
                             "NCHW")
    assert _cuda.conv2d_bwd_filter_workspace(params, "implicit_gemm") == 2 * 16 * 144 * 4
    assert _cuda.conv2d_bwd_filter_workspace(params, "direct") == 0
    run = lambda: fastconv.conv2d_backward(dy, x, w, padding=1, variant="implicit_gemm",  # noqa: E731
                                           output_mask=(False, True, False))[1]
    want = run()
    torch.cuda.synchronize()
    free_before, _ = torch.cuda.mem_get_info()
    for _ in range(200):
        got = run()
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info()
    assert torch.equal(got, want)
    assert free_before - free_after < 4 << 20, (free_before, free_after)
    ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), padding=1)
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-5

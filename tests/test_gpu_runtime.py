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


def test_cupy_work_goes_on_the_current_stream():
    cupy = pytest.importorskip("cupy")
    x = cupy.random.default_rng(0).standard_normal((4, 8, 33, 31), dtype=cupy.float32)
    want = fastconv.sobel(x)
    cupy.cuda.Device().synchronize()
    side = cupy.cuda.Stream(non_blocking=True)
    with side:
        got = fastconv.sobel(x)
    side.synchronize()
    assert bool((got == want).all())
    # Nothing was left on the null stream for this stream's work to wait on.
    assert cupy.cuda.Stream.null.done


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

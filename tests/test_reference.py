"""The specification itself: fastconv.reference against PyTorch and SciPy (which define
the semantics fastconv follows), and its gradients against finite differences."""

import numpy as np
import pytest
import scipy.ndimage as ndi

from fastconv import reference as ref

rng = np.random.default_rng(1234)


def finite_difference(f, x, eps=1e-6):
    """d sum(f(x) * g) / dx by central differences, for a fixed random g."""
    g = np.random.default_rng(0).standard_normal(f(x).shape)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        plus = np.sum(f(x) * g)
        x[i] = old - eps
        minus = np.sum(f(x) * g)
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad, g


CONV_CASES = [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=2, padding=1, dilation=1, groups=2),
    dict(stride=(1, 2), padding="same", dilation=(2, 1), groups=1),
    dict(stride=3, padding="same", dilation=1, groups=4),
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("activation", [None, "tanh", "sigmoid"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients_match_finite_differences(case, activation, layout):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((4, 4 // case["groups"], 3, 2))
    b = rng.standard_normal(4)
    if layout == "NHWC":
        x, w = x.transpose(0, 2, 3, 1).copy(), w.transpose(2, 3, 1, 0).copy()
    f = lambda: ref.conv2d(x, w, b, **case, activation=activation, layout=layout)  # noqa: E731
    y = f()
    dx_fd, g = finite_difference(lambda v: ref.conv2d(v, w, b, **case, activation=activation, layout=layout), x)
    dw_fd, _ = finite_difference(lambda v: ref.conv2d(x, v, b, **case, activation=activation, layout=layout), w)
    db_fd, _ = finite_difference(lambda v: ref.conv2d(x, w, v, **case, activation=activation, layout=layout), b)
    dx, dw, db = ref.conv2d_backward(g, x, w, **case, activation=activation, output=y, layout=layout)
    for got, fd in ((dx, dx_fd), (dw, dw_fd), (db, db_fd)):
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(2, 3), stride=(1, 2), padding="same"),
                                dict(kernel_size=2, ceil_mode=True, padding="valid")])
def test_pool_gradients_match_finite_differences(kw):
    x = rng.standard_normal((1, 2, 7, 9))
    g_avg_fd, g = finite_difference(lambda v: ref.avg_pool2d(v, **kw), x)
    np.testing.assert_allclose(ref.avg_pool2d_backward(g, x, **kw), g_avg_fd, rtol=1e-6, atol=1e-8)
    g_max_fd, g = finite_difference(lambda v: ref.max_pool2d(v, **kw), x)
    np.testing.assert_allclose(ref.max_pool2d_backward(g, x, **kw), g_max_fd, rtol=1e-6, atol=1e-8)
    g_gap_fd, g = finite_difference(ref.global_avg_pool2d, x)
    np.testing.assert_allclose(ref.global_avg_pool2d_backward(g, x), g_gap_fd, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- against PyTorch


@pytest.mark.parametrize("case", CONV_CASES[:2] + [dict(stride=1, padding="same", dilation=2, groups=1)])
def test_conv2d_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((6, 4 // case["groups"], 3, 3)), rng.standard_normal(6)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.tanh(F.conv2d(xt, wt, bt, **case))
    g = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(g))
    y = ref.conv2d(x, w, b, **case, activation="tanh")
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    for got, want in zip(ref.conv2d_backward(g, x, w, **case, activation="tanh", output=y),
                         (xt.grad, wt.grad, bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-12)


POOLS = [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2),
         dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True)]


@pytest.mark.parametrize("kw", POOLS)
def test_pools_match_torch(kw):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((2, 3, 11, 13))
    x[0, 0, 3, 3] = np.nan
    y, i = ref.max_pool2d(x, **kw, return_indices=True)
    yt, it = F.max_pool2d(torch.tensor(x), **kw, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(i, it.numpy())
    for cip in (True, False):
        np.testing.assert_allclose(ref.avg_pool2d(x, **kw, count_include_pad=cip),
                                   F.avg_pool2d(torch.tensor(x), **kw, count_include_pad=cip).numpy(),
                                   rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref.avg_pool2d(x, 3, 2, 1, divisor_override=4),
                               F.avg_pool2d(torch.tensor(x), 3, 2, 1, divisor_override=4).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_keras_same_pooling():
    """Keras' padding='same' pooling: out = ceil(in / stride), padded pixels out of the average."""
    x = np.arange(1.0, 26.0).reshape(1, 1, 5, 5)
    y = ref.avg_pool2d(x, 2, padding="same")
    assert y.shape == (1, 1, 3, 3)
    assert y[0, 0, 2, 2] == 25.0  # the corner window holds one real pixel
    assert y[0, 0, 0, 2] == (5.0 + 10.0) / 2
    assert ref.max_pool2d(x, 2, padding="same")[0, 0, 2, 2] == 25.0


# ---------------------------------------------------------------- against SciPy


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "constant", "wrap"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (2, 3), (7, 9), (16, 13)])
def test_sobel_and_filter2d_match_scipy(mode, shape):
    im = rng.standard_normal(shape)
    for axis in (0, 1):
        np.testing.assert_allclose(ref.sobel(im, axis, mode, cval=1.5),
                                   ndi.sobel(im, axis, mode=mode, cval=1.5), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref.sobel(im, None, mode, cval=1.5),
                               np.hypot(ndi.sobel(im, 0, mode=mode, cval=1.5),
                                        ndi.sobel(im, 1, mode=mode, cval=1.5)), rtol=1e-12, atol=1e-12)
    for k in (rng.standard_normal((7, 4)), rng.standard_normal((1, 3)), rng.standard_normal((2, 2))):
        np.testing.assert_allclose(ref.filter2d(im, k, mode, cval=-2.0),
                                   ndi.correlate(im, k, mode=mode, cval=-2.0), rtol=1e-12, atol=1e-12)


def test_batched_sobel_filters_each_plane():
    im = rng.standard_normal((3, 2, 8, 9))
    got = ref.sobel(im, 1, "nearest")
    for n in range(3):
        for c in range(2):
            np.testing.assert_allclose(got[n, c], ndi.sobel(im[n, c], 1, mode="nearest"), rtol=1e-12)
    nhwc = ref.sobel(im.transpose(0, 2, 3, 1), 1, "nearest", layout="NHWC")
    np.testing.assert_allclose(nhwc, got.transpose(0, 2, 3, 1), rtol=1e-12)


def test_conv1d_course_convolve():
    s, w = rng.standard_normal(50), rng.standard_normal(7)
    expect = np.zeros(len(s) - len(w) + 1)
    for i in range(expect.shape[0]):
        expect[i] = np.sum(w * s[i:i + len(w)])
    np.testing.assert_allclose(ref.conv1d(s, w), expect, rtol=1e-14)
    np.testing.assert_allclose(ref.conv1d(s, w), np.correlate(s, w, "valid"), rtol=1e-12)

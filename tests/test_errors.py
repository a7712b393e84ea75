"""Bad input: every invalid call raises ValueError or TypeError naming the argument,
what was expected and what was received, before any kernel runs."""

import numpy as np
import pytest

import fastconv

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
X4 = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)  # 4 channels: groups=2 divides them


def raises(exc, *words):
    """pytest.raises whose message must contain every word (argument, expected, received)."""
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *a):
            handled = self.ctx.__exit__(*a)
            if not handled:
                return False
            msg = str(self.info.value)
            for w in words:
                assert w in msg, f"{w!r} not in the message {msg!r}"
            return handled
    return _Check()


CONV_BAD = [
    (dict(input=X[0, 0]), ValueError, ["input", "4-D", "3-D unbatched", "(8, 8)"]),
    (dict(weight=W[0]), ValueError, ["weight", "4-D", "(3, 3, 3)"]),
    (dict(weight=rng.standard_normal((4, 2, 3, 3)).astype(np.float32)), ValueError,
     ["weight has 2 input channels per group", "3 channels", "groups=1"]),
    (dict(groups=2), ValueError, ["groups=2", "3 channels"]),
    (dict(input=X4, weight=rng.standard_normal((6, 4, 3, 3)).astype(np.float32), groups=2),
     ValueError, ["weight has 4 input channels per group", "4 channels", "groups=2"]),
    (dict(groups=0), ValueError, ["groups", ">= 1", "0"]),
    (dict(groups=1.5), TypeError, ["groups", "int", "1.5"]),
    (dict(stride=0), ValueError, ["stride", ">= 1", "0"]),
    (dict(stride=(1, -2)), ValueError, ["stride", ">= 1"]),
    (dict(stride=(1, 2, 3)), ValueError, ["stride", "pair"]),
    (dict(dilation=0), ValueError, ["dilation", ">= 1"]),
    (dict(padding=-1), ValueError, ["padding", ">= 0", "-1"]),
    (dict(padding="full"), ValueError, ["padding", "'valid' or 'same'", "'full'"]),
    (dict(activation="gelu"), ValueError, ["activation", "'relu'", "'gelu'"]),
    (dict(layout="NHCW"), ValueError, ["layout", "'NCHW' or 'NHWC'", "'NHCW'"]),
    (dict(weight=rng.standard_normal((4, 3, 9, 3)).astype(np.float32)), ValueError,
     ["9x3 kernel", "larger than the padded input 8x8"]),
    (dict(dilation=4), ValueError, ["larger than the padded input"]),
    (dict(bias=np.zeros(5, np.float32)), ValueError, ["bias", "(4,)", "(5,)"]),
    (dict(input=X.astype(np.float16)), TypeError, ["float16"]),
    (dict(input=X.astype(np.float16), weight=W.astype(np.float16)), TypeError,
     ["CPU backend takes float32 or float64", "got float16", "the GPU backend takes float16"]),
    # residual: the output's (N, K, P, Q) = (2, 4, 6, 6), in the layout, library and dtype
    (dict(residual=np.zeros((2, 4, 6, 5), np.float32)), ValueError,
     ["residual must have the output's shape (N, K, P, Q) = (2, 4, 6, 6)", "layout='NCHW'",
      "got (2, 4, 6, 5)"]),
    (dict(residual=np.zeros((2, 6, 6, 4), np.float32)), ValueError,
     ["residual", "(2, 4, 6, 6)", "got (2, 6, 6, 4)"]),
    (dict(input=X.transpose(0, 2, 3, 1), weight=W.transpose(2, 3, 1, 0), layout="NHWC",
          residual=np.zeros((2, 4, 6, 6), np.float32)), ValueError,
     ["residual must have the output's shape (N, P, Q, K) = (2, 6, 6, 4)", "layout='NHWC'",
      "got (2, 4, 6, 6)"]),
    (dict(residual=np.zeros((2, 4, 6, 6))), TypeError,
     ["residual has dtype float64", "input has dtype float32"]),
    (dict(residual="skip"), TypeError, ["residual", "NumPy, CuPy or PyTorch", "str"]),
    (dict(precision="fp32"), ValueError,
     ["precision", "None, 'strict', 'tf32' or '3xtf32'", "got 'fp32'"]),
    (dict(precision=0), ValueError, ["precision", "'3xtf32'", "got 0"]),
    (dict(input=X.astype(np.int32), weight=W.astype(np.int32)), TypeError, ["int32", "float32 or float64"]),
    (dict(weight=W.astype(np.float64)), TypeError, ["weight", "float64", "float32"]),
    (dict(input=np.zeros((2, 3, 0, 8), np.float32)), ValueError, ["input", "zero-size", "(2, 3, 0, 8)"]),
    (dict(variant="winograd"), ValueError, ["variant", "'winograd'"]),
    (dict(variant="depthwise"), ValueError, ["depthwise", "groups == channels"]),
    (dict(variant="winograd2", stride=2), ValueError,
     ["'winograd2'", "3x3 kernel, stride 1 and dilation 1", "stride (2, 2)"]),
    (dict(variant="winograd4", weight=rng.standard_normal((4, 3, 5, 3)).astype(np.float32)),
     ValueError, ["'winograd4'", "3x3 kernel", "5x3 kernel"]),
    (dict(variant="winograd4", dilation=(1, 2)), ValueError, ["'winograd4'", "dilation (1, 2)"]),
    (dict(input="not an array"), TypeError, ["input", "NumPy, CuPy or PyTorch", "str"]),
]


@pytest.mark.parametrize("change,exc,words", CONV_BAD, ids=[str(i) for i in range(len(CONV_BAD))])
def test_conv2d_bad_input(change, exc, words):
    args = dict(input=X, weight=W, bias=None, stride=1, padding=0, dilation=1, groups=1,
                activation=None, layout="NCHW", variant="auto")
    args.update(change)
    with raises(exc, "conv2d", *words):
        fastconv.conv2d(**args)


def test_conv2d_backward_bad_input():
    y = fastconv.conv2d(X, W)
    with raises(ValueError, "conv2d_backward", "'winograd4'", "stride (1, 2)"):
        fastconv.conv2d_backward(fastconv.conv2d(X, W, stride=(1, 2)), X, W, stride=(1, 2),
                                 variant="winograd4")
    with raises(ValueError, "grad_output", "(2, 4, 6, 6)", "(2, 4, 5, 5)"):
        fastconv.conv2d_backward(y[:, :, :5, :5], X, W)
    with raises(TypeError, "output", "activation='tanh'"):
        fastconv.conv2d_backward(y, X, W, activation="tanh")
    with raises(TypeError, "grad_output", "float64", "float32"):
        fastconv.conv2d_backward(y.astype(np.float64), X, W)


POOL_BAD = [
    (dict(kernel_size=0), ValueError, ["kernel_size", ">= 1"]),
    (dict(kernel_size=3, padding=2), ValueError, ["padding", "half the kernel"]),
    (dict(kernel_size=2, stride=0), ValueError, ["stride", ">= 1"]),
    (dict(kernel_size=2, padding="full"), ValueError, ["padding", "'full'"]),
    (dict(kernel_size=9), ValueError, ["9x9 window", "does not fit"]),
    (dict(kernel_size=2, ceil_mode=1), TypeError, ["ceil_mode", "True or False"]),
    (dict(kernel_size=2, layout="CHWN"), ValueError, ["layout", "'CHWN'"]),
    (dict(kernel_size=2, input=X[0, 0]), ValueError, ["input", "4-D", "(8, 8)"]),
]


@pytest.mark.parametrize("fn", [fastconv.max_pool2d, fastconv.avg_pool2d])
@pytest.mark.parametrize("change,exc,words", POOL_BAD, ids=[str(i) for i in range(len(POOL_BAD))])
def test_pool_bad_input(fn, change, exc, words):
    args = dict(input=X)
    args.update(change)
    with raises(exc, fn.__name__, *words):
        fn(**args)


def test_avg_pool_bad_divisor():
    with raises(ValueError, "divisor_override", ">= 1", "0"):
        fastconv.avg_pool2d(X, 2, divisor_override=0)


def test_max_pool_backward_bad_indices():
    y, idx = fastconv.max_pool2d(X, 2, return_indices=True)
    with raises(TypeError, "indices", "int64"):
        fastconv.max_pool2d_backward(y, X, 2, indices=idx.astype(np.int32))
    with raises(ValueError, "indices", "(2, 3, 4, 4)"):
        fastconv.max_pool2d_backward(y, X, 2, indices=idx[:, :, :3])
    with raises(ValueError, "indices hold positions outside their pooling windows"):
        fastconv.max_pool2d_backward(y, X, 2, indices=idx + 1000)
    inside_plane = idx.copy()
    inside_plane[0, 0, 0, 0] = X.shape[-1] - 1  # row 0, last column: not output (0, 0)'s window
    with raises(ValueError, "indices hold positions outside their pooling windows"):
        fastconv.max_pool2d_backward(y, X, 2, indices=inside_plane)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("at", [-2, 1, 10**12, 2**32], ids=["negative", "neighbour_window", "huge",
                                                           "wraps_in_32_bits"])
@pytest.mark.parametrize("window", [(3, 2, 1), (2, 2, 0)], ids=["3x3s2p1", "2x2"])
def test_max_pool_backward_refuses_one_bad_index(layout, at, window):
    """One index in thousands that names a pixel outside its window (or no pixel) is
    refused in both layouts: the NHWC gather and the NCHW 2-wide rows find it by counting
    the winners they took against the indices that are not -1, the NCHW scatter by
    checking each. 2**32 on: the index's own pixel once cut to 32 bits (the 2-wide rows
    compare in int32, saturated)."""
    x = np.random.default_rng(3).standard_normal((2, 9, 11, 37)).astype(np.float32)
    xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y, idx = fastconv.max_pool2d(xl, *window, return_indices=True, layout=layout)
    fastconv.max_pool2d_backward(y, xl, *window, indices=idx, layout=layout)  # the good ones pass
    bad = idx.copy()
    where = (1, 2, 3, 4)
    bad[where] = {1: idx[where] + 4, 2**32: idx[where] + 2**32}.get(at, at)  # 4 columns on: outside
    with raises(ValueError, "indices hold positions outside their pooling windows"):
        fastconv.max_pool2d_backward(y, xl, *window, indices=bad, layout=layout)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_max_pool_backward_refuses_the_padding_columns_neighbours(layout, side):
    """3x3 / 2 / 1 over 37 columns: the first output's window starts in the padding column
    left of the row, the last output's ends in the one right of it (2 * 18 + 1 = 37). The
    plane pixels one position before and after the row (the row above's last, the row
    below's first) are outside those windows: refused. (The NCHW AVX-512 rows match an
    index against its window by its offset from the window's first position, where these
    two alias the padding columns.)"""
    x = np.random.default_rng(4).standard_normal((2, 9, 11, 37)).astype(np.float32)
    xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y, idx = fastconv.max_pool2d(xl, 3, 2, 1, return_indices=True, layout=layout)
    oh, ow = 3, 0 if side == "left" else 18
    where = (1, oh, ow, 2) if layout == "NHWC" else (1, 2, oh, ow)
    h = 2 * oh  # the window's middle row (rows 5..7)
    bad = idx.copy()
    bad[where] = h * 37 - 1 if side == "left" else (h + 1) * 37
    with raises(ValueError, "indices hold positions outside their pooling windows"):
        fastconv.max_pool2d_backward(y, xl, 3, 2, 1, indices=bad, layout=layout)


def test_filter_bad_input():
    img = rng.standard_normal((9, 9))
    with raises(ValueError, "sobel", "mode", "'reflect'", "'edge'"):
        fastconv.sobel(img, mode="edge")
    with raises(ValueError, "sobel", "axis", "2"):
        fastconv.sobel(img, axis=2)
    with raises(ValueError, "sobel", "image", "(H, W)", "(9,)"):
        fastconv.sobel(img[0])
    with raises(TypeError, "sobel", "cval", "'x'"):
        fastconv.sobel(img, mode="constant", cval="x")
    with raises(ValueError, "filter2d", "kernel", "2-D", "(3,)"):
        fastconv.filter2d(img, np.ones(3))
    with raises(TypeError, "filter2d", "kernel", "float32", "float64"):
        fastconv.filter2d(img, np.ones((3, 3), np.float32))
    with raises(TypeError, "sobel", "uint16"):
        fastconv.sobel(img.astype(np.uint16))


def test_conv1d_bad_input():
    with raises(ValueError, "conv1d", "weights has 6 taps", "only 5 samples"):
        fastconv.conv1d(np.ones(5), np.ones(6))
    with raises(ValueError, "conv1d", "sequence", "(m,) or (B, m)"):
        fastconv.conv1d(np.ones((2, 2, 5)), np.ones(2))
    with raises(ValueError, "conv1d", "weights", "(n,)"):
        fastconv.conv1d(np.ones(5), np.ones((1, 2)))


def test_arrays_from_different_libraries():
    torch = pytest.importorskip("torch")
    with raises(TypeError, "conv2d", "weight", "torch", "numpy"):
        fastconv.conv2d(X, torch.from_numpy(W))


def test_residual_from_another_library():
    torch = pytest.importorskip("torch")
    with raises(TypeError, "conv2d", "residual is a torch array", "input is a numpy array"):
        fastconv.conv2d(X, W, residual=torch.zeros(2, 4, 6, 6))


@pytest.mark.gpu
@pytest.mark.skipif(not fastconv.cuda_available(), reason="no CUDA GPU")
def test_residual_on_another_device():
    torch = pytest.importorskip("torch")
    x, w = torch.from_numpy(X).cuda(), torch.from_numpy(W).cuda()
    with raises(ValueError, "conv2d", "residual is on the CPU", "input is on cuda:0"):
        fastconv.conv2d(x, w, residual=torch.zeros(2, 4, 6, 6))


def test_torch_cpu_tensors_run_on_the_cpu_backend():
    torch = pytest.importorskip("torch")
    y = fastconv.conv2d(torch.from_numpy(X), torch.from_numpy(W), padding=1)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(y.numpy(), fastconv.conv2d(X, W, padding=1), rtol=0, atol=0)


def test_no_partial_output_on_error():
    """Validation runs before allocation: a failing call returns nothing at all."""
    with pytest.raises(ValueError):
        fastconv.conv2d(X, W, stride=0)


def test_cuda_arrays_without_gpu_backend_raise_clearly():
    if fastconv.cuda_available():
        pytest.skip("a GPU is present")
    assert fastconv.cuda_available() is False

"""The specification: every op in float64 NumPy, written to be obviously right.

Nothing here is optimised and nothing here is shared with the kernels: each function
re-derives its shapes from the formulas in the README, so a slip in the shared index
math (csrc/common/shapes.h, fastconv/_shapes.py) cannot hide behind a matching slip
here. Every backend is tested against these functions, and these functions are tested
against PyTorch and SciPy where those define the semantics (tests/test_reference.py).

Conventions (the same as the public API):
- conv2d is cross-correlation, as in PyTorch and Keras.
- layout "NCHW": input (N, C, H, W), weight (K, C/groups, R, S).
  layout "NHWC": input (N, H, W, C), weight (R, S, C/groups, K) (Keras' HWIO).
- padding: int, (pad_h, pad_w), "valid", or "same" (Keras: output = ceil(in / stride),
  the odd pixel of padding at the bottom / right).
"""

import numpy as np

# --------------------------------------------------------------------------- helpers


def _pair(v):
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


def _to_nchw(x, layout):
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def _from_nchw(y, layout):
    return y if layout == "NCHW" else y.transpose(0, 2, 3, 1)


def _same_pads(size, k, stride, dil):
    out = -(-size // stride)
    total = max((out - 1) * stride + dil * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _conv_pads(padding, hw, rs, stride, dil):
    """((top, bottom), (left, right)) for conv2d's padding argument."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return tuple(_same_pads(hw[i], rs[i], stride[i], dil[i]) for i in range(2))
    ph, pw = _pair(padding)
    return (ph, ph), (pw, pw)


def _activate(z, activation):
    if activation is None:
        return z
    if activation == "relu":
        return np.where(z > 0, z, np.where(np.isnan(z), z, 0.0))
    if activation == "tanh":
        return np.tanh(z)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    raise ValueError(activation)


def _activate_grad_from_output(y, activation):
    if activation is None:
        return np.ones_like(y)
    if activation == "relu":
        return (y > 0).astype(y.dtype)
    if activation == "tanh":
        return 1.0 - y * y
    if activation == "sigmoid":
        return y * (1.0 - y)
    raise ValueError(activation)


# --------------------------------------------------------------------------- conv1d


def conv1d(sequence, weights):
    """Valid cross-correlation: c[k] = sum_t s[k + t] * w[t], k = 0 .. m - n.

    sequence (m,) or (B, m); weights (n,). (The course notes' formula writes s_{k+1}:
    a typo for s_{k+t}; their `convolve` code is what this computes.)
    """
    s = np.asarray(sequence, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if s.ndim == 2:
        return np.stack([conv1d(row, w) for row in s])
    n = len(w)
    return np.array([np.sum(w * s[i : i + n]) for i in range(len(s) - n + 1)])


# --------------------------------------------------------------------------- conv2d


def _conv_geometry(x, w, stride, padding, dilation):
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    (pt, pb), (pl, pr) = _conv_pads(padding, (H, W), (R, S), (sh, sw), (dh, dw))
    P = (H + pt + pb - dh * (R - 1) - 1) // sh + 1
    Q = (W + pl + pr - dw * (S - 1) - 1) // sw + 1
    return (sh, sw), (dh, dw), (pt, pb, pl, pr), (P, Q)


def _window(xp, r, s, stride, dil, out):
    """The input pixels that weight tap (r, s) meets, for every output pixel."""
    (sh, sw), (dh, dw), (P, Q) = stride, dil, out
    return xp[:, :, r * dh : r * dh + sh * (P - 1) + 1 : sh, s * dw : s * dw + sw * (Q - 1) + 1 : sw]


def _weights_oihw(weight, layout):
    w = np.asarray(weight, dtype=np.float64)
    return w if layout == "NCHW" else w.transpose(3, 2, 0, 1)


def _weights_from_oihw(w, layout):
    return w if layout == "NCHW" else w.transpose(2, 3, 1, 0)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           activation=None, layout="NCHW", residual=None):
    """act(x (*) w + bias + residual); residual (the output's shape, in `layout`) is a
    ResNet block's skip connection, added before the activation."""
    x = _to_nchw(np.asarray(input, dtype=np.float64), layout)
    w = _weights_oihw(weight, layout)
    strides, dils, (pt, pb, pl, pr), (P, Q) = _conv_geometry(x, w, stride, padding, dilation)
    N, C = x.shape[:2]
    K, Cg, R, S = w.shape
    Kg = K // groups
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    z = np.zeros((N, K, P, Q))
    for g in range(groups):
        cs, ks = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
        for r in range(R):
            for s in range(S):
                patch = _window(xp[:, cs], r, s, strides, dils, (P, Q))
                z[:, ks] += np.einsum("ncpq,kc->nkpq", patch, w[ks, :, r, s])
    if bias is not None:
        z += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    if residual is not None:
        z += _to_nchw(np.asarray(residual, dtype=np.float64), layout)
    return _from_nchw(_activate(z, activation), layout)


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1,
                    activation=None, output=None, layout="NCHW"):
    """(grad_input, grad_weight, grad_bias) of conv2d: the adjoint of the loops above.

    With an activation, `output` is conv2d's result and the gradient first goes through
    the activation's derivative, taken from that output.
    """
    dy = np.asarray(grad_output, dtype=np.float64)
    if activation is not None:
        dy = dy * _activate_grad_from_output(np.asarray(output, dtype=np.float64), activation)
    dz = _to_nchw(dy, layout)
    x = _to_nchw(np.asarray(input, dtype=np.float64), layout)
    w = _weights_oihw(weight, layout)
    strides, dils, (pt, pb, pl, pr), (P, Q) = _conv_geometry(x, w, stride, padding, dilation)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    Kg = K // groups
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for g in range(groups):
        cs, ks = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
        for r in range(R):
            for s in range(S):
                patch = _window(xp[:, cs], r, s, strides, dils, (P, Q))
                dw[ks, :, r, s] += np.einsum("nkpq,ncpq->kc", dz[:, ks], patch)
                dpatch = _window(dxp[:, cs], r, s, strides, dils, (P, Q))
                dpatch += np.einsum("nkpq,kc->ncpq", dz[:, ks], w[ks, :, r, s])
    dx = dxp[:, :, pt : pt + H, pl : pl + W]
    return _from_nchw(dx, layout), _weights_from_oihw(dw, layout), dz.sum(axis=(0, 2, 3))


def conv2d_avgpool(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                   activation=None, pool=2, layout="NCHW"):
    """The LeNet-5 block: avg_pool2d(conv2d(...), pool), window = stride = pool."""
    a = conv2d(input, weight, bias, stride, padding, dilation, groups, activation, layout)
    return avg_pool2d(a, pool, layout=layout)


def conv2d_avgpool_backward(grad_output, input, weight, bias=None, stride=1, padding=0,
                            dilation=1, groups=1, activation=None, pool=2, layout="NCHW"):
    """(grad_input, grad_weight, grad_bias) of conv2d_avgpool: the two backwards chained."""
    a = conv2d(input, weight, bias, stride, padding, dilation, groups, activation, layout)
    da = avg_pool2d_backward(grad_output, a, pool, layout=layout)
    return conv2d_backward(da, input, weight, stride, padding, dilation, groups, activation,
                           output=a, layout=layout)


# --------------------------------------------------------------------------- pooling


def _pool_geometry(H, W, kernel_size, stride, padding, dilation, ceil_mode):
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    dh, dw = _pair(dilation)
    if padding == "valid":
        pads = (0, 0), (0, 0)
    elif padding == "same":
        pads = _same_pads(H, kh, sh, dh), _same_pads(W, kw, sw, dw)
    else:
        ph, pw = _pair(padding)
        pads = (ph, ph), (pw, pw)

    def out(size, k, s, d, pad):
        span = size + pad[0] + pad[1] - d * (k - 1) - 1
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + pad[0]:
            o -= 1  # the last window must start inside the input or its left padding
        return o

    P = out(H, kh, sh, dh, pads[0])
    Q = out(W, kw, sw, dw, pads[1])
    return (kh, kw), (sh, sw), (dh, dw), pads, (P, Q)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, layout="NCHW"):
    """PyTorch's max_pool2d. Indices are flat (h * W + w) positions in each input plane.

    The scan goes row by row through the window; the first maximum wins, and a NaN
    wins over any number (the last NaN met), so NaN propagates.
    """
    x = _to_nchw(np.asarray(input, dtype=np.float64), layout)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, _), (pl, _)), (P, Q) = _pool_geometry(
        H, W, kernel_size, stride, padding, dilation, ceil_mode)
    y = np.empty((N, C, P, Q))
    idx = np.empty((N, C, P, Q), dtype=np.int64)
    for p in range(P):
        for q in range(Q):
            best = np.full((N, C), -np.inf)
            arg = np.full((N, C), -1, dtype=np.int64)
            for i in range(kh):
                for j in range(kw):
                    h, w = p * sh - pt + i * dh, q * sw - pl + j * dw
                    if not (0 <= h < H and 0 <= w < W):
                        continue
                    v = x[:, :, h, w]
                    take = (v > best) | np.isnan(v)
                    best = np.where(take, v, best)
                    arg = np.where(take, h * W + w, arg)
            y[:, :, p, q], idx[:, :, p, q] = best, arg
    y, idx = _from_nchw(y, layout), _from_nchw(idx, layout)
    return (y, idx) if return_indices else y


def max_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False, layout="NCHW"):
    """Each output's gradient goes to the input pixel its maximum came from."""
    _, idx = max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, True, layout)
    dy = _to_nchw(np.asarray(grad_output, dtype=np.float64), layout)
    idx = _to_nchw(idx, layout)
    x = _to_nchw(np.asarray(input), layout)
    N, C, H, W = x.shape
    dx = np.zeros((N, C, H * W))
    for n in range(N):
        for c in range(C):
            i, g = idx[n, c].ravel(), dy[n, c].ravel()
            np.add.at(dx[n, c], i[i >= 0], g[i >= 0])  # -1: a window of padding alone
    return _from_nchw(dx.reshape(N, C, H, W), layout)


def _avg_windows(H, W, kernel_size, stride, padding, ceil_mode, count_include_pad,
                 divisor_override):
    """For each output pixel: the clipped window (h0, h1, w0, w1) and its divisor."""
    (kh, kw), (sh, sw), _, ((pt, pb), (pl, pr)), (P, Q) = _pool_geometry(
        H, W, kernel_size, stride, padding, 1, ceil_mode)
    if padding == "same":
        count_include_pad = False  # Keras leaves the padded pixels out of the count
    windows = {}
    for p in range(P):
        for q in range(Q):
            h0, w0 = p * sh - pt, q * sw - pl
            h1, w1 = min(h0 + kh, H + pb), min(w0 + kw, W + pr)
            padded_count = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, H), min(w1, W)
            if divisor_override:
                div = divisor_override
            elif count_include_pad:
                div = padded_count
            else:
                div = (h1 - h0) * (w1 - w0)
            windows[p, q] = (h0, h1, w0, w1, div)
    return (P, Q), windows


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, layout="NCHW"):
    """PyTorch's avg_pool2d; padding "same" / "valid" as Keras' AveragePooling2D."""
    x = _to_nchw(np.asarray(input, dtype=np.float64), layout)
    N, C, H, W = x.shape
    (P, Q), windows = _avg_windows(H, W, kernel_size, stride, padding, ceil_mode,
                                   count_include_pad, divisor_override)
    y = np.empty((N, C, P, Q))
    for (p, q), (h0, h1, w0, w1, div) in windows.items():
        y[:, :, p, q] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / div
    return _from_nchw(y, layout)


def avg_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None,
                        layout="NCHW"):
    x = _to_nchw(np.asarray(input), layout)
    dy = _to_nchw(np.asarray(grad_output, dtype=np.float64), layout)
    N, C, H, W = x.shape
    _, windows = _avg_windows(H, W, kernel_size, stride, padding, ceil_mode,
                              count_include_pad, divisor_override)
    dx = np.zeros((N, C, H, W))
    for (p, q), (h0, h1, w0, w1, div) in windows.items():
        dx[:, :, h0:h1, w0:w1] += (dy[:, :, p, q] / div)[:, :, None, None]
    return _from_nchw(dx, layout)


def global_avg_pool2d(input, layout="NCHW"):
    """(N, C, H, W) or (N, H, W, C) -> (N, C): the mean of each channel."""
    x = _to_nchw(np.asarray(input, dtype=np.float64), layout)
    return x.mean(axis=(2, 3))


def global_avg_pool2d_backward(grad_output, input, layout="NCHW"):
    x = _to_nchw(np.asarray(input), layout)
    N, C, H, W = x.shape
    dy = np.asarray(grad_output, dtype=np.float64)
    dx = np.broadcast_to(dy[:, :, None, None] / (H * W), (N, C, H, W)).copy()
    return _from_nchw(dx, layout)


# --------------------------------------------------------------------------- filters

# scipy.ndimage's border modes by their numpy.pad names.
_NP_PAD_MODE = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge",
                "wrap": "wrap", "constant": "constant"}


def _extend(line_or_image, before, after, axis, mode, cval):
    widths = [(0, 0)] * line_or_image.ndim
    widths[axis] = (before, after)
    if mode == "constant":
        return np.pad(line_or_image, widths, mode="constant", constant_values=cval)
    if mode == "mirror" and line_or_image.shape[axis] == 1:
        return np.pad(line_or_image, widths, mode="edge")
    return np.pad(line_or_image, widths, mode=_NP_PAD_MODE[mode])


def _planes(image, layout):
    """View any accepted image shape as (planes, H, W), and a function to undo it."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        return a[None], lambda out: out[0]
    if a.ndim == 3:
        return a, lambda out: out
    x = _to_nchw(a, layout)
    N, C, H, W = x.shape
    return x.reshape(N * C, H, W), lambda out: _from_nchw(out.reshape(N, C, H, W), layout)


def _correlate_plane(plane, kernel, mode, cval):
    """scipy.ndimage.correlate on one 2-D plane: the window is centred at (kh//2, kw//2)."""
    kh, kw = kernel.shape
    ext = _extend(plane, kh // 2, kh - 1 - kh // 2, 0, mode, cval)
    ext = _extend(ext, kw // 2, kw - 1 - kw // 2, 1, mode, cval)
    H, W = plane.shape
    out = np.zeros((H, W))
    for i in range(kh):
        for j in range(kw):
            out += kernel[i, j] * ext[i : i + H, j : j + W]
    return out


def filter2d(image, kernel, mode="reflect", cval=0.0, layout="NCHW"):
    """Cross-correlation of every 2-D plane with a small kernel (scipy.ndimage.correlate)."""
    planes, back = _planes(image, layout)
    k = np.asarray(kernel, dtype=np.float64)
    return back(np.stack([_correlate_plane(p, k, mode, cval) for p in planes]))


def _pass1d(plane, axis, mode, cval, derivative):
    """One of scipy.ndimage.sobel's 1-D passes along axis: the derivative
    out[i] = in[i + 1] - in[i - 1] (the centre is not read, as in SciPy) or the
    smoothing in[i - 1] + 2 in[i] + in[i + 1], over the input extended by mode."""
    ext = np.moveaxis(_extend(plane, 1, 1, axis, mode, cval), axis, 0)
    out = ext[2:] - ext[:-2] if derivative else ext[:-2] + 2.0 * ext[1:-1] + ext[2:]
    return np.moveaxis(out, 0, axis)


def _sobel_plane(plane, axis, mode, cval):
    # The derivative along `axis` first, then the smoothing across it over the
    # derivative (so with mode "constant" the derivative image is what gets extended
    # by cval), as scipy.ndimage.sobel does.
    d = _pass1d(plane, axis, mode, cval, derivative=True)
    return _pass1d(d, 1 - axis, mode, cval, derivative=False)


def sobel(image, axis=None, mode="reflect", cval=0.0, layout="NCHW"):
    """Sobel derivative of each 2-D plane along axis 0 (rows, d/dy) or 1 (columns, d/dx),
    with scipy.ndimage.sobel's sign and scale; axis None gives sqrt(gx^2 + gy^2)."""
    planes, back = _planes(image, layout)
    if axis is None:
        out = [np.hypot(_sobel_plane(p, 0, mode, cval), _sobel_plane(p, 1, mode, cval))
               for p in planes]
    else:
        out = [_sobel_plane(p, axis % 2, mode, cval) for p in planes]
    return back(np.stack(out))


__all__ = [
    "conv1d", "conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward",
    "filter2d", "sobel",
]

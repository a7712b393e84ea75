"""Normalise and validate the arguments of every op before any kernel runs.

Each function takes the op's name and the shapes of its arrays, raises ValueError or
TypeError naming the argument, what was expected and what was received, and returns
the params dict the binding turns into the op's params struct (csrc/common/params.h)
together with the output's shape. Shape formulas come from _shapes (the mirror of
csrc/common/shapes.h).
"""

import numbers
import sys

from . import _shapes
from ._arrays import HALF_DTYPES

LAYOUTS = ("NCHW", "NHWC")
ACTIVATIONS = (None, "relu", "tanh", "sigmoid")  # Activation enum order
PRECISIONS = ("strict", "tf32", "3xtf32")  # Precision enum order (csrc/common/params.h)


# ----------------------------------------------------------------------- scalars


def _int(op, name, v):
    if type(v) is int:  # the common case, before the slower ABC check
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__} {v!r}")
    return int(v)


def pair(op, name, v, minimum):
    """An int, a pair of ints or a one-int tuple (broadcast, as torch broadcasts
    `padding=(1,)`), each >= minimum, as a tuple (h, w)."""
    if isinstance(v, (tuple, list)):
        if len(v) not in (1, 2):
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
        h, w = (_int(op, name, e) for e in (v * 2 if len(v) == 1 else v))
    else:
        h = w = _int(op, name, v)
    if h < minimum or w < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v!r}")
    return h, w


def pool_stride(op, stride, kernel):
    """A pooling stride as (h, w): None, () or [] mean the kernel size (kernel, a pair),
    as in torch.nn.functional's pooling; else as pair()."""
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        return tuple(kernel)
    return pair(op, "stride", stride, 1)


def padding_string(op, v):
    """'valid' or 'same' for a padding string in any case (Keras writes "SAME", "Valid")."""
    lowered = v.lower()
    if lowered not in ("valid", "same"):
        raise ValueError(f"{op}: padding must be an int, a pair of ints, 'valid' or 'same' (in "
                         f"any case), got {v!r}")
    return lowered


def boolean(op, name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{op}: {name} must be True or False, got {v!r}")
    return v


def layout(op, v):
    if v not in LAYOUTS:
        raise ValueError(f"{op}: layout must be 'NCHW' or 'NHWC', got {v!r}")
    return LAYOUTS.index(v)


def activation_name(op, v):
    """The activation's canonical name: None for None and Keras' "linear", else the name."""
    if v == "linear":
        return None
    if v not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be None, 'linear', 'relu', 'tanh' or "
                         f"'sigmoid', got {v!r}")
    return v


def activation(op, v):
    """The activation's index in the Activation enum (csrc/common/activation.h)."""
    return ACTIVATIONS.index(activation_name(op, v))


def default_precision():
    """What precision=None means: PyTorch's default for its own convolutions. "tf32"
    while torch.backends.cudnn.allow_tf32 is True (PyTorch's default), "strict" once the
    user has turned it off; "tf32" where torch is not imported (it is looked up in
    sys.modules, never imported for this). Read at every call, as PyTorch reads it."""
    torch = sys.modules.get("torch")
    cudnn = getattr(getattr(torch, "backends", None), "cudnn", None)
    return "strict" if cudnn is not None and not cudnn.allow_tf32 else "tf32"


def precision(op, v):
    """The Precision enum's index for precision=v, None resolved by default_precision()."""
    if v is None:
        v = default_precision()
    if not isinstance(v, str) or v not in PRECISIONS:
        raise ValueError(f"{op}: precision must be None, 'strict', 'tf32' or '3xtf32', got {v!r}")
    return PRECISIONS.index(v)


def border_mode(op, v):
    if v not in _shapes.BORDER_MODES:
        names = ", ".join(repr(m) for m in _shapes.BORDER_MODES)
        raise ValueError(f"{op}: mode must be one of {names}, got {v!r}")
    return _shapes.BORDER_MODES.index(v)


WINOGRAD_VARIANTS = ("winograd2", "winograd4")
HALF_VARIANTS = ("auto", "implicit_gemm")  # the GPU's tensor-core implicit GEMM


def variant(op, v, available, params=None):
    """v, if it is 'auto' or one of the backend's variants (available) that applies to the
    convolution params describes (a conv2d params dict; None: not checked)."""
    if v != "auto" and v not in available:
        raise ValueError(f"{op}: variant must be 'auto' or one of {', '.join(available)} on this "
                         f"backend, got {v!r}")
    if params is not None and v in WINOGRAD_VARIANTS:
        p = params
        if not _shapes.winograd_applies(p["R"], p["S"], p["stride_h"], p["stride_w"], p["dil_h"],
                                        p["dil_w"]):
            raise ValueError(f"{op}: variant {v!r} (Winograd) needs a 3x3 kernel, stride 1 and "
                             f"dilation 1, got a {p['R']}x{p['S']} kernel, stride "
                             f"({p['stride_h']}, {p['stride_w']}) and dilation ({p['dil_h']}, "
                             f"{p['dil_w']})")
    return v


def half_variant(op, v, dtype):
    """v, if it has a kernel for dtype: float16 / bfloat16 run on the GPU's tensor-core
    implicit GEMM only."""
    if dtype in HALF_DTYPES and v not in HALF_VARIANTS:
        raise ValueError(f"{op}: variant {v!r} has no {dtype} kernel; {dtype} arrays take variant "
                         f"'auto' or 'implicit_gemm' (the tensor-core implicit GEMM)")
    return v


# ----------------------------------------------------------------------- shapes


def require_shape(op, name, shape, ndims, what, empty_batch=False):
    """shape has one of ndims dimensions and no zero-size one; with empty_batch, the
    first (the batch, N) may be 0, as torch allows (the op then returns an empty result
    without running a kernel)."""
    if shape is None:
        raise TypeError(f"{op}: {name} is required")
    if len(shape) not in ndims:
        raise ValueError(f"{op}: {name} must be {what}, got an array of shape {shape}")
    if any(d == 0 for d in (shape[1:] if empty_batch else shape)):
        raise ValueError(f"{op}: {name} has a zero-size dimension, shape {shape}")


def _batched_image(lay_i):
    return ("4-D (N, C, H, W) or 3-D unbatched (C, H, W)" if lay_i == 0 else
            "4-D (N, H, W, C) or 3-D unbatched (H, W, C)")


def _nchw(shape, lay):
    n, a, b, c = shape
    return (n, a, b, c) if lay == 0 else (n, c, a, b)


def _out4(lay, n, c, h, w):
    return (n, c, h, w) if lay == 0 else (n, h, w, c)


def explicit_padding(op, padding, size, k, stride, dil):
    """((top, bottom), (left, right)) for an int, a pair, 'valid' or 'same'."""
    if isinstance(padding, str):
        padding = padding_string(op, padding)
        if padding == "valid":
            return (0, 0), (0, 0)
        return tuple((_shapes.same_pad_begin(size[i], k[i], stride[i], dil[i]),
                      _shapes.same_pad_total(size[i], k[i], stride[i], dil[i])
                      - _shapes.same_pad_begin(size[i], k[i], stride[i], dil[i]))
                     for i in range(2))
    ph, pw = pair(op, "padding", padding, 0)
    return (ph, ph), (pw, pw)


# ----------------------------------------------------------------------- conv2d


def conv2d(op, x, w, b, stride, padding, dilation, groups, act, lay, precision=0):
    """Params and output shape of conv2d; x, w, b are shapes (b may be None); precision
    the Precision index (precision() resolves the argument)."""
    lay_i = layout(op, lay)
    act_i = activation(op, act)
    require_shape(op, "input", x, (4,), _batched_image(lay_i),
                  empty_batch=True)
    wdesc = "(K, C/groups, R, S)" if lay_i == 0 else "(R, S, C/groups, K)"
    require_shape(op, "weight", w, (4,), f"4-D {wdesc}")
    N, C, H, W = _nchw(x, lay_i)
    K, Cg, R, S = w if lay_i == 0 else (w[3], w[2], w[0], w[1])
    groups = _int(op, "groups", groups)
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    if C % groups:
        raise ValueError(f"{op}: groups={groups} does not divide the input's {C} channels")
    if K % groups:
        raise ValueError(f"{op}: groups={groups} does not divide the weight's {K} filters")
    if Cg != C // groups:
        raise ValueError(f"{op}: weight has {Cg} input channels per group but input has {C} "
                         f"channels and groups={groups} (weight layout {wdesc})")
    if b is not None and tuple(b) != (K,):
        raise ValueError(f"{op}: bias must have shape ({K},), one per filter, got {tuple(b)}")
    sh, sw = pair(op, "stride", stride, 1)
    dh, dw = pair(op, "dilation", dilation, 1)
    (pt, pb), (pl, pr) = explicit_padding(op, padding, (H, W), (R, S), (sh, sw), (dh, dw))
    ext_h, ext_w = _shapes.dilated_extent(R, dh), _shapes.dilated_extent(S, dw)
    if ext_h > H + pt + pb or ext_w > W + pl + pr:
        raise ValueError(f"{op}: the {R}x{S} kernel (dilation {dh}x{dw}, extent {ext_h}x{ext_w}) "
                         f"is larger than the padded input {H + pt + pb}x{W + pl + pr}")
    P = _shapes.conv_out_size(H, R, sh, pt, pb, dh)
    Q = _shapes.conv_out_size(W, S, sw, pl, pr, dw)
    params = dict(N=N, C=C, H=H, W=W, K=K, R=R, S=S, P=P, Q=Q, stride_h=sh, stride_w=sw,
                  pad_h=pt, pad_w=pl, dil_h=dh, dil_w=dw, groups=groups, layout=lay_i, act=act_i,
                  has_bias=b is not None, precision=precision)
    return params, _out4(lay_i, N, K, P, Q)


def residual(op, shape, out_shape, lay):
    """A residual (None: none) must be of the output's shape in its layout."""
    if shape is not None and tuple(shape) != tuple(out_shape):
        dims = "(N, K, P, Q)" if layout(op, lay) == 0 else "(N, P, Q, K)"
        raise ValueError(f"{op}: residual must have the output's shape {dims} = "
                         f"{tuple(out_shape)} for layout={lay!r}, got {tuple(shape)}")


def conv2d_avgpool(op, x, w, b, stride, padding, dilation, groups, act, lay, pool, precision=0):
    """Params, the convolution's output shape and the pooled output shape of the LeNet-5
    block: conv2d's arguments plus pool, the average pool's window and stride."""
    params, conv_shape = conv2d(op, x, w, b, stride, padding, dilation, groups, act, lay,
                                precision)
    ph, pw = pair(op, "pool", pool, 1)
    P, Q = params["P"], params["Q"]
    if P < ph or Q < pw:
        raise ValueError(f"{op}: the {ph}x{pw} pool window does not fit the convolution's "
                         f"{P}x{Q} output")
    params.update(pool_h=ph, pool_w=pw, save_activation=False)
    return params, conv_shape, _out4(params["layout"], params["N"], params["K"], P // ph, Q // pw)


def expect_shape(op, name, shape, expected):
    if shape is None:
        raise TypeError(f"{op}: {name} is required")
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}, got {tuple(shape)}")


# ----------------------------------------------------------------------- pooling


def pool2d(op, x, kernel_size, stride, padding, dilation, ceil_mode, lay, count_include_pad=True,
           divisor_override=None):
    """Params and output shape of max / average pooling (dilation 1 for average)."""
    lay_i = layout(op, lay)
    require_shape(op, "input", x, (4,), _batched_image(lay_i),
                  empty_batch=True)
    N, C, H, W = _nchw(x, lay_i)
    kh, kw = pair(op, "kernel_size", kernel_size, 1)
    sh, sw = pool_stride(op, stride, (kh, kw))
    dh, dw = pair(op, "dilation", dilation, 1)
    ceil_mode = boolean(op, "ceil_mode", ceil_mode)
    count_include_pad = boolean(op, "count_include_pad", count_include_pad)
    if divisor_override is not None:
        divisor_override = _int(op, "divisor_override", divisor_override)
        if divisor_override < 1:
            raise ValueError(f"{op}: divisor_override must be >= 1 or None, got {divisor_override}")
    (pt, pb), (pl, pr) = explicit_padding(op, padding, (H, W), (kh, kw), (sh, sw), (dh, dw))
    if not isinstance(padding, str):
        ext_h, ext_w = _shapes.dilated_extent(kh, dh), _shapes.dilated_extent(kw, dw)
        if 2 * pt > ext_h or 2 * pl > ext_w:
            raise ValueError(f"{op}: padding must be at most half the kernel extent "
                             f"({ext_h}x{ext_w}), got {padding!r}")
    if isinstance(padding, str) and padding_string(op, padding) == "same":
        count_include_pad = False  # Keras leaves the padded pixels out of the average
    P = _shapes.pool_out_size(H, kh, sh, pt, pb, dh, ceil_mode)
    Q = _shapes.pool_out_size(W, kw, sw, pl, pr, dw, ceil_mode)
    if P < 1 or Q < 1:
        raise ValueError(f"{op}: the {kh}x{kw} window (dilation {dh}x{dw}) does not fit the "
                         f"padded input {H + pt + pb}x{W + pl + pr}")
    params = dict(N=N, C=C, H=H, W=W, P=P, Q=Q, kh=kh, kw=kw, stride_h=sh, stride_w=sw,
                  pad_h=pt, pad_w=pl, pad_h_end=pb, pad_w_end=pr, dil_h=dh, dil_w=dw,
                  count_include_pad=count_include_pad, divisor=divisor_override or 0,
                  layout=lay_i)
    return params, _out4(lay_i, N, C, P, Q)


def global_pool(op, x, lay):
    lay_i = layout(op, lay)
    require_shape(op, "input", x, (4,), _batched_image(lay_i),
                  empty_batch=True)
    N, C, H, W = _nchw(x, lay_i)
    return dict(N=N, C=C, H=H, W=W, layout=lay_i), (N, C)


# ----------------------------------------------------------------------- filters


def image(op, x, lay, mode, cval, kernel=None, axis=None):
    """Params of filter2d / sobel for an (H, W), (N, H, W) or 4-D image."""
    require_shape(op, "image", x, (2, 3, 4), "(H, W), (N, H, W) or 4-D (see layout)")
    lay_i = layout(op, lay)
    if len(x) == 4:
        N, C, H, W = _nchw(x, lay_i)
    else:
        N, C, (H, W), lay_i = (1 if len(x) == 2 else x[0]), 1, x[-2:], 0
    mode_i = border_mode(op, mode)
    if isinstance(cval, bool) or not isinstance(cval, numbers.Real):
        raise TypeError(f"{op}: cval must be a real number, got {cval!r}")
    kh = kw = 0
    if kernel is not None:
        require_shape(op, "kernel", kernel, (2,), "2-D (kh, kw)")
        kh, kw = kernel
    if axis is None:
        axis_i = -1
    elif isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis not in (0, 1, -1, -2):
        raise ValueError(f"{op}: axis must be None (magnitude), 0 / -2 (rows, d/dy) or 1 / -1 "
                         f"(columns, d/dx), got {axis!r}")
    else:
        axis_i = int(axis) % 2
    return dict(N=N, C=C, H=H, W=W, kh=kh, kw=kw, mode=mode_i, cval=float(cval), layout=lay_i,
                axis=axis_i)


def conv1d(op, x, w):
    require_shape(op, "sequence", x, (1, 2), "(m,) or (B, m)")
    require_shape(op, "weights", w, (1,), "(n,)")
    M, n = x[-1], w[0]
    if n > M:
        raise ValueError(f"{op}: weights has {n} taps but the sequence has only {M} samples; "
                         f"the weights must fit inside the sequence (n <= m)")
    B = 1 if len(x) == 1 else x[0]
    out = (M - n + 1,) if len(x) == 1 else (B, M - n + 1)
    return dict(B=B, M=M, n=n), out

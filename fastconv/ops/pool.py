"""Max, average and global average pooling, forward and backward."""

from .. import _args
from .._arrays import Arrays
from ._common import (_autograd_op, _channels_last, _nchw, _nhwc, _needs_autograd, _planned,
                      _prepare, _unbatched, add_batch, drop_batch)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, layout="NCHW"):
    """Max pooling with torch.nn.functional.max_pool2d's semantics.

    padding: int or (h, w) of -inf on both sides (at most half the kernel), or Keras'
    "valid" / "same". stride defaults to kernel_size. A NaN in a window is its maximum.
    With return_indices, also returns int64 indices h * W + w into each input plane
    (the same in both layouts, as PyTorch's). Unbatched inputs and N = 0 as conv2d.
    PyTorch tensors that require grad go through fastconv.torch.max_pool2d, with autograd.
    """
    if _unbatched(input):
        return drop_batch(max_pool2d(add_batch(input), kernel_size, stride, padding, dilation,
                                     ceil_mode, return_indices, layout=layout))
    if _needs_autograd(input):
        return _autograd_op("max_pool2d", layout, "auto")(
            input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                       return_indices, layout=layout)


def _max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                return_indices=False, *, layout="NCHW"):
    if _channels_last(input, layout):
        out = _max_pool2d(_nhwc(input), kernel_size, stride, padding, dilation, ceil_mode,
                          return_indices, layout="NHWC")
        return tuple(map(_nchw, out)) if return_indices else _nchw(out)
    def build():
        op = "max_pool2d"
        a = _prepare(op, input=input)
        params, out_shape = _args.pool2d(op, a.shape("input"), kernel_size, stride, padding,
                                         dilation, ceil_mode, layout)
        be = a.select_backend()
        return (be, be.params(params, "pool2d"), out_shape), a.values("input")

    (be, params, out_shape), (x,) = _planned(
        "max_pool2d", (input,), (kernel_size, stride, padding, dilation, ceil_mode, layout),
        build)
    x = be.ready(x)
    y = be.empty(out_shape, x)
    idx = be.empty(out_shape, x, "int64") if return_indices else None
    if out_shape[0]:
        be.call("max_pool_fwd", params, arrays=(x, y, idx))
    return (y, idx) if return_indices else y


_BAD_INDICES = ("max_pool2d_backward: indices hold positions outside their pooling windows "
                "(are they from this input and these pooling arguments?)")


def max_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False, *, indices=None, layout="NCHW"):
    """Gradient of max_pool2d with respect to its input: each output's gradient goes to
    the pixel its maximum came from. Pass the forward's indices to skip recomputing
    them; an index outside its output's window is refused (ValueError). Deterministic
    (no atomics)."""
    return _max_pool2d_backward(grad_output, input, kernel_size, stride, padding, dilation,
                                ceil_mode, indices=indices, layout=layout, check_indices=True)


def _max_pool2d_backward(grad_output, input, kernel_size, stride, padding, dilation, ceil_mode,
                         *, indices, layout, check_indices):
    """check_indices=False only for indices fastconv's own forward made (autograd): the
    GPU's check costs an allocation, a copy and a stream synchronisation a call, which
    blocks the host and prevents graph capture."""
    if _channels_last(input, layout):
        return _nchw(_max_pool2d_backward(
            _nhwc(grad_output), _nhwc(input), kernel_size, stride, padding, dilation, ceil_mode,
            indices=_nhwc(indices), layout="NHWC", check_indices=check_indices))
    def build():
        op = "max_pool2d_backward"
        a = _prepare(op, grad_output=grad_output, input=input)
        params, out_shape = _args.pool2d(op, a.shape("input"), kernel_size, stride, padding,
                                         dilation, ceil_mode, layout)
        _args.expect_shape(op, "grad_output", a.shape("grad_output"), out_shape)
        be = a.select_backend()
        idx = indices
        if indices is not None:
            ia = Arrays(op, indices=indices)
            if ia.lib is not a.lib or ia.device != a.device or ia.dtype != "int64":
                raise TypeError(f"{op}: indices must be an int64 array of the same library and "
                                f"device as input, got {ia.lib.name} {ia.dtype} on {ia.device}")
            _args.expect_shape(op, "indices", ia.shape("indices"), out_shape)
            (idx,) = ia.values("indices")
        plan = be, be.params(params, "pool2d"), out_shape, a.shape("input")
        return plan, a.values("grad_output", "input") + (idx,)

    (be, params, out_shape, x_shape), (dy, x, idx) = _planned(
        "max_pool2d_backward", (grad_output, input, indices),
        (kernel_size, stride, padding, dilation, ceil_mode, layout), build)
    dy = be.ready(dy)
    if out_shape[0] == 0:
        return be.empty(x_shape, dy)
    if idx is None:
        idx = be.empty(out_shape, dy, "int64")
        be.call("max_pool_fwd", params, arrays=(be.ready(x), be.empty(out_shape, dy), idx))
    else:
        idx = be.ready(idx)
        # The GPU's gather would drop an index outside its window without a word; the
        # CPU's scatter checks each one as it goes.
        if check_indices and be.is_cuda and be.call("max_pool_bad_indices", params,
                                                    arrays=(idx,)):
            raise ValueError(_BAD_INDICES)
    dx = be.empty(x_shape, dy)
    be.call("max_pool_bwd", params, arrays=(dy, idx, dx))
    return dx


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, layout="NCHW"):
    """Average pooling with torch.nn.functional.avg_pool2d's semantics; padding "same"
    and "valid" as Keras' AveragePooling2D ("same" leaves the padded pixels out of the
    count, whatever count_include_pad says). Unbatched inputs and N = 0 as conv2d.
    PyTorch tensors that require grad go through fastconv.torch.avg_pool2d, with
    autograd."""
    if _unbatched(input):
        return drop_batch(avg_pool2d(add_batch(input), kernel_size, stride, padding, ceil_mode,
                                     count_include_pad, divisor_override, layout=layout))
    if _needs_autograd(input):
        return _autograd_op("avg_pool2d", layout, "auto")(
            input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return _avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                       divisor_override, layout=layout)


def _avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                count_include_pad=True, divisor_override=None, *, layout="NCHW"):
    if _channels_last(input, layout):
        return _nchw(_avg_pool2d(_nhwc(input), kernel_size, stride, padding, ceil_mode,
                                 count_include_pad, divisor_override, layout="NHWC"))

    def build():
        op = "avg_pool2d"
        a = _prepare(op, input=input)
        params, out_shape = _args.pool2d(op, a.shape("input"), kernel_size, stride, padding, 1,
                                         ceil_mode, layout, count_include_pad, divisor_override)
        be = a.select_backend()
        return (be, be.params(params, "pool2d"), out_shape), a.values("input")

    (be, params, out_shape), (x,) = _planned(
        "avg_pool2d", (input,),
        (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, layout),
        build)
    x = be.ready(x)
    y = be.empty(out_shape, x)
    if out_shape[0]:
        be.call("avg_pool_fwd", params, arrays=(x, y))
    return y


def avg_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None, *,
                        layout="NCHW"):
    """Gradient of avg_pool2d with respect to its input (input gives the shape)."""
    if _channels_last(input, layout):
        return _nchw(avg_pool2d_backward(_nhwc(grad_output), _nhwc(input), kernel_size, stride,
                                         padding, ceil_mode, count_include_pad, divisor_override,
                                         layout="NHWC"))

    def build():
        op = "avg_pool2d_backward"
        a = _prepare(op, grad_output=grad_output, input=input)
        params, out_shape = _args.pool2d(op, a.shape("input"), kernel_size, stride, padding, 1,
                                         ceil_mode, layout, count_include_pad, divisor_override)
        _args.expect_shape(op, "grad_output", a.shape("grad_output"), out_shape)
        be = a.select_backend()
        plan = be, be.params(params, "pool2d"), a.shape("input")
        return plan, a.values("grad_output", "input")

    (be, params, x_shape), (dy, _) = _planned(
        "avg_pool2d_backward", (grad_output, input),
        (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, layout),
        build)
    dy = be.ready(dy)
    dx = be.empty(x_shape, dy)
    if x_shape[0]:
        be.call("avg_pool_bwd", params, arrays=(dy, dx))
    return dx


def global_avg_pool2d(input, *, layout="NCHW"):
    """The mean of each channel: (N, C, H, W) or (N, H, W, C) -> (N, C), as Keras'
    GlobalAveragePooling2D; an unbatched (C, H, W) or (H, W, C) gives (C,). PyTorch
    tensors that require grad go through fastconv.torch.global_avg_pool2d, with
    autograd (torch.nn.AdaptiveAvgPool2d(1) is this, reshaped to (N, C, 1, 1))."""
    if _unbatched(input):
        return drop_batch(global_avg_pool2d(add_batch(input), layout=layout))
    if _needs_autograd(input):
        return _autograd_op("global_avg_pool2d", layout, "auto")(input)
    return _global_avg_pool2d(input, layout=layout)


def _global_avg_pool2d(input, *, layout="NCHW"):
    if _channels_last(input, layout):
        return _global_avg_pool2d(_nhwc(input), layout="NHWC")
    op = "global_avg_pool2d"
    a = _prepare(op, input=input)
    params, out_shape = _args.global_pool(op, a.shape("input"), layout)
    be = a.select_backend()
    y = a.empty(out_shape)
    if out_shape[0]:
        be.call("global_avg_pool_fwd", params, arrays=(a.contiguous("input"), y))
    return y


def global_avg_pool2d_backward(grad_output, input, *, layout="NCHW"):
    if _channels_last(input, layout):
        return _nchw(global_avg_pool2d_backward(grad_output, _nhwc(input), layout="NHWC"))
    op = "global_avg_pool2d_backward"
    a = _prepare(op, grad_output=grad_output, input=input)
    params, out_shape = _args.global_pool(op, a.shape("input"), layout)
    _args.expect_shape(op, "grad_output", a.shape("grad_output"), out_shape)
    be = a.select_backend()
    dx = a.empty(a.shape("input"))
    if out_shape[0]:
        be.call("global_avg_pool_bwd", params, arrays=(a.contiguous("grad_output"), dx))
    return dx

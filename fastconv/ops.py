"""The public ops: validate -> pick the backend from the arrays -> call the binding.

Every function here follows the same three steps and computes nothing itself:
  1. _arrays.Arrays checks that the inputs share a library, a device and a dtype;
  2. _args turns the arguments into the op's params dict and output shape, raising
     ValueError / TypeError that name the argument before any kernel runs;
  3. the output is allocated through the caller's library and the binding's kernel
     fills it, on the caller's stream.
"""

import math
import sys

import numpy as np

from . import _args, _arrays
from ._arrays import Arrays


def _conv_variants(backend):
    return backend.module.conv2d_variants


def _prepare(op, **arrays):
    a = Arrays(op, **arrays)
    if not a.arrays:
        raise TypeError(f"{op}: no input arrays given")
    return a


def _planned(op, arrays, args, build):
    """(plan, arrays): the plan of an earlier call with arrays of the same kinds and
    equal args (_arrays.plan_key), or build(), which checks everything and returns
    (plan, the arrays as checked: lists turned into NumPy arrays and the like)."""
    key = _arrays.plan_key(op, arrays, args)
    plan = _arrays.find_plan(key)
    if plan is not None:
        return plan, arrays
    plan, arrays = build()
    return _arrays.keep_plan(key, plan), arrays


def _needs_autograd(*arrays):
    """True for PyTorch tensors that require grad while grad mode is on: those calls go
    through fastconv.torch's registered ops, so autograd sees them."""
    for a in arrays:
        if getattr(a, "requires_grad", False):  # only torch tensors have it
            return sys.modules["torch"].is_grad_enabled()
    return False


def _unbatched(input):
    """True for an unbatched image, (C, H, W) in NCHW or (H, W, C) in NHWC, which torch's
    2-D ops take as a batch of one and answer without the batch axis."""
    ndim = getattr(input, "ndim", None)
    if ndim is None and isinstance(input, (list, tuple)):
        ndim = np.ndim(input)
    return ndim == 3


def add_batch(input):
    """input with a leading batch axis of 1 (a view; lists become NumPy arrays)."""
    return (np.asarray(input) if isinstance(input, (list, tuple)) else input)[None]


def drop_batch(out):
    """The result(s) of a batched call on add_batch(input), without the batch axis."""
    return tuple(o[0] for o in out) if isinstance(out, tuple) else out[0]


def _autograd_op(op, layout, variant):
    if layout != "NCHW" or variant != "auto":
        raise ValueError(f"{op}: tensors that require grad take layout='NCHW' and "
                         f"variant='auto', got layout={layout!r}, variant={variant!r}")
    from . import torch as fastconv_torch

    return getattr(fastconv_torch, op)


# ----------------------------------------------------------------------- channels_last
#
# A torch tensor in torch.channels_last memory format is, viewed as (N, H, W, C) by
# permute(0, 2, 3, 1), a contiguous NHWC array: with layout="NCHW" it runs the NHWC
# kernels on that view (no copy of the activations) and the result is the NHWC output
# permuted back, a channels_last tensor, as cuDNN answers. The weight goes to the NHWC
# kernels' (R, S, C/groups, K) by a copy (small: ResNet-50's largest is 9.4 MB), and its
# gradient comes back in the weight's own memory format. Only strictly channels_last
# tensors take this path: one that is also NCHW-contiguous (C = 1, or H = W = 1) is
# simply NCHW.


def _channels_last(input, layout):
    """True for a 4-D torch tensor in channels_last memory format, given as NCHW."""
    if layout != "NCHW" or getattr(input, "ndim", 0) != 4 or not hasattr(input, "is_contiguous"):
        return False
    torch = sys.modules.get("torch")
    return (torch is not None and isinstance(input, torch.Tensor) and not input.is_contiguous()
            and input.is_contiguous(memory_format=torch.channels_last))


def _nhwc(t):
    """(N, C, H, W) -> the (N, H, W, C) view (contiguous when t is channels_last)."""
    return None if t is None else t.permute(0, 2, 3, 1)


def _nchw(t):
    """(N, H, W, C) -> (N, C, H, W), a channels_last view."""
    return None if t is None else t.permute(0, 3, 1, 2)


def _nhwc_weight(weight):
    """(K, C/g, R, S) -> the NHWC kernels' (R, S, C/g, K), a copy."""
    return weight.permute(2, 3, 1, 0).contiguous()


def _nchw_weight_grad(grad, weight):
    """(R, S, C/g, K) -> (K, C/g, R, S) in weight's memory format."""
    if grad is None:
        return None
    torch = sys.modules["torch"]
    fmt = (torch.channels_last if not weight.is_contiguous()
           and weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    return grad.permute(3, 2, 0, 1).contiguous(memory_format=fmt)


# ----------------------------------------------------------------------- conv2d


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None, layout="NCHW", variant="auto"):
    """2-D cross-correlation, as torch.nn.functional.conv2d, with a fused activation.

    input   (N, C, H, W) for layout "NCHW", (N, H, W, C) for "NHWC" (Keras' channels_last).
    weight  (K, C/groups, R, S) for "NCHW" (PyTorch's), (R, S, C/groups, K) for "NHWC"
            (Keras' HWIO kernel).
    bias    (K,) or None.
    stride, dilation: int or (h, w), >= 1.
    padding: int or (h, w) of zeros on both sides; "valid" (none); or "same" as Keras
            does it for any stride: output = ceil(in / stride), the odd pixel of padding
            at the bottom / right.
    activation: None, "relu", "tanh" or "sigmoid", applied in the same kernel.
    variant: "auto", or one kernel variant of the backend (fastconv.conv2d_variants()). The
            CPU's "winograd2" / "winograd4" (Winograd F(2x2, 3x3) / F(4x4, 3x3)) take 3x3
            kernels with stride 1 and dilation 1 only; winograd4 rounds more than the others
            (float32: ~1e-6 relative, documented in benchmarks/NOTES.md).

    Output (N, K, P, Q) or (N, P, Q, K), P = (H + pads - dilation * (R - 1) - 1) // stride + 1.
    An unbatched input, (C, H, W) or (H, W, C), gives an unbatched output, as in torch;
    N = 0 gives an empty output without running a kernel.
    PyTorch tensors that require grad go through fastconv.torch.conv2d, with autograd.
    """
    if _unbatched(input):
        return drop_batch(conv2d(add_batch(input), weight, bias, stride, padding, dilation,
                                 groups, activation=activation, layout=layout, variant=variant))
    if _needs_autograd(input, weight, bias):
        return _autograd_op("conv2d", layout, variant)(
            input, weight, bias, stride, padding, dilation, groups, activation=activation)
    return _conv2d(input, weight, bias, stride, padding, dilation, groups,
                   activation=activation, layout=layout, variant=variant)


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
            activation=None, layout="NCHW", variant="auto"):
    if _channels_last(input, layout):
        return _nchw(_conv2d(_nhwc(input), _nhwc_weight(weight), bias, stride, padding, dilation,
                             groups, activation=activation, layout="NHWC", variant=variant))
    def build():
        op = "conv2d"
        a = _prepare(op, input=input, weight=weight, bias=bias)
        params, out_shape = _args.conv2d(op, a.shape("input"), a.shape("weight"),
                                         a.shape("bias"), stride, padding, dilation, groups,
                                         activation, layout)
        be = a.select_backend()
        plan = (be, be.params(params), _args.variant(op, variant, _conv_variants(be), params),
                out_shape)
        return plan, a.values("input", "weight", "bias")

    (be, params, variant, out_shape), (x, w, b) = _planned(
        "conv2d", (input, weight, bias),
        (stride, padding, dilation, groups, activation, layout, variant), build)
    x = be.ready(x)
    y = be.empty(out_shape, x)
    if out_shape[0]:  # N = 0: the empty result, as torch gives it
        be.call("conv2d_fwd", params, variant, arrays=(x, be.ready(w), be.ready(b), y))
    return y


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, *,
                    activation=None, output=None, layout="NCHW", output_mask=(True, True, True),
                    variant="auto"):
    """Gradients of conv2d: (grad_input, grad_weight, grad_bias).

    Arguments as conv2d's. With an activation, `output` must be conv2d's result: the
    gradient goes through the activation's derivative, taken from it. output_mask
    says which of the three to compute (the others are returned as None).
    grad_bias is the sum of the (pre-activation) gradient over N, H and W, shape (K,).
    Deterministic: bitwise identical from run to run.
    """
    if _channels_last(input, layout):
        gx, gw, gb = conv2d_backward(
            _nhwc(grad_output), _nhwc(input), _nhwc_weight(weight), stride, padding, dilation,
            groups, activation=activation, output=_nhwc(output), layout="NHWC",
            output_mask=output_mask, variant=variant)
        return _nchw(gx), _nchw_weight_grad(gw, weight), gb

    def build():
        op = "conv2d_backward"
        a = _prepare(op, grad_output=grad_output, input=input, weight=weight, output=output)
        params, out_shape = _args.conv2d(op, a.shape("input"), a.shape("weight"), None, stride,
                                         padding, dilation, groups, activation, layout)
        _args.expect_shape(op, "grad_output", a.shape("grad_output"), out_shape)
        be = a.select_backend()
        if activation is not None:
            if output is None:
                raise TypeError(f"{op}: output (conv2d's result) is required with activation="
                                f"{activation!r}")
            _args.expect_shape(op, "output", a.shape("output"), out_shape)
        variant_ = _args.variant(op, variant, _conv_variants(be), params)
        plan = (be, variant_, params["act"], out_shape,
                _ConvGrads(be, params, a.shape("input"), a.shape("weight"), variant_))
        return plan, a.values("grad_output", "input", "weight", "output")

    (be, variant, act, out_shape, grads), (dy, x, w, y) = _planned(
        "conv2d_backward", (grad_output, input, weight, output),
        (stride, padding, dilation, groups, activation, layout, variant), build)
    dy = be.ready(dy)
    if act and out_shape[0]:
        dz = be.empty(out_shape, dy)
        be.call("activation_bwd", act, math.prod(out_shape), arrays=(be.ready(y), dy, dz))
        dy = dz
    return grads(variant, dy, x, w, output_mask)


class _ConvGrads:
    """The three gradients of a convolution from dz, its pre-activation gradient."""

    def __init__(self, be, params, x_shape, w_shape, variant):
        self.be, self.x_shape, self.w_shape = be, x_shape, w_shape
        self.params = be.params(dict(params, act=0))
        self.K = params["K"]
        # The GPU's split-K grad weight keeps its partials in scratch from the caller's
        # allocator (torch's and CuPy's cache it): float32 elements, 0 where none is needed.
        self.scratch = (-(-be.module.conv2d_bwd_filter_workspace(self.params, variant) // 4)
                        if be.is_cuda else 0)

    def _grad_weight_scratch(self, like):
        if not self.be.is_cuda:
            return ()
        return (self.be.empty((self.scratch,), like, "float32") if self.scratch else None,)

    def __call__(self, variant, dz, input, weight, output_mask):
        be, params = self.be, self.params
        want_x, want_w, want_b = (bool(m) for m in output_mask)
        if self.x_shape[0] == 0:  # N = 0: no gradient flows; the parameters' are zeros
            return (be.empty(self.x_shape, dz) if want_x else None,
                    be.zeros(self.w_shape, dz) if want_w else None,
                    be.zeros((self.K,), dz) if want_b else None)
        grad_input = grad_weight = grad_bias = None
        if want_x:
            grad_input = be.empty(self.x_shape, dz)
            be.call("conv2d_bwd_data", params, variant,
                    arrays=(dz, be.ready(weight), grad_input))
        if want_w:
            grad_weight = be.empty(self.w_shape, dz)
            be.call("conv2d_bwd_filter", params, variant,
                    arrays=(dz, be.ready(input), grad_weight,
                            *self._grad_weight_scratch(dz)))
        if want_b:
            grad_bias = be.empty((self.K,), dz)
            be.call("conv2d_bwd_bias", params, arrays=(dz, grad_bias))
        return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------- the LeNet-5 block


def conv2d_avgpool(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                   activation=None, pool=2, layout="NCHW", variant="auto",
                   return_activation=False):
    """The LeNet-5 block in one call: avg_pool2d(conv2d(input, ..., activation), pool).

    Arguments as conv2d's; pool (int or (h, w)) is the average pool's window and stride,
    with no padding and rows / columns that do not fill a window dropped (floor), as
    torch.nn.AvgPool2d(pool) and Keras' AveragePooling2D(pool).
    variant: "auto", or one of the backend's conv2d_avgpool variants: on the GPU "fused"
    (one kernel: convolution, activation and pool) or a conv2d variant (that kernel, then
    the pool); on the CPU a conv2d variant.
    return_activation: also return act(conv2d(...)) at full resolution, (N, K, P, Q), what
    conv2d_avgpool_backward needs.

    PyTorch tensors that require grad go through fastconv.torch.conv2d_avgpool, with
    autograd (return_activation must then be False). Unbatched inputs and N = 0 as conv2d.
    """
    if _unbatched(input):
        return drop_batch(conv2d_avgpool(
            add_batch(input), weight, bias, stride, padding, dilation, groups,
            activation=activation, pool=pool, layout=layout, variant=variant,
            return_activation=return_activation))
    if _needs_autograd(input, weight, bias):
        if return_activation:
            raise ValueError("conv2d_avgpool: return_activation=True is for tensors that do not "
                             "require grad (autograd keeps the activation itself)")
        return _autograd_op("conv2d_avgpool", layout, variant)(
            input, weight, bias, stride, padding, dilation, groups, activation=activation,
            pool=pool)
    return _conv2d_avgpool(input, weight, bias, stride, padding, dilation, groups,
                           activation=activation, pool=pool, layout=layout, variant=variant,
                           return_activation=return_activation)


def _conv2d_avgpool(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                    activation=None, pool=2, layout="NCHW", variant="auto",
                    return_activation=False):
    def build():
        op = "conv2d_avgpool"
        a = _prepare(op, input=input, weight=weight, bias=bias)
        params, conv_shape, out_shape = _args.conv2d_avgpool(
            op, a.shape("input"), a.shape("weight"), a.shape("bias"), stride, padding, dilation,
            groups, activation, layout, pool)
        be = a.select_backend()
        variant_ = _args.variant(op, variant, be.module.conv2d_avgpool_variants, params)
        params["save_activation"] = bool(return_activation)
        plan = be, be.params(params, "conv2d_avgpool"), variant_, conv_shape, out_shape
        return plan, a.values("input", "weight", "bias")

    (be, params, variant, conv_shape, out_shape), (x, w, b) = _planned(
        "conv2d_avgpool", (input, weight, bias),
        (stride, padding, dilation, groups, activation, pool, layout, variant,
         bool(return_activation)), build)
    x = be.ready(x)
    # The composed variants always write the activation; the fused one when asked.
    act = be.empty(conv_shape, x)
    y = be.empty(out_shape, x)
    if out_shape[0]:
        be.call("conv2d_avgpool_fwd", params, variant,
                arrays=(x, be.ready(w), be.ready(b), y, act))
    return (y, act) if return_activation else y


def conv2d_avgpool_backward(grad_output, input, weight, stride=1, padding=0, dilation=1,
                            groups=1, *, activation=None, pool=2, activation_output=None,
                            layout="NCHW", output_mask=(True, True, True), variant="auto"):
    """Gradients of conv2d_avgpool: (grad_input, grad_weight, grad_bias).

    Arguments as conv2d_avgpool's. With an activation, activation_output must be the
    full-resolution activation that conv2d_avgpool(..., return_activation=True) returned.
    variant: a conv2d variant for the convolution's gradients. Deterministic.
    """
    def build():
        op = "conv2d_avgpool_backward"
        a = _prepare(op, grad_output=grad_output, input=input, weight=weight,
                     activation_output=activation_output)
        params, conv_shape, out_shape = _args.conv2d_avgpool(
            op, a.shape("input"), a.shape("weight"), None, stride, padding, dilation, groups,
            activation, layout, pool)
        _args.expect_shape(op, "grad_output", a.shape("grad_output"), out_shape)
        be = a.select_backend()
        if activation is not None:
            if activation_output is None:
                raise TypeError(f"{op}: activation_output (conv2d_avgpool's full-resolution "
                                f"activation, return_activation=True) is required with "
                                f"activation={activation!r}")
            _args.expect_shape(op, "activation_output", a.shape("activation_output"),
                               conv_shape)
        variant_ = _args.variant(op, variant, _conv_variants(be), params)
        plan = (be, be.params(params, "conv2d_avgpool"), variant_, conv_shape,
                _ConvGrads(be, params, a.shape("input"), a.shape("weight"), variant_))
        return plan, a.values("grad_output", "input", "weight", "activation_output")

    (be, params, variant, conv_shape, grads), (dy, x, w, act) = _planned(
        "conv2d_avgpool_backward", (grad_output, input, weight, activation_output),
        (stride, padding, dilation, groups, activation, pool, layout, variant), build)
    dy = be.ready(dy)
    dz = be.empty(conv_shape, dy)
    if conv_shape[0]:
        be.call("avgpool_act_bwd", params, arrays=(dy, be.ready(act) if activation else None, dz))
    return grads(variant, dz, x, w, output_mask)


# ----------------------------------------------------------------------- pooling


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


# ----------------------------------------------------------------------- filters

# Images may also be 8-bit, as photographs are: filtered in float32, float32 out.
IMAGE_CPU_DTYPES = ("float32", "float64", "uint8")
IMAGE_GPU_DTYPES = ("float32", "uint8")


def sobel(image, axis=None, mode="reflect", cval=0.0, *, layout="NCHW"):
    """Sobel edge filter of every 2-D plane of image.

    axis None: the gradient magnitude sqrt(gx^2 + gy^2), in one pass. axis 0 (or -2):
    the derivative along rows (d/dy), axis 1 (or -1): along columns (d/dx), each with
    scipy.ndimage.sobel's sign and scale on one 2-D image. image is (H, W), (N, H, W)
    or 4-D in `layout`; each plane is filtered on its own (unlike scipy.ndimage.sobel on
    an N-D array, which would also smooth across the batch). mode: "reflect",
    "mirror", "nearest", "constant" (with cval) or "wrap", as SciPy names them.
    image may be uint8 (an 8-bit photograph): it is filtered in float32 and the result is
    float32 (scipy.ndimage.sobel would return uint8, wrapped around).
    PyTorch tensors that require grad go through fastconv.torch.sobel, with autograd.
    """
    op = "sobel"
    if _needs_autograd(image):
        return _autograd_op(op, layout, "auto")(image, axis, mode, cval)
    a = _prepare(op, image=image)
    params = _args.image(op, a.shape("image"), layout, mode, cval, axis=axis)
    be = a.select_backend(IMAGE_GPU_DTYPES, IMAGE_CPU_DTYPES)
    y = a.empty(a.shape("image"), "float32" if a.dtype == "uint8" else None)
    be.call("sobel", params, arrays=(a.contiguous("image"), y))
    return y


def filter2d(image, kernel, mode="reflect", cval=0.0, *, layout="NCHW"):
    """Cross-correlation of every 2-D plane of image with a small 2-D kernel, as
    scipy.ndimage.correlate on each plane: the kernel's centre is (kh // 2, kw // 2);
    borders by mode as in sobel. Same output shape as image. A uint8 image takes a
    float32 kernel and gives a float32 result. PyTorch tensors that require grad (the
    image, the kernel or both) go through fastconv.torch.filter2d, with autograd."""
    op = "filter2d"
    if _needs_autograd(image, kernel):
        return _autograd_op(op, layout, "auto")(image, kernel, mode, cval)
    a = _prepare(op, image=image)
    if a.dtype == "uint8":  # an 8-bit image takes a float32 kernel, as its output is
        k = _prepare(op, kernel=kernel)
        if k.lib is not a.lib or k.device != a.device or k.dtype != "float32":
            raise TypeError(f"{op}: a uint8 image takes a float32 kernel of the same library "
                            f"and device, got a {k.lib.name} {k.dtype} kernel")
        a.arrays["kernel"] = k.arrays["kernel"]
    else:
        a = _prepare(op, image=image, kernel=kernel)
    params = _args.image(op, a.shape("image"), layout, mode, cval, kernel=a.shape("kernel"))
    be = a.select_backend(IMAGE_GPU_DTYPES, IMAGE_CPU_DTYPES)
    y = a.empty(a.shape("image"), "float32" if a.dtype == "uint8" else None)
    be.call("filter2d", params, arrays=(a.contiguous("image"), a.contiguous("kernel"), y))
    return y


def conv1d(sequence, weights):
    """Valid 1-D cross-correlation, the course notes' convolve: c[k] = sum_t s[k + t] w[t]
    for k = 0 .. m - n. sequence (m,) or a batch (B, m); weights (n,), n <= m. Output
    (m - n + 1,) or (B, m - n + 1)."""
    op = "conv1d"
    a = _prepare(op, sequence=sequence, weights=weights)
    params, out_shape = _args.conv1d(op, a.shape("sequence"), a.shape("weights"))
    be = a.select_backend()
    y = a.empty(out_shape)
    be.call("conv1d", params, arrays=(a.contiguous("sequence"), a.contiguous("weights"), y))
    return y

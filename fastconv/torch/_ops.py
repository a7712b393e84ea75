"""fastconv's kernels as PyTorch operators (torch.library, namespace `fastconv`), each
with a fake (meta) implementation for torch.compile and an autograd formula on
fastconv's backward kernels, and the differentiable functions that call them. In eager
mode each op runs as a torch.autograd.Function (see _eager); under torch.compile the
registered op is traced."""

import functools
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _args, ops

_NS = "fastconv"
_NONE = "none"  # the activation or precision string meaning None (schemas take no Optional[str])


def _act(activation: str):
    return None if activation == _NONE else activation


def _prec(precision: str):
    return None if precision == _NONE else precision


def _precision_conf(op, precision):
    """precision as the schemas take it, checked: None travels as "none" and is resolved
    by the op at run time (ops reads torch's flag then, under torch.compile too)."""
    if precision is None:
        return _NONE
    _args.precision(op, precision)
    return precision


def _conv_padding(padding: Sequence[int], same: bool):
    return "same" if same else tuple(padding)


def _eager(impl, setup, grad):
    """The autograd.Function eager mode runs for an op: the op's body and its autograd
    formula called directly. Calling a torch.library custom op costs tens of
    microseconds of dispatch, several times a small kernel; torch.compile traces the
    custom op itself (see _call)."""
    def forward(ctx, *args):  # setup inside forward: a separate setup_context would make
        out = impl(*args)     # every apply bind its arguments with inspect (~100 us)
        setup(ctx, args, out)
        return out

    return type(f"{impl.__name__}_function", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(functools.partial(grad, eager=True)),
    })


def _unbatched(fn, input, *args, **kwargs):
    """fn on an unbatched (C, H, W) input, as torch does it: with a batch axis of one
    added before and removed after (views, so autograd runs through them)."""
    return ops.drop_batch(fn(input.unsqueeze(0), *args, **kwargs))


def _format_of(input):
    """The memory format fastconv answers input with: channels_last for a (strictly)
    channels_last 4-D input, whose NHWC view the kernels read without a copy."""
    return torch.channels_last if ops._channels_last(input, "NCHW") else torch.contiguous_format


def _dense(t, input):
    """t dense in input's memory format (an upstream gradient usually is already)."""
    return t.contiguous(memory_format=_format_of(input))


def _empty(input, shape, dtype=None):
    """A fake output of shape in input's memory format (what the real op returns)."""
    return input.new_empty(shape, dtype=dtype).contiguous(memory_format=_format_of(input))


def _call(op, eager, *args):
    """op's custom op under torch.compile, its autograd.Function in eager mode. The
    autograd.Function bypasses the dispatcher, and with it the autocast registration
    (_register_autocast), so eager mode applies the same cast here."""
    if torch.compiler.is_compiling():
        return op(*args)
    return eager.apply(*_autocast(args))


# ----------------------------------------------------------------------- autocast
#
# Mixed precision: fastconv's kernels compute float32 (float64 on the CPU); only conv2d's
# GPU forward has float16 / bfloat16 kernels, and no backward has. Under torch.autocast
# (CPU or CUDA), every fastconv op takes its float16 / bfloat16 inputs as float32,
# computes in float32 and returns float32, as torch's own float32-policy ops do
# (autocast's "cast_inputs=float32"), so that a model under autocast trains; float32
# and float64 inputs are left as they are. Outside autocast a float16 / bfloat16 tensor
# runs conv2d's GPU forward in its own type and is refused elsewhere with an error
# naming its dtype (fastconv/_arrays.py), never converted silently.

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_AUTOCAST_DEVICES = ("cpu", "cuda")


def _autocast(args):
    """args with float16 / bfloat16 tensors cast to float32 when autocast is on for
    their device."""
    device = next((a.device.type for a in args if isinstance(a, Tensor)), None)
    if device not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device):
        return args
    return tuple(a.float() if isinstance(a, Tensor) and a.dtype in _LOW_PRECISION else a
                 for a in args)


def _register_autocast(op):
    """The dispatcher's autocast rule for op (what torch.compile and direct calls of the
    registered op see): floating inputs to float32."""
    for device in _AUTOCAST_DEVICES:
        torch.library.register_autocast(op, device, torch.float32)


# ----------------------------------------------------------------------- conv2d


def _conv2d_impl(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                 padding: List[int], same: bool, dilation: List[int], groups: int,
                 activation: str, residual: Optional[Tensor] = None,
                 precision: str = _NONE) -> Tensor:
    return ops._conv2d(input, weight, bias, tuple(stride), _conv_padding(padding, same),
                      tuple(dilation), groups, activation=_act(activation), residual=residual,
                      precision=_prec(precision))


_conv2d = torch.library.custom_op(f"{_NS}::conv2d", mutates_args=())(_conv2d_impl)


@_conv2d.register_fake
def _(input, weight, bias, stride, padding, same, dilation, groups, activation, residual=None,
      precision=_NONE):
    _, shape = _args.conv2d("conv2d", tuple(input.shape), tuple(weight.shape),
                            None if bias is None else tuple(bias.shape), tuple(stride),
                            _conv_padding(padding, same), tuple(dilation), groups,
                            _act(activation), "NCHW")
    _args.residual("conv2d", None if residual is None else tuple(residual.shape), shape, "NCHW")
    return _empty(input, shape)


def _conv2d_backward_impl(grad_output: Tensor, input: Tensor, weight: Tensor,
                          output: Optional[Tensor], stride: List[int], padding: List[int],
                          same: bool, dilation: List[int], groups: int, activation: str,
                          output_mask: List[bool],
                          precision: str = _NONE) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias); a gradient not asked for by output_mask is
    an empty tensor (a custom op returns no None)."""
    grads = ops.conv2d_backward(grad_output, input, weight, tuple(stride),
                                _conv_padding(padding, same), tuple(dilation), groups,
                                activation=_act(activation), output=output,
                                precision=_prec(precision), output_mask=tuple(output_mask))
    return tuple(g if g is not None else input.new_empty(0) for g in grads)


_conv2d_backward = torch.library.custom_op(f"{_NS}::conv2d_backward",
                   mutates_args=())(_conv2d_backward_impl)


@_conv2d_backward.register_fake
def _(grad_output, input, weight, output, stride, padding, same, dilation, groups,
      activation, output_mask, precision=_NONE):
    if not any(output_mask):
        return tuple(input.new_empty(0) for _ in range(3))
    # The weight's gradient comes back in the weight's format on the channels_last path
    # (ops._nchw_weight_grad), contiguous on the NCHW one.
    weight_format = (torch.channels_last if ops._channels_last(input, "NCHW")
                     and ops._channels_last(weight, "NCHW") else torch.contiguous_format)
    return (_empty(input, input.shape) if output_mask[0] else input.new_empty(0),
            weight.new_empty(weight.shape).contiguous(memory_format=weight_format)
            if output_mask[1] else input.new_empty(0),
            input.new_empty((weight.shape[0],) if output_mask[2] else (0,)))


def _activation_backward_impl(grad_output: Tensor, output: Tensor, activation: str) -> Tensor:
    """dz = dy * act'(z), from the activation's output: the gradient a residual receives."""
    return ops._activation_backward(grad_output, output, _act(activation))


_activation_backward = torch.library.custom_op(f"{_NS}::activation_backward",
                       mutates_args=())(_activation_backward_impl)


@_activation_backward.register_fake
def _(grad_output, output, activation):
    return grad_output.new_empty(grad_output.shape)


_RESIDUAL = 9  # the residual's place among conv2d's inputs


def _conv2d_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, same, dilation, groups, activation, residual, \
        precision = inputs
    ctx.conf = (stride, padding, same, dilation, groups, activation)
    ctx.precision = precision
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    ctx.save_for_backward(input, weight, output if activation != _NONE else None)


def _conv2d_grad(ctx, grad_output, eager=False):
    backward = _conv2d_backward_impl if eager else _conv2d_backward
    input, weight, output = ctx.saved_tensors
    stride, padding, same, dilation, groups, activation = ctx.conf
    need = ctx.needs_input_grad
    mask = [need[0], need[1], ctx.has_bias and need[2]]
    dy, grad_residual = _dense(grad_output, input), None
    if ctx.has_residual and need[_RESIDUAL]:
        # The residual's gradient is dz, the gradient before the activation: taken once
        # here, and the convolution's gradients from it.
        if activation != _NONE:
            dy = (_activation_backward_impl if eager else _activation_backward)(
                dy, output, activation)
        grad_residual, activation, output = dy, _NONE, None
    gx, gw, gb = backward(dy, input, weight, output, stride, padding, same, dilation, groups,
                          activation, mask, ctx.precision)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None, None, grad_residual, None)


_conv2d.register_autograd(_conv2d_grad, setup_context=_conv2d_setup)
_conv2d_eager = _eager(_conv2d_impl, _conv2d_setup, _conv2d_grad)
_register_autocast(_conv2d)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None, residual=None, precision=None):
    """torch.nn.functional.conv2d with a fused activation, differentiable; padding also
    "same" with any stride (Keras' rule). input (N, C, H, W) or unbatched (C, H, W).
    residual and precision as fastconv.conv2d's: act(conv + bias + residual), whose
    gradient with respect to residual is the gradient before the activation."""
    if input.dim() == 3:
        if residual is not None and residual.dim() == 3:
            residual = residual.unsqueeze(0)
        return _unbatched(conv2d, input, weight, bias, stride, padding, dilation, groups,
                          activation=activation, residual=residual, precision=precision)
    stride, padding, same, dilation, activation = _conv_conf(
        "conv2d", stride, padding, dilation, activation)
    return _call(_conv2d, _conv2d_eager, input, weight, bias, stride, padding, same, dilation,
                 groups, activation, residual, _precision_conf("conv2d", precision))


# ----------------------------------------------------------------------- the LeNet-5 block


def _conv2d_avgpool_impl(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                         padding: List[int], same: bool, dilation: List[int], groups: int,
                         activation: str, pool: List[int], save: bool,
                         precision: str = _NONE) -> Tuple[Tensor, Tensor]:
    """(pooled output, full-resolution activation); the second is empty unless `save`."""
    out = ops._conv2d_avgpool(input, weight, bias, tuple(stride), _conv_padding(padding, same),
                              tuple(dilation), groups, activation=_act(activation),
                              pool=tuple(pool), precision=_prec(precision),
                              return_activation=save)
    return out if save else (out, input.new_empty(0))


_conv2d_avgpool = torch.library.custom_op(f"{_NS}::conv2d_avgpool",
                  mutates_args=())(_conv2d_avgpool_impl)


@_conv2d_avgpool.register_fake
def _(input, weight, bias, stride, padding, same, dilation, groups, activation, pool, save,
      precision=_NONE):
    _, conv_shape, shape = _args.conv2d_avgpool(
        "conv2d_avgpool", tuple(input.shape), tuple(weight.shape),
        None if bias is None else tuple(bias.shape), tuple(stride),
        _conv_padding(padding, same), tuple(dilation), groups, _act(activation), "NCHW",
        tuple(pool))
    return input.new_empty(shape), input.new_empty(conv_shape if save else (0,))


def _conv2d_avgpool_backward_impl(grad_output: Tensor, input: Tensor, weight: Tensor,
                                  activation_output: Optional[Tensor], stride: List[int],
                                  padding: List[int], same: bool, dilation: List[int], groups: int,
                                  activation: str, pool: List[int], output_mask: List[bool],
                                  precision: str = _NONE) -> Tuple[Tensor, Tensor, Tensor]:
    grads = ops.conv2d_avgpool_backward(
        grad_output, input, weight, tuple(stride), _conv_padding(padding, same),
        tuple(dilation), groups, activation=_act(activation), pool=tuple(pool),
        activation_output=activation_output, precision=_prec(precision),
        output_mask=tuple(output_mask))
    return tuple(g if g is not None else input.new_empty(0) for g in grads)


_conv2d_avgpool_backward = torch.library.custom_op(f"{_NS}::conv2d_avgpool_backward",
                           mutates_args=())(_conv2d_avgpool_backward_impl)


@_conv2d_avgpool_backward.register_fake
def _(grad_output, input, weight, activation_output, stride, padding, same, dilation, groups,
      activation, pool, output_mask, precision=_NONE):
    shapes = (input.shape, weight.shape, (weight.shape[0],))
    return tuple(input.new_empty(s if m else (0,)) for s, m in zip(shapes, output_mask))


def _conv2d_avgpool_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, same, dilation, groups, activation, pool, save, \
        precision = inputs
    ctx.conf = (stride, padding, same, dilation, groups, activation, pool)
    ctx.precision = precision
    ctx.has_bias = bias is not None
    keep = activation != _NONE and save
    ctx.save_for_backward(input, weight, bias if activation != _NONE and not save else None,
                          output[1] if keep else None)
    ctx.mark_non_differentiable(output[1])
    # The saved activation takes no gradient: without this autograd zero-filled a tensor of
    # its size every backward (LeNet-5's C1 at batch 128: 2.4 MB, ~0.26 ms of a 3.3 ms step).
    ctx.set_materialize_grads(False)


def _conv2d_avgpool_grad(ctx, grad_output, grad_activation, eager=False):
    conv = _conv2d_impl if eager else _conv2d
    backward = _conv2d_avgpool_backward_impl if eager else _conv2d_avgpool_backward
    if grad_output is None:  # the pooled output took no part in the loss (set_materialize_grads)
        return (None,) * 12
    input, weight, bias, act = ctx.saved_tensors
    stride, padding, same, dilation, groups, activation, pool = ctx.conf
    if activation != _NONE and act is None:
        # The forward was told no gradient would be asked for (save=False) and kept no
        # activation: recompute it.
        act = conv(input, weight, bias, stride, padding, same, dilation, groups, activation,
                   None, ctx.precision)
    need = ctx.needs_input_grad
    mask = [need[0], need[1], ctx.has_bias and need[2]]
    gx, gw, gb = backward(grad_output.contiguous(), input, weight, act, stride, padding, same,
                          dilation, groups, activation, pool, mask, ctx.precision)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None, None, None, None, None)


_conv2d_avgpool.register_autograd(_conv2d_avgpool_grad, setup_context=_conv2d_avgpool_setup)
_conv2d_avgpool_eager = _eager(_conv2d_avgpool_impl, _conv2d_avgpool_setup, _conv2d_avgpool_grad)
_register_autocast(_conv2d_avgpool)


def _padding_conf(op, padding):
    """(padding as [h, w], same) as the op schemas take them: a string padding
    ("same" / "valid" in any case) becomes [0, 0] and the flag."""
    if isinstance(padding, str):
        return [0, 0], _args.padding_string(op, padding) == "same"
    return list(_args.pair(op, "padding", padding, 0)), False


def _conv_conf(op, stride, padding, dilation, activation):
    stride = list(_args.pair(op, "stride", stride, 1))
    dilation = list(_args.pair(op, "dilation", dilation, 1))
    padding, same = _padding_conf(op, padding)
    activation = _args.activation_name(op, activation)
    return stride, padding, same, dilation, _NONE if activation is None else activation


def conv2d_avgpool(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                   activation=None, pool=2, precision=None):
    """The LeNet-5 block, avg_pool2d(conv2d(..., activation), pool) in one op,
    differentiable (fastconv.conv2d_avgpool's semantics); input batched or not."""
    if input.dim() == 3:
        return _unbatched(conv2d_avgpool, input, weight, bias, stride, padding, dilation,
                          groups, activation=activation, pool=pool, precision=precision)
    stride, padding, same, dilation, activation = _conv_conf(
        "conv2d_avgpool", stride, padding, dilation, activation)
    pool = list(_args.pair("conv2d_avgpool", "pool", pool, 1))
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias))
    return _call(_conv2d_avgpool, _conv2d_avgpool_eager, input, weight, bias, stride, padding,
                 same, dilation, groups, activation, pool, save,
                 _precision_conf("conv2d_avgpool", precision))[0]


# ----------------------------------------------------------------------- pooling


def _pool_conf(op, kernel_size, stride, padding, dilation=1):
    """kernel_size, stride, padding, same, dilation as the pooling schemas take them,
    normalised by _args as the plain path normalises them."""
    k = _args.pair(op, "kernel_size", kernel_size, 1)
    padding, same = _padding_conf(op, padding)
    return list(k), list(_args.pool_stride(op, stride, k)), padding, same, \
        list(_args.pair(op, "dilation", dilation, 1))


def _max_pool2d_impl(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                     same: bool, dilation: List[int], ceil_mode: bool) -> Tuple[Tensor, Tensor]:
    return ops._max_pool2d(input, tuple(kernel_size), tuple(stride), _conv_padding(padding, same),
                           tuple(dilation), ceil_mode, return_indices=True)


_max_pool2d = torch.library.custom_op(f"{_NS}::max_pool2d", mutates_args=())(_max_pool2d_impl)


@_max_pool2d.register_fake
def _(input, kernel_size, stride, padding, same, dilation, ceil_mode):
    _, shape = _args.pool2d("max_pool2d", tuple(input.shape), tuple(kernel_size), tuple(stride),
                            _conv_padding(padding, same), tuple(dilation), ceil_mode, "NCHW")
    return _empty(input, shape), _empty(input, shape, torch.int64)


def _max_pool2d_backward_impl(grad_output: Tensor, input: Tensor, indices: Tensor,
                              kernel_size: List[int], stride: List[int], padding: List[int],
                              same: bool, dilation: List[int], ceil_mode: bool,
                              own_indices: bool = False) -> Tensor:
    """own_indices: the indices come from fastconv's forward (autograd says so), and the
    GPU's out-of-window check, a stream synchronisation, is skipped."""
    return ops._max_pool2d_backward(grad_output, input, tuple(kernel_size), tuple(stride),
                                    _conv_padding(padding, same), tuple(dilation), ceil_mode,
                                    indices=indices, layout="NCHW",
                                    check_indices=not own_indices)


_max_pool2d_backward = torch.library.custom_op(f"{_NS}::max_pool2d_backward",
                       mutates_args=())(_max_pool2d_backward_impl)


@_max_pool2d_backward.register_fake
def _(grad_output, input, indices, kernel_size, stride, padding, same, dilation, ceil_mode,
      own_indices=False):
    return _empty(input, input.shape)


def _max_pool2d_setup(ctx, inputs, output):
    input, *conf = inputs
    ctx.conf = conf
    ctx.save_for_backward(input, output[1])
    ctx.mark_non_differentiable(output[1])


def _max_pool2d_grad(ctx, grad_output, grad_indices, eager=False):
    backward = _max_pool2d_backward_impl if eager else _max_pool2d_backward
    input, indices = ctx.saved_tensors
    return (backward(_dense(grad_output, input), input, indices, *ctx.conf, True),
            None, None, None, None, None, None)


_max_pool2d.register_autograd(_max_pool2d_grad, setup_context=_max_pool2d_setup)
_max_pool2d_eager = _eager(_max_pool2d_impl, _max_pool2d_setup, _max_pool2d_grad)
_register_autocast(_max_pool2d)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """torch.nn.functional.max_pool2d, differentiable; indices as PyTorch's; padding also
    Keras' "same" / "valid"; input batched or not."""
    if input.dim() == 3:
        return _unbatched(max_pool2d, input, kernel_size, stride, padding, dilation, ceil_mode,
                          return_indices)
    k, s, p, same, d = _pool_conf("max_pool2d", kernel_size, stride, padding, dilation)
    out, indices = _call(_max_pool2d, _max_pool2d_eager, input, k, s, p, same, d, ceil_mode)
    return (out, indices) if return_indices else out


def _avg_pool2d_impl(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                     same: bool, ceil_mode: bool, count_include_pad: bool,
                     divisor_override: Optional[int]) -> Tensor:
    return ops._avg_pool2d(input, tuple(kernel_size), tuple(stride), _conv_padding(padding, same),
                           ceil_mode, count_include_pad, divisor_override)


_avg_pool2d = torch.library.custom_op(f"{_NS}::avg_pool2d", mutates_args=())(_avg_pool2d_impl)


@_avg_pool2d.register_fake
def _(input, kernel_size, stride, padding, same, ceil_mode, count_include_pad, divisor_override):
    _, shape = _args.pool2d("avg_pool2d", tuple(input.shape), tuple(kernel_size), tuple(stride),
                            _conv_padding(padding, same), 1, ceil_mode, "NCHW",
                            count_include_pad, divisor_override)
    return _empty(input, shape)


def _avg_pool2d_backward_impl(grad_output: Tensor, input: Tensor, kernel_size: List[int],
                              stride: List[int], padding: List[int], same: bool,
                              ceil_mode: bool, count_include_pad: bool,
                              divisor_override: Optional[int]) -> Tensor:
    return ops.avg_pool2d_backward(grad_output, input, tuple(kernel_size), tuple(stride),
                                   _conv_padding(padding, same), ceil_mode, count_include_pad,
                                   divisor_override)


_avg_pool2d_backward = torch.library.custom_op(f"{_NS}::avg_pool2d_backward",
                       mutates_args=())(_avg_pool2d_backward_impl)


@_avg_pool2d_backward.register_fake
def _(grad_output, input, kernel_size, stride, padding, same, ceil_mode, count_include_pad,
      divisor_override):
    return _empty(input, input.shape)


def _avg_pool2d_setup(ctx, inputs, output):
    ctx.conf = inputs[1:]
    ctx.save_for_backward(inputs[0])


def _avg_pool2d_grad(ctx, grad_output, eager=False):
    backward = _avg_pool2d_backward_impl if eager else _avg_pool2d_backward
    (input,) = ctx.saved_tensors
    return (backward(_dense(grad_output, input), input, *ctx.conf),
            None, None, None, None, None, None, None)


_avg_pool2d.register_autograd(_avg_pool2d_grad, setup_context=_avg_pool2d_setup)
_avg_pool2d_eager = _eager(_avg_pool2d_impl, _avg_pool2d_setup, _avg_pool2d_grad)
_register_autocast(_avg_pool2d)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """torch.nn.functional.avg_pool2d, differentiable; padding also Keras' "same" /
    "valid"; input batched or not."""
    if input.dim() == 3:
        return _unbatched(avg_pool2d, input, kernel_size, stride, padding, ceil_mode,
                          count_include_pad, divisor_override)
    k, s, p, same, _ = _pool_conf("avg_pool2d", kernel_size, stride, padding)
    return _call(_avg_pool2d, _avg_pool2d_eager, input, k, s, p, same, ceil_mode,
                 count_include_pad, divisor_override)


# ----------------------------------------------------------------------- global average pool


@torch.library.custom_op(f"{_NS}::global_avg_pool2d", mutates_args=())
def _global_avg_pool2d(input: Tensor) -> Tensor:
    return ops._global_avg_pool2d(input)


@_global_avg_pool2d.register_fake
def _(input):
    _, shape = _args.global_pool("global_avg_pool2d", tuple(input.shape), "NCHW")
    return input.new_empty(shape)


@torch.library.custom_op(f"{_NS}::global_avg_pool2d_backward", mutates_args=())
def _global_avg_pool2d_backward(grad_output: Tensor, input: Tensor) -> Tensor:
    return ops.global_avg_pool2d_backward(grad_output, input)


@_global_avg_pool2d_backward.register_fake
def _(grad_output, input):
    return _empty(input, input.shape)


def _global_avg_pool2d_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _global_avg_pool2d_grad(ctx, grad_output):
    (input,) = ctx.saved_tensors
    return _global_avg_pool2d_backward(grad_output.contiguous(), input)


_global_avg_pool2d.register_autograd(_global_avg_pool2d_grad,
                                     setup_context=_global_avg_pool2d_setup)
_register_autocast(_global_avg_pool2d)


def global_avg_pool2d(input):
    """The mean of each channel, (N, C, H, W) -> (N, C) or unbatched (C, H, W) -> (C,),
    differentiable: torch.nn.functional.adaptive_avg_pool2d(input, 1) without its two
    trailing axes of size 1."""
    if input.dim() == 3:
        return _unbatched(global_avg_pool2d, input)
    return _global_avg_pool2d(input)

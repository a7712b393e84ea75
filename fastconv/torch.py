"""fastconv's kernels as PyTorch operators and modules, with autograd.

    import fastconv.torch as fct
    model = nn.Sequential(fct.Conv2d(1, 6, 5, padding="same", activation="tanh"),
                          fct.AvgPool2d(2), ...)

The ops are registered with torch.library (namespace `fastconv`: conv2d, conv2d_backward,
max_pool2d, max_pool2d_backward, avg_pool2d, avg_pool2d_backward, sobel), each with a
fake (meta) implementation for torch.compile and an autograd formula that calls
fastconv's backward kernels. CPU tensors run on the C++ backend, CUDA tensors on the GPU
backend, on PyTorch's current stream. float32 everywhere, float64 on the CPU.

The modules subclass their torch.nn namesakes: the constructor arguments, parameters,
initialisation and state_dict are torch.nn's, so a model swaps them in and loads the
same weights. What differs:
  - Conv2d takes `activation=None | "relu" | "tanh" | "sigmoid"`, fused into the kernel,
    and accepts padding="same" with any stride (Keras' rule: the odd pixel of padding
    at the bottom / right), where torch.nn.Conv2d refuses a strided "same";
    padding_mode must be "zeros".
  - sobel has no gradient formula: its backward raises.
Tensors of any memory format are accepted; the kernels read NCHW, so a channels_last
tensor is copied to NCHW first.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import _args, ops

_NS = "fastconv"
_NONE = "none"  # the activation string meaning None (schemas take no Optional[str])


def _act(activation: str):
    return None if activation == _NONE else activation


def _conv_padding(padding: Sequence[int], same: bool):
    return "same" if same else tuple(padding)


# ----------------------------------------------------------------------- conv2d


@torch.library.custom_op(f"{_NS}::conv2d", mutates_args=())
def _conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
            padding: List[int], same: bool, dilation: List[int], groups: int,
            activation: str) -> Tensor:
    return ops._conv2d(input, weight, bias, tuple(stride), _conv_padding(padding, same),
                      tuple(dilation), groups, activation=_act(activation))


@_conv2d.register_fake
def _(input, weight, bias, stride, padding, same, dilation, groups, activation):
    _, shape = _args.conv2d("conv2d", tuple(input.shape), tuple(weight.shape),
                            None if bias is None else tuple(bias.shape), tuple(stride),
                            _conv_padding(padding, same), tuple(dilation), groups,
                            _act(activation), "NCHW")
    return input.new_empty(shape)


@torch.library.custom_op(f"{_NS}::conv2d_backward", mutates_args=())
def _conv2d_backward(grad_output: Tensor, input: Tensor, weight: Tensor,
                     output: Optional[Tensor], stride: List[int], padding: List[int],
                     same: bool, dilation: List[int], groups: int, activation: str,
                     output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias); a gradient not asked for by output_mask is
    an empty tensor (a custom op returns no None)."""
    grads = ops.conv2d_backward(grad_output, input, weight, tuple(stride),
                                _conv_padding(padding, same), tuple(dilation), groups,
                                activation=_act(activation), output=output,
                                output_mask=tuple(output_mask))
    return tuple(g if g is not None else input.new_empty(0) for g in grads)


@_conv2d_backward.register_fake
def _(grad_output, input, weight, output, stride, padding, same, dilation, groups,
      activation, output_mask):
    shapes = (input.shape, weight.shape, (weight.shape[0],))
    return tuple(input.new_empty(s if m else (0,)) for s, m in zip(shapes, output_mask))


def _conv2d_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, same, dilation, groups, activation = inputs
    ctx.conf = (stride, padding, same, dilation, groups, activation)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(input, weight, output if activation != _NONE else None)


def _conv2d_grad(ctx, grad_output):
    input, weight, output = ctx.saved_tensors
    stride, padding, same, dilation, groups, activation = ctx.conf
    need = ctx.needs_input_grad
    mask = [need[0], need[1], ctx.has_bias and need[2]]
    gx, gw, gb = _conv2d_backward(grad_output.contiguous(), input, weight, output, stride,
                                  padding, same, dilation, groups, activation, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None, None)


_conv2d.register_autograd(_conv2d_grad, setup_context=_conv2d_setup)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None):
    """torch.nn.functional.conv2d with a fused activation, differentiable; padding also
    "same" with any stride (Keras' rule)."""
    op = "conv2d"
    stride = list(_args.pair(op, "stride", stride, 1))
    dilation = list(_args.pair(op, "dilation", dilation, 1))
    same = isinstance(padding, str)
    if same:
        if padding not in ("same", "valid"):
            raise ValueError(f"{op}: padding must be an int, a pair of ints, 'valid' or "
                             f"'same', got {padding!r}")
        same, padding = padding == "same", [0, 0]
    else:
        padding = list(_args.pair(op, "padding", padding, 0))
    _args.activation(op, activation)
    return _conv2d(input, weight, bias, stride, padding, same, dilation, groups,
                   _NONE if activation is None else activation)


# ----------------------------------------------------------------------- pooling


def _pool_conf(op, kernel_size, stride, padding, dilation=1):
    k = list(_args.pair(op, "kernel_size", kernel_size, 1))
    s = k if stride is None or stride == [] or stride == () else \
        list(_args.pair(op, "stride", stride, 1))
    return k, list(s), list(_args.pair(op, "padding", padding, 0)), \
        list(_args.pair(op, "dilation", dilation, 1))


@torch.library.custom_op(f"{_NS}::max_pool2d", mutates_args=())
def _max_pool2d(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                dilation: List[int], ceil_mode: bool) -> Tuple[Tensor, Tensor]:
    return ops._max_pool2d(input, tuple(kernel_size), tuple(stride), tuple(padding),
                          tuple(dilation), ceil_mode, return_indices=True)


@_max_pool2d.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    _, shape = _args.pool2d("max_pool2d", tuple(input.shape), tuple(kernel_size), tuple(stride),
                            tuple(padding), tuple(dilation), ceil_mode, "NCHW")
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


@torch.library.custom_op(f"{_NS}::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward(grad_output: Tensor, input: Tensor, indices: Tensor,
                         kernel_size: List[int], stride: List[int], padding: List[int],
                         dilation: List[int], ceil_mode: bool) -> Tensor:
    return ops.max_pool2d_backward(grad_output, input, tuple(kernel_size), tuple(stride),
                                   tuple(padding), tuple(dilation), ceil_mode, indices=indices)


@_max_pool2d_backward.register_fake
def _(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return torch.empty_like(input)


def _max_pool2d_setup(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode = inputs
    ctx.conf = (kernel_size, stride, padding, dilation, ceil_mode)
    ctx.save_for_backward(input, output[1])
    ctx.mark_non_differentiable(output[1])


def _max_pool2d_grad(ctx, grad_output, grad_indices):
    input, indices = ctx.saved_tensors
    return (_max_pool2d_backward(grad_output.contiguous(), input, indices, *ctx.conf),
            None, None, None, None, None)


_max_pool2d.register_autograd(_max_pool2d_grad, setup_context=_max_pool2d_setup)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """torch.nn.functional.max_pool2d, differentiable; indices as PyTorch's."""
    k, s, p, d = _pool_conf("max_pool2d", kernel_size, stride, padding, dilation)
    out, indices = _max_pool2d(input, k, s, p, d, ceil_mode)
    return (out, indices) if return_indices else out


@torch.library.custom_op(f"{_NS}::avg_pool2d", mutates_args=())
def _avg_pool2d(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                ceil_mode: bool, count_include_pad: bool,
                divisor_override: Optional[int]) -> Tensor:
    return ops._avg_pool2d(input, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode,
                          count_include_pad, divisor_override)


@_avg_pool2d.register_fake
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    _, shape = _args.pool2d("avg_pool2d", tuple(input.shape), tuple(kernel_size), tuple(stride),
                            tuple(padding), 1, ceil_mode, "NCHW", count_include_pad,
                            divisor_override)
    return input.new_empty(shape)


@torch.library.custom_op(f"{_NS}::avg_pool2d_backward", mutates_args=())
def _avg_pool2d_backward(grad_output: Tensor, input: Tensor, kernel_size: List[int],
                         stride: List[int], padding: List[int], ceil_mode: bool,
                         count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    return ops.avg_pool2d_backward(grad_output, input, tuple(kernel_size), tuple(stride),
                                   tuple(padding), ceil_mode, count_include_pad,
                                   divisor_override)


@_avg_pool2d_backward.register_fake
def _(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
      divisor_override):
    return torch.empty_like(input)


def _avg_pool2d_setup(ctx, inputs, output):
    ctx.conf = inputs[1:]
    ctx.save_for_backward(inputs[0])


def _avg_pool2d_grad(ctx, grad_output):
    (input,) = ctx.saved_tensors
    return (_avg_pool2d_backward(grad_output.contiguous(), input, *ctx.conf),
            None, None, None, None, None, None)


_avg_pool2d.register_autograd(_avg_pool2d_grad, setup_context=_avg_pool2d_setup)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """torch.nn.functional.avg_pool2d, differentiable."""
    k, s, p, _ = _pool_conf("avg_pool2d", kernel_size, stride, padding)
    return _avg_pool2d(input, k, s, p, ceil_mode, count_include_pad, divisor_override)


# ----------------------------------------------------------------------- sobel


@torch.library.custom_op(f"{_NS}::sobel", mutates_args=())
def _sobel(image: Tensor, axis: Optional[int], mode: str, cval: float) -> Tensor:
    return ops.sobel(image, axis, mode, cval)


@_sobel.register_fake
def _(image, axis, mode, cval):
    _args.image("sobel", tuple(image.shape), "NCHW", mode, cval, axis=axis)
    return image.new_empty(image.shape, dtype=torch.float32 if image.dtype == torch.uint8
                           else image.dtype)


def sobel(image, axis=None, mode="reflect", cval=0.0):
    """fastconv.sobel on a tensor of shape (H, W), (N, H, W) or (N, C, H, W); not
    differentiable."""
    return _sobel(image, axis, mode, float(cval))


# ----------------------------------------------------------------------- modules


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d on fastconv's kernels, with an optional fused activation."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None, *, activation=None):
        _args.activation("Conv2d", activation)
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: padding_mode must be 'zeros' on fastconv's kernels, "
                             f"got {padding_mode!r}")
        strided_same = padding == "same" and _args.pair("Conv2d", "stride", stride, 1) != (1, 1)
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         0 if strided_same else padding, dilation, groups, bias, padding_mode,
                         device, dtype)
        if strided_same:
            self.padding = "same"
        self.activation = activation

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.activation is None else f"{s}, activation={self.activation!r}"

    def forward(self, input):
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups, activation=self.activation)


class MaxPool2d(nn.MaxPool2d):
    """torch.nn.MaxPool2d on fastconv's kernels."""

    def forward(self, input):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.ceil_mode, self.return_indices)


class AvgPool2d(nn.AvgPool2d):
    """torch.nn.AvgPool2d on fastconv's kernels."""

    def forward(self, input):
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)


__all__ = ["AvgPool2d", "Conv2d", "MaxPool2d", "avg_pool2d", "conv2d", "max_pool2d", "sobel"]

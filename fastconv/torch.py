"""fastconv's kernels as PyTorch operators and modules, with autograd.

    import fastconv.torch as fct
    model = nn.Sequential(fct.Conv2d(1, 6, 5, padding="same", activation="tanh"),
                          fct.AvgPool2d(2), ...)

The ops are registered with torch.library (namespace `fastconv`: conv2d, conv2d_backward,
conv2d_avgpool, conv2d_avgpool_backward, max_pool2d, max_pool2d_backward, avg_pool2d,
avg_pool2d_backward, sobel), each with a
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

The LeNet-5 block, a convolution with its activation followed by an average pool whose
window is its stride, runs as one op (one kernel on the GPU): explicitly as
Conv2dAvgPool2d (the Conv2d's parameters and state_dict, plus pool=), or found in an
existing model by fuse(model), which returns a torch.fx GraphModule with every such
Conv2d -> [Tanh/ReLU/Sigmoid] -> AvgPool2d chain replaced by a block sharing the
Conv2d's parameters.
Tensors of any memory format are accepted; the kernels read NCHW, so a channels_last
tensor is copied to NCHW first.
"""

import functools
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


def _call(op, eager, *args):
    """op's custom op under torch.compile, its autograd.Function in eager mode."""
    return op(*args) if torch.compiler.is_compiling() else eager.apply(*args)


# ----------------------------------------------------------------------- conv2d


def _conv2d_impl(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                 padding: List[int], same: bool, dilation: List[int], groups: int,
                 activation: str) -> Tensor:
    return ops._conv2d(input, weight, bias, tuple(stride), _conv_padding(padding, same),
                      tuple(dilation), groups, activation=_act(activation))


_conv2d = torch.library.custom_op(f"{_NS}::conv2d", mutates_args=())(_conv2d_impl)


@_conv2d.register_fake
def _(input, weight, bias, stride, padding, same, dilation, groups, activation):
    _, shape = _args.conv2d("conv2d", tuple(input.shape), tuple(weight.shape),
                            None if bias is None else tuple(bias.shape), tuple(stride),
                            _conv_padding(padding, same), tuple(dilation), groups,
                            _act(activation), "NCHW")
    return input.new_empty(shape)


def _conv2d_backward_impl(grad_output: Tensor, input: Tensor, weight: Tensor,
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


_conv2d_backward = torch.library.custom_op(f"{_NS}::conv2d_backward",
                   mutates_args=())(_conv2d_backward_impl)


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


def _conv2d_grad(ctx, grad_output, eager=False):
    backward = _conv2d_backward_impl if eager else _conv2d_backward
    input, weight, output = ctx.saved_tensors
    stride, padding, same, dilation, groups, activation = ctx.conf
    need = ctx.needs_input_grad
    mask = [need[0], need[1], ctx.has_bias and need[2]]
    gx, gw, gb = backward(grad_output.contiguous(), input, weight, output, stride, padding,
                          same, dilation, groups, activation, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None, None)


_conv2d.register_autograd(_conv2d_grad, setup_context=_conv2d_setup)
_conv2d_eager = _eager(_conv2d_impl, _conv2d_setup, _conv2d_grad)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None):
    """torch.nn.functional.conv2d with a fused activation, differentiable; padding also
    "same" with any stride (Keras' rule)."""
    stride, padding, same, dilation, activation = _conv_conf(
        "conv2d", stride, padding, dilation, activation)
    return _call(_conv2d, _conv2d_eager, input, weight, bias, stride, padding, same, dilation,
                 groups, activation)


# ----------------------------------------------------------------------- the LeNet-5 block


def _conv2d_avgpool_impl(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                         padding: List[int], same: bool, dilation: List[int], groups: int,
                         activation: str, pool: List[int], save: bool) -> Tuple[Tensor, Tensor]:
    """(pooled output, full-resolution activation); the second is empty unless `save`."""
    out = ops._conv2d_avgpool(input, weight, bias, tuple(stride), _conv_padding(padding, same),
                              tuple(dilation), groups, activation=_act(activation),
                              pool=tuple(pool), return_activation=save)
    return out if save else (out, input.new_empty(0))


_conv2d_avgpool = torch.library.custom_op(f"{_NS}::conv2d_avgpool",
                  mutates_args=())(_conv2d_avgpool_impl)


@_conv2d_avgpool.register_fake
def _(input, weight, bias, stride, padding, same, dilation, groups, activation, pool, save):
    _, conv_shape, shape = _args.conv2d_avgpool(
        "conv2d_avgpool", tuple(input.shape), tuple(weight.shape),
        None if bias is None else tuple(bias.shape), tuple(stride),
        _conv_padding(padding, same), tuple(dilation), groups, _act(activation), "NCHW",
        tuple(pool))
    return input.new_empty(shape), input.new_empty(conv_shape if save else (0,))


def _conv2d_avgpool_backward_impl(grad_output: Tensor, input: Tensor, weight: Tensor,
                                  activation_output: Optional[Tensor], stride: List[int],
                                  padding: List[int], same: bool, dilation: List[int], groups: int,
                                  activation: str, pool: List[int],
                                  output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    grads = ops.conv2d_avgpool_backward(
        grad_output, input, weight, tuple(stride), _conv_padding(padding, same),
        tuple(dilation), groups, activation=_act(activation), pool=tuple(pool),
        activation_output=activation_output, output_mask=tuple(output_mask))
    return tuple(g if g is not None else input.new_empty(0) for g in grads)


_conv2d_avgpool_backward = torch.library.custom_op(f"{_NS}::conv2d_avgpool_backward",
                           mutates_args=())(_conv2d_avgpool_backward_impl)


@_conv2d_avgpool_backward.register_fake
def _(grad_output, input, weight, activation_output, stride, padding, same, dilation, groups,
      activation, pool, output_mask):
    shapes = (input.shape, weight.shape, (weight.shape[0],))
    return tuple(input.new_empty(s if m else (0,)) for s, m in zip(shapes, output_mask))


def _conv2d_avgpool_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, same, dilation, groups, activation, pool, save = inputs
    ctx.conf = (stride, padding, same, dilation, groups, activation, pool)
    ctx.has_bias = bias is not None
    keep = activation != _NONE and save
    ctx.save_for_backward(input, weight, bias if activation != _NONE and not save else None,
                          output[1] if keep else None)
    ctx.mark_non_differentiable(output[1])


def _conv2d_avgpool_grad(ctx, grad_output, grad_activation, eager=False):
    conv = _conv2d_impl if eager else _conv2d
    backward = _conv2d_avgpool_backward_impl if eager else _conv2d_avgpool_backward
    input, weight, bias, act = ctx.saved_tensors
    stride, padding, same, dilation, groups, activation, pool = ctx.conf
    if activation != _NONE and act is None:
        # The forward was told no gradient would be asked for (save=False) and kept no
        # activation: recompute it.
        act = conv(input, weight, bias, stride, padding, same, dilation, groups, activation)
    need = ctx.needs_input_grad
    mask = [need[0], need[1], ctx.has_bias and need[2]]
    gx, gw, gb = backward(grad_output.contiguous(), input, weight, act, stride, padding, same,
                          dilation, groups, activation, pool, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None, None, None, None)


_conv2d_avgpool.register_autograd(_conv2d_avgpool_grad, setup_context=_conv2d_avgpool_setup)
_conv2d_avgpool_eager = _eager(_conv2d_avgpool_impl, _conv2d_avgpool_setup, _conv2d_avgpool_grad)


def _conv_conf(op, stride, padding, dilation, activation):
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
    return stride, padding, same, dilation, _NONE if activation is None else activation


def conv2d_avgpool(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                   activation=None, pool=2):
    """The LeNet-5 block, avg_pool2d(conv2d(..., activation), pool) in one op,
    differentiable (fastconv.conv2d_avgpool's semantics)."""
    stride, padding, same, dilation, activation = _conv_conf(
        "conv2d_avgpool", stride, padding, dilation, activation)
    pool = list(_args.pair("conv2d_avgpool", "pool", pool, 1))
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias))
    return _call(_conv2d_avgpool, _conv2d_avgpool_eager, input, weight, bias, stride, padding,
                 same, dilation, groups, activation, pool, save)[0]


# ----------------------------------------------------------------------- pooling


def _pool_conf(op, kernel_size, stride, padding, dilation=1):
    k = list(_args.pair(op, "kernel_size", kernel_size, 1))
    s = k if stride is None or stride == [] or stride == () else \
        list(_args.pair(op, "stride", stride, 1))
    return k, list(s), list(_args.pair(op, "padding", padding, 0)), \
        list(_args.pair(op, "dilation", dilation, 1))


def _max_pool2d_impl(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                     dilation: List[int], ceil_mode: bool) -> Tuple[Tensor, Tensor]:
    return ops._max_pool2d(input, tuple(kernel_size), tuple(stride), tuple(padding),
                          tuple(dilation), ceil_mode, return_indices=True)


_max_pool2d = torch.library.custom_op(f"{_NS}::max_pool2d", mutates_args=())(_max_pool2d_impl)


@_max_pool2d.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    _, shape = _args.pool2d("max_pool2d", tuple(input.shape), tuple(kernel_size), tuple(stride),
                            tuple(padding), tuple(dilation), ceil_mode, "NCHW")
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


def _max_pool2d_backward_impl(grad_output: Tensor, input: Tensor, indices: Tensor,
                              kernel_size: List[int], stride: List[int], padding: List[int],
                              dilation: List[int], ceil_mode: bool,
                              own_indices: bool = False) -> Tensor:
    """own_indices: the indices come from fastconv's forward (autograd says so), and the
    GPU's out-of-window check, a stream synchronisation, is skipped."""
    return ops._max_pool2d_backward(grad_output, input, tuple(kernel_size), tuple(stride),
                                    tuple(padding), tuple(dilation), ceil_mode,
                                    indices=indices, layout="NCHW",
                                    check_indices=not own_indices)


_max_pool2d_backward = torch.library.custom_op(f"{_NS}::max_pool2d_backward",
                       mutates_args=())(_max_pool2d_backward_impl)


@_max_pool2d_backward.register_fake
def _(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode,
      own_indices=False):
    return torch.empty_like(input)


def _max_pool2d_setup(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode = inputs
    ctx.conf = (kernel_size, stride, padding, dilation, ceil_mode)
    ctx.save_for_backward(input, output[1])
    ctx.mark_non_differentiable(output[1])


def _max_pool2d_grad(ctx, grad_output, grad_indices, eager=False):
    backward = _max_pool2d_backward_impl if eager else _max_pool2d_backward
    input, indices = ctx.saved_tensors
    return (backward(grad_output.contiguous(), input, indices, *ctx.conf, True),
            None, None, None, None, None)


_max_pool2d.register_autograd(_max_pool2d_grad, setup_context=_max_pool2d_setup)
_max_pool2d_eager = _eager(_max_pool2d_impl, _max_pool2d_setup, _max_pool2d_grad)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """torch.nn.functional.max_pool2d, differentiable; indices as PyTorch's."""
    k, s, p, d = _pool_conf("max_pool2d", kernel_size, stride, padding, dilation)
    out, indices = _call(_max_pool2d, _max_pool2d_eager, input, k, s, p, d, ceil_mode)
    return (out, indices) if return_indices else out


def _avg_pool2d_impl(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                     ceil_mode: bool, count_include_pad: bool,
                     divisor_override: Optional[int]) -> Tensor:
    return ops._avg_pool2d(input, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode,
                          count_include_pad, divisor_override)


_avg_pool2d = torch.library.custom_op(f"{_NS}::avg_pool2d", mutates_args=())(_avg_pool2d_impl)


@_avg_pool2d.register_fake
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    _, shape = _args.pool2d("avg_pool2d", tuple(input.shape), tuple(kernel_size), tuple(stride),
                            tuple(padding), 1, ceil_mode, "NCHW", count_include_pad,
                            divisor_override)
    return input.new_empty(shape)


def _avg_pool2d_backward_impl(grad_output: Tensor, input: Tensor, kernel_size: List[int],
                              stride: List[int], padding: List[int], ceil_mode: bool,
                              count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    return ops.avg_pool2d_backward(grad_output, input, tuple(kernel_size), tuple(stride),
                                   tuple(padding), ceil_mode, count_include_pad,
                                   divisor_override)


_avg_pool2d_backward = torch.library.custom_op(f"{_NS}::avg_pool2d_backward",
                       mutates_args=())(_avg_pool2d_backward_impl)


@_avg_pool2d_backward.register_fake
def _(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
      divisor_override):
    return torch.empty_like(input)


def _avg_pool2d_setup(ctx, inputs, output):
    ctx.conf = inputs[1:]
    ctx.save_for_backward(inputs[0])


def _avg_pool2d_grad(ctx, grad_output, eager=False):
    backward = _avg_pool2d_backward_impl if eager else _avg_pool2d_backward
    (input,) = ctx.saved_tensors
    return (backward(grad_output.contiguous(), input, *ctx.conf),
            None, None, None, None, None, None)


_avg_pool2d.register_autograd(_avg_pool2d_grad, setup_context=_avg_pool2d_setup)
_avg_pool2d_eager = _eager(_avg_pool2d_impl, _avg_pool2d_setup, _avg_pool2d_grad)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """torch.nn.functional.avg_pool2d, differentiable."""
    k, s, p, _ = _pool_conf("avg_pool2d", kernel_size, stride, padding)
    return _call(_avg_pool2d, _avg_pool2d_eager, input, k, s, p, ceil_mode, count_include_pad,
                 divisor_override)


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


class Conv2dAvgPool2d(Conv2d):
    """The LeNet-5 block: Conv2d (with its fused activation) followed by AvgPool2d(pool),
    as one op. Its parameters and state_dict are the Conv2d's, so a model whose conv and
    pool are replaced by this block (and an Identity) loads the same weights."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None, *, activation=None, pool=2):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype, activation=activation)
        self.pool = _args.pair("Conv2dAvgPool2d", "pool", pool, 1)

    @classmethod
    def from_modules(cls, conv, pool_size, activation=None):
        """The block computing `conv` then an average pool of window = stride =
        pool_size; it shares conv's parameters (no copy). activation overrides conv's."""
        block = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    device="meta", activation=activation or getattr(conv, "activation", None),
                    pool=pool_size)
        block.weight, block.bias = conv.weight, conv.bias
        return block

    def extra_repr(self):
        return f"{super().extra_repr()}, pool={self.pool}"

    def forward(self, input):
        return conv2d_avgpool(input, self.weight, self.bias, self.stride, self.padding,
                              self.dilation, self.groups, activation=self.activation,
                              pool=self.pool)


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


# ----------------------------------------------------------------------- fusion

_ACTIVATION_MODULES = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}


def _block_pool_size(m):
    """The pool size of an average pool the block can absorb (window = stride, no
    padding, floor, no divisor override), else None."""
    if not isinstance(m, nn.AvgPool2d):
        return None
    k = _args.pair("fuse", "kernel_size", m.kernel_size, 1)
    s = k if m.stride in (None, (), []) else _args.pair("fuse", "stride", m.stride, 1)
    if s != k or _args.pair("fuse", "padding", m.padding, 0) != (0, 0) or m.ceil_mode \
            or m.divisor_override is not None:
        return None
    return k


def fuse(model):
    """`model` with every fastconv Conv2d that feeds only an average pool replaced by one
    Conv2dAvgPool2d block, the pool's own work folded in; returned as a torch.fx
    GraphModule whose state_dict keys and parameters are the model's (shared, not
    copied). Fused where the conv's output goes, through any nn.Identity, to nothing but
    an nn.AvgPool2d (torch's or fastconv's) whose window equals its stride, with no
    padding, ceil_mode or divisor_override; an nn.Tanh / nn.ReLU / nn.Sigmoid between
    them joins the block when the conv has no activation of its own. The model must be
    traceable by torch.fx (no data-dependent control flow); methods other than forward
    are not carried over."""
    import torch.fx as fx

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (Conv2d, MaxPool2d, AvgPool2d)) or \
                super().is_leaf_module(m, qualname)

    graph = Tracer().trace(model)
    gm = fx.GraphModule(model, graph)
    modules = dict(gm.named_modules())

    def module_of(node):
        return modules.get(node.target) if node.op == "call_module" else None

    def only_user(node):
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    for node in list(graph.nodes):
        conv = module_of(node)
        if type(conv) is not Conv2d:
            continue
        chain, nxt, activation = [], only_user(node), conv.activation
        while nxt is not None and isinstance(module_of(nxt), nn.Identity):
            chain.append(nxt)
            nxt = only_user(nxt)
        act_module = module_of(nxt) if nxt is not None else None
        if activation is None and type(act_module) in _ACTIVATION_MODULES:
            activation = _ACTIVATION_MODULES[type(act_module)]
            chain.append(nxt)
            nxt = only_user(nxt)
            while nxt is not None and isinstance(module_of(nxt), nn.Identity):
                chain.append(nxt)
                nxt = only_user(nxt)
        size = _block_pool_size(module_of(nxt)) if nxt is not None else None
        if size is None:
            continue
        block = Conv2dAvgPool2d.from_modules(conv, size, activation)
        gm.add_submodule(node.target, block)
        modules[node.target] = block
        nxt.replace_all_uses_with(node)
        for dead in [nxt] + chain[::-1]:
            graph.erase_node(dead)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


__all__ = ["AvgPool2d", "Conv2d", "Conv2dAvgPool2d", "MaxPool2d", "avg_pool2d", "conv2d",
           "conv2d_avgpool", "fuse", "max_pool2d", "sobel"]

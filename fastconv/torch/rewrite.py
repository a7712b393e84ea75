"""Rewriting existing models onto fastconv: convert() swaps torch.nn's convolution and
pooling modules for fastconv's, sharing their parameters; fuse() folds Conv2d ->
[activation] -> AvgPool2d chains into the LeNet-5 block."""

import copy
import dataclasses
import itertools
from typing import List, Tuple

import torch
from torch import nn

from .. import _args
from .modules import AdaptiveAvgPool2d, AvgPool2d, Conv2d, Conv2dAvgPool2d, MaxPool2d

# ----------------------------------------------------------------------- convert

# torch.nn class -> its fastconv.torch subclass (same attributes, fastconv's forward).
_SWAPS = {nn.Conv2d: Conv2d, nn.MaxPool2d: MaxPool2d, nn.AvgPool2d: AvgPool2d,
          nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d}
_OURS = tuple(_SWAPS.values()) + (Conv2dAvgPool2d,)


@dataclasses.dataclass
class ConversionReport:
    """What convert() did: converted, (name, torch.nn class, fastconv class) for each
    module swapped; left, (name, class, why) for each convolution or pooling module kept
    as it was."""
    converted: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)
    left: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"converted {len(self.converted)} modules, left {len(self.left)}"]
        lines += [f"  {name or '(model)'}: {a} -> {b}" for name, a, b in self.converted]
        lines += [f"  left {name or '(model)'} ({cls}): {why}" for name, cls, why in self.left]
        return "\n".join(lines)


def _why_not(m):
    """Why module m stays as it is, or None when convert() swaps it."""
    kind = next((c for c in _SWAPS if isinstance(m, c)), None)
    if isinstance(m, _OURS):
        return "already a fastconv module"
    if type(m) is not kind:
        return (f"a subclass of nn.{kind.__name__} ({type(m).__name__}): its forward may "
                f"differ from torch.nn's")
    if kind is nn.AdaptiveAvgPool2d and m.output_size not in (1, (1, 1), [1, 1]):
        return (f"output_size {m.output_size!r}: fastconv has the global average pool "
                f"(output_size 1) only")
    for t in itertools.chain(m.parameters(recurse=False), m.buffers(recurse=False)):
        if t.dtype not in (torch.float32, torch.float64):
            return f"dtype {str(t.dtype).replace('torch.', '')}: fastconv takes float32 and float64"
        if t.dtype == torch.float64 and t.device.type != "cpu":
            return "float64 on a GPU: the GPU backend computes float32"
    return None


def _swapped(m):
    """A fastconv module with m's state: the same attributes, the same Parameter and
    buffer objects (shared, not copied), the same hooks."""
    new = _SWAPS[type(m)].__new__(_SWAPS[type(m)])
    new.__dict__.update(m.__dict__)
    for name in ("_parameters", "_buffers", "_modules"):
        new.__dict__[name] = dict(m.__dict__[name])
    if isinstance(new, Conv2d):
        new.activation = new.precision = None
    return new


def convert(model, inplace=False, fuse=False):
    """model with every nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d and nn.AdaptiveAvgPool2d(1)
    replaced by fastconv.torch's module sharing its parameters and buffers (the same
    tensors: training one trains the other), so outputs, gradients and state_dict keys
    stay those of the model. Modules convert() cannot take (subclasses, whose forward
    may differ; other dtypes; adaptive pools to more than one pixel) stay as they are.

    inplace=False returns a new model (the module structure copied, the parameters and
    buffers shared) and leaves `model` untouched; inplace=True swaps inside `model`.
    fuse=True also forms the LeNet-5 blocks fuse() forms (the result is then a
    torch.fx GraphModule, so the model must be traceable by torch.fx).

    The returned model carries a ConversionReport as `fastconv_report` (print it)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        model = copy.deepcopy(model, shared)
    report = ConversionReport()
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, tuple(_SWAPS))]
    for name, m in candidates:
        why = _why_not(m)
        if why is not None:
            report.left.append((name, type(m).__name__, why))
            continue
        new = _swapped(m)
        if name:
            parent, _, attr = name.rpartition(".")
            model.get_submodule(parent).register_module(attr, new)
        else:
            model = new
        report.converted.append((name, f"nn.{type(m).__name__}", f"fastconv.torch.{type(new).__name__}"))
    if fuse:
        try:
            model = _fuse_model(model)
        except Exception as e:  # torch.fx's errors name the untraceable construct
            raise ValueError(f"convert(fuse=True): the model is not traceable by torch.fx "
                             f"({type(e).__name__}: {e}); convert it without fuse") from e
    model.fastconv_report = report
    return model

# ----------------------------------------------------------------------- fuse


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
        if type(conv) is not Conv2d or conv.padding_mode != "zeros":
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


_fuse_model = fuse  # convert()'s own `fuse` argument hides the function inside it

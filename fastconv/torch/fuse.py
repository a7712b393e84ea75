"""Rewriting existing models onto fastconv: fuse() folds Conv2d -> [activation] ->
AvgPool2d chains into the LeNet-5 block."""

from torch import nn

from .. import _args
from .modules import AvgPool2d, Conv2d, Conv2dAvgPool2d, MaxPool2d


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

"""What every op module shares: the call plan, the autograd detour for torch tensors
that require grad, unbatched inputs, and the channels_last view."""

import sys

import numpy as np

from .. import _arrays
from .._arrays import Arrays


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
    from .. import torch as fastconv_torch

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
    """(N, C, H, W) -> the (N, H, W, C) view (contiguous when t is channels_last). Not a
    torch tensor (a residual from another library): t, for Arrays to refuse by name."""
    return t if t is None or not hasattr(t, "permute") else t.permute(0, 2, 3, 1)


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

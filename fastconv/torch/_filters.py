"""Sobel and filter2d as differentiable PyTorch ops (issue 16, item 3).

The forward passes are fastconv's kernels (registered as `fastconv::sobel` and
`fastconv::filter2d`, with fake implementations for torch.compile). The backward
passes are written here in torch ops, from the adjoint of each step:

  filter2d  y = correlate(extend(x), k): every plane extended by the border mode (top
            kh // 2, bottom kh - 1 - kh // 2, left kw // 2, right kw - 1 - kw // 2
            pixels; scipy.ndimage's centre), then a valid cross-correlation.
    - the correlation's adjoint is the full correlation of the gradient with the
      flipped filter (conv_transpose2d): the gradient of the extended plane;
    - the extension's adjoint folds that back: each extended row (column) adds its
      gradient to the row it copies (`border_index`, the index map the kernels use,
      fastconv/_shapes.py), index_add along rows then columns (the extension is
      separable); constant-mode pixels copy no input pixel and add nothing (cval is a
      float argument, not differentiable);
    - the filter's gradient: sum over planes of the extended input correlated with the
      output gradient.
  sobel     one 1-D derivative pass along the axis, [-1, 0, 1] over the input extended
            by one pixel, then one 1-D smoothing pass across it, [1, 2, 1] over the
            derivative extended by one pixel (SciPy's order: with "constant" the
            derivative is what gets extended by cval). Each pass is a filter2d with a
            3 x 1 or 1 x 3 filter, so its adjoint is the one above, applied in the
            reverse order.
    - magnitude m = sqrt(gx^2 + gy^2): dm/dgx = gx / m, and 0 where m = 0. That is
      the exact gradient wherever m > 0 (|gx / m| <= 1, no blow-up near zero) and, at
      m = 0 where the gradient does not exist, the value Kornia's definition gives
      (kornia.filters.sobel takes sqrt(gx^2 + gy^2 + eps), whose gradient at zero is
      0). Kornia's eps also shifts the forward value (sqrt(eps) at a flat patch);
      fastconv's forward is scipy.ndimage's, without it.

The backward runs in torch ops on the input's device (no fastconv kernel): it is
correct for every border mode (gradcheck in float64, tests/test_filters_autograd.py)
and about as fast as PyTorch's own convolution of that size.
"""

import functools
from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from .. import _args, _shapes, ops
from ._ops import _register_autocast

_NS = "fastconv"


@functools.lru_cache(maxsize=256)
def _index_map_cached(n: int, before: int, after: int, mode: str):
    """For each of the n + before + after pixels of an extended row (column), the pixel
    it copies, or -1 for the constant; and whether any is -1. Under torch.compile with
    dynamic shapes n arrives symbolic: int() specialises the graph on the image size
    (the map is built on the host)."""
    code = _shapes.BORDER_MODES.index(mode)
    idx = [_shapes.border_index(i, n, code) for i in range(-before, n + after)]
    return tuple(idx), -1 in idx


def _index_map(n, before, after, mode):
    return _index_map_cached(int(n), int(before), int(after), mode)


def _pads(kh, kw):
    return kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2


def _extend(x: Tensor, kh: int, kw: int, mode: str, cval: float) -> Tensor:
    """x (P, H, W) extended by mode for a kh x kw filter (a gather; its autograd is the
    fold, but the backward below calls _fold directly)."""
    top, bottom, left, right = _pads(kh, kw)
    H, W = x.shape[-2:]
    for dim, (n, a, b) in ((-2, (H, top, bottom)), (-1, (W, left, right))):
        if a == b == 0:
            continue
        idx, const = _index_map(n, a, b, mode)
        index = torch.tensor(idx, device=x.device)
        x = x.index_select(dim, index.clamp(min=0))
        if const:
            keep = (index >= 0).to(x.dtype)
            keep = keep[:, None] if dim == -2 else keep
            x = x * keep + cval * (1 - keep)
    return x


def _fold(g: Tensor, H: int, W: int, kh: int, kw: int, mode: str) -> Tensor:
    """The adjoint of _extend: g (P, H + kh - 1, W + kw - 1) summed back onto (P, H, W)."""
    top, bottom, left, right = _pads(kh, kw)
    for dim, (n, a, b) in ((-2, (H, top, bottom)), (-1, (W, left, right))):
        if a == b == 0:
            continue
        idx, const = _index_map(n, a, b, mode)
        index = torch.tensor(idx, device=g.device)
        if const:
            g = g.index_select(dim, (index >= 0).nonzero().flatten())
            index = index[index >= 0]
        shape = list(g.shape)
        shape[dim] = n
        g = g.new_zeros(shape).index_add_(dim, index, g)
    return g


def _planes(t: Tensor) -> Tensor:
    """(H, W), (N, H, W) or (N, C, H, W) as (planes, H, W)."""
    return t.reshape(-1, *t.shape[-2:])


def _filter2d_grad_input(grad: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """The gradient of filter2d(x, kernel, mode) with respect to x, given its output's."""
    kh, kw = kernel.shape
    g = _planes(grad)
    full = F.conv_transpose2d(g[:, None], kernel.to(g.dtype)[None, None])[:, 0]
    return _fold(full, g.shape[-2], g.shape[-1], kh, kw, mode).reshape(grad.shape)


def _filter2d_grad_kernel(grad: Tensor, image: Tensor, kh: int, kw: int, mode: str,
                          cval: float) -> Tensor:
    ext = _extend(_planes(image).to(grad.dtype), kh, kw, mode, cval)
    g = _planes(grad)
    return F.conv2d(ext[None], g[None])[0, 0]  # sum over planes of ext (*) g


# ----------------------------------------------------------------------- filter2d


@torch.library.custom_op(f"{_NS}::filter2d", mutates_args=())
def _filter2d(image: Tensor, kernel: Tensor, mode: str, cval: float) -> Tensor:
    return ops.filter2d(image, kernel, mode, cval)


@_filter2d.register_fake
def _(image, kernel, mode, cval):
    _args.image("filter2d", tuple(image.shape), "NCHW", mode, cval, kernel=tuple(kernel.shape))
    return image.new_empty(image.shape, dtype=torch.float32 if image.dtype == torch.uint8
                           else image.dtype)


def _filter2d_setup(ctx, inputs, output):
    image, kernel, mode, cval = inputs
    ctx.conf = (mode, cval)
    ctx.save_for_backward(image, kernel)


def _filter2d_grad(ctx, grad):
    image, kernel = ctx.saved_tensors
    mode, cval = ctx.conf
    gx = _filter2d_grad_input(grad, kernel, mode) if ctx.needs_input_grad[0] else None
    gk = (_filter2d_grad_kernel(grad, image, *kernel.shape, mode, cval)
          if ctx.needs_input_grad[1] else None)
    return gx, gk, None, None


_filter2d.register_autograd(_filter2d_grad, setup_context=_filter2d_setup)
_register_autocast(_filter2d)


def filter2d(image, kernel, mode="reflect", cval=0.0):
    """fastconv.filter2d on a tensor of shape (H, W), (N, H, W) or (N, C, H, W),
    differentiable in the image and in the kernel (a learnable filter): scipy.ndimage's
    correlate on each plane, the kernel's centre at (kh // 2, kw // 2)."""
    return _filter2d(image, kernel, mode, float(cval))


# ----------------------------------------------------------------------- sobel

_DIFF = (-1.0, 0.0, 1.0)
_SMOOTH = (1.0, 2.0, 1.0)


def _taps(values, axis, like):
    """A 3-tap 1-D filter along axis 0 (3 x 1) or 1 (1 x 3) as a 2-D kernel."""
    k = torch.tensor(values, dtype=like.dtype, device=like.device)
    return k[:, None] if axis == 0 else k[None, :]


def _sobel_axis_grad(grad: Tensor, axis: int, mode: str) -> Tensor:
    """The adjoint of sobel along axis: the smoothing pass's adjoint, then the
    derivative pass's."""
    g = _filter2d_grad_input(grad, _taps(_SMOOTH, 1 - axis, grad), mode)
    return _filter2d_grad_input(g, _taps(_DIFF, axis, grad), mode)


@torch.library.custom_op(f"{_NS}::sobel", mutates_args=())
def _sobel(image: Tensor, axis: Optional[int], mode: str, cval: float) -> Tensor:
    return ops.sobel(image, axis, mode, cval)


@_sobel.register_fake
def _(image, axis, mode, cval):
    _args.image("sobel", tuple(image.shape), "NCHW", mode, cval, axis=axis)
    return image.new_empty(image.shape, dtype=torch.float32 if image.dtype == torch.uint8
                           else image.dtype)


def _sobel_setup(ctx, inputs, output):
    image, axis, mode, cval = inputs
    ctx.conf = (axis, mode, cval)
    # The magnitude's backward needs gx and gy: recomputed there (two derivative
    # passes), not kept from a forward that computes the magnitude in one pass.
    ctx.save_for_backward(image if axis is None else None, output if axis is None else None)


def _sobel_grad(ctx, grad):
    axis, mode, cval = ctx.conf
    if axis is not None:
        return _sobel_axis_grad(grad, axis % 2, mode), None, None, None
    image, magnitude = ctx.saved_tensors
    gy, gx = (_sobel(image, a, mode, cval) for a in (0, 1))
    scale = torch.where(magnitude > 0, grad / magnitude, torch.zeros_like(grad))
    return (_sobel_axis_grad(scale * gy, 0, mode) + _sobel_axis_grad(scale * gx, 1, mode),
            None, None, None)


_sobel.register_autograd(_sobel_grad, setup_context=_sobel_setup)
_register_autocast(_sobel)


def sobel(image, axis=None, mode="reflect", cval=0.0):
    """fastconv.sobel on a tensor of shape (H, W), (N, H, W) or (N, C, H, W),
    differentiable (the backward: this module's docstring)."""
    return _sobel(image, axis, mode, float(cval))

"""The image filters (sobel, filter2d) and conv1d."""

from .. import _args
from ._common import _autograd_op, _needs_autograd, _prepare


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

"""conv2d, its backward, and the LeNet-5 block (conv2d_avgpool) with its backward."""

import math

from .. import _args, _arrays, _autotable
from ._common import (_autograd_op, _channels_last, _nchw, _nchw_weight_grad, _needs_autograd,
                      _nhwc, _nhwc_weight, _planned, _prepare, _unbatched, add_batch, drop_batch)


def _conv_variants(backend):
    return backend.module.conv2d_variants


# ----------------------------------------------------------------------- conv2d


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None, residual=None, precision=None, layout="NCHW", variant="auto"):
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
    residual: None, or an array of the output's shape, layout, library, device and dtype,
            added before the activation: act(conv + bias + residual), a ResNet block's
            last convolution and its skip add in one kernel. Its gradient (autograd) is
            the gradient before the activation.
    precision: the GPU's float32 arithmetic, as torch.backends.cudnn.allow_tf32 chooses
            PyTorch's: "strict" (float32 FMAs), "tf32" (tensor cores on inputs rounded to
            TF32, 10 mantissa bits: ~1e-3 relative error), "3xtf32" (tensor cores on a
            split of each input into two TF32 parts: float32's ~1e-6), or None (default):
            PyTorch's default, "tf32" while torch.backends.cudnn.allow_tf32 is True (or
            torch is not imported), "strict" once it is False. A kernel without a
            tensor-core path computes strict float32 whatever is asked; the CPU always
            computes strict float32 (or float64), as PyTorch's CPU convolutions do.
            float16 / bfloat16 arrays (GPU only, variant "auto" or "implicit_gemm") run on
            tensor cores in their own type with float32 accumulation, whatever precision
            says.
    variant: "auto", or one kernel variant of the backend (fastconv.conv2d_variants()). The
            CPU's "winograd2" / "winograd4" (Winograd F(2x2, 3x3) / F(4x4, 3x3)) take 3x3
            kernels with stride 1 and dilation 1 only; winograd4 rounds more than the others
            (float32: ~1e-6 relative, documented in benchmarks/NOTES.md).

    Output (N, K, P, Q) or (N, P, Q, K), P = (H + pads - dilation * (R - 1) - 1) // stride + 1,
    in the inputs' dtype: float32 or float64 on the CPU; float32, float16 or bfloat16 on the
    GPU (bias and residual in that dtype too).
    An unbatched input, (C, H, W) or (H, W, C), gives an unbatched output, as in torch;
    N = 0 gives an empty output without running a kernel.
    PyTorch tensors that require grad go through fastconv.torch.conv2d, with autograd.
    """
    if _unbatched(input):
        if _unbatched(residual):
            residual = add_batch(residual)
        return drop_batch(conv2d(add_batch(input), weight, bias, stride, padding, dilation,
                                 groups, activation=activation, residual=residual,
                                 precision=precision, layout=layout, variant=variant))
    if _needs_autograd(input, weight, bias, residual):
        return _autograd_op("conv2d", layout, variant)(
            input, weight, bias, stride, padding, dilation, groups, activation=activation,
            residual=residual, precision=precision)
    return _conv2d(input, weight, bias, stride, padding, dilation, groups,
                   activation=activation, residual=residual, precision=precision,
                   layout=layout, variant=variant)


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
            activation=None, residual=None, precision=None, layout="NCHW", variant="auto"):
    if _channels_last(input, layout):
        return _nchw(_conv2d(_nhwc(input), _nhwc_weight(weight), bias, stride, padding, dilation,
                             groups, activation=activation, residual=_nhwc(residual),
                             precision=precision, layout="NHWC", variant=variant))
    # Resolved at every call: torch's flag may change between two calls of one plan.
    precision = _args.precision("conv2d", precision)

    def build():
        op = "conv2d"
        a = _prepare(op, input=input, weight=weight, bias=bias, residual=residual)
        params, out_shape = _args.conv2d(op, a.shape("input"), a.shape("weight"),
                                         a.shape("bias"), stride, padding, dilation, groups,
                                         activation, layout, precision)
        _args.residual(op, a.shape("residual"), out_shape, layout)
        be = a.select_backend(_arrays.GPU_CONV_DTYPES)
        variant_ = _args.half_variant(op, _args.variant(op, variant, _conv_variants(be), params),
                                      a.dtype)
        variant_ = _autotable.choose(be, "fwd", variant_, params, precision)  # auto, measured
        plan = (be, be.params(params), variant_, out_shape)
        return plan, a.values("input", "weight", "bias", "residual")

    (be, params, variant, out_shape), (x, w, b, r) = _planned(
        "conv2d", (input, weight, bias, residual),
        (stride, padding, dilation, groups, activation, layout, variant, precision), build)
    x = be.ready(x)
    y = be.empty(out_shape, x)
    if out_shape[0]:  # N = 0: the empty result, as torch gives it
        be.call("conv2d_fwd", params, variant,
                arrays=(x, be.ready(w), be.ready(b), y, be.ready(r)))
    return y


def _activation_backward(grad_output, output, activation):
    """dz = dy * act'(z), taken from the activation's output y (conv2d's result): the
    gradient before the activation, which a residual receives (fastconv.torch's
    autograd). activation is not None."""
    op = "activation_backward"
    a = _prepare(op, grad_output=grad_output, output=output)
    _args.expect_shape(op, "output", a.shape("output"), a.shape("grad_output"))
    act = _args.activation(op, activation)
    be = a.select_backend()
    shape = a.shape("grad_output")
    dz = a.empty(shape)
    if math.prod(shape):
        be.call("activation_bwd", act, math.prod(shape),
                arrays=(a.contiguous("output"), a.contiguous("grad_output"), dz))
    return dz


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, *,
                    activation=None, output=None, precision=None, layout="NCHW",
                    output_mask=(True, True, True), variant="auto"):
    """Gradients of conv2d: (grad_input, grad_weight, grad_bias).

    Arguments as conv2d's (precision too: what the GPU's gradient kernels may use). With
    an activation, `output` must be conv2d's result: the gradient goes through the
    activation's derivative, taken from it. output_mask says which of the three to
    compute (the others are returned as None).
    grad_bias is the sum of the (pre-activation) gradient over N, H and W, shape (K,).
    Deterministic: bitwise identical from run to run.
    """
    if _channels_last(input, layout):
        gx, gw, gb = conv2d_backward(
            _nhwc(grad_output), _nhwc(input), _nhwc_weight(weight), stride, padding, dilation,
            groups, activation=activation, output=_nhwc(output), precision=precision,
            layout="NHWC", output_mask=output_mask, variant=variant)
        return _nchw(gx), _nchw_weight_grad(gw, weight), gb
    precision = _args.precision("conv2d_backward", precision)

    def build():
        op = "conv2d_backward"
        a = _prepare(op, grad_output=grad_output, input=input, weight=weight, output=output)
        params, out_shape = _args.conv2d(op, a.shape("input"), a.shape("weight"), None, stride,
                                         padding, dilation, groups, activation, layout,
                                         precision)
        _args.expect_shape(op, "grad_output", a.shape("grad_output"), out_shape)
        be = a.select_backend()
        if activation is not None:
            if output is None:
                raise TypeError(f"{op}: output (conv2d's result) is required with activation="
                                f"{activation!r}")
            _args.expect_shape(op, "output", a.shape("output"), out_shape)
        variant_ = _args.variant(op, variant, _conv_variants(be), params)
        plan = (be, variant_, params["act"], out_shape,
                _ConvGrads(be, params, a.shape("input"), a.shape("weight"), variant_,
                           precision))
        return plan, a.values("grad_output", "input", "weight", "output")

    (be, _, act, out_shape, grads), (dy, x, w, y) = _planned(
        "conv2d_backward", (grad_output, input, weight, output),
        (stride, padding, dilation, groups, activation, layout, variant, precision), build)
    dy = be.ready(dy)
    if act and out_shape[0]:
        dz = be.empty(out_shape, dy)
        be.call("activation_bwd", act, math.prod(out_shape), arrays=(be.ready(y), dy, dz))
        dy = dz
    return grads(dy, x, w, output_mask)


class _ConvGrads:
    """The three gradients of a convolution from dz, its pre-activation gradient."""

    def __init__(self, be, params, x_shape, w_shape, variant, precision):
        self.be, self.x_shape, self.w_shape = be, x_shape, w_shape
        self.params = be.params(dict(params, act=0))
        self.K = params["K"]
        # auto's measured choice per gradient on the GPU (the card's table), else variant.
        self.data_variant = _autotable.choose(be, "bwd_data", variant, params, precision)
        self.filter_variant = _autotable.choose(be, "bwd_filter", variant, params, precision)
        # The GPU's split-K grad weight keeps its partials in scratch from the caller's
        # allocator (torch's and CuPy's cache it): float32 elements, 0 where none is needed.
        self.scratch = (-(-be.module.conv2d_bwd_filter_workspace(self.params,
                                                                 self.filter_variant) // 4)
                        if be.is_cuda else 0)

    def _grad_weight_scratch(self, like):
        if not self.be.is_cuda:
            return ()
        return (self.be.empty((self.scratch,), like, "float32") if self.scratch else None,)

    def __call__(self, dz, input, weight, output_mask):
        be, params = self.be, self.params
        want_x, want_w, want_b = (bool(m) for m in output_mask)
        if self.x_shape[0] == 0:  # N = 0: no gradient flows; the parameters' are zeros
            return (be.empty(self.x_shape, dz) if want_x else None,
                    be.zeros(self.w_shape, dz) if want_w else None,
                    be.zeros((self.K,), dz) if want_b else None)
        grad_input = grad_weight = grad_bias = None
        if want_x:
            grad_input = be.empty(self.x_shape, dz)
            be.call("conv2d_bwd_data", params, self.data_variant,
                    arrays=(dz, be.ready(weight), grad_input))
        if want_w:
            grad_weight = be.empty(self.w_shape, dz)
            be.call("conv2d_bwd_filter", params, self.filter_variant,
                    arrays=(dz, be.ready(input), grad_weight,
                            *self._grad_weight_scratch(dz)))
        if want_b:
            grad_bias = be.empty((self.K,), dz)
            be.call("conv2d_bwd_bias", params, arrays=(dz, grad_bias))
        return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------- the LeNet-5 block


def conv2d_avgpool(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                   activation=None, pool=2, precision=None, layout="NCHW", variant="auto",
                   return_activation=False):
    """The LeNet-5 block in one call: avg_pool2d(conv2d(input, ..., activation), pool).

    Arguments as conv2d's (no residual); pool (int or (h, w)) is the average pool's window and stride,
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
            activation=activation, pool=pool, precision=precision, layout=layout,
            variant=variant, return_activation=return_activation))
    if _needs_autograd(input, weight, bias):
        if return_activation:
            raise ValueError("conv2d_avgpool: return_activation=True is for tensors that do not "
                             "require grad (autograd keeps the activation itself)")
        return _autograd_op("conv2d_avgpool", layout, variant)(
            input, weight, bias, stride, padding, dilation, groups, activation=activation,
            pool=pool, precision=precision)
    return _conv2d_avgpool(input, weight, bias, stride, padding, dilation, groups,
                           activation=activation, pool=pool, precision=precision, layout=layout,
                           variant=variant, return_activation=return_activation)


def _conv2d_avgpool(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                    activation=None, pool=2, precision=None, layout="NCHW", variant="auto",
                    return_activation=False):
    precision = _args.precision("conv2d_avgpool", precision)

    def build():
        op = "conv2d_avgpool"
        a = _prepare(op, input=input, weight=weight, bias=bias)
        params, conv_shape, out_shape = _args.conv2d_avgpool(
            op, a.shape("input"), a.shape("weight"), a.shape("bias"), stride, padding, dilation,
            groups, activation, layout, pool, precision)
        be = a.select_backend()
        variant_ = _args.variant(op, variant, be.module.conv2d_avgpool_variants, params)
        params["save_activation"] = bool(return_activation)
        plan = be, be.params(params, "conv2d_avgpool"), variant_, conv_shape, out_shape
        return plan, a.values("input", "weight", "bias")

    (be, params, variant, conv_shape, out_shape), (x, w, b) = _planned(
        "conv2d_avgpool", (input, weight, bias),
        (stride, padding, dilation, groups, activation, pool, layout, variant,
         bool(return_activation), precision), build)
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
                            precision=None, layout="NCHW", output_mask=(True, True, True),
                            variant="auto"):
    """Gradients of conv2d_avgpool: (grad_input, grad_weight, grad_bias).

    Arguments as conv2d_avgpool's. With an activation, activation_output must be the
    full-resolution activation that conv2d_avgpool(..., return_activation=True) returned.
    variant: a conv2d variant for the convolution's gradients. Deterministic.
    """
    precision = _args.precision("conv2d_avgpool_backward", precision)

    def build():
        op = "conv2d_avgpool_backward"
        a = _prepare(op, grad_output=grad_output, input=input, weight=weight,
                     activation_output=activation_output)
        params, conv_shape, out_shape = _args.conv2d_avgpool(
            op, a.shape("input"), a.shape("weight"), None, stride, padding, dilation, groups,
            activation, layout, pool, precision)
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
                _ConvGrads(be, params, a.shape("input"), a.shape("weight"), variant_,
                           precision))
        return plan, a.values("grad_output", "input", "weight", "activation_output")

    (be, params, _, conv_shape, grads), (dy, x, w, act) = _planned(
        "conv2d_avgpool_backward", (grad_output, input, weight, activation_output),
        (stride, padding, dilation, groups, activation, pool, layout, variant, precision),
        build)
    dy = be.ready(dy)
    dz = be.empty(conv_shape, dy)
    if conv_shape[0]:
        be.call("avgpool_act_bwd", params, arrays=(dy, be.ready(act) if activation else None, dz))
    return grads(dz, x, w, output_mask)

"""torch.nn modules on fastconv's kernels: subclasses of their torch.nn namesakes (the
same constructor arguments, parameters, initialisation and state_dict), whose forward
calls the differentiable functions of _ops."""

from torch import nn
from torch.nn import functional as F

from .. import _args
from ._ops import avg_pool2d, conv2d, conv2d_avgpool, global_avg_pool2d, max_pool2d


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d on fastconv's kernels, with an optional fused activation.

    padding_mode "reflect", "replicate" or "circular" pads the input with torch's
    F.pad, as torch.nn.Conv2d does, then runs a convolution without padding: the same
    values and, through F.pad's own backward, the same gradients. padding may then also
    be "same" with any stride (the Keras split, computed for each input's size).

    precision: fastconv.conv2d's (None: PyTorch's default, read at each call).
    forward(input, residual=None): residual, of the output's shape, is added before the
    activation (a ResNet block's last convolution and its skip add)."""

    precision = None  # what a module pickled before precision= existed reads

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None, *, activation=None, precision=None):
        activation = _args.activation_name("Conv2d", activation)
        _args.precision("Conv2d", precision)
        if isinstance(padding, str):
            padding = _args.padding_string("Conv2d", padding)
        strided_same = padding == "same" and _args.pair("Conv2d", "stride", stride, 1) != (1, 1)
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         0 if strided_same else padding, dilation, groups, bias, padding_mode,
                         device, dtype)
        if strided_same:
            self.padding = "same"
        self.activation, self.precision = activation, precision

    def extra_repr(self):
        s = super().extra_repr()
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s if self.precision is None else f"{s}, precision={self.precision!r}"

    def _border(self, input):
        """F.pad's (left, right, top, bottom) for this input under padding_mode."""
        (top, bottom), (left, right) = _args.explicit_padding(
            "Conv2d", self.padding, tuple(input.shape[-2:]), self.kernel_size,
            _args.pair("Conv2d", "stride", self.stride, 1),
            _args.pair("Conv2d", "dilation", self.dilation, 1))
        return left, right, top, bottom

    def forward(self, input, residual=None):
        padding = self.padding
        if self.padding_mode != "zeros":
            input, padding = F.pad(input, self._border(input), mode=self.padding_mode), 0
        return conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation,
                      self.groups, activation=self.activation, residual=residual,
                      precision=self.precision)


class Conv2dAvgPool2d(Conv2d):
    """The LeNet-5 block: Conv2d (with its fused activation) followed by AvgPool2d(pool),
    as one op. Its parameters and state_dict are the Conv2d's, so a model whose conv and
    pool are replaced by this block (and an Identity) loads the same weights."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None, *, activation=None, pool=2, precision=None):
        if padding_mode != "zeros":
            raise ValueError(f"Conv2dAvgPool2d: padding_mode must be 'zeros' (the block pads "
                             f"with zeros inside its kernel), got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype, activation=activation,
                         precision=precision)
        self.pool = _args.pair("Conv2dAvgPool2d", "pool", pool, 1)

    @classmethod
    def from_modules(cls, conv, pool_size, activation=None):
        """The block computing `conv` then an average pool of window = stride =
        pool_size; it shares conv's parameters (no copy). activation overrides conv's."""
        block = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    device="meta", activation=activation or getattr(conv, "activation", None),
                    pool=pool_size, precision=getattr(conv, "precision", None))
        block.weight, block.bias = conv.weight, conv.bias
        return block

    def extra_repr(self):
        return f"{super().extra_repr()}, pool={self.pool}"

    def forward(self, input):
        return conv2d_avgpool(input, self.weight, self.bias, self.stride, self.padding,
                              self.dilation, self.groups, activation=self.activation,
                              pool=self.pool, precision=self.precision)


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


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d(1), the global average pool, on fastconv's kernel:
    (N, C, H, W) -> (N, C, 1, 1), unbatched (C, H, W) -> (C, 1, 1). Other output
    sizes are refused (fastconv has no adaptive pool with several windows)."""

    def __init__(self, output_size):
        if output_size not in (1, (1,), (1, 1), [1], [1, 1]):
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be 1 (the global average "
                             f"pool fastconv implements), got {output_size!r}")
        super().__init__(output_size)

    def forward(self, input):
        return global_avg_pool2d(input)[..., None, None]


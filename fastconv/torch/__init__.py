"""fastconv's kernels as PyTorch operators and modules, with autograd.

    import fastconv.torch as fct
    model = nn.Sequential(fct.Conv2d(1, 6, 5, padding="same", activation="tanh"),
                          fct.AvgPool2d(2), ...)

The ops are registered with torch.library (namespace `fastconv`: conv2d, conv2d_backward,
activation_backward, conv2d_avgpool, conv2d_avgpool_backward, max_pool2d,
max_pool2d_backward, avg_pool2d, avg_pool2d_backward, sobel, filter2d), each with a
fake (meta) implementation for torch.compile and an autograd formula that calls
fastconv's backward kernels. CPU tensors run on the C++ backend, CUDA tensors on the GPU
backend, on PyTorch's current stream. float32 everywhere, float64 on the CPU; conv2d's
forward also float16 / bfloat16 on the GPU. Under torch.autocast, float16 / bfloat16
inputs are computed in float32 and give float32 results (there are no half-precision
backward kernels); outside it the other ops refuse them. conv2d, conv2d_avgpool and
Conv2d take precision= (fastconv.conv2d's: None follows torch.backends.cudnn.allow_tf32,
read at each call); conv2d and Conv2d.forward a residual added before the activation.

The modules subclass their torch.nn namesakes: the constructor arguments, parameters,
initialisation and state_dict are torch.nn's, so a model swaps them in and loads the
same weights. What differs:
  - Conv2d takes `activation=None | "relu" | "tanh" | "sigmoid"`, fused into the kernel,
    and accepts padding="same" with any stride (Keras' rule: the odd pixel of padding
    at the bottom / right), where torch.nn.Conv2d refuses a strided "same";
    padding_mode "reflect" / "replicate" / "circular" pad with F.pad first, as
    torch.nn.Conv2d does.
  - AdaptiveAvgPool2d takes output_size 1 only (the global average pool).
  - Unbatched (C, H, W) inputs and empty batches work as in torch (README, "Every
    input torch accepts").
  - sobel and filter2d are differentiable (filter2d in its kernel too); their backward
    passes are torch ops, the adjoints of the filters and of the border modes
    (_filters.py says how).

The LeNet-5 block, a convolution with its activation followed by an average pool whose
window is its stride, runs as one op (one kernel on the GPU): explicitly as
Conv2dAvgPool2d (the Conv2d's parameters and state_dict, plus pool=), or found in an
existing model by fuse(model), which returns a torch.fx GraphModule with every such
Conv2d -> [Tanh/ReLU/Sigmoid] -> AvgPool2d chain replaced by a block sharing the
Conv2d's parameters.
Tensors of any memory format are accepted. A channels_last tensor runs the NHWC kernels
on its own memory (no copy) and gets a channels_last result (the LeNet-5 block excepted:
it copies to NCHW); other strided tensors are copied to NCHW.

The package's seams: _ops (the registered convolution and pooling ops and their
differentiable functions), _filters (sobel and filter2d),
modules (the torch.nn modules), rewrite (convert and fuse: rewriting existing models).
"""

from ._ops import (_conv_conf, avg_pool2d, conv2d, conv2d_avgpool,  # noqa: F401
                   global_avg_pool2d, max_pool2d)
from ._filters import filter2d, sobel
from .rewrite import ConversionReport, convert, fuse
from .modules import AdaptiveAvgPool2d, AvgPool2d, Conv2d, Conv2dAvgPool2d, MaxPool2d

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "ConversionReport", "Conv2d", "Conv2dAvgPool2d",
           "MaxPool2d", "avg_pool2d", "conv2d", "conv2d_avgpool", "convert", "filter2d", "fuse",
           "global_avg_pool2d", "max_pool2d", "sobel"]

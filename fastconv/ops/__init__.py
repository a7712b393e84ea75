"""The public ops: validate -> pick the backend from the arrays -> call the binding.

Every function here follows the same three steps and computes nothing itself:
  1. _arrays.Arrays checks that the inputs share a library, a device and a dtype;
  2. _args turns the arguments into the op's params dict and output shape, raising
     ValueError / TypeError that name the argument before any kernel runs;
  3. the output is allocated through the caller's library and the binding's kernel
     fills it, on the caller's stream.

The ops live in modules along their seams (conv: conv2d and the LeNet-5 block; pool:
pooling; filters: sobel, filter2d, conv1d; _common: what they share); this package
gathers their names, public and those fastconv.torch calls.
"""

from ._common import _channels_last, _nchw_weight_grad, add_batch, drop_batch  # noqa: F401
from .conv import (_activation_backward, _conv2d, _conv2d_avgpool, conv2d,  # noqa: F401
                   conv2d_avgpool, conv2d_avgpool_backward, conv2d_backward)
from .filters import IMAGE_CPU_DTYPES, IMAGE_GPU_DTYPES, conv1d, filter2d, sobel  # noqa: F401
from .pool import (_avg_pool2d, _global_avg_pool2d, _max_pool2d,  # noqa: F401
                   _max_pool2d_backward, avg_pool2d, avg_pool2d_backward, global_avg_pool2d,
                   global_avg_pool2d_backward, max_pool2d, max_pool2d_backward)

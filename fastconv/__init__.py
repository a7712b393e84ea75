"""fastconv: hand-written convolution, pooling and Sobel kernels for NVIDIA GPUs and
the CPU, checked against a float64 NumPy reference (fastconv.reference).

The arrays choose the backend: NumPy arrays (and PyTorch CPU tensors) run on the C++
CPU backend, CuPy arrays and PyTorch CUDA tensors on the CUDA backend, on the caller's
current stream. See the README for the semantics of every op.
"""

from . import reference
from .ops import (
    avg_pool2d,
    avg_pool2d_backward,
    conv1d,
    conv2d,
    conv2d_avgpool,
    conv2d_avgpool_backward,
    conv2d_backward,
    filter2d,
    global_avg_pool2d,
    global_avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    sobel,
)

__version__ = "0.1.0"


def cuda_available():
    """True when the CUDA backend was built and a CUDA device can run it."""
    return cuda_unavailable_reason() is None


def cuda_unavailable_reason():
    """Why the CUDA backend cannot run here (not built, not loadable, the driver's
    error, no device), or None where it can. `fastconv info` prints it."""
    try:
        from . import _cuda
    except ImportError as e:
        return f"the CUDA backend is not built or does not load ({e})"
    count, error = _cuda.device_status()
    if error:
        return f"the CUDA driver says {error}"
    return None if count > 0 else "no CUDA device on this machine"


def empty_cache():
    """Frees the memory the CPU backend keeps between calls: the cached blocks of outputs
    the caller has dropped, and each thread's kernel scratch (im2col, Winograd, packing).
    Returns the bytes freed. Arrays still alive are not touched."""
    from . import _cpu

    return int(_cpu.empty_cache())


def cpu_memory():
    """What the CPU backend holds between calls, in bytes: `output_cache_bytes` (blocks of
    dropped outputs kept for the next call's output; at most `output_cache_limit`, set with
    FASTCONV_CPU_CACHE_MIB, default a sixteenth of the machine's or the container's memory
    within 256 MiB to 4 GiB, 0 for none) and `scratch_bytes` (kernel scratch, all threads),
    with the cache's block count, hits and misses."""
    from . import _cpu

    return dict(_cpu.memory())


def conv2d_variants(backend="cpu"):
    """The conv2d kernel variants of a backend ("cpu" or "cuda"), for `variant=`."""
    if backend == "cpu":
        from . import _cpu as module
    elif backend == "cuda":
        from . import _cuda as module
    else:
        raise ValueError(f"conv2d_variants: backend must be 'cpu' or 'cuda', got {backend!r}")
    return tuple(module.conv2d_variants)


__all__ = [
    "avg_pool2d", "avg_pool2d_backward", "conv1d", "conv2d", "conv2d_avgpool",
    "conv2d_avgpool_backward", "conv2d_backward", "conv2d_variants", "cpu_memory",
    "cuda_available", "cuda_unavailable_reason", "empty_cache", "filter2d", "global_avg_pool2d",
    "global_avg_pool2d_backward", "max_pool2d", "max_pool2d_backward", "reference", "sobel",
]

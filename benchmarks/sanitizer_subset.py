"""A small call of every GPU kernel, for compute-sanitizer (memcheck, racecheck,
synccheck, initcheck) to watch.

Run by gpu_check.py as `compute-sanitizer --tool memcheck python benchmarks/sanitizer_subset.py`.
Shapes are odd and small so every boundary path runs and the sanitizer finishes quickly.
CuPy's memory pool is switched off here and gpu_check.py runs this with PyTorch's
caching allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING=1): inside a pool an overrun lands
in the pool's own slack (CuPy rounds to 512 bytes) and memcheck cannot see it.
The last line printed is the completion line gpu_check.py requires: a crash before the
end leaves it out. `--cpu` runs the same calls on NumPy arrays (the dry run's stand-in).
"""

import sys

import numpy as np

import fastconv

ON_GPU = "--cpu" not in sys.argv[1:]
if ON_GPU:
    import cupy as xp

    xp.cuda.set_allocator(None)
    xp.cuda.set_pinned_memory_allocator(None)
    from fastconv import _cuda as module
else:
    xp = np
    from fastconv import _cpu as module

rng = np.random.default_rng(0)


def arr(*shape):
    return xp.asarray(rng.standard_normal(shape).astype(np.float32))


for layout in ("NCHW", "NHWC"):
    for variant in module.conv2d_variants:
        groups = 3 if variant == "depthwise" else 1
        stride = 1 if variant.startswith("winograd") else 2  # the CPU's Winograd: stride 1 only
        x = arr(2, 3, 11, 9) if layout == "NCHW" else arr(2, 11, 9, 3)
        w = arr(6, 3 // groups, 3, 3) if layout == "NCHW" else arr(3, 3, 3 // groups, 6)
        b = arr(6)
        y = fastconv.conv2d(x, w, b, stride=stride, padding="same", groups=groups,
                            activation="tanh", layout=layout, variant=variant)
        fastconv.conv2d_backward(xp.ones_like(y), x, w, stride=stride, padding="same",
                                 groups=groups, activation="tanh", output=y, layout=layout,
                                 variant=variant)
    # The split-K grad weight: N * P * Q = 3200 pixels, two splits of 2048 and a ragged
    # last one, partials in scratch taken from the caller's allocator.
    x = arr(2, 3, 40, 40) if layout == "NCHW" else arr(2, 40, 40, 3)
    w = arr(6, 3, 3, 3) if layout == "NCHW" else arr(3, 3, 3, 6)
    variant = "implicit_gemm" if ON_GPU else "gemm"
    y = fastconv.conv2d(x, w, padding=1, layout=layout, variant=variant)
    fastconv.conv2d_backward(xp.ones_like(y), x, w, padding=1, layout=layout, variant=variant)
    # The grad-input GEMM past one tile each way: 70 channels (two channel tiles), 20
    # filters (two slices a tap), 2 x 9 x 8 = 144 pixels a stride phase (three pixel
    # tiles, the last ragged), the four phases of a 3x3 / stride 2 / pad 1 layer holding
    # 1, 2, 2 and 4 taps.
    x = arr(2, 70, 17, 15) if layout == "NCHW" else arr(2, 17, 15, 70)
    w = arr(20, 70, 3, 3) if layout == "NCHW" else arr(3, 3, 70, 20)
    y = fastconv.conv2d(x, w, stride=2, padding=1, layout=layout)
    fastconv.conv2d_backward(xp.ones_like(y), x, w, stride=2, padding=1, layout=layout,
                             variant=variant, output_mask=(True, False, False))
    x = arr(2, 3, 13, 10) if layout == "NCHW" else arr(2, 13, 10, 3)
    y, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True, layout=layout)
    fastconv.max_pool2d_backward(xp.ones_like(y), x, 3, 2, 1, indices=idx, layout=layout)
    y = fastconv.avg_pool2d(x, 2, padding="same", layout=layout)
    fastconv.avg_pool2d_backward(xp.ones_like(y), x, 2, padding="same", layout=layout)
    g = fastconv.global_avg_pool2d(x, layout=layout)
    fastconv.global_avg_pool2d_backward(xp.ones_like(g), x, layout=layout)
    for mode in ("reflect", "constant", "wrap"):
        fastconv.sobel(x, None, mode, layout=layout)
        fastconv.filter2d(x, arr(5, 3), mode, layout=layout)
    # The 2x2 / stride 2 vector paths (even sides; W % 4 in NCHW, C % 4 in NHWC).
    x = arr(2, 4, 10, 12) if layout == "NCHW" else arr(2, 10, 12, 4)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True, layout=layout)
    fastconv.max_pool2d_backward(xp.ones_like(y), x, 2, indices=idx, layout=layout)
    y = fastconv.avg_pool2d(x, 2, layout=layout)
    fastconv.avg_pool2d_backward(xp.ones_like(y), x, 2, layout=layout)
    # The LeNet-5 block, fused and composed, and its backward.
    x = arr(3, 2, 15, 13) if layout == "NCHW" else arr(3, 15, 13, 2)
    w = arr(5, 2, 5, 5) if layout == "NCHW" else arr(5, 5, 2, 5)
    for variant in module.conv2d_avgpool_variants:
        if variant in ("depthwise", "blocked", "winograd2", "winograd4"):  # 5x5 here
            continue
        for keep in (False, True):
            out = fastconv.conv2d_avgpool(x, w, arr(5), padding="same", activation="tanh",
                                          layout=layout, variant=variant, return_activation=keep)
    y, act = out
    fastconv.conv2d_avgpool_backward(xp.ones_like(y), x, w, padding="same", activation="tanh",
                                     activation_output=act, layout=layout)
# Sobel's 4-pixel rows and the tiled filter2d over planes of several tiles.
img = arr(2, 37, 150)
fastconv.sobel(img)
fastconv.sobel(xp.asarray(rng.integers(0, 256, (37, 150)).astype(np.uint8)), 0)
for kh, kw in ((3, 3), (7, 7), (2, 6)):
    fastconv.filter2d(img, arr(kh, kw), "reflect")
fastconv.conv1d(arr(3, 101), arr(7))

# The PyTorch path (DLPack pointers, torch's allocator, autograd through the registered
# ops; the max-pool backward trusts the forward's own indices).
try:
    import torch
except ImportError:
    torch = None
if torch is not None and (torch.cuda.is_available() or not ON_GPU):
    import fastconv.torch as fct

    dev = "cuda" if ON_GPU else "cpu"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 13, 11, generator=g).to(dev).requires_grad_()
    conv = fct.Conv2d(3, 5, 3, padding=1).to(dev)
    pool = fct.MaxPool2d(3, 2, 1)
    pool(conv(x).tanh()).sum().backward()
    fct.avg_pool2d(x, 2).sum().backward()
    if ON_GPU:
        torch.cuda.synchronize()

if ON_GPU:
    xp.cuda.Device().synchronize()
print("sanitizer subset done", flush=True)

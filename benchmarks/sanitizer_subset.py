"""A small call of every GPU kernel, for compute-sanitizer (memcheck, racecheck) to watch.

Run by gpu_check.py as `compute-sanitizer --tool memcheck python benchmarks/sanitizer_subset.py`.
Shapes are odd and small so every boundary path runs and the sanitizer finishes quickly.
"""

import cupy as cp
import numpy as np

import fastconv

rng = np.random.default_rng(0)


def arr(*shape):
    return cp.asarray(rng.standard_normal(shape).astype(np.float32))


for layout in ("NCHW", "NHWC"):
    for variant in fastconv.conv2d_variants("cuda"):
        groups = 3 if variant == "depthwise" else 1
        x = arr(2, 3, 11, 9) if layout == "NCHW" else arr(2, 11, 9, 3)
        w = arr(6, 3 // groups, 3, 3) if layout == "NCHW" else arr(3, 3, 3 // groups, 6)
        b = arr(6)
        y = fastconv.conv2d(x, w, b, stride=2, padding="same", groups=groups, activation="tanh",
                            layout=layout, variant=variant)
        fastconv.conv2d_backward(cp.ones_like(y), x, w, stride=2, padding="same", groups=groups,
                                 activation="tanh", output=y, layout=layout, variant=variant)
    x = arr(2, 3, 13, 10) if layout == "NCHW" else arr(2, 13, 10, 3)
    y, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True, layout=layout)
    fastconv.max_pool2d_backward(cp.ones_like(y), x, 3, 2, 1, indices=idx, layout=layout)
    y = fastconv.avg_pool2d(x, 2, padding="same", layout=layout)
    fastconv.avg_pool2d_backward(cp.ones_like(y), x, 2, padding="same", layout=layout)
    g = fastconv.global_avg_pool2d(x, layout=layout)
    fastconv.global_avg_pool2d_backward(cp.ones_like(g), x, layout=layout)
    for mode in ("reflect", "constant", "wrap"):
        fastconv.sobel(x, None, mode, layout=layout)
        fastconv.filter2d(x, arr(5, 3), mode, layout=layout)
    # The 2x2 / stride 2 vector paths (even sides; W % 4 in NCHW, C % 4 in NHWC).
    x = arr(2, 4, 10, 12) if layout == "NCHW" else arr(2, 10, 12, 4)
    for kind in ("max", "avg"):
        if kind == "max":
            y, idx = fastconv.max_pool2d(x, 2, return_indices=True, layout=layout)
            fastconv.max_pool2d_backward(cp.ones_like(y), x, 2, indices=idx, layout=layout)
        else:
            y = fastconv.avg_pool2d(x, 2, layout=layout)
            fastconv.avg_pool2d_backward(cp.ones_like(y), x, 2, layout=layout)
    # The LeNet-5 block, fused and composed, and its backward.
    x = arr(3, 2, 15, 13) if layout == "NCHW" else arr(3, 15, 13, 2)
    w = arr(5, 2, 5, 5) if layout == "NCHW" else arr(5, 5, 2, 5)
    for variant in ("fused", "direct", "implicit_gemm"):
        for keep in (False, True):
            out = fastconv.conv2d_avgpool(x, w, arr(5), padding="same", activation="tanh",
                                          layout=layout, variant=variant, return_activation=keep)
    y, act = out
    fastconv.conv2d_avgpool_backward(cp.ones_like(y), x, w, padding="same", activation="tanh",
                                     activation_output=act, layout=layout)
# Sobel's 4-pixel rows and the tiled filter2d over planes of several tiles.
img = arr(2, 37, 150)
fastconv.sobel(img)
fastconv.sobel(cp.asarray(rng.integers(0, 256, (37, 150)).astype(np.uint8)), 0)
for kh, kw in ((3, 3), (7, 7), (2, 6)):
    fastconv.filter2d(img, arr(kh, kw), "reflect")
fastconv.conv1d(arr(3, 101), arr(7))
cp.cuda.Device().synchronize()
print("sanitizer subset done")

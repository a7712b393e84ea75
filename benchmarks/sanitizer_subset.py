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
fastconv.conv1d(arr(3, 101), arr(7))
cp.cuda.Device().synchronize()
print("sanitizer subset done")

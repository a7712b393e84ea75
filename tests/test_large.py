"""Tensors of more than 2^31 elements: indices past 32 bits must not wrap around.

A 46342 x 46342 float32 image has 2,147,580,964 elements (8.6 GB): the last rows sit
past element 2^31. Everything but a tail block is zero; the tail holds random values,
and the outputs over it are compared with the reference run on the tail alone.
GPU cases always run where a GPU is present; the CPU case needs ~17 GB of memory and
runs only with FASTCONV_BIG_TESTS=1.
"""

import os

import numpy as np
import pytest

import fastconv
from fastconv import reference as ref
from conftest import HAS_GPU, gpu, to_numpy

SIDE = 46342  # SIDE**2 > 2**31
TAIL = 8


def big_image(backend):
    rng = np.random.default_rng(0)
    tail = rng.standard_normal((TAIL, TAIL)).astype(np.float32)
    if backend == "cpu":
        x = np.zeros((1, 1, SIDE, SIDE), np.float32)
    else:
        import cupy

        x = cupy.zeros((1, 1, SIDE, SIDE), cupy.float32)
        tail_dev = cupy.asarray(tail)
    x[0, 0, -TAIL:, -TAIL:] = tail if backend == "cpu" else tail_dev
    return x, tail


BIG = [
    pytest.param("cpu", marks=pytest.mark.skipif(os.environ.get("FASTCONV_BIG_TESTS") != "1",
                                                 reason="needs ~17 GB; set FASTCONV_BIG_TESTS=1")),
    pytest.param("cupy", marks=[gpu, pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")]),
]


@pytest.mark.parametrize("backend", BIG)
def test_pooling_past_2_31(backend):
    x, tail = big_image(backend)
    assert x.size > 2**31
    y = fastconv.max_pool2d(x, 2)
    expect = ref.max_pool2d(tail[None, None], 2)[0, 0]
    np.testing.assert_array_equal(to_numpy(y[0, 0, -TAIL // 2:, -TAIL // 2:]), expect)
    del y
    g = to_numpy(fastconv.global_avg_pool2d(x))
    np.testing.assert_allclose(g[0, 0], tail.astype(np.float64).sum() / x.size, rtol=1e-4)


@pytest.mark.parametrize("backend", BIG)
def test_sobel_past_2_31(backend):
    x, tail = big_image(backend)
    y = fastconv.sobel(x[0, 0], mode="nearest")
    got = to_numpy(y[-TAIL + 1:, -TAIL + 1:])
    # Away from the block's top / left edge, where the real image continues with zeros.
    block = np.zeros((TAIL + 2, TAIL + 2))
    block[2:, 2:] = tail
    expect = ref.sobel(block, mode="nearest")[3:, 3:]
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)

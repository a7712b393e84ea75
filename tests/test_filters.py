"""sobel, filter2d and conv1d on every backend against fastconv.reference (which
tests/test_reference.py checks against scipy.ndimage)."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv
from fastconv import reference as ref
from conftest import BACKENDS, assert_close, dtypes_for, random, small_ints, to_backend, to_numpy

MODES = ["reflect", "mirror", "nearest", "constant", "wrap"]
SIZES = st.sampled_from([1, 2, 3, 4, 7, 13, 31])


def cases():
    return [pytest.param(b.values[0], dt, id=f"{b.values[0]}-{dt}", marks=b.marks)
            for b in BACKENDS for dt in dtypes_for(b.values[0])]


@st.composite
def images(draw):
    H, W = draw(SIZES), draw(SIZES)
    kind = draw(st.sampled_from(["2d", "3d", "NCHW", "NHWC"]))
    if kind == "2d":
        return (H, W), "NCHW"
    if kind == "3d":
        return (draw(st.integers(1, 3)), H, W), "NCHW"
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return ((N, C, H, W) if kind == "NCHW" else (N, H, W, C)), kind


@pytest.mark.parametrize("backend,dtype", cases())
@given(img=images(), mode=st.sampled_from(MODES), axis=st.sampled_from([None, 0, 1, -1, -2]),
       seed=st.integers(0, 2**32 - 1))
def test_sobel(backend, dtype, img, mode, axis, seed):
    shape, layout = img
    x = random(np.random.default_rng(seed), shape, dtype)
    out = fastconv.sobel(to_backend(x, backend), axis, mode, cval=0.75, layout=layout)
    assert_close(out, ref.sobel(x, axis, mode, cval=0.75, layout=layout), dtype,
                 f"sobel {shape} {layout} {mode} axis={axis}")


@pytest.mark.parametrize("backend,dtype", cases())
@given(img=images(), mode=st.sampled_from(MODES), kh=st.integers(1, 7), kw=st.integers(1, 7),
       seed=st.integers(0, 2**32 - 1))
def test_filter2d(backend, dtype, img, mode, kh, kw, seed):
    shape, layout = img
    rng = np.random.default_rng(seed)
    x, k = random(rng, shape, dtype), random(rng, (kh, kw), dtype)
    out = fastconv.filter2d(to_backend(x, backend), to_backend(k, backend), mode, cval=-1.5,
                            layout=layout)
    assert_close(out, ref.filter2d(x, k, mode, cval=-1.5, layout=layout), dtype,
                 f"filter2d {shape} {layout} {mode} {kh}x{kw}")


@pytest.mark.parametrize("backend", [pytest.param(b.values[0], id=b.values[0], marks=b.marks)
                                     for b in BACKENDS])
@given(img=images(), mode=st.sampled_from(MODES), axis=st.sampled_from([None, 0, 1]),
       k=st.tuples(st.integers(1, 7), st.integers(1, 7)), seed=st.integers(0, 2**32 - 1))
def test_uint8_images(backend, img, mode, axis, k, seed):
    """8-bit images (photographs) are filtered in float32: float32 out, the derivatives
    exact (integer sums), the magnitude and filter2d within float32 rounding."""
    shape, layout = img
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    x64 = x.astype(np.float64)
    out = fastconv.sobel(to_backend(x, backend), axis, mode, cval=7.0, layout=layout)
    assert to_numpy(out).dtype == np.float32
    want = ref.sobel(x64, axis, mode, cval=7.0, layout=layout)
    if axis is None:
        assert_close(out, want, "float32", f"uint8 sobel {shape} {layout} {mode}")
    else:
        np.testing.assert_array_equal(to_numpy(out), want)
    kern = random(rng, k, "float32")
    out = fastconv.filter2d(to_backend(x, backend), to_backend(kern, backend), mode, cval=-2.0,
                            layout=layout)
    assert to_numpy(out).dtype == np.float32
    assert_close(out, ref.filter2d(x64, kern, mode, cval=-2.0, layout=layout), "float32",
                 f"uint8 filter2d {shape} {layout} {mode} {k}")


def test_uint8_image_takes_a_float32_kernel():
    x = np.zeros((5, 5), np.uint8)
    with pytest.raises(TypeError, match="uint8 image takes a float32 kernel"):
        fastconv.filter2d(x, np.ones((3, 3)))
    with pytest.raises(TypeError, match="uint8"):
        fastconv.conv2d(np.zeros((1, 1, 5, 5), np.uint8), np.zeros((1, 1, 3, 3), np.uint8))


@pytest.mark.parametrize("backend,dtype", cases())
@pytest.mark.parametrize("mode", MODES)
def test_sobel_exact_on_integers(backend, dtype, mode):
    x = small_ints(np.random.default_rng(4), (3, 17, 23), dtype, -100, 100)
    for axis in (0, 1):
        out = fastconv.sobel(to_backend(x, backend), axis, mode, cval=3.0)
        np.testing.assert_array_equal(to_numpy(out), ref.sobel(x, axis, mode, cval=3.0))


@pytest.mark.parametrize("backend,dtype", cases())
@given(m=st.integers(1, 300), n=st.integers(1, 40), batch=st.sampled_from([None, 1, 3]),
       seed=st.integers(0, 2**32 - 1))
def test_conv1d(backend, dtype, m, n, batch, seed):
    n = min(n, m)
    rng = np.random.default_rng(seed)
    s = random(rng, (m,) if batch is None else (batch, m), dtype)
    w = random(rng, (n,), dtype)
    # As test_conv2d's guard: a float32 sum errs by about eps32 * sum |terms|, so a draw
    # whose few outputs cancel to under 1/50 of their terms (seen: m = n = 28, one output,
    # 1.66e-5) tests the data, not the kernel; the integer test below checks every index.
    assume(np.linalg.norm(ref.conv1d(np.abs(s), np.abs(w))) <= 50 * np.linalg.norm(ref.conv1d(s, w)))
    assert_close(fastconv.conv1d(to_backend(s, backend), to_backend(w, backend)),
                 ref.conv1d(s, w), dtype, f"conv1d m={m} n={n}")


@pytest.mark.parametrize("backend,dtype", cases())
@pytest.mark.parametrize("m,n,batch", [(1, 1, None), (28, 28, None), (97, 7, 3), (300, 40, 1),
                                       (13, 5, None)])
def test_conv1d_exact_on_integers(backend, dtype, m, n, batch):
    rng = np.random.default_rng(m * n)
    s = small_ints(rng, (m,) if batch is None else (batch, m), dtype, -8, 8)
    w = small_ints(rng, (n,), dtype, -8, 8)
    out = to_numpy(fastconv.conv1d(to_backend(s, backend), to_backend(w, backend)))
    np.testing.assert_array_equal(out, ref.conv1d(s, w))


def test_conv1d_course_example():
    """The course notes' convolve on a worked example."""
    s = np.array([1.0, 2, 3, 4, 5])
    w = np.array([1.0, 0, -1])
    np.testing.assert_array_equal(fastconv.conv1d(s, w), [-2.0, -2.0, -2.0])


def test_course_edge_kernels_are_sobel():
    """The course's contour kernels are the Sobel derivatives: filter2d with them equals sobel."""
    rng = np.random.default_rng(8)
    x = random(rng, (19, 23))
    horizontal = np.array([[-1.0, -2, -1], [0, 0, 0], [1, 2, 1]])
    np.testing.assert_allclose(fastconv.filter2d(x, horizontal), fastconv.sobel(x, axis=0),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fastconv.filter2d(x, horizontal.T), fastconv.sobel(x, axis=1),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,dtype", cases())
def test_nan_reaches_every_output_that_reads_it(backend, dtype):
    x = random(np.random.default_rng(1), (11, 12), dtype)
    x[5, 6] = np.nan
    mag = to_numpy(fastconv.sobel(to_backend(x, backend)))
    # The 3x3 block around it, less its centre: neither derivative reads the centre
    # pixel of its own axis (scipy.ndimage.sobel's [-1, 0, 1] skips it too).
    expect = np.zeros_like(x, dtype=bool)
    expect[4:7, 5:8] = True
    expect[5, 6] = False
    np.testing.assert_array_equal(np.isnan(mag), expect)
    np.testing.assert_array_equal(np.isnan(ref.sobel(x)), expect)
    k = random(np.random.default_rng(2), (3, 5), dtype)
    out = to_numpy(fastconv.filter2d(to_backend(x, backend), to_backend(k, backend)))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref.filter2d(x, k)))


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("backend,dtype", cases())
def test_sobel_rows_of_every_alignment(backend, dtype, aligned):
    """Widths around the GPU's 4-pixel row groups (interior groups with vector stores
    where W % 4 == 0, scalar stores elsewhere, border groups at both ends), through an
    aligned and a misaligned image, uint8 too."""
    from conftest import misaligned

    rng = np.random.default_rng(4)
    put = (lambda a: to_backend(a, backend)) if aligned else (lambda a: misaligned(a, backend))
    for shape in ((2, 3, 9, 32), (5, 6, 13), (17, 64), (2, 1, 7, 10), (3, 11)):
        x = random(rng, shape, dtype)
        for axis in (None, 0, 1):
            assert_close(fastconv.sobel(put(x), axis, "reflect"), ref.sobel(x, axis, "reflect"),
                         dtype, f"sobel {shape} axis={axis}")
        u8 = rng.integers(0, 256, shape).astype(np.uint8)
        assert_close(fastconv.sobel(put(u8), None, "nearest"), ref.sobel(u8, None, "nearest"),
                     "float32", f"sobel uint8 {shape}")


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("backend,dtype", cases())
def test_filter2d_planes_of_several_tiles(backend, dtype, aligned):
    """Planes larger than the GPU's 16 x 64 filter2d tile, with every filter size class:
    up to 7 x 7 (the tiled kernel), wider (the generic one), even sizes (off-centre)."""
    from conftest import misaligned

    rng = np.random.default_rng(8)
    put = (lambda a: to_backend(a, backend)) if aligned else (lambda a: misaligned(a, backend))
    for shape in ((2, 37, 150), (1, 2, 33, 128)):
        x = random(rng, shape, dtype)
        for kh, kw in ((3, 3), (7, 7), (1, 7), (6, 2), (9, 3)):
            k = random(rng, (kh, kw), dtype)
            for mode in ("reflect", "constant"):
                out = fastconv.filter2d(put(x), to_backend(k, backend), mode, cval=0.5)
                assert_close(out, ref.filter2d(x, k, mode, cval=0.5), dtype,
                             f"filter2d {shape} {kh}x{kw} {mode}")

"""Pooling forward and backward on every backend and layout against fastconv.reference."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv
from fastconv import reference as ref
from conftest import BACKENDS, assert_close, dtypes_for, random, to_backend, to_numpy

SIZES = st.sampled_from([1, 2, 3, 4, 5, 7, 8, 13, 17])
LAYOUTS = ["NCHW", "NHWC"]


def cases():
    return [pytest.param(b.values[0], dt, id=f"{b.values[0]}-{dt}", marks=b.marks)
            for b in BACKENDS for dt in dtypes_for(b.values[0])]


@st.composite
def pool_configs(draw, kind):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = draw(st.sampled_from([1, 1, 2, (1, 2)])) if kind == "max" else 1
    d = (dil, dil) if isinstance(dil, int) else dil
    padding = draw(st.one_of(
        st.tuples(st.integers(0, (d[0] * (kh - 1) + 1) // 2), st.integers(0, (d[1] * (kw - 1) + 1) // 2)),
        st.sampled_from(["valid", "same"])))
    cfg = dict(kernel_size=(kh, kw), stride=draw(st.one_of(st.none(), st.integers(1, 3),
                                                           st.tuples(st.integers(1, 3), st.integers(1, 3)))),
               padding=padding, ceil_mode=draw(st.booleans()))
    if kind == "max":
        cfg["dilation"] = dil
    else:
        cfg["count_include_pad"] = draw(st.booleans())
        cfg["divisor_override"] = draw(st.sampled_from([None, None, 3]))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(SIZES), draw(SIZES))
    x = np.zeros(shape)
    try:
        y = (ref.max_pool2d if kind == "max" else ref.avg_pool2d)(x, **cfg)
    except ValueError:
        assume(False)
    assume(min(y.shape) >= 1)
    return shape, cfg


def nhwc(a, layout):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend,dtype", cases())
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_max_pool(backend, dtype, layout, data, seed):
    shape, cfg = data.draw(pool_configs("max"))
    rng = np.random.default_rng(seed)
    x = nhwc(random(rng, shape, dtype), layout)
    y_ref, i_ref = ref.max_pool2d(x, **cfg, return_indices=True, layout=layout)
    y, idx = fastconv.max_pool2d(to_backend(x, backend), **cfg, return_indices=True, layout=layout)
    assert_close(y, y_ref, dtype, f"max_pool2d {cfg}")
    np.testing.assert_array_equal(to_numpy(idx), i_ref)
    # Without indices the CPU takes another path (whole rows at a time): same values.
    y_only = fastconv.max_pool2d(to_backend(x, backend), **cfg, layout=layout)
    np.testing.assert_array_equal(to_numpy(y_only), to_numpy(y))
    dy = random(rng, y_ref.shape, dtype)
    dx_ref = ref.max_pool2d_backward(dy, x, **cfg, layout=layout)
    for indices in (None, idx):
        dx = fastconv.max_pool2d_backward(to_backend(dy, backend), to_backend(x, backend), **cfg,
                                          indices=indices, layout=layout)
        assert_close(dx, dx_ref, dtype, f"max_pool2d_backward {cfg}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend,dtype", cases())
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_avg_pool(backend, dtype, layout, data, seed):
    shape, cfg = data.draw(pool_configs("avg"))
    rng = np.random.default_rng(seed)
    x = nhwc(random(rng, shape, dtype), layout)
    y_ref = ref.avg_pool2d(x, **cfg, layout=layout)
    assert_close(fastconv.avg_pool2d(to_backend(x, backend), **cfg, layout=layout), y_ref, dtype,
                 f"avg_pool2d {cfg}")
    dy = random(rng, y_ref.shape, dtype)
    dx = fastconv.avg_pool2d_backward(to_backend(dy, backend), to_backend(x, backend), **cfg,
                                      layout=layout)
    assert_close(dx, ref.avg_pool2d_backward(dy, x, **cfg, layout=layout), dtype,
                 f"avg_pool2d_backward {cfg}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend,dtype", cases())
# (2, 1100, 9, 15), NHWC: channel chunks of 512, 512 and 76 (pool.cpp, kMeanChunk), 128-wide
# register blocks and a scalar tail, and 135 rows in runs of 64.
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 7), (3, 5, 13, 4), (1, 64, 9, 11),
                                   (2, 3, 5, 5), (1, 2, 67, 65), (2, 1100, 9, 15), (1, 300, 5, 3)])
def test_global_avg_pool(backend, dtype, layout, shape):
    rng = np.random.default_rng(5)
    x = nhwc(random(rng, shape, dtype), layout)
    assert_close(fastconv.global_avg_pool2d(to_backend(x, backend), layout=layout),
                 ref.global_avg_pool2d(x, layout=layout), dtype, "global_avg_pool2d")
    dy = random(rng, shape[:2], dtype)
    assert_close(fastconv.global_avg_pool2d_backward(to_backend(dy, backend), to_backend(x, backend),
                                                     layout=layout),
                 ref.global_avg_pool2d_backward(dy, x, layout=layout), dtype,
                 "global_avg_pool2d_backward")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend,dtype", cases())
def test_named_pools(backend, dtype, layout):
    """The benchmark shapes, shrunk: ResNet stem max 3x3/s2/p1, LeNet avg 2x2, exact on integers."""
    rng = np.random.default_rng(9)
    x = nhwc(rng.integers(-50, 50, (2, 3, 29, 31)).astype(dtype), layout)
    y = fastconv.max_pool2d(to_backend(x, backend), 3, 2, 1, layout=layout)
    np.testing.assert_array_equal(to_numpy(y), ref.max_pool2d(x, 3, 2, 1, layout=layout))
    y = fastconv.avg_pool2d(to_backend(x, backend), 2, layout=layout)
    np.testing.assert_array_equal(to_numpy(y), ref.avg_pool2d(x, 2, layout=layout))


# A 3x2 window, stride (2, 1), padding (1, 2), dilation (1, 4) over 3 columns: output
# column 1 taps columns -1 and 3, padding alone (-inf, index -1); columns 0 and 2 read
# input columns 2 and 0.
NAN_EMPTY = dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 4))


@pytest.mark.parametrize("indices", [False, True], ids=["values", "indices"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend,dtype", cases())
def test_max_pool_nan_and_empty_windows(backend, dtype, layout, indices):
    """On each path (NCHW / NHWC, with / without indices): NaN wins over any number, the
    last NaN met gives the index, and a window of padding alone gives -inf and index -1,
    in every channel, the last one included."""
    rng = np.random.default_rng(4)
    x = random(rng, (2, 5, 7, 3), dtype)
    x[0, 4, 2, 0] = np.nan                    # the last channel
    x[1, 0, 3, 2] = x[1, 0, 4, 2] = np.nan    # two in one window: (4, 2) is met last
    x[1, 2, 0, 0] = np.nan
    x = nhwc(x, layout)
    y_ref, i_ref = ref.max_pool2d(x, **NAN_EMPTY, return_indices=True, layout=layout)
    assert np.isnan(y_ref).any() and (i_ref == -1).any() and (i_ref >= 0).any()
    out = fastconv.max_pool2d(to_backend(x, backend), **NAN_EMPTY, return_indices=indices,
                              layout=layout)
    np.testing.assert_array_equal(to_numpy(out[0] if indices else out), y_ref)
    dy = random(rng, y_ref.shape, dtype)
    dx_ref = ref.max_pool2d_backward(dy, x, **NAN_EMPTY, layout=layout)
    if indices:
        np.testing.assert_array_equal(to_numpy(out[1]), i_ref)
    dx = fastconv.max_pool2d_backward(to_backend(dy, backend), to_backend(x, backend),
                                      **NAN_EMPTY, indices=out[1] if indices else None,
                                      layout=layout)
    assert_close(dx, dx_ref, dtype, "max_pool2d_backward, NaN and empty windows")


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include-pad", "exclude-pad"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend,dtype", cases())
def test_avg_pool_ceil_mode_last_window(backend, dtype, layout, count_include_pad):
    """ceil_mode's extra last window hangs past the padding: 8 rows and 10 columns, 3x3
    windows moved by 2, padding 1: the last windows start at row 7 and column 9 and end
    one past the padded input. PyTorch's divisor counts the padding they cover, not the
    overhang (with count_include_pad), or the pixels alone (without)."""
    rng = np.random.default_rng(8)
    x = nhwc(random(rng, (2, 3, 8, 10), dtype), layout)
    cfg = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
               count_include_pad=count_include_pad)
    y_ref = ref.avg_pool2d(x, **cfg, layout=layout)
    assert (y_ref.shape[1:3] if layout == "NHWC" else y_ref.shape[2:]) == (5, 6)
    assert_close(fastconv.avg_pool2d(to_backend(x, backend), **cfg, layout=layout), y_ref, dtype,
                 "avg_pool2d, ceil_mode")
    dy = random(rng, y_ref.shape, dtype)
    assert_close(fastconv.avg_pool2d_backward(to_backend(dy, backend), to_backend(x, backend),
                                              **cfg, layout=layout),
                 ref.avg_pool2d_backward(dy, x, **cfg, layout=layout), dtype,
                 "avg_pool2d_backward, ceil_mode")


@pytest.mark.parametrize("backend,dtype", cases())
def test_max_pool_propagates_nan(backend, dtype):
    rng = np.random.default_rng(2)
    x = random(rng, (1, 2, 9, 9), dtype)
    x[0, 1, 3, 3] = np.nan
    y = to_numpy(fastconv.max_pool2d(to_backend(x, backend), 3, 2, 1))
    expect = ref.max_pool2d(x, 3, 2, 1)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expect))
    assert np.isnan(y).sum() == 4  # the four windows that contain (3, 3)


# (C, H, W) on each side of the GPU's 16-byte 2x2 path: even sides with W % 4 == 0
# (NCHW) and C % 4 == 0 (NHWC); W and C = 2 mod 4; odd sides.
# "rows": 18 outputs a row, the CPU's NCHW grad input in whole steps of 8 (avx512) and 4
# (avx2) and a part one.
SHAPES_2X2 = {"vector": (8, 10, 12), "mod4=2": (6, 10, 14), "odd": (5, 11, 13), "rows": (4, 7, 37)}


@pytest.mark.parametrize("shape", sorted(SHAPES_2X2))
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend,dtype", cases())
def test_2x2_stride_2_shapes(backend, dtype, layout, aligned, shape):
    """The large-tensor case the GPU runs with 16-byte vector paths (2x2 windows moved by
    2, even sides, W % 4 == 0 in NCHW, C % 4 == 0 in NHWC), shapes just off it, and the
    same shapes through a misaligned input, which the generic kernels take: max with
    indices and NaN / -inf, average with and without divisor_override, both backwards."""
    from conftest import misaligned

    rng = np.random.default_rng(11)
    x = random(rng, (3, *SHAPES_2X2[shape]), dtype)
    x[0, 1, 2, 3], x[1, 2, 5, 5] = np.nan, -np.inf
    x[2, 3, 4:6, 6:8] = -np.inf  # a whole window of -inf: index -1, as the reference
    x = nhwc(x, layout)
    put = (lambda a: to_backend(a, backend)) if aligned else (lambda a: misaligned(a, backend))
    xb = put(x)
    y, idx = fastconv.max_pool2d(xb, 2, return_indices=True, layout=layout)
    y_ref, idx_ref = ref.max_pool2d(x, 2, return_indices=True, layout=layout)
    np.testing.assert_array_equal(to_numpy(y), y_ref)
    np.testing.assert_array_equal(to_numpy(idx), idx_ref)
    dy = random(rng, y_ref.shape, dtype)
    dx = fastconv.max_pool2d_backward(put(dy), xb, 2, indices=idx, layout=layout)
    assert_close(dx, ref.max_pool2d_backward(dy, x, 2, layout=layout), dtype, "max 2x2 backward")
    for divisor in (None, 3):
        y = fastconv.avg_pool2d(xb, 2, divisor_override=divisor, layout=layout)
        y_ref = ref.avg_pool2d(x, 2, divisor_override=divisor, layout=layout)
        finite = np.isfinite(y_ref)
        np.testing.assert_array_equal(np.isfinite(to_numpy(y)), finite)
        assert_close(to_numpy(y)[finite], y_ref[finite], dtype, "avg 2x2")
        dx = fastconv.avg_pool2d_backward(put(dy), xb, 2, divisor_override=divisor, layout=layout)
        assert_close(dx, ref.avg_pool2d_backward(dy, x, 2, divisor_override=divisor, layout=layout),
                     dtype, "avg 2x2 backward")


# Windows that tile the image take their own paths on the CPU (pool.cpp): the grad input
# where they tile it exactly (avg_pool_bwd: each dx row written once from its output row),
# the NHWC forward with under 16 channels wherever they fit (avg_nhwc_tiles_row: whole
# input rows, unused last rows and columns allowed): window widths 3, 2, 1 and 2, heights
# 3, 2, 4 and 2; 15 channels: the most that path takes.
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend,dtype", cases())
@pytest.mark.parametrize("shape,kernel", [((2, 3, 9, 12), (3, 3)), ((1, 5, 8, 9), (2, 3)),
                                          ((2, 2, 8, 5), (4, 1)), ((2, 15, 11, 9), (2, 2))])
def test_avg_pool_where_windows_tile_the_image(backend, dtype, layout, shape, kernel):
    rng = np.random.default_rng(17)
    x = nhwc(random(rng, shape, dtype), layout)
    y_ref = ref.avg_pool2d(x, kernel, kernel, layout=layout)
    assert_close(fastconv.avg_pool2d(to_backend(x, backend), kernel, kernel, layout=layout), y_ref,
                 dtype, f"avg_pool2d {kernel}")
    dy = random(rng, y_ref.shape, dtype)
    dx = fastconv.avg_pool2d_backward(to_backend(dy, backend), to_backend(x, backend), kernel, kernel,
                                      layout=layout)
    assert_close(dx, ref.avg_pool2d_backward(dy, x, kernel, kernel, layout=layout), dtype,
                 f"avg_pool2d_backward {kernel}")

"""fastconv/_shapes.py must agree with csrc/common/shapes.h (the index math both
backends run), checked through fastconv._cpu.shapes on many values."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from fastconv import _cpu, _shapes

small = st.integers(1, 40)


@given(size=small, k=st.integers(1, 9), stride=st.integers(1, 5), pb=st.integers(0, 4),
       pe=st.integers(0, 4), dil=st.integers(1, 3), ceil_mode=st.booleans())
def test_output_sizes(size, k, stride, pb, pe, dil, ceil_mode):
    assert _shapes.conv_out_size(size, k, stride, pb, pe, dil) == \
        _cpu.shapes.conv_out_size(size, k, stride, pb, pe, dil)
    assert _shapes.pool_out_size(size, k, stride, pb, pe, dil, ceil_mode) == \
        _cpu.shapes.pool_out_size(size, k, stride, pb, pe, dil, ceil_mode)
    assert _shapes.same_out_size(size, stride) == _cpu.shapes.same_out_size(size, stride)
    assert _shapes.same_pad_begin(size, k, stride, dil) == _cpu.shapes.same_pad_begin(size, k, stride, dil)
    assert _shapes.same_pad_total(size, k, stride, dil) == _cpu.shapes.same_pad_total(size, k, stride, dil)


def test_output_sizes_on_a_grid():
    """The same as test_output_sizes, on every small case (no draw to miss one)."""
    for size, k, stride, pb, pe, dil in itertools.product(range(1, 14), range(1, 7), range(1, 4),
                                                          range(3), range(3), range(1, 3)):
        case = (size, k, stride, pb, pe, dil)
        assert _shapes.conv_out_size(*case) == _cpu.shapes.conv_out_size(*case), case
        for ceil_mode in (False, True):
            assert _shapes.pool_out_size(*case, ceil_mode) == \
                _cpu.shapes.pool_out_size(*case, ceil_mode), (case, ceil_mode)
        for f in ("same_pad_begin", "same_pad_total"):
            assert getattr(_shapes, f)(size, k, stride, dil) == \
                getattr(_cpu.shapes, f)(size, k, stride, dil), (f, case)


def test_border_index_all_modes():
    for mode, n, i in itertools.product(range(5), range(1, 7), range(-20, 21)):
        assert _shapes.border_index(i, n, mode) == _cpu.shapes.border_index(i, n, mode), (mode, n, i)


def test_border_index1_is_border_index_within_one_sample():
    """Sobel's border map (every tap within one sample of the line, no far path)."""
    for mode, n in itertools.product(range(5), range(1, 9)):
        for i in range(-1, n + 1):
            assert _cpu.shapes.border_index1(i, n, mode) == _shapes.border_index(i, n, mode), (mode, n, i)


@given(i=st.integers(0, 40), k=st.integers(1, 7), stride=st.integers(1, 4), pad=st.integers(0, 3),
       dil=st.integers(1, 3), out=st.integers(1, 30), off=st.integers(-10, 10), size=small)
def test_loop_bounds(i, k, stride, pad, dil, out, off, size):
    assert _shapes.first_out_reaching(i, k, stride, pad, dil) == \
        _cpu.shapes.first_out_reaching(i, k, stride, pad, dil)
    assert _shapes.last_out_reaching(i, stride, pad, out) == _cpu.shapes.last_out_reaching(i, stride, pad, out)
    assert _shapes.valid_out_begin(off, stride) == _cpu.shapes.valid_out_begin(off, stride)
    assert _shapes.valid_out_end(off, stride, size, out) == _cpu.shapes.valid_out_end(off, stride, size, out)


@given(size=small, k=st.integers(1, 7), stride=st.integers(1, 4), pad=st.integers(0, 3),
       dil=st.integers(1, 3))
def test_outputs_reaching_an_input_are_exactly_those_whose_windows_cover_it(size, k, stride, pad, dil):
    """The backward passes' gather bounds, against brute force over every output."""
    out = _shapes.conv_out_size(size, k, stride, pad, pad, dil)
    for i in range(size):
        covering = [o for o in range(out)
                    if any(o * stride - pad + t * dil == i for t in range(k))]
        lo = _shapes.first_out_reaching(i, k, stride, pad, dil)
        hi = _shapes.last_out_reaching(i, stride, pad, out)
        assert all(lo <= o < hi for o in covering)
        assert hi - lo <= _shapes.ceil_div(_shapes.dilated_extent(k, dil), stride)  # a short range


def test_same_padding_matches_keras_rule():
    # Keras: out = ceil(in / stride); total padding puts the odd pixel at the end.
    assert _shapes.same_out_size(28, 1) == 28 and _shapes.same_pad_begin(28, 5, 1, 1) == 2
    assert _shapes.same_pad_total(10, 4, 3, 2) == 6 and _shapes.same_pad_begin(10, 4, 3, 2) == 3
    assert _shapes.same_pad_total(7, 1, 2, 1) == 0

"""The Python mirror of csrc/common/shapes.h: the same formulas, line for line.

The Python layer uses these to check arguments and size outputs before any kernel
runs; tests/test_shapes.py checks every function here against the C++ header through
fastconv._cpu.shapes on many values, so the two cannot drift apart.
"""

BORDER_MODES = ("reflect", "mirror", "nearest", "constant", "wrap")  # Border enum order


def floor_div(a, b):
    return a // b


def ceil_div(a, b):
    return -((-a) // b)


def dilated_extent(k, dil):
    return dil * (k - 1) + 1


def conv_out_size(size, k, stride, pad_begin, pad_end, dil):
    span = size + pad_begin + pad_end - dilated_extent(k, dil)
    return 0 if span < 0 else span // stride + 1


def pool_out_size(size, k, stride, pad_begin, pad_end, dil, ceil_mode):
    span = size + pad_begin + pad_end - dilated_extent(k, dil)
    out = (ceil_div(span, stride) if ceil_mode else floor_div(span, stride)) + 1
    if ceil_mode and out > 0 and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return max(out, 0)


def same_out_size(size, stride):
    return ceil_div(size, stride)


def same_pad_total(size, k, stride, dil):
    total = (same_out_size(size, stride) - 1) * stride + dilated_extent(k, dil) - size
    return max(total, 0)


def same_pad_begin(size, k, stride, dil):
    return same_pad_total(size, k, stride, dil) // 2


def border_index(i, n, mode):
    """mode is an index into BORDER_MODES; -1 means the constant value."""
    if 0 <= i < n:
        return i
    name = BORDER_MODES[mode]
    if name == "reflect":
        j = i % (2 * n)
        return j if j < n else 2 * n - 1 - j
    if name == "mirror":
        if n == 1:
            return 0
        j = i % (2 * n - 2)
        return j if j < n else 2 * n - 2 - j
    if name == "nearest":
        return 0 if i < 0 else n - 1
    if name == "wrap":
        return i % n
    return -1


def valid_out_begin(off, stride):
    return max(ceil_div(-off, stride), 0)


def valid_out_end(off, stride, size, out):
    return max(min(ceil_div(size - off, stride), out), valid_out_begin(off, stride))


def first_out_reaching(i, k, stride, pad, dil):
    return max(ceil_div(i + pad - dilated_extent(k, dil) + 1, stride), 0)


def last_out_reaching(i, stride, pad, out):
    return min(floor_div(i + pad, stride) + 1, out)


# csrc/common/winograd.h


def winograd_applies(R, S, stride_h, stride_w, dil_h, dil_w):
    return R == 3 and S == 3 and stride_h == 1 and stride_w == 1 and dil_h == 1 and dil_w == 1

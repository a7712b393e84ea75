"""float16 and bfloat16 on the GPU: conv2d's forward (the tensor-core implicit GEMM, float32
accumulation, one rounding to the type) with bias and residual in the same type; every
other op and variant refuses them from Python with the op, the variant and the dtype
named. The dispatch is tested everywhere through a recording stand-in for the binding
(conftest.fake_gpu); the arithmetic on a GPU."""

import numpy as np
import pytest

import fastconv
from fastconv import reference as ref
from conftest import HAS_GPU, gpu, random, to_backend, to_numpy
from test_errors import raises

# ----------------------------------------------------------------------- the dispatch


def _conv_arrays(dtype, layout="NCHW", lib="numpy"):
    rng = np.random.default_rng(0)
    x, w = random(rng, (2, 3, 7, 6), "float32"), random(rng, (4, 3, 3, 3), "float32")
    b, r = random(rng, (4,), "float32"), random(rng, (2, 4, 5, 4), "float32")
    if layout == "NHWC":
        x, w, r = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), r.transpose(0, 2, 3, 1)
    arrays = [np.ascontiguousarray(a) for a in (x, w, b, r)]
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return [torch.from_numpy(a).to(getattr(torch, dtype)) for a in arrays]
    return [a.astype(dtype) for a in arrays]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("lib,dtype", [("numpy", "float16"), ("torch", "float16"),
                                       ("torch", "bfloat16")])
def test_half_conv2d_reaches_the_binding_in_its_dtype(fake_gpu, lib, dtype, layout):
    x, w, b, r = _conv_arrays(dtype, layout, lib)
    y = fastconv.conv2d(x, w, b, activation="relu", residual=r, layout=layout,
                        variant="implicit_gemm")
    ((params, variant, dtype_, device, stream, *ptrs),) = [a for n, a in fake_gpu.calls
                                                           if n == "conv2d_fwd"]
    assert (variant, dtype_, device) == ("implicit_gemm", dtype, 0)
    address = (lambda a: a.data_ptr()) if lib == "torch" else (lambda a: a.ctypes.data)
    assert ptrs == [address(x), address(w), address(b), address(y), address(r)]
    assert str(y.dtype).endswith(dtype) and tuple(y.shape) == tuple(r.shape)
    assert params["act"] == 1 and params["layout"] == (layout == "NHWC")


OTHER_VARIANTS = ["direct", "depthwise"]


@pytest.mark.parametrize("variant", OTHER_VARIANTS)
def test_half_takes_the_tensor_core_variants_only(fake_gpu, variant):
    x, w, b, r = _conv_arrays("float16")
    with raises(ValueError, "conv2d", f"variant {variant!r}", "no float16 kernel",
                "'auto' or 'implicit_gemm'"):
        fastconv.conv2d(x, w, b, variant=variant)
    assert not fake_gpu.calls


def _other_ops(dtype):
    """Every op but conv2d's forward, on float16 (or bfloat16) arrays of fitting shapes."""
    x, w, b, r = _conv_arrays(dtype, lib="torch" if dtype == "bfloat16" else "numpy")
    dy, pooled, seq = r, r[:, :, :2, :2], x[0, 0, 0]
    return {
        "conv2d_backward": lambda: fastconv.conv2d_backward(dy, x, w),
        "conv2d_avgpool": lambda: fastconv.conv2d_avgpool(x, w, b),
        "conv2d_avgpool_backward": lambda: fastconv.conv2d_avgpool_backward(pooled, x, w),
        "max_pool2d": lambda: fastconv.max_pool2d(x, 2),
        "max_pool2d_backward": lambda: fastconv.max_pool2d_backward(x[:, :, :3, :3], x, 2),
        "avg_pool2d": lambda: fastconv.avg_pool2d(x, 2),
        "avg_pool2d_backward": lambda: fastconv.avg_pool2d_backward(x[:, :, :3, :3], x, 2),
        "global_avg_pool2d": lambda: fastconv.global_avg_pool2d(x),
        "global_avg_pool2d_backward": lambda: fastconv.global_avg_pool2d_backward(
            x[:, :, 0, 0], x),
        "sobel": lambda: fastconv.sobel(x),
        "filter2d": lambda: fastconv.filter2d(x, w[0, 0]),
        "conv1d": lambda: fastconv.conv1d(seq, seq[:3]),
    }


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("op", sorted(_other_ops("float16")))
def test_ops_without_a_half_kernel_refuse_it_from_python(fake_gpu, op, dtype):
    with raises(ValueError, f"{op}: the GPU backend has no {dtype} kernel for {op}",
                "conv2d's forward only", "float32"):
        _other_ops(dtype)[op]()
    assert not fake_gpu.calls


def test_half_arrays_of_mixed_dtypes_name_the_argument(fake_gpu):
    x, w, b, r = _conv_arrays("float16")
    with raises(TypeError, "conv2d", "residual has dtype float32", "input has dtype float16"):
        fastconv.conv2d(x, w, b, residual=r.astype(np.float32))
    with raises(TypeError, "conv2d", "bias has dtype float32"):
        fastconv.conv2d(x, w, b.astype(np.float32))


def test_the_cpu_refuses_half_and_says_the_gpu_takes_it():
    x, w, b, r = _conv_arrays("float16")
    with raises(TypeError, "conv2d: the CPU backend takes float32 or float64 arrays",
                "got float16", "the GPU backend takes float16"):
        fastconv.conv2d(x, w, b)
    with pytest.raises(TypeError, match="max_pool2d: the CPU backend takes float32 or float64 "
                                        r"arrays, got float16$"):
        fastconv.max_pool2d(x, 2)
    xt, wt, bt, _ = _conv_arrays("bfloat16", lib="torch")
    with raises(TypeError, "got bfloat16", "the GPU backend takes bfloat16"):
        fastconv.conv2d(xt, wt, bt)


# ----------------------------------------------------------------------- on a GPU

HALF = [pytest.param(lib, dtype, id=f"{lib}-{dtype}",
                     marks=[gpu, pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")])
        for lib, dtype in (("cupy", "float16"), ("torch-cuda", "float16"),
                           ("torch-cuda", "bfloat16"))]
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


def bfloat16(a):
    """a rounded to bfloat16 (to nearest, ties to even) as float64; a's values must be
    exact in float32 (the card rounds its float32 accumulator once)."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def rounded(a, dtype):
    """a rounded once to dtype, as float64."""
    if dtype == "bfloat16":
        return bfloat16(a)
    return np.asarray(a, np.float64).astype(np.float16).astype(np.float64)


def test_bfloat16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    r = np.concatenate([random(np.random.default_rng(1), 5000, "float32"),
                        np.float32([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8), 0.0])])
    want = torch.from_numpy(r).to(torch.bfloat16).double().numpy()
    np.testing.assert_array_equal(bfloat16(r), want)


def on_gpu(a, backend, dtype):
    if dtype == "bfloat16":  # NumPy has no bfloat16: through torch's float32
        torch = pytest.importorskip("torch")
        return torch.from_numpy(np.ascontiguousarray(a, np.float32)).cuda().to(torch.bfloat16)
    return to_backend(a, backend, dtype)


def values(out, dtype):
    assert str(out.dtype).endswith(dtype), f"output dtype {out.dtype}, not {dtype}"
    return to_numpy(out.float() if hasattr(out, "float") else out).astype(np.float64)


CFG = dict(N=2, C=13, K=37, H=11, W=9)  # 3x3, padding 1: the output is 11x9 too


def _half_inputs(layout, rng, gen, dtype):
    N, C, K, H, W = (CFG[k] for k in "NCKHW")
    x, w, b, r = (rounded(gen(rng, s), dtype) for s in
                  ((N, C, H, W), (K, C, 3, 3), (K,), (N, K, H, W)))
    if layout == "NHWC":
        x, w, r = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), r.transpose(0, 2, 3, 1)
    return [np.ascontiguousarray(a) for a in (x, w, b, r)]


def _run(backend, dtype, layout, variant, activation, x, w, b, r):
    return fastconv.conv2d(*(on_gpu(a, backend, dtype) for a in (x, w, b)), padding=1,
                           activation=activation, residual=on_gpu(r, backend, dtype),
                           layout=layout, variant=variant)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("variant", ["auto", "implicit_gemm"])
@pytest.mark.parametrize("backend,dtype", HALF)
def test_half_forward_exact_on_small_integers(backend, dtype, variant, layout):
    """Integers in [-8, 7]: exact in both types, their products and float32 sums exact,
    so the result is the exact sum rounded once to the type (bfloat16 holds integers
    exactly only to 256: larger sums round, and must round as the type rounds)."""
    rng = np.random.default_rng(2)
    x, w, b, r = _half_inputs(layout, rng, lambda g, s: g.integers(-8, 8, s), dtype)
    out = _run(backend, dtype, layout, variant, None, x, w, b, r)
    expect = ref.conv2d(x, w, b, padding=1, layout=layout, residual=r)
    np.testing.assert_array_equal(values(out, dtype), rounded(expect, dtype))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
@pytest.mark.parametrize("backend,dtype", HALF)
def test_half_forward_matches_reference(backend, dtype, activation, layout):
    """Random half-valued inputs against the reference on those values: each output
    within one rounding to the type (u |y|), plus the float32 accumulation's error
    (bounded by 2^-16 of the sum of |terms|; the activation does not enlarge it), plus
    float16's subnormal spacing."""
    rng = np.random.default_rng(3)
    x, w, b, r = _half_inputs(layout, rng, lambda g, s: g.standard_normal(s), dtype)
    out = values(_run(backend, dtype, layout, "auto", activation, x, w, b, r), dtype)
    expect = ref.conv2d(x, w, b, padding=1, activation=activation, layout=layout, residual=r)
    terms = ref.conv2d(np.abs(x), np.abs(w), np.abs(b), padding=1, layout=layout,
                       residual=np.abs(r))
    u = UNIT_ROUNDOFF[dtype]
    bound = u * np.abs(expect) + 2.0 ** -16 * terms + 2.0 ** -24
    assert not np.isnan(out).any()
    excess = np.abs(out - expect) - bound
    assert excess.max() <= 0, f"{dtype}: off by {np.abs(out - expect).ravel()[excess.argmax()]:.3g}"

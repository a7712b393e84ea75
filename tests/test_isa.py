"""The CPU backend's ISA paths (csrc/cpu/isa.h): avx512, avx2, portable.

FASTCONV_CPU_ISA is read once, when fastconv._cpu loads, so each path runs in a child
process of its own (python -c "import test_isa; test_isa.child(...)") that checks
_cpu.isa() names it, then runs everything with ISA-specific code on that path against the
float64 reference: the GEMM (csrc/cpu/gemm.cpp) on ragged shapes around each path's tile
and blocks, the gemm and blocked convolution variants forward (with a residual) and
backward with the fused tanh / sigmoid epilogue, and NCHW max / average / global average pooling. A path
this CPU lacks is skipped by name. The rest of the suite runs on whichever path the
environment gives: `FASTCONV_CPU_ISA=avx2 python -m pytest` reruns it all on avx2.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import _cpu

PATHS = ("avx512", "avx2", "portable")
NEEDS = {"avx512": "avx512f, avx512bw, avx512vl, avx512dq, avx2 and fma", "avx2": "avx2 and fma"}


def run_child(isa, code, timeout=600):
    env = dict(os.environ, FASTCONV_CPU_ISA=isa, OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


def require(isa):
    if isa not in _cpu.supported_isas():
        pytest.skip(f"the {isa} path needs {NEEDS[isa]}, which this CPU lacks")


# ------------------------------------------------------------------ GEMM shapes
# (M, N, K) around both tiles (avx2 / portable 6 x 16 floats, 6 x 8 doubles; avx512
# 14 x 32 floats, 14 x 16 doubles) and blocks (KC 256 / 192; MC 144 / 336 floats; NC 4080 /
# 4096 floats): M below, at and past MR and past MC; N narrower than one vector, between
# one and two, past NC; K of one, odd, just past KC and past 2 KC.
GEMM_SHAPES = [
    (1, 1, 1), (5, 7, 3), (13, 17, 191), (14, 32, 192), (15, 33, 193), (6, 16, 256),
    (7, 47, 257), (16, 100, 150), (29, 31, 385), (43, 9, 520), (349, 37, 23), (150, 70, 64),
    (3, 4133, 5), (20, 4500, 9),
]


def check_gemm(rng, dtype, M, N, K, trans_a, trans_b, beta, integer):
    """One call on a C with a guard row and guard columns; NaN in C where beta is 0."""
    draw = ((lambda s: rng.integers(-3, 4, s).astype(dtype)) if integer
            else (lambda s: rng.standard_normal(s).astype(dtype)))
    A = draw((K, M) if trans_a else (M, K))
    B = draw((N, K) if trans_b else (K, N))
    lda, ldb, ldc = A.shape[1], B.shape[1], N + 5
    C0 = draw((M + 1, ldc))
    C = C0.copy()
    if beta == 0:
        C[:M, :N] = np.nan  # never read: a read shows as NaN in the result
    _cpu.gemm(trans_a, trans_b, M, N, K, dtype, A.ctypes.data, lda, B.ctypes.data, ldb, beta,
              C.ctypes.data, ldc)
    opA = (A.T if trans_a else A).astype(np.float64)
    opB = (B.T if trans_b else B).astype(np.float64)
    want = opA @ opB + beta * C0[:M, :N].astype(np.float64)
    what = f"gemm {dtype} M={M} N={N} K={K} trans_a={trans_a} trans_b={trans_b} beta={beta}"
    np.testing.assert_array_equal(C[:, N:], C0[:, N:], err_msg=f"{what}: wrote past column N")
    np.testing.assert_array_equal(C[M], C0[M], err_msg=f"{what}: wrote past row M")
    if integer:  # every float32 sum exact (|sum| < 2^24): equal element by element
        np.testing.assert_array_equal(C[:M, :N], want, err_msg=what)
    else:
        from conftest import assert_close
        assert_close(C[:M, :N], want, dtype, what)


# ------------------------------------------------------------------ convolutions
# NCHW blocked runs any K, in filter blocks past 24 (avx2: 16 filters) or 48 (avx512: 32): K 5
# (avx2 and avx512: 8 lanes), 9, 13 and 16 (avx2: two ymm; avx512: one zmm), 17 and 24 (avx2:
# three ymm; avx512: two zmm), 29 (avx2: blocks of 16 and 13), 40, 64 (avx2: four blocks; avx512:
# two of 32), 70 (avx2: five, the last of 6; avx512: three, the last of 6). Output widths leave
# partial pixel blocks; C*R*S is ragged for the GEMM's K.
CONV_SHAPES = [
    dict(N=2, C=3, K=5, H=11, W=13, R=3, S=3, stride=1, padding=1, dilation=1),
    dict(N=2, C=5, K=9, H=12, W=9, R=3, S=3, stride=1, padding=0, dilation=1),
    dict(N=3, C=2, K=13, H=9, W=17, R=3, S=2, stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    dict(N=1, C=4, K=16, H=14, W=14, R=5, S=5, stride=1, padding=0, dilation=1),
    dict(N=2, C=3, K=17, H=10, W=15, R=3, S=3, stride=1, padding="same", dilation=1),
    dict(N=9, C=2, K=24, H=7, W=9, R=2, S=3, stride=1, padding=1, dilation=1),
    dict(N=1, C=37, K=29, H=9, W=11, R=3, S=3, stride=1, padding=1, dilation=1),
    # The blocked kernels' block shapes on avx512: rows of two vectors of pixels (6 filters,
    # 30-pixel rows) and of one (11 filters, 12-pixel dilated rows); runs of 8 pixels for a
    # 7-pixel row (one zero column computed) and of 10 for a 29-pixel one (two zero columns);
    # many images (each thread its own) and one.
    dict(N=5, C=2, K=6, H=16, W=30, R=5, S=5, stride=1, padding=2, dilation=1),
    dict(N=3, C=3, K=11, H=9, W=12, R=3, S=3, stride=1, padding=(1, 2), dilation=(1, 2)),
    dict(N=2, C=2, K=12, H=8, W=7, R=3, S=3, stride=1, padding=1, dilation=1),
    dict(N=1, C=2, K=14, H=6, W=31, R=2, S=3, stride=1, padding=0, dilation=1),
    # Filter blocks: runs of stride 2 with the 7-tap loop unrolled (ResNet's conv1 shape),
    # blocks of stride 3 (avx512: three zmm), and 70 filters in a ResNet l2_3x3s2-like layer.
    dict(N=1, C=3, K=64, H=23, W=29, R=7, S=7, stride=2, padding=3, dilation=1),
    dict(N=3, C=2, K=40, H=10, W=17, R=3, S=2, stride=(1, 3), padding=1, dilation=1),
    dict(N=2, C=9, K=70, H=27, W=29, R=3, S=3, stride=2, padding=1, dilation=1),
    # One image's GEMM split by filters among the threads (conv2d_fwd.cpp, gemm_by_filters):
    # transposed, 70 filters in uneven parts (avx512 slivers of 32, avx2 of 16), and not
    # transposed (a 1600-pixel tile: rows of MR filters).
    dict(N=1, C=6, K=70, H=9, W=11, R=3, S=3, stride=1, padding=1, dilation=1),
    dict(N=1, C=2, K=70, H=40, W=40, R=3, S=3, stride=1, padding=0, dilation=1),
]

# Run with variant "auto": the grad input of a stride-1 layer with few input channels as the
# rowvec forward of dy (conv2d_bwd.cpp, bwd_data_rowvec), its filter rows that read dy's
# zero padding skipped: LeNet C2's shape (many images), C1's (one filter, 28-pixel rows: avx2
# four vectors), and one image whose rows the threads split into bands (each band's skipped
# rows its own).
AUTO_SHAPES = [
    dict(N=5, C=6, K=16, H=14, W=14, R=5, S=5, stride=1, padding=0, dilation=1),
    dict(N=4, C=1, K=6, H=28, W=28, R=5, S=5, stride=1, padding=2, dilation=1),
    dict(N=1, C=5, K=9, H=12, W=11, R=3, S=3, stride=1, padding=0, dilation=1),
]

# Depthwise, each of its kernels (conv2d_fwd.cpp), both layouts: 16 or 8 planes a block by channels
# (small planes: a 7x7 with 20 channels, a last part block; 28x28 with stride 2), rows in
# registers (stride 1 along the row: 83 columns, chunks and a tail; a multiplier of 2),
# the row loops (stride 2 on a larger plane).
DEPTHWISE_SHAPES = [
    dict(N=2, C=20, K=20, H=7, W=7, R=5, S=5, stride=1, padding=2, dilation=1, groups=20),
    dict(N=1, C=5, K=5, H=28, W=27, R=5, S=5, stride=2, padding=2, dilation=1, groups=5),
    dict(N=2, C=3, K=6, H=5, W=83, R=3, S=3, stride=1, padding=1, dilation=1, groups=3),
    dict(N=1, C=2, K=2, H=19, W=37, R=3, S=5, stride=(2, 1), padding=(1, 3), dilation=(1, 2),
         groups=2),
    dict(N=1, C=3, K=3, H=35, W=33, R=3, S=3, stride=2, padding=1, dilation=1, groups=3),
    # NHWC's channels in registers: 29 (avx512: 16, then 8, then 5 one by one) and 150
    # (chunks of four vectors, one of one, 6 one by one).
    dict(N=2, C=29, K=29, H=6, W=7, R=3, S=3, stride=1, padding=1, dilation=1, groups=29),
    dict(N=1, C=150, K=150, H=5, W=6, R=3, S=2, stride=(1, 2), padding=1, dilation=(2, 1),
         groups=150),
]


# 3x3 stride-1 layers for the Winograd variants: ragged tiles, more than 8 channels
# (the 8x8 transposes), and enough outputs that float F(4x4) runs in float.
WINOGRAD_SHAPES = [
    dict(N=2, C=11, K=9, H=13, W=17, R=3, S=3, stride=1, padding=1, dilation=1),
    dict(N=1, C=17, K=24, H=10, W=9, R=3, S=3, stride=1, padding=0, dilation=1),
    # Batch 1 split by filters among the threads (winograd.cpp, tiles_by_filters): 70 filters,
    # uneven slivers of the packed U.
    dict(N=1, C=5, K=70, H=11, W=9, R=3, S=3, stride=1, padding=1, dilation=1),
]


def check_conv(rng, dtype, layout, variant, cfg, activation):
    from fastconv import reference as ref
    from conftest import assert_close

    args = {k: cfg[k] for k in ("stride", "padding", "dilation")}
    args["groups"] = cfg.get("groups", 1)
    x = rng.standard_normal((cfg["N"], cfg["C"], cfg["H"], cfg["W"])).astype(dtype)
    w = rng.standard_normal((cfg["K"], cfg["C"] // args["groups"], cfg["R"], cfg["S"])).astype(dtype)
    b = rng.standard_normal(cfg["K"]).astype(dtype)
    if layout == "NHWC":
        x, w = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    what = f"conv2d {variant} {layout} {dtype} {activation} {cfg}"
    r = rng.standard_normal(ref.conv2d(x, w, **args, layout=layout).shape).astype(dtype)
    y = fastconv.conv2d(x, w, b, **args, activation=activation, residual=r, layout=layout,
                        variant=variant)
    want = ref.conv2d(x, w, b, **args, activation=activation, layout=layout, residual=r)
    assert_close(y, want, dtype, what)
    y = want.astype(dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = fastconv.conv2d_backward(dy, x, w, **args, activation=activation, output=y,
                                   layout=layout, variant=variant)
    want = ref.conv2d_backward(dy, x, w, **args, activation=activation, output=y, layout=layout)
    for g, e, name in zip(got, want, ("grad_input", "grad_weight", "grad_bias")):
        assert_close(g, e, dtype, f"{name} of {what}")


def check_pooling(rng, dtype):
    from fastconv import reference as ref
    from conftest import assert_close

    for (N, C, H, W), k, s, pad in [((2, 3, 13, 17), 3, 1, 1), ((1, 5, 16, 23), 2, 2, 0),
                                    ((2, 2, 19, 31), 3, 3, 1), ((1, 4, 9, 40), 4, 2, 2)]:
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        for op in ("max_pool2d", "avg_pool2d"):
            got = getattr(fastconv, op)(x, k, stride=s, padding=pad)
            assert_close(got, getattr(ref, op)(x, k, stride=s, padding=pad), dtype,
                         f"{op} {dtype} {x.shape} k={k} s={s} pad={pad}")
        xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # NHWC: few channels, tiling windows
        assert_close(fastconv.avg_pool2d(xt, k, stride=s, padding=pad, layout="NHWC"),
                     ref.avg_pool2d(xt, k, stride=s, padding=pad, layout="NHWC"), dtype,
                     f"avg_pool2d NHWC {dtype} {x.shape} k={k} s={s} pad={pad}")
    # What autograd runs, in both layouts: max with indices, and both backwards (the
    # NHWC row functions and the indexed NCHW rows have a build per path).
    # 150 channels: the NHWC gradient's whole blocks (128 on avx512, 64 on avx2), then a part
    # vector, then (avx2) single channels.
    # 3x3 / 2 / 1 over 69 columns: the NCHW AVX-512 rows' three whole steps and a part one;
    # over 32: 16 outputs, the last column their last one's right tap, in a step of its own.
    for (N, C, H, W), k, s, pad in [((2, 3, 13, 17), 3, 2, 1), ((1, 20, 16, 23), 2, 2, 0),
                                    ((2, 9, 11, 10), 3, 1, 1), ((1, 150, 9, 11), 3, 2, 1),
                                    ((1, 3, 8, 69), 3, 2, 1), ((1, 2, 6, 32), 3, 2, 1)]:
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        for layout in ("NCHW", "NHWC"):
            xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            what = f"{dtype} {layout} {x.shape} k={k} s={s} pad={pad}"
            y, idx = fastconv.max_pool2d(xl, k, s, pad, return_indices=True, layout=layout)
            y_ref, idx_ref = ref.max_pool2d(xl, k, s, pad, return_indices=True, layout=layout)
            assert_close(y, y_ref, dtype, f"max_pool2d with indices {what}")
            np.testing.assert_array_equal(idx, idx_ref, err_msg=f"indices {what}")
            dy = rng.standard_normal(y.shape).astype(dtype)
            assert_close(fastconv.max_pool2d_backward(dy, xl, k, s, pad, indices=idx, layout=layout),
                         ref.max_pool2d_backward(dy, xl, k, s, pad, layout=layout), dtype,
                         f"max_pool2d_backward {what}")
            for c in {0, C // 2, C - 1}:  # a block's channel, a part vector's, the last
                bad = idx.copy()  # one index k rows away from its own: outside the window
                where = (0, 1, 2, c) if layout == "NHWC" else (0, c, 1, 2)
                bad[where] += k * W if bad[where] + k * W < H * W else -k * W
                with pytest.raises(ValueError, match="outside their pooling windows"):
                    fastconv.max_pool2d_backward(dy, xl, k, s, pad, indices=bad, layout=layout)
            if (k, s, pad) == (3, 2, 1):
                # The pixels just before and after a row (output row 1's windows: rows 1-3;
                # after: where the last window ends in the padding, odd W), a negative index
                # other than -1, and one that names its own pixel once cut to 32 bits.
                Q = idx.shape[2 if layout == "NHWC" else 3]
                at = lambda ow: (0, 1, ow, 0) if layout == "NHWC" else (0, 0, 1, ow)
                cases = [(0, 2 * W - 1), (1, -2), (2, idx[at(2)] + 2**32)]
                cases += [(Q - 1, 3 * W)] if W % 2 else []
                for ow, value in cases:
                    bad = idx.copy()
                    bad[at(ow)] = value
                    with pytest.raises(ValueError, match="outside their pooling windows"):
                        fastconv.max_pool2d_backward(dy, xl, k, s, pad, indices=bad, layout=layout)
            dy = rng.standard_normal(fastconv.avg_pool2d(xl, k, s, pad, layout=layout).shape).astype(dtype)
            assert_close(fastconv.avg_pool2d_backward(dy, xl, k, s, pad, layout=layout),
                         ref.avg_pool2d_backward(dy, xl, k, s, pad, layout=layout), dtype,
                         f"avg_pool2d_backward {what}")
    for shape in [(3, 70, 7, 7), (1, 3, 67, 71)]:  # small planes (the AVX2 fold), and > 4096
        x = rng.standard_normal(shape).astype(dtype)
        assert_close(fastconv.global_avg_pool2d(x), ref.global_avg_pool2d(x), dtype,
                     f"global_avg_pool2d {dtype} {shape}")


def child(isa, seed):
    """Everything with ISA-specific code, on the path FASTCONV_CPU_ISA chose."""
    from fastconv import _arrays

    assert _cpu.isa() == isa, f"FASTCONV_CPU_ISA={isa} but _cpu.isa() says {_cpu.isa()}"
    _arrays.set_poison(True)  # every output fastconv allocates starts as NaN
    rng = np.random.default_rng(seed)
    for dtype in ("float32", "float64"):
        for M, N, K in GEMM_SHAPES:
            for trans_a in (False, True):
                for trans_b in (False, True):
                    for beta in (0.0, 1.0):
                        check_gemm(rng, dtype, M, N, K, trans_a, trans_b, beta, integer=False)
                    check_gemm(rng, dtype, M, N, K, trans_a, trans_b, 1.0, integer=True)
        for i, cfg in enumerate(CONV_SHAPES):
            for layout in ("NCHW", "NHWC"):
                for variant in ("gemm", "blocked"):
                    check_conv(rng, dtype, layout, variant, cfg, ("tanh", "sigmoid")[i % 2])
        for i, cfg in enumerate(AUTO_SHAPES):
            for layout in ("NCHW", "NHWC"):
                check_conv(rng, dtype, layout, "auto", cfg, ("tanh", "sigmoid")[i % 2])
        for i, cfg in enumerate(DEPTHWISE_SHAPES):
            for layout in ("NCHW", "NHWC"):
                check_conv(rng, dtype, layout, "depthwise", cfg, ("tanh", "sigmoid")[i % 2])
        for cfg in WINOGRAD_SHAPES:  # the GEMMs in the transformed domain, AVX2 transposes
            for layout in ("NCHW", "NHWC"):
                for variant in ("winograd2", "winograd4"):
                    check_conv(rng, dtype, layout, variant, cfg, "tanh")
        check_pooling(rng, dtype)
    print("ok", isa)


@pytest.mark.parametrize("isa", PATHS)
def test_each_path_against_the_reference(isa):
    require(isa)
    seed = int(np.random.default_rng().integers(2**31))
    out = run_child(isa, f"import test_isa; test_isa.child({isa!r}, {seed})")
    assert out.returncode == 0 and out.stdout.split()[-2:] == ["ok", isa], (
        f"FASTCONV_CPU_ISA={isa}, seed {seed}:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")


# ------------------------------------------------------------------ the variable itself

IMPORT = "from fastconv import _cpu; print(_cpu.isa())"


def test_unset_auto_and_empty_take_the_best_path():
    best = _cpu.supported_isas()[0]
    env = {k: v for k, v in os.environ.items() if k != "FASTCONV_CPU_ISA"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", IMPORT], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == [best], out.stderr
    for value in ("auto", "", " Auto "):
        out = run_child(value, IMPORT, timeout=120)
        assert out.returncode == 0 and out.stdout.split() == [best], (value, out.stderr)


def test_case_and_spaces_are_forgiven():
    out = run_child(" PORTABLE\n", IMPORT, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["portable"], out.stderr


def test_supported_paths_are_listed_best_first():
    have = _cpu.supported_isas()
    assert have[-1] == "portable" and list(have) == [p for p in PATHS if p in have]
    assert _cpu.isa() in have


@pytest.mark.parametrize("value", ["sse4", "avx-512", "avx2,fma", "native"])
def test_an_unknown_value_names_the_variable_the_choices_and_the_value(value):
    out = run_child(value, IMPORT, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: FASTCONV_CPU_ISA must be one of avx512, avx2, portable")
    assert f"got '{value}'" in last, last


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_a_path_the_cpu_lacks_is_refused(isa):
    if isa in _cpu.supported_isas():
        pytest.skip(f"this CPU has the {isa} path: the refusal can only be seen on one without it")
    out = run_child(isa, IMPORT, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert f"FASTCONV_CPU_ISA={isa} but this CPU lacks" in last, last


def test_fastconv_info_shows_the_path():
    out = run_child("portable", "from fastconv.cli import main; main(['info'])", timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if "CPU ISA" in l)
    assert line.split()[:4] == ["CPU", "ISA", "path:", "portable"], line
    assert ", ".join(_cpu.supported_isas()) in line, line
    out = run_child("sse4", "from fastconv.cli import main; main(['info'])", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "backend cpu   built but not loadable (FASTCONV_CPU_ISA must be one of" in out.stdout


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_bench_holds_pytorch_to_the_same_path(isa):
    # `fastconv bench --isa`: a comparison for a host without the wider units needs PyTorch's
    # ATen kernels and oneDNN held to that instruction set as well.
    require(isa)
    pytest.importorskip("torch")
    code = ("from fastconv import bench; bench.restrict_isa(%r); import torch; "
            "from fastconv import _cpu; print(_cpu.isa(), bench._peer_isa(torch))" % isa)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTCONV_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    aten = {"avx2": "AVX2", "portable": "DEFAULT"}[isa]
    assert out.stdout.split()[0] == isa and f"'aten': '{aten}'" in out.stdout, out.stdout
    # Too late once torch is loaded: refused, not silently mismatched.
    out = run_child(isa, "import torch; from fastconv import bench; bench.restrict_isa(%r)" % isa,
                    timeout=120)
    assert out.returncode != 0 and "torch is already imported" in out.stderr, out.stderr

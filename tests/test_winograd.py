"""csrc/common/winograd.h: its tables are the Toom-Cook matrices of the points it names,
its tile math covers every output exactly once, and fastconv/_shapes.py mirrors where it
applies. (Every Winograd variant runs against fastconv.reference in test_conv2d.py.)"""

import importlib.util
import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import _cpu, _shapes
from fastconv import reference as ref
from conftest import BACKENDS, to_backend, to_numpy

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("winograd_accuracy",
                                              ROOT / "benchmarks" / "winograd_accuracy.py")
accuracy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(accuracy)


@pytest.mark.parametrize("m", [2, 4])
def test_tables_are_the_derived_matrices(m):
    """Each entry is the double nearest the exact one (1.0 / 6 in C++ rounds as Fraction(1, 6)
    converts), and the exact matrices compute y_i = sum_k g_k d_{i+k}."""
    derived = accuracy.derive(accuracy.POINTS[m], m)
    assert accuracy.identity_holds(*derived)
    for name, got, exact in zip(("B^T", "G", "A^T"), _cpu.shapes.winograd_tables(m), derived):
        assert [[float(v) for v in row] for row in exact] == got, name


@pytest.mark.parametrize("m", [2, 4])
def test_only_g_holds_fractions_that_are_not_binary(m):
    """B^T and A^T (applied to the data in its own type) are exact in binary floating point:
    integers in B^T, integers over powers of 2 in A^T."""
    bt, g, at = accuracy.derive(accuracy.POINTS[m], m)
    assert all(v.denominator == 1 for row in bt for v in row)
    assert all(v.denominator & (v.denominator - 1) == 0 for row in at for v in row)
    binary = all(v.denominator & (v.denominator - 1) == 0 for row in g for v in row)
    assert binary == (m == 2)  # F(2, 3) exact on integers; F(4, 3) not (1/6, 1/15, 1/30)


def test_a_planted_table_error_breaks_the_identity():
    """The identity check can fail: one entry of F(4, 3)'s B^T off by one breaks it."""
    bt, g, at = accuracy.derive(accuracy.POINTS[4], 4)
    bt[3][2] += 1
    assert not accuracy.identity_holds(bt, g, at)


@pytest.mark.parametrize("m", [2, 4])
def test_tiles_cover_each_output_once_and_read_its_window(m):
    """Tiles of m outputs along an axis: every output in exactly one tile, and the tile's
    patch of m + 2 inputs from tile_origin holds that output's 3-tap window."""
    for out, pad in itertools.product(range(1, 20), range(-3, 4)):
        count = _cpu.shapes.winograd_tile_count(out, m)
        covered = [0] * out
        for t in range(count):
            origin = _cpu.shapes.winograd_tile_origin(t, m, pad)
            for o in range(t * m, min(out, t * m + m)):
                covered[o] += 1
                window = o - pad  # output o reads inputs o - pad ... o - pad + 2
                assert origin <= window and window + 2 <= origin + m + 1
        assert covered == [1] * out, (out, pad)
        assert (count - 1) * m < out  # no tile wholly past the edge


def test_applies_mirror():
    for case in itertools.product((1, 3, 5), (3, 4), (1, 2), (1, 2), (1, 2), (1, 3)):
        assert _shapes.winograd_applies(*case) == _cpu.shapes.winograd_applies(*case), case


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["winograd2", "winograd4"])
def test_resnet_like_float32_within_tolerance(backend, variant):
    """C = 256 channels of ResNet-50's 14x14 layer (32 filters to keep it short), inputs as
    after a ReLU: float32 error well within the tests' 1e-5. Measured on the CPU: gemm 2.1e-7,
    winograd2 4.4e-7, winograd4 1.7e-6; the bounds leave 3-4x (the full table is in
    benchmarks/NOTES.md). The GPU kernels (csrc/cuda/winograd.cu) are held to the same
    bounds; tools/cuda_emu runs this case on them too (test_winograd_fixed)."""
    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_normal((2, 256, 14, 14)), 0).astype(np.float32)
    w = (rng.standard_normal((32, 256, 3, 3)) * np.sqrt(2 / (9 * 256))).astype(np.float32)
    out = to_numpy(fastconv.conv2d(to_backend(x, backend), to_backend(w, backend), padding=1,
                                   variant=variant))
    expect = ref.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    err = np.linalg.norm(out - expect) / np.linalg.norm(expect)
    assert err < {"winograd2": 2e-6, "winograd4": 5e-6}[variant], err


def test_derive_reproduces_lavin_and_gray_f23():
    """derive() on the textbook case: Lavin & Gray's F(2, 3) up to the sign of the infinity
    row (a scale that moves between B^T and G)."""
    bt, g, at = accuracy.derive((0, 1, -1), 2)
    assert bt == [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]]
    half = Fraction(1, 2)
    assert g == [[1, 0, 0], [half, half, half], [half, -half, half], [0, 0, 1]]
    assert at == [[1, 1, 1, 0], [0, 1, -1, 1]]

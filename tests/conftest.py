"""Shared test machinery: backends, array conversion, NaN poisoning, comparisons.

Every op is tested on every backend the machine has: "cpu" always (NumPy arrays),
"cuda" (CuPy arrays, and PyTorch CUDA tensors where torch is installed) only where a
GPU is present; GPU cases carry the `gpu` marker and skip cleanly elsewhere.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastconv
from fastconv import _arrays

settings.register_profile(
    "ci", max_examples=int(os.environ.get("FASTCONV_EXAMPLES", "40")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=False, print_blob=True)
settings.load_profile("ci")

HAS_GPU = fastconv.cuda_available()
gpu = pytest.mark.gpu

# Backends as (name, dtype): float64 exists on the CPU backend only.
BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cupy", id="cupy", marks=[gpu, pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")]),
    pytest.param("torch-cuda", id="torch-cuda",
                 marks=[gpu, pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")]),
]


def dtypes_for(backend):
    return ("float32", "float64") if backend == "cpu" else ("float32",)


@pytest.fixture(autouse=True, scope="session")
def strict_fp32_peers():
    """PyTorch, the peer of many tests, convolves CUDA float32 in TF32 by default
    (torch.backends.cudnn.allow_tf32 is True): ~3e-4 relative error against the tests'
    1e-5. Every test compares with strict float32 PyTorch; set here, once, for all."""
    try:
        import torch
    except ImportError:
        yield
        return
    # flags(), not assignment: torch.testing._internal (the OpInfo tests) freezes the
    # cudnn flags at import, and only the context manager may change them then.
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                     deterministic=cudnn.deterministic, allow_tf32=False):
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32 = saved


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every output fastconv allocates starts as NaN, so an unwritten element fails."""
    previous = _arrays.set_poison(True)
    yield
    _arrays.set_poison(previous)


def to_backend(a, backend, dtype=None):
    """A NumPy array as the backend's array type (a copy, on the backend's device)."""
    if a is None:
        return None
    a = np.asarray(a, dtype=dtype or a.dtype)
    if backend == "cpu":
        return a.copy()
    if backend == "cupy":
        import cupy

        return cupy.asarray(a)
    if backend == "torch-cuda":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(a.copy()).cuda()
    raise ValueError(backend)


def to_numpy(a):
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().numpy()
    return a.get()  # cupy


def rel_error(out, ref):
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    num = np.linalg.norm((out - ref).ravel())
    den = np.linalg.norm(ref.ravel())
    return num / den if den > 0 else num


TOL = {"float32": 1e-5, "float64": 1e-12}


def assert_close(out, ref, dtype, what=""):
    out = to_numpy(out)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != reference {ref.shape}"
    assert out.dtype == np.dtype(dtype), f"{what}: dtype {out.dtype} != {dtype}"
    assert not np.isnan(out).any(), f"{what}: NaN in the output (an element left unwritten?)"
    # -inf is a defined result (a max-pool window of padding alone): match it exactly.
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(out[~finite], ref[~finite], err_msg=f"{what}: non-finite elements")
    out, ref = out[finite], ref[finite]
    err = rel_error(out, ref)
    assert err < TOL[dtype], f"{what}: relative error {err:.3g} >= {TOL[dtype]}"


def random(rng, shape, dtype="float64"):
    """Random data, never zeros: standard normal."""
    return rng.standard_normal(shape).astype(dtype)


def small_ints(rng, shape, dtype="float64", lo=-3, hi=3):
    """Integer-valued inputs whose float32 sums are exact (|sum| < 2^24)."""
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


def permute(a, axes):
    """Transpose a NumPy / CuPy array or a torch tensor (a strided view, no copy)."""
    return a.permute(*axes) if hasattr(a, "permute") else a.transpose(axes)


def misaligned(a, backend):
    """A NumPy array as the backend's array, contiguous but starting one element past an
    aligned address, so kernels with 16-byte vector paths must take their fallbacks."""
    a = np.asarray(a)
    padded = to_backend(np.concatenate([a.ravel()[:1], a.ravel()]), backend)
    return padded[1:].reshape(a.shape)


class FakeGpuBinding:
    """A stand-in for fastconv._cuda that records each call (name, arguments) and runs
    nothing: with fake_gpu, NumPy arrays and torch CPU tensors pass for GPU arrays, so the
    Python layer's GPU dispatch (its dtype and variant checks, the params, pointers and
    dtype names it hands the binding) is tested on machines without a GPU. Outputs stay
    as allocated (NaN-poisoned): never compare their values."""

    conv2d_variants = ("direct", "implicit_gemm", "depthwise")
    conv2d_avgpool_variants = ("fused", "direct", "implicit_gemm", "depthwise")
    Conv2dParams = Conv2dPoolParams = Pool2dParams = dict  # the params, as dicts

    def __init__(self):
        self.calls = []

    @staticmethod
    def conv2d_bwd_filter_workspace(params, variant):
        return 0

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


@pytest.fixture
def fake_gpu(monkeypatch):
    fake = FakeGpuBinding()
    monkeypatch.setattr(_arrays, "_cuda_module", lambda op: fake)
    for lib in (_arrays._NumPy, _arrays._Torch):
        monkeypatch.setattr(lib, "device", staticmethod(lambda a: ("cuda", 0)))
        monkeypatch.setattr(lib, "stream", staticmethod(lambda device: 0))
    # Plans key NumPy arrays by shape and dtype, not device: keep these calls' apart.
    monkeypatch.setattr(_arrays, "_PLANS", {})
    return fake

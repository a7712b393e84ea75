"""The CUDA kernel sources, run on the CPU by tools/cuda_emu against their CPU twins.

Not a GPU proof (see tools/cuda_emu/README.md): it catches semantic slips in the
kernels (indices, borders, reductions, barriers, bounds, alignment) on machines without a
GPU. Built once (UBSan bounds and alignment always on), run under two seeds (EMU_SEED:
thread and block orders, cut grids, data); once more with the 64-bit index kernels
forced (FASTCONV_INDEX64=1); and an AddressSanitizer build at a quarter of the draws on a
third seed, for out-of-bounds accesses through pointers.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "tools" / "cuda_emu" / "run.sh"


SEEDS = (1, 2)


@pytest.fixture(scope="module")
def emu_build(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    out = tmp_path_factory.mktemp("cuda_emu")
    # SCALE 0 builds and runs only the fixed cases: the build, checked here, and the
    # random draws, run per seed below.
    r = subprocess.run(["bash", str(RUN), str(out), "0"], capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, f"cuda_emu build or fixed cases failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return out / "emu_test"


@pytest.mark.parametrize("seed", SEEDS)
def test_cuda_kernels_match_cpu_twins_under_emulation(emu_build, seed):
    env = dict(os.environ, EMU_SEED=str(seed))
    r = subprocess.run([str(emu_build), "1"], capture_output=True, text=True, timeout=1200,
                       env=env)
    lines = r.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    assert lines and lines[0] == f"cuda_emu: EMU_SEED={seed}", lines[:1]
    assert r.returncode == 0, f"emulated CUDA kernels differ from the CPU twins (EMU_SEED={seed}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert last.endswith("0 failures") and int(last.split()[0]) > 1000, last


def test_64_bit_index_kernels_under_emulation(emu_build):
    """The int64_t instantiations, which the host picks only for tensors past 2^31
    elements, forced on small ones (FASTCONV_INDEX64=1), half the draws of seed 2."""
    env = dict(os.environ, EMU_SEED="2", FASTCONV_INDEX64="1")
    r = subprocess.run([str(emu_build), "0.5"], capture_output=True, text=True, timeout=1200,
                       env=env)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, f"64-bit index kernels differ from the CPU twins:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert last.endswith("0 failures") and int(last.split()[0]) > 1000, last


def test_cuda_kernels_under_address_sanitizer(tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    env = dict(os.environ, EMU_SEED="3", EMU_CXXFLAGS="-fsanitize=address -DEMU_STACK_KIB=256")
    r = subprocess.run(["bash", str(RUN), str(tmp_path), "0.25"], capture_output=True,
                       text=True, timeout=1200, env=env)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, f"ASan build of the emulated kernels failed (EMU_SEED=3):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    assert last.endswith("0 failures") and int(last.split()[0]) > 1000, last


def test_the_kernels_multiply_high_division_equals_division(tmp_path):
    """DivMod (cuda_common.cuh), which the 32- and 64-bit index kernels divide by,
    against / and % on ~1.4e8 divisor/numerator pairs (tools/divmod_check.cpp)."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    exe = tmp_path / "divmod_check"
    subprocess.run(["g++", "-O2", "-std=c++17", f"-I{ROOT / 'tools/cuda_emu/include'}",
                    f"-I{ROOT / 'csrc'}", str(ROOT / "tools/divmod_check.cpp"), "-o", str(exe)],
                   check=True, timeout=300)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and " 0 wrong" in r.stdout, r.stdout + r.stderr
def test_emulator_catches_planted_bugs():
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "cuda_emu" / "mutate.py"), "--fast"],
                       capture_output=True, text=True, timeout=1200)
    print(r.stdout)
    assert r.returncode == 0, f"a planted bug survived the emulator:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "caught on every seed" in r.stdout.splitlines()[-1], r.stdout[-2000:]


@pytest.mark.parametrize("decl", ["__shared__ float a, b;", "extern __shared__ float d[4];",
                                  "__shared__ float s = 0;"])
def test_translator_refuses_what_it_cannot_model(tmp_path, decl):
    src = tmp_path / "k.cu"
    src.write_text(f"__global__ void k() {{\n    {decl}\n}}\n")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "cuda_emu" / "translate.py"), str(src),
                        str(tmp_path / "k.cpp")], capture_output=True, text=True)
    assert r.returncode != 0 and f"{src}:2: translate.py:" in r.stderr, r.stderr


def test_translator_models_dynamic_and_aligned_shared(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k() {\n    extern __shared__ __align__(16) float4 dyn[];\n"
                   "    __shared__ __align__(32) float t[4][8];\n    __shared__ int n;\n}\n"
                   "void f() { k<<<dim3(2, 3), dim3(32, 4), 100 * sizeof(float), nullptr>>>(); }\n")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "cuda_emu" / "translate.py"), str(src),
                        str(tmp_path / "k.cpp")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = (tmp_path / "k.cpp").read_text()
    assert "float4* const dyn = ::emu::dynamic<float4>(16," in out
    assert "::emu::shared<float[4][8], 32>(" in out and "::emu::shared<int>(" in out
    assert "dim3(dim3(32, 4)), size_t(100 * sizeof(float))" in out
    assert out.count("\n") == src.read_text().count("\n") + 1  # the #line directive only

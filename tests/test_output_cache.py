"""The CPU backend's output cache (csrc/cpu/output_cache.h): outputs of 64 KiB and more
are blocks kept after the caller drops them and handed to the next output of about the
same size. What must hold: a block is reused only when nothing refers to it any more (no
array, view or tensor of it alive), reuse gives correct results, the limit holds, and
empty_cache gives everything back."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import _cpu, reference

from conftest import assert_close  # noqa: E402  (tests/ is on the path under pytest)


def conv(x, w):
    return fastconv.conv2d(x, w, None, stride=1, padding=1)


def block(a):
    return a.__array_interface__["data"][0]


@pytest.fixture
def data():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 5, 37, 41)).astype(np.float32)  # output 2x7x37x41x4 = 85 KB
    w = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    return x, w, reference.conv2d(x.astype(np.float64), w.astype(np.float64), None, stride=1, padding=1)


@pytest.fixture(autouse=True)
def fresh_cache():
    fastconv.empty_cache()
    limit = fastconv.cpu_memory()["output_cache_limit"]
    yield
    _cpu.set_output_cache_limit(limit)
    fastconv.empty_cache()


def test_a_dropped_output_is_the_next_ones_block(data):
    x, w, want = data
    y = conv(x, w)
    first = block(y)
    assert y.nbytes >= _cpu.output_cache_min_bytes and first % 64 == 0
    del y
    assert fastconv.cpu_memory()["output_cache_blocks"] == 1
    hits = fastconv.cpu_memory()["output_cache_hits"]
    y = conv(x, w)
    assert block(y) == first and fastconv.cpu_memory()["output_cache_hits"] == hits + 1
    assert_close(y, want, "float32")


@pytest.mark.parametrize("keep", ["array", "view", "tensor"])
def test_a_block_still_referred_to_is_never_handed_out(data, keep):
    x, w, want = data
    y = conv(x, w)
    if keep == "array":
        held = y
    elif keep == "view":
        held = y[1, 3:, ::2]
    else:
        held = pytest.importorskip("torch").from_numpy(y)
    seen = held.numpy() if keep == "tensor" else held
    saved = seen.copy()
    del y
    others = [conv(x * 2, w) for _ in range(3)]
    assert not any(np.may_share_memory(o, seen) for o in others)
    np.testing.assert_array_equal(seen, saved)  # not overwritten by the later calls
    for o in others:
        assert_close(o, 2 * want, "float32")


def test_the_limit_holds_and_empty_cache_gives_everything_back(data):
    x, w, _ = data
    ys = [conv(x, w) for _ in range(4)]
    size = ys[0].nbytes
    _cpu.set_output_cache_limit(2 * size + 8192)
    del ys
    mem = fastconv.cpu_memory()
    assert mem["output_cache_blocks"] == 2 and mem["output_cache_bytes"] <= 2 * size + 8192
    assert fastconv.empty_cache() >= mem["output_cache_bytes"]
    mem = fastconv.cpu_memory()
    assert mem["output_cache_bytes"] == 0 and mem["output_cache_blocks"] == 0
    assert mem["scratch_bytes"] == 0
    _cpu.set_output_cache_limit(0)
    y = conv(x, w)
    del y
    assert fastconv.cpu_memory()["output_cache_blocks"] == 0


def test_small_outputs_are_not_kept():
    x = np.ones((1, 1, 8, 8), np.float32)
    y = fastconv.conv2d(x, np.ones((1, 1, 3, 3), np.float32), None)
    assert y.nbytes < _cpu.output_cache_min_bytes
    del y
    assert fastconv.cpu_memory()["output_cache_blocks"] == 0


@pytest.mark.parametrize("value", ["-1", "lots", "1.5"])
def test_a_bad_limit_names_the_variable(value):
    env = dict(os.environ, FASTCONV_CPU_CACHE_MIB=value, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", "import fastconv._cpu"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert f"FASTCONV_CPU_CACHE_MIB must be a number of MiB >= 0, got '{value}'" in out.stderr, out.stderr


def test_a_block_is_taken_only_when_it_fits_and_wastes_at_most_a_quarter():
    def hits():
        return fastconv.cpu_memory()["output_cache_hits"]

    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    big = fastconv.conv2d(rng.standard_normal((2, 3, 64, 64)).astype(np.float32), w, None, padding=1)
    del big  # a 128 KiB block kept
    for n, taken in ((3, False), (1, False), (2, True)):  # 192 KiB: too small; 64: too big
        x = rng.standard_normal((n, 3, 64, 64)).astype(np.float32)
        before = hits()
        y = fastconv.conv2d(x, w, None, padding=1)
        assert (hits() == before + 1) == taken, (n, before, hits())
        assert_close(y, reference.conv2d(x.astype(np.float64), w.astype(np.float64), None, padding=1),
                     "float32")
        if not taken:
            del y
            fastconv.empty_cache()
            big = fastconv.conv2d(rng.standard_normal((2, 3, 64, 64)).astype(np.float32), w, None, padding=1)
            del big


def test_torch_cpu_outputs_come_from_the_cache_too(data, tmp_path):
    torch = pytest.importorskip("torch")
    x, w, want = data
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    y = fastconv.conv2d(xt, wt, None, stride=1, padding=1)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    first = y.data_ptr()
    del y
    y = fastconv.conv2d(xt, wt, None, stride=1, padding=1)
    assert y.data_ptr() == first
    assert_close(y.numpy(), want, "float32")
    torch.save(y, tmp_path / "y.pt")  # an ordinary tensor to torch
    assert torch.equal(torch.load(tmp_path / "y.pt"), y)


@pytest.mark.parametrize("value,mib", [(None, None), ("", None), ("300", 300), ("0", 0)],
                         ids=["unset", "empty", "300", "none"])
def test_the_default_limit_is_a_sixteenth_of_memory_within_256_mib_and_4_gib(value, mib):
    """Memory: the physical pages, or the container's cgroup limit where smaller."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("FASTCONV_CPU_CACHE_MIB", None)
    if value is not None:
        env["FASTCONV_CPU_CACHE_MIB"] = value
    out = subprocess.run([sys.executable, "-c", "import fastconv; print(fastconv.cpu_memory()['output_cache_limit'])"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if mib is None:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGESIZE")
        for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
            try:
                with open(path) as f:
                    limit = f.read().strip()
            except OSError:
                continue
            if limit.isdigit() and 0 < int(limit) < memory:  # "max": no limit
                memory = int(limit)
        sixteenth = memory // 16
        mib_bytes = 1 << 20
        assert int(out.stdout) == min(max(sixteenth, 256 * mib_bytes), 4096 * mib_bytes)
    else:
        assert int(out.stdout) == mib << 20

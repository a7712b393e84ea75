"""Threads and the GIL (issue 16, item 6): the CPU kernels run with the GIL released, and
eight Python threads calling conv2d, pooling and sobel at once on NumPy arrays get what
calling them one after another gives, through a call-plan cache that they fill, read
and evict concurrently."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastconv
from fastconv import _arrays


def test_the_gil_is_released_while_a_kernel_runs():
    """While one thread is inside a long conv2d kernel, the main thread keeps running
    Python: with the GIL held it could not take a single step until the kernel ended."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 64, 64)).astype(np.float32)
    w = rng.standard_normal((16, 16, 5, 5)).astype(np.float32)
    fastconv.conv2d(x, w, padding=2, variant="direct")  # the plan, warm caches
    span = {}

    def worker():
        span["start"] = time.perf_counter()
        fastconv.conv2d(x, w, padding=2, variant="direct")
        span["end"] = time.perf_counter()

    steps = []
    t = threading.Thread(target=worker)
    t.start()
    while t.is_alive():
        steps.append(time.perf_counter())
    t.join()
    duration = span["end"] - span["start"]
    assert duration > 0.02, f"the kernel took {duration:.4f} s: too short to tell"
    inner = [s for s in steps if span["start"] + 0.2 * duration < s < span["end"] - 0.2 * duration]
    assert len(inner) >= 5, (f"the main thread took {len(inner)} steps during the middle of "
                             f"a {duration:.3f} s kernel: the GIL was held")


def _tasks(rng, count):
    """count mixed calls (conv2d forward and backward, both pools, sobel, filter2d) over a
    few shapes, so the threads share plans, as (function, args, kwargs)."""
    shapes = [(2, 3, 13, 11), (1, 4, 8, 8), (3, 2, 9, 16)]
    # Fresh data for each call: calls that share a plan must still not share results
    # (identical inputs would hide one thread returning another's output).
    kernel = rng.standard_normal((3, 5)).astype(np.float32)
    tasks = []
    for i in range(count):
        s = shapes[i % len(shapes)]
        x = rng.standard_normal(s).astype(np.float32)
        w = rng.standard_normal((5, s[1], 3, 3)).astype(np.float32)
        kind = (i // len(shapes)) % 7
        if kind == 0:
            tasks.append((fastconv.conv2d, (x, w), dict(padding="same", activation="tanh")))
        elif kind == 1:
            tasks.append((fastconv.conv2d, (x, w), dict(stride=2, padding=1)))
        elif kind == 2:
            y = fastconv.conv2d(x, w)
            tasks.append((fastconv.conv2d_backward, (np.ones_like(y), x, w), {}))
        elif kind == 3:
            tasks.append((fastconv.max_pool2d, (x, 3), dict(stride=2, padding=1,
                                                            return_indices=True)))
        elif kind == 4:
            tasks.append((fastconv.avg_pool2d, (x, 2), dict(ceil_mode=True)))
        elif kind == 5:
            tasks.append((fastconv.sobel, (x,), dict(mode="nearest")))
        else:
            tasks.append((fastconv.filter2d, (x, kernel), dict(mode="wrap")))
    return tasks


def _as_list(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("plan_limit", [1024, 5], ids=["cache", "evicting-cache"])
def test_eight_threads_get_the_sequential_results(monkeypatch, plan_limit):
    # A small cache makes the threads evict each other's plans all the time.
    monkeypatch.setattr(_arrays, "_PLAN_LIMIT", plan_limit)
    monkeypatch.setattr(_arrays, "_PLANS", {})
    tasks = _tasks(np.random.default_rng(1), 2400)
    start = time.perf_counter()
    want = [_as_list(f(*a, **k)) for f, a, k in tasks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda t: _as_list(t[0](*t[1], **t[2])), tasks))
    elapsed = time.perf_counter() - start
    for i, (g, w) in enumerate(zip(got, want)):
        for a, b in zip(g, w):
            # The same kernels on the same data: bitwise equal, threads or not.
            np.testing.assert_array_equal(a, b, err_msg=f"call {i}: {tasks[i][0].__name__}")
    assert len(_arrays._PLANS) <= plan_limit
    assert elapsed < 60, f"{elapsed:.1f} s"

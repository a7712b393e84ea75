"""`fastconv bench --device cuda`: the GPU rows, fastconv against PyTorch + cuDNN and
cupyx.scipy.ndimage, on PyTorch CUDA tensors, in one process.

Method (benchmarks issue):
  - cudnn.benchmark on, TF32 off (strict float32 on both sides), random data;
  - every case is timed twice: `eager` (CUDA events around one Python call, so the host
    overhead a user pays is in the time; medians of `repeat` >= 30 alternating calls)
    and `device` (GPU time alone: `calls` calls captured in a CUDA graph, replayed
    alternately; where a callable cannot be captured, back-to-back calls between
    events, which still hides host time when kernels are longer than the launch);
  - convolutions also get a `first` row: the wall-clock time of each side's first call
    on the shape (cuDNN's includes cudnn.benchmark's autotuning; fastconv chooses its
    kernel by a shape rule, so its first call should cost what the later ones do);
  - caches: the L2 size is read from the device. An eager call starts with a cold L2
    (a buffer of twice its size is written, and the stream synchronised, before the
    start event), so neither side reads what the other just loaded. A graph replays
    its calls over up to 20 input copies, enough to span twice the L2 where one copy
    is smaller; where all of a case's copies fit in the L2 together, both sides replay
    on warm inputs alike, and the row says so (`l2_resident`);
  - every row says how each side was timed (`timing`): events around eager calls, or
    a graph replay, or a loop of calls where a side could not be captured;
  - a case that raises is recorded as a row with mode "error" and the run goes on;
  - the ceilings are measured in the same run: device-to-device copy (bytes read +
    written), strict-fp32, TF32 and bf16 matrix products (8192^3).
"""

import time

import numpy as np

from . import bench, ops

DEFAULT_L2_BYTES = 50 << 20  # where the device cannot say (the stand-in run)
EAGER = "events around one call, L2 flushed before it"


class CudaTimer:
    def __init__(self, torch, repeat, calls=20):
        self.torch, self.repeat, self.calls = torch, repeat, calls
        self.l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size or DEFAULT_L2_BYTES
        # Written before every eager call: twice the L2, so nothing of the last call stays.
        self._flush = torch.empty(2 * self.l2_bytes // 4, device="cuda")

    def _events(self):
        E = self.torch.cuda.Event
        return E(enable_timing=True), E(enable_timing=True)

    def first(self, ours, theirs):
        """Wall-clock seconds of each side's very first call on a new shape, to the end of
        its GPU work (with cudnn.benchmark on, cuDNN's includes its autotuning)."""
        out = []
        for fn in (ours, theirs):
            self.torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(0)
            self.torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
        return out[0], out[1]

    def eager(self, ours, theirs):
        """Median seconds of one call each, alternating, each from a cold L2 and an idle
        stream (the host's time to launch is in the measurement); fn(i) uses copy i."""
        for i in range(3):
            ours(i), theirs(i)
        self.torch.cuda.synchronize()
        times = ([], [])
        for r in range(self.repeat):
            for fn, acc in zip((ours, theirs), times):
                start, end = self._events()
                self._flush.zero_()
                self.torch.cuda.synchronize()
                start.record()
                fn(r)
                end.record()
                end.synchronize()
                acc.append(start.elapsed_time(end) / 1e3)
        return float(np.median(times[0])), float(np.median(times[1]))

    def _capture(self, fn):
        torch = self.torch
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side):
                for i in range(3):
                    fn(i)
            current.wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(self.calls):
                    fn(i)
            graph.replay()
            torch.cuda.synchronize()
            return graph.replay
        finally:
            # A failed capture can leave the capture stream current: put the caller's
            # stream back, so the fallback loop and later rows run where they should.
            torch.cuda.set_stream(current)

    def _loop(self, fn):
        def run():
            for i in range(self.calls):
                fn(i)
        return run

    def device(self, ours, theirs):
        """Median GPU seconds per call each (graph replay, else back-to-back calls), and
        how each was timed."""
        (t_ours, how_ours), (t_theirs, how_theirs) = self.device_many([ours, theirs])
        return t_ours, t_theirs, (how_ours, how_theirs)

    def device_many(self, fns, rounds=None):
        """(median GPU seconds per call, how timed) of each fn: each captured in a graph
        of `calls` calls (else a loop of them), the runs replayed in turn `rounds` times,
        so every fn meets the same clocks and neighbours."""
        runs, how = [], []
        for fn in fns:
            try:
                runs.append(self._capture(fn))
                how.append("graph")
            except Exception:  # not capturable (a sync or an allocation outside torch)
                self.torch.cuda.synchronize()
                runs.append(self._loop(fn))
                how.append("loop")
        times = [[] for _ in fns]
        for _ in range(rounds or max(10, self.repeat // 3)):
            for run, acc in zip(runs, times):
                start, end = self._events()
                start.record()
                run()
                end.record()
                end.synchronize()
                acc.append(start.elapsed_time(end) / 1e3 / self.calls)
        return [(float(np.median(t)), h) for t, h in zip(times, how)]


def _copies(nbytes, l2_bytes, calls=20):
    """Input copies a case rotates through: enough to span twice the L2 where one copy is
    smaller, at most one per call of a graph."""
    return int(min(calls, max(1, -(-2 * l2_bytes // max(nbytes, 1)))))


def _l2_resident(nbytes, copies, l2_bytes):
    return nbytes * copies <= l2_bytes


def _copy_GBps(torch, timer):
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    t_copy, _ = timer.eager(lambda i: dst.copy_(src), lambda i: None)
    return 2 * src.numel() * 4 / t_copy / 1e9


def measure_ceilings(torch, timer):
    """Copy bandwidth and the 8192^3 matrix-product rates: strict fp32, TF32, bf16."""
    out = {"copy_GBps": _copy_GBps(torch, timer)}
    m = 8192
    for name, dtype, tf32 in (("fp32_TFLOPs", torch.float32, False),
                              ("tf32_TFLOPs", torch.float32, True),
                              ("bf16_TFLOPs", torch.bfloat16, False)):
        a = torch.randn(m, m, device="cuda", dtype=dtype)
        b = torch.randn(m, m, device="cuda", dtype=dtype)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            t, _ = timer.eager(lambda i: torch.mm(a, b), lambda i: None)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        out[name] = 2 * m**3 / t / 1e12
    return out


def _rows(suite, case, op, layout, timer, ours, theirs, peer, work, unit, ceilings, modes,
          l2_resident=False):
    """The rows of one case, one per timing mode; a mode that raises gives an error row
    (the message kept) and the others still run."""
    rows = []
    for mode in ("first", "eager", "device"):  # "first" before anything else ran the shape
        if mode not in modes:
            continue
        try:
            if mode == "device":
                t_ours, t_peer, how = timer.device(ours, theirs)
            else:
                t_ours, t_peer = getattr(timer, mode)(ours, theirs)
                how = ("wall clock",) * 2 if mode == "first" else (EAGER,) * 2
        except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
            rows.append(bench.error_row(suite, case, op, layout, mode, peer, e))
            _recover(timer)
            continue
        row = bench._row(suite, case, op, layout, t_ours, peer, t_peer, work, unit, ceilings,
                         mode=mode)
        row["timing"] = {"fastconv": how[0], "peer": how[1]}
        if mode == "device":
            row["l2_resident"] = l2_resident
        rows.append(row)
    return rows


def _recover(timer):
    """After a failed call: wait for what is queued, so the next case starts clean (an
    error that poisoned the context raises again here, and every later row records it)."""
    try:
        timer.torch.cuda.synchronize()
    except Exception:  # noqa: BLE001
        pass


def _conv_rows(suite, table, quick, torch, timer, ceilings, gen):
    F = torch.nn.functional
    rows = []
    for case, shape in table.items():
        N, C, H, W, K, R, stride, pad, groups = shape
        if quick and suite not in ("lenet",) and N > 8:
            N = 8
        shape = (N,) + shape[1:]
        P, Q = bench.conv_out(shape)
        k = _copies(4 * N * C * H * W, timer.l2_bytes)
        warm = _l2_resident(4 * N * C * H * W, k, timer.l2_bytes)
        xs = [torch.randn(N, C, H, W, device=gen.device, generator=gen) for _ in range(k)]
        w = torch.randn(K, C // groups, R, R, device=gen.device, generator=gen) / np.sqrt(C * R * R / groups)
        b = torch.randn(K, device=gen.device, generator=gen)
        flops = bench.conv_flops(shape)
        if suite == "backward":
            dys = [torch.randn(N, K, P, Q, device=gen.device, generator=gen) for _ in range(k)]
            rows += _rows(
                suite, case, "conv2d_backward", "NCHW", timer,
                lambda i: ops.conv2d_backward(dys[i % k], xs[i % k], w, stride, pad, 1, groups,
                                              output_mask=(True, True, False)),
                lambda i: torch.ops.aten.convolution_backward(
                    dys[i % k], xs[i % k], w, None, [stride] * 2, [pad] * 2, [1, 1], False,
                    [0, 0], groups, [True, True, False]),
                "torch-cudnn", 2 * flops, "TFLOP/s", ceilings, ("first", "eager", "device"), warm)
            continue
        rows += _rows(suite, case, "conv2d", "NCHW", timer,
                      lambda i: ops.conv2d(xs[i % k], w, None, stride, pad, 1, groups),
                      lambda i: F.conv2d(xs[i % k], w, None, stride, pad, 1, groups),
                      "torch-cudnn", flops, "TFLOP/s", ceilings, ("first", "eager", "device"), warm)
        act = "tanh" if suite == "lenet" else "relu" if suite == "resnet50" else None
        if act:
            fn = torch.tanh if act == "tanh" else torch.relu
            rows += _rows(suite, case, f"conv2d_bias_{act}", "NCHW", timer,
                          lambda i: ops.conv2d(xs[i % k], w, b, stride, pad, 1, groups,
                                               activation=act),
                          lambda i: fn(F.conv2d(xs[i % k], w, b, stride, pad, 1, groups)),
                          "torch-cudnn", flops, "TFLOP/s", ceilings, ("eager", "device"), warm)
    return rows


def _pool_rows(quick, torch, timer, ceilings, gen):
    F = torch.nn.functional
    rows = []
    for case, (kind, shape, kw) in bench.POOL.items():
        if quick and shape[0] > 8 and "big" in case:
            shape = (8,) + shape[1:]
        k = _copies(4 * int(np.prod(shape)), timer.l2_bytes)
        warm = _l2_resident(4 * int(np.prod(shape)), k, timer.l2_bytes)
        base = [torch.randn(*shape, device=gen.device, generator=gen) for _ in range(k)]
        for layout in ("NCHW", "NHWC"):
            if layout == "NCHW":
                xs, peer_xs = base, base
            else:
                peer_xs = [x.contiguous(memory_format=torch.channels_last) for x in base]
                xs = [x.permute(0, 2, 3, 1) for x in peer_xs]  # (N, H, W, C), contiguous
            if kind == "max":
                ours = lambda i: ops.max_pool2d(xs[i % k], **kw, layout=layout)  # noqa: E731
                theirs = lambda i: F.max_pool2d(peer_xs[i % k], **kw)  # noqa: E731
            elif kind == "avg":
                ours = lambda i: ops.avg_pool2d(xs[i % k], **kw, layout=layout)  # noqa: E731
                theirs = lambda i: F.avg_pool2d(peer_xs[i % k], **kw)  # noqa: E731
            else:
                ours = lambda i: ops.global_avg_pool2d(xs[i % k], layout=layout)  # noqa: E731
                theirs = lambda i: F.adaptive_avg_pool2d(peer_xs[i % k], 1)  # noqa: E731
            out = ours(0)
            work = 4 * (int(np.prod(shape)) + out.numel())
            rows += _rows("pool", case, f"{kind}_pool2d", layout, timer, ours, theirs,
                          "torch-cudnn", work, "GB/s", ceilings, ("eager", "device"), warm)
        del base
    return rows


def _sobel_rows(torch, timer, ceilings, gen):
    F = torch.nn.functional
    try:
        import cupy
        import cupyx.scipy.ndimage as cndi
    except ImportError:
        cupy = None
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=gen.device)
    kernels = torch.stack([kx, kx.T])[:, None]
    rows = []
    for case, shape in bench.SOBEL.items():
        k = _copies(4 * int(np.prod(shape)), timer.l2_bytes)
        warm = _l2_resident(4 * int(np.prod(shape)), k, timer.l2_bytes)
        xs = [torch.randn(*shape, device=gen.device, generator=gen) for _ in range(k)]
        planes = [x.reshape(-1, 1, *shape[-2:]) for x in xs]
        work = 2 * 4 * int(np.prod(shape))

        def torch_magnitude(i):
            g = F.conv2d(F.pad(planes[i % k], (1, 1, 1, 1), mode="reflect"), kernels)
            return torch.sqrt(g[:, :1] ** 2 + g[:, 1:] ** 2)

        ours = lambda i: ops.sobel(xs[i % k])  # noqa: E731
        rows += _rows("sobel", case, "sobel_magnitude", "-", timer, ours, torch_magnitude,
                      "torch-conv2d", work, "GB/s", ceilings, ("eager", "device"), warm)
        if cupy is not None and gen.device.type == "cuda":
            cxs = [cupy.from_dlpack(x) for x in xs]

            def cupyx_magnitude(i):
                # The whole stack at once, one axis at a time (a derivative along one
                # axis, the smoothing along the other; the batch axis untouched):
                # cupyx's N-D sobel would also smooth across the batch.
                with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                    x = cxs[i % k]
                    gx = cndi.correlate1d(cndi.correlate1d(x, _DIFF, -1, mode="reflect"),
                                          _SMOOTH, -2, mode="reflect")
                    gy = cndi.correlate1d(cndi.correlate1d(x, _DIFF, -2, mode="reflect"),
                                          _SMOOTH, -1, mode="reflect")
                    return cupy.hypot(gx, gy)

            rows += _rows("sobel", case, "sobel_magnitude", "-", timer, ours, cupyx_magnitude,
                          "cupyx.scipy.ndimage", work, "GB/s", ceilings, ("eager", "device"),
                          warm)
    return rows


_DIFF, _SMOOTH = (-1.0, 0.0, 1.0), (1.0, 2.0, 1.0)


def _environment(torch):
    from . import _cuda

    info = _cuda.device_info(0)
    drv = info["driver_api_version"]
    try:
        import subprocess

        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        smi = ""
    return {"name": info["name"], "driver": smi.splitlines()[0] if smi else
            f"CUDA {drv // 1000}.{drv % 1000 // 10} capable",
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "torch": torch.__version__}


def suites_rows(suites, quick, torch, timer, gen, ceilings):
    """The rows of every suite; tensors on gen's device (tests and gpu_check.py's dry
    run call this on the CPU with a stand-in timer, to exercise everything but the CUDA
    events and graphs). A suite whose setup raises leaves an error row; the rest run."""
    for suite in suites:
        if suite not in bench.SUITES or suite in bench.CPU_SUITES:
            gpu = [s for s in bench.SUITES if s not in bench.CPU_SUITES]
            raise ValueError(f"unknown GPU suite {suite!r}; choose from {', '.join(gpu)}")
    rows = []
    for suite in suites:
        try:
            rows += _suite_rows(suite, quick, torch, timer, gen, ceilings)
        except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
            rows.append(bench.error_row(suite, "-", "-", "-", "setup", "-", e))
            _recover(timer)
    return rows


def _suite_rows(suite, quick, torch, timer, gen, ceilings):
    if suite in ("lenet", "resnet50", "depthwise", "backward"):
        table = {"lenet": bench.LENET, "resnet50": bench.RESNET50,
                 "depthwise": bench.DEPTHWISE,
                 "backward": {**bench.LENET, **bench.RESNET50}}[suite]
        return _conv_rows(suite, table, quick, torch, timer, ceilings, gen)
    if suite == "pool":
        return _pool_rows(quick, torch, timer, ceilings, gen)
    if suite == "sobel":
        return _sobel_rows(torch, timer, ceilings, gen)

    def pair(a, b):
        return timer.eager(lambda i: a(), lambda i: b())

    if suite == "models":
        rows = bench.model_rows(torch, gen.device, quick, pair, ceilings)
    else:
        rows = (bench.block_rows(torch, gen.device, quick, pair, ceilings)
                + bench.train_rows(torch, gen.device, quick, pair, ceilings))
    for row in rows:
        row["timing"] = {"fastconv": EAGER, "peer": EAGER}
    return rows


def run(suites, quick=False, repeat=None):
    import torch

    import fastconv

    if not fastconv.cuda_available() or not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but no usable CUDA GPU (see `fastconv info`)")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    timer = CudaTimer(torch, repeat or (10 if quick else 30))
    gen = torch.Generator(device="cuda").manual_seed(0)
    ceilings = measure_ceilings(torch, timer)
    rows = suites_rows(suites, quick, torch, timer, gen, ceilings)
    return ceilings, rows, {**_environment(torch), "l2_bytes": timer.l2_bytes}

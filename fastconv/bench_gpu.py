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
  - inputs are rotated through enough copies to overflow the 50 MB L2 when one copy
    would fit in it, so no case times a warm cache;
  - the ceilings are measured in the same run: device-to-device copy (bytes read +
    written), strict-fp32 and bf16 matrix products (8192^3).
"""

import time

import numpy as np

from . import bench, ops

L2_BYTES = 50 << 20  # H100's L2; inputs smaller than twice this are rotated


class CudaTimer:
    def __init__(self, torch, repeat, calls=20):
        self.torch, self.repeat, self.calls = torch, repeat, calls

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
        """Median seconds of one call each, alternating; fn(i) uses input copy i."""
        for i in range(3):
            ours(i), theirs(i)
        self.torch.cuda.synchronize()
        times = ([], [])
        for r in range(self.repeat):
            for fn, acc in zip((ours, theirs), times):
                start, end = self._events()
                start.record()
                fn(r)
                end.record()
                end.synchronize()
                acc.append(start.elapsed_time(end) / 1e3)
        return float(np.median(times[0])), float(np.median(times[1]))

    def _capture(self, fn):
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(3):
                fn(i)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(self.calls):
                fn(i)
        graph.replay()
        torch.cuda.synchronize()
        return graph.replay

    def _loop(self, fn):
        def run():
            for i in range(self.calls):
                fn(i)
        return run

    def device(self, ours, theirs):
        """Median GPU seconds per call each (graph replay, else back-to-back calls), and
        how each was timed."""
        runs, how = [], []
        for fn in (ours, theirs):
            try:
                runs.append(self._capture(fn))
                how.append("graph")
            except Exception:  # not capturable (a sync or an allocation outside torch)
                self.torch.cuda.synchronize()
                runs.append(self._loop(fn))
                how.append("loop")
        times = ([], [])
        for _ in range(max(10, self.repeat // 3)):
            for run, acc in zip(runs, times):
                start, end = self._events()
                start.record()
                run()
                end.record()
                end.synchronize()
                acc.append(start.elapsed_time(end) / 1e3 / self.calls)
        return float(np.median(times[0])), float(np.median(times[1])), how


def _copies(nbytes):
    return int(min(8, max(1, -(-2 * L2_BYTES // max(nbytes, 1)))))


def _copy_GBps(torch, timer):
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    t_copy, _ = timer.eager(lambda i: dst.copy_(src), lambda i: None)
    return 2 * src.numel() * 4 / t_copy / 1e9


def measure_ceilings(torch, timer):
    out = {"copy_GBps": _copy_GBps(torch, timer)}
    m = 8192
    for name, dtype in (("fp32_TFLOPs", torch.float32), ("bf16_TFLOPs", torch.bfloat16)):
        a = torch.randn(m, m, device="cuda", dtype=dtype)
        b = torch.randn(m, m, device="cuda", dtype=dtype)
        t, _ = timer.eager(lambda i: torch.mm(a, b), lambda i: None)
        out[name] = 2 * m**3 / t / 1e12
    return out


def _rows(suite, case, op, layout, timer, ours, theirs, peer, work, unit, ceilings, modes):
    rows = []
    if "first" in modes:  # before anything else has run this shape
        t_ours, t_peer = timer.first(ours, theirs)
        rows.append(bench._row(suite, case, op, layout, t_ours, peer, t_peer, work, unit,
                               ceilings, mode="first"))
    if "eager" in modes:
        t_ours, t_peer = timer.eager(ours, theirs)
        rows.append(bench._row(suite, case, op, layout, t_ours, peer, t_peer, work, unit,
                               ceilings, mode="eager"))
    if "device" in modes:
        t_ours, t_peer, how = timer.device(ours, theirs)
        row = bench._row(suite, case, op, layout, t_ours, peer, t_peer, work, unit, ceilings,
                         mode="device")
        row["timing"] = {"fastconv": how[0], "peer": how[1]}
        rows.append(row)
    return rows


def _conv_rows(suite, table, quick, torch, timer, ceilings, gen):
    F = torch.nn.functional
    rows = []
    for case, shape in table.items():
        N, C, H, W, K, R, stride, pad, groups = shape
        if quick and suite not in ("lenet",) and N > 8:
            N = 8
        shape = (N,) + shape[1:]
        P, Q = bench.conv_out(shape)
        k = _copies(4 * N * C * H * W)
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
                "torch-cudnn", 2 * flops, "TFLOP/s", ceilings, ("first", "eager", "device"))
            continue
        rows += _rows(suite, case, "conv2d", "NCHW", timer,
                      lambda i: ops.conv2d(xs[i % k], w, None, stride, pad, 1, groups),
                      lambda i: F.conv2d(xs[i % k], w, None, stride, pad, 1, groups),
                      "torch-cudnn", flops, "TFLOP/s", ceilings, ("first", "eager", "device"))
        act = "tanh" if suite == "lenet" else "relu" if suite == "resnet50" else None
        if act:
            fn = torch.tanh if act == "tanh" else torch.relu
            rows += _rows(suite, case, f"conv2d_bias_{act}", "NCHW", timer,
                          lambda i: ops.conv2d(xs[i % k], w, b, stride, pad, 1, groups,
                                               activation=act),
                          lambda i: fn(F.conv2d(xs[i % k], w, b, stride, pad, 1, groups)),
                          "torch-cudnn", flops, "TFLOP/s", ceilings, ("eager", "device"))
    return rows


def _pool_rows(quick, torch, timer, ceilings, gen):
    F = torch.nn.functional
    rows = []
    for case, (kind, shape, kw) in bench.POOL.items():
        if quick and shape[0] > 8 and "big" in case:
            shape = (8,) + shape[1:]
        k = _copies(4 * int(np.prod(shape)))
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
                          "torch-cudnn", work, "GB/s", ceilings, ("eager", "device"))
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
        k = _copies(4 * int(np.prod(shape)))
        xs = [torch.randn(*shape, device=gen.device, generator=gen) for _ in range(k)]
        planes = [x.reshape(-1, 1, *shape[-2:]) for x in xs]
        work = 2 * 4 * int(np.prod(shape))

        def torch_magnitude(i):
            g = F.conv2d(F.pad(planes[i % k], (1, 1, 1, 1), mode="reflect"), kernels)
            return torch.sqrt(g[:, :1] ** 2 + g[:, 1:] ** 2)

        ours = lambda i: ops.sobel(xs[i % k])  # noqa: E731
        rows += _rows("sobel", case, "sobel_magnitude", "-", timer, ours, torch_magnitude,
                      "torch-conv2d", work, "GB/s", ceilings, ("eager", "device"))
        if cupy is not None and gen.device.type == "cuda":
            cxs = [cupy.from_dlpack(x) for x in xs]

            def cupyx_magnitude(i):
                # Plane by plane: cupyx's N-D sobel would also smooth across the batch.
                with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                    return [cupy.hypot(cndi.sobel(p, 1, mode="reflect"),
                                       cndi.sobel(p, 0, mode="reflect"))
                            for p in cxs[i % k].reshape(-1, *shape[-2:])]

            rows += _rows("sobel", case, "sobel_magnitude", "-", timer, ours, cupyx_magnitude,
                          "cupyx.scipy.ndimage", work, "GB/s", ceilings, ("eager", "device"))
    return rows


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
    """The rows of every suite; tensors on gen's device (tests run this on the CPU with
    a stand-in timer, to exercise everything but the CUDA events and graphs)."""
    rows = []
    for suite in suites:
        if suite in ("lenet", "resnet50", "depthwise", "backward"):
            table = {"lenet": bench.LENET, "resnet50": bench.RESNET50,
                     "depthwise": bench.DEPTHWISE,
                     "backward": {**bench.LENET, **bench.RESNET50}}[suite]
            rows += _conv_rows(suite, table, quick, torch, timer, ceilings, gen)
        elif suite == "pool":
            rows += _pool_rows(quick, torch, timer, ceilings, gen)
        elif suite == "sobel":
            rows += _sobel_rows(torch, timer, ceilings, gen)
        elif suite == "train":
            def pair(a, b):
                return timer.eager(lambda i: a(), lambda i: b())

            rows += bench.block_rows(torch, gen.device, quick, pair, ceilings)
            rows += bench.train_rows(torch, gen.device, quick, pair, ceilings)
        else:
            raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(bench.SUITES)}")
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
    return ceilings, rows, _environment(torch)

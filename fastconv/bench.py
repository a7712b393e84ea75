"""`fastconv bench`: every op side by side with the peer a user would otherwise call,
timed in one process, alternating, on the shapes of benchmarks/shapes.py.

Method (CPU): a warm-up call each, then fastconv and the peer alternate for `repeat`
rounds; each time is one call's wall clock (perf_counter), the row keeps the medians.
Ceilings are measured in the same run: copy bandwidth (a large array copy, bytes read +
written) and the float32 matrix-product rate of PyTorch's CPU GEMM, so `of_ceiling`
says how close each op gets to what this machine can do.

Peers: PyTorch CPU (torch.nn.functional, the same thread count), scipy.ndimage for Sobel.
`--device cuda` runs the same suites on the GPU against cuDNN and cupyx
(fastconv/bench_gpu.py: CUDA events, eager and device timings).

The `models` suite times torchvision's ResNet-50 and MobileNetV3-Small (weights=None),
converted with fastconv.torch.convert, against the same models unconverted: forward
(eval mode, no grad) and forward + backward (train mode, the sum of the outputs as the
loss), at batch 1 and 32 on 224x224 images (--quick: 112x112). The work is the FLOPs
torch's FlopCounterMode counts for the unconverted model (convolutions and matrix
products). On the 2-core CPU a full run of this suite takes about 5 minutes (ResNet-50's
batch-32 step is several seconds a call), --quick about 1.5.

On the CPU the `resnet50` suite runs every layer at batch 32 and again at batch 1
(`<case>_b1`, single-image inference).

The `neighbour` suite (CPU only) times a 1x1 convolution, a max pool and LeNet-5's C2
block (forward + backward) alone, calls back to back, and alternating with PyTorch's,
both sides: the rows' `slowdown` (alternating / alone) says whether fastconv and PyTorch
slow each other down when a loop mixes them.

The `train` suite times one LeNet-5 training step (forward, backward, Adam) with
fastconv's layers against the same model on PyTorch's, at batch 128 and 1024, and each
of LeNet-5's two blocks (conv + bias + tanh + 2x2 average pool, forward and backward
through autograd) as fastconv's one op against PyTorch's four.
"""

import datetime
import json
import os
import platform
import subprocess
import time

import numpy as np

from . import ops

LENET = {"lenet_c1": (256, 1, 28, 28, 6, 5, 1, 2, 1), "lenet_c2": (256, 6, 14, 14, 16, 5, 1, 0, 1)}
RESNET50 = {
    "r50_conv1": (32, 3, 224, 224, 64, 7, 2, 3, 1),
    "r50_l1_1x1": (32, 64, 56, 56, 64, 1, 1, 0, 1),
    "r50_l1_3x3": (32, 64, 56, 56, 64, 3, 1, 1, 1),
    "r50_l1_expand": (32, 64, 56, 56, 256, 1, 1, 0, 1),
    "r50_l2_3x3s2": (32, 128, 56, 56, 128, 3, 2, 1, 1),
    "r50_l2_3x3": (32, 128, 28, 28, 128, 3, 1, 1, 1),
    "r50_l3_3x3": (32, 256, 14, 14, 256, 3, 1, 1, 1),
    "r50_l4_3x3": (32, 512, 7, 7, 512, 3, 1, 1, 1),
}
DEPTHWISE = {"dw3x3_mbv2": (32, 256, 56, 56, 256, 3, 1, 1, 256)}
POOL = {
    "maxpool3s2p1_r50": ("max", (32, 64, 112, 112), dict(kernel_size=3, stride=2, padding=1)),
    "avgpool2_lenet": ("avg", (256, 6, 28, 28), dict(kernel_size=2)),
    "maxpool2_big": ("max", (64, 128, 128, 128), dict(kernel_size=2)),
    "avgpool2_big": ("avg", (64, 128, 128, 128), dict(kernel_size=2)),
    "gap_r50": ("gap", (32, 2048, 7, 7), {}),
}
SOBEL = {"img4096": (4096, 4096), "batch64_512": (64, 512, 512)}
TRAIN_BATCHES = (128, 1024)
# Whole models (torchvision's, randomly initialised, converted by fastconv.torch.convert):
# name -> image size; each at every batch of MODEL_BATCHES. --quick halves the image side.
MODELS = {"resnet50": 224, "mobilenet_v3_small": 224}
MODEL_BATCHES = (1, 32)
# Living beside PyTorch: each op alone (calls back to back) and alternating with PyTorch's
# (as a training loop that mixes the two libraries runs them), both sides.
NEIGHBOUR = {
    "conv1x1_b2": ("conv", (2, 64, 56, 56, 256, 1, 1, 0, 1)),
    "conv1_b1": ("conv", (1, 3, 224, 224, 64, 7, 2, 3, 1)),  # a 3.2 MB output: fresh pages?
    "maxpool3s2p1_b8": ("pool", (8, 64, 112, 112)),
    "lenet_c2_block_b128": ("block", (128, 6, 14, 14, 16, 5, 1, 0, 1)),
}
SUITES = ("lenet", "resnet50", "depthwise", "pool", "sobel", "backward", "train", "neighbour",
          "models")
CPU_SUITES = ("neighbour",)  # about CPU thread pools: `--device cuda` leaves them out


def batch_one(table):
    """The same layers at batch 1 (single-image inference), cases named `<case>_b1`: the
    CPU resnet50 suite runs both."""
    return {f"{case}_b1": (1,) + shape[1:] for case, shape in table.items()}


def conv_out(shape):
    N, C, H, W, K, R, stride, pad, groups = shape
    return (H + 2 * pad - R) // stride + 1, (W + 2 * pad - R) // stride + 1


def conv_flops(shape):
    N, C, H, W, K, R, stride, pad, groups = shape
    P, Q = conv_out(shape)
    return 2.0 * N * K * P * Q * (C // groups) * R * R


class Timer:
    """Alternates two callables and keeps the median wall-clock time of each (seconds)."""

    def __init__(self, repeat):
        self.repeat = repeat

    def pair(self, ours, theirs):
        ours(), theirs()
        a, b = [], []
        for _ in range(self.repeat):
            for fn, acc in ((ours, a), (theirs, b)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        return float(np.median(a)), float(np.median(b))

    def alone(self, fn):
        """The median of `repeat` calls of fn back to back, after one warm-up call."""
        fn()
        times = []
        for _ in range(self.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))


def measure_ceilings(torch, timer):
    src = np.random.default_rng(0).standard_normal(1 << 26).astype(np.float32)  # 256 MiB
    dst = np.empty_like(src)
    t_copy, _ = timer.pair(lambda: np.copyto(dst, src), lambda: None)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    # The fastest float32 GEMM at hand, PyTorch's, NumPy's or fastconv's own, each timed
    # alone: the rate this machine reaches. (On the 2-core Zen 5 VM PyTorch and NumPy reach
    # 0.21-0.25 TFLOP/s, AVX2 kernels on an AVX-512 machine, fastconv's avx512 GEMM ~0.44;
    # with only theirs, every GEMM-bound row read 130-180% "of the ceiling".)
    from . import _cpu
    cn = np.empty((n, n), np.float32)
    t_mm = timer.alone(lambda: torch.mm(a, b))
    t_np = timer.alone(lambda: an @ bn)
    t_fc = timer.alone(lambda: _cpu.gemm(False, False, n, n, n, "float32", an.ctypes.data, n,
                                         bn.ctypes.data, n, 0.0, cn.ctypes.data, n))
    return {"copy_GBps": 2 * src.nbytes / t_copy / 1e9,
            "fp32_TFLOPs": 2 * n**3 / min(t_mm, t_np, t_fc) / 1e12}


def error_row(suite, case, op, layout, mode, peer, exc):
    """A case that raised: kept in the results (mode "error") so one failure is seen
    without costing the rest of the run."""
    return {"suite": suite, "case": case, "op": op, "dtype": "float32", "layout": layout,
            "mode": "error", "failed_mode": mode, "peer": peer,
            "error": f"{type(exc).__name__}: {exc}"[:500]}


# Where the CPU threads sit, probed after every CPU row (run() sets it; None on the GPU):
# a cache line's round trip between the pool's first two threads. A VM's vCPUs move between
# cores that share an L3 and cores that do not (on the 2-vCPU Zen 5: ~75-140 ns against
# ~370-390), and a row that moves data between threads reads differently in the two; the
# JSON keeps the figure beside every row so that a reader can tell (cpu/parallel.h).
_placement_probe = None


def _row(suite, case, op, layout, ours, peer, peer_ms, work, unit, ceilings, mode="eager"):
    ceiling = ceilings["fp32_TFLOPs"] if unit == "TFLOP/s" else ceilings["copy_GBps"]
    achieved = work / ours / (1e12 if unit == "TFLOP/s" else 1e9)
    row = {"suite": suite, "case": case, "op": op, "dtype": "float32", "layout": layout,
           "mode": mode, "fastconv_ms": ours * 1e3, "peer": peer, "peer_ms": peer_ms * 1e3,
           "speedup": peer_ms / ours, "achieved": achieved, "unit": unit,
           "of_ceiling": achieved / ceiling}
    if _placement_probe is not None:
        row["core_rtt_ns"] = _placement_probe()
    return row


def _conv_rows(suite, table, quick, torch, timer, ceilings, rng):
    F = torch.nn.functional
    rows = []
    for case, shape in table.items():
        N, C, H, W, K, R, stride, pad, groups = shape
        if quick and N > 8:
            N = 8 if suite != "lenet" else N
        shape = (N,) + shape[1:]
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = (rng.standard_normal((K, C // groups, R, R)) / np.sqrt(C * R * R / groups)).astype(np.float32)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        if suite == "backward":
            P, Q = conv_out(shape)
            dy = rng.standard_normal((N, K, P, Q)).astype(np.float32)
            dyt = torch.from_numpy(dy)
            ours, theirs = timer.pair(
                lambda: ops.conv2d_backward(dy, x, w, stride, pad, 1, groups, output_mask=(True, True, False)),
                lambda: torch.ops.aten.convolution_backward(
                    dyt, xt, wt, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], groups,
                    [True, True, False]))
            rows.append(_row(suite, case, "conv2d_backward", "NCHW", ours, "torch-cpu", theirs,
                             2 * conv_flops(shape), "TFLOP/s", ceilings))
            continue
        ours, theirs = timer.pair(lambda: ops.conv2d(x, w, None, stride, pad, 1, groups),
                                  lambda: F.conv2d(xt, wt, None, stride, pad, 1, groups))
        rows.append(_row(suite, case, "conv2d", "NCHW", ours, "torch-cpu", theirs,
                         conv_flops(shape), "TFLOP/s", ceilings))
        if suite == "lenet":  # as LeNet-5 runs it: bias and tanh, fused on our side
            b = rng.standard_normal(K).astype(np.float32)
            bt = torch.from_numpy(b)
            ours, theirs = timer.pair(
                lambda: ops.conv2d(x, w, b, stride, pad, 1, groups, activation="tanh"),
                lambda: torch.tanh(F.conv2d(xt, wt, bt, stride, pad, 1, groups)))
            rows.append(_row(suite, case, "conv2d_bias_tanh", "NCHW", ours, "torch-cpu", theirs,
                             conv_flops(shape), "TFLOP/s", ceilings))
    return rows


def _pool_rows(quick, torch, timer, ceilings, rng):
    F = torch.nn.functional
    rows = []
    for case, (kind, shape, kw) in POOL.items():
        if quick and shape[0] > 8 and "big" in case:
            shape = (8,) + shape[1:]
        x = rng.standard_normal(shape).astype(np.float32)
        for layout in ("NCHW", "NHWC"):
            xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            xt = torch.from_numpy(x)
            if layout == "NHWC":
                xt = xt.contiguous(memory_format=torch.channels_last)
            if kind == "max":
                ours_fn, peer_fn = (lambda: ops.max_pool2d(xl, **kw, layout=layout),
                                    lambda: F.max_pool2d(xt, **kw))
            elif kind == "avg":
                ours_fn, peer_fn = (lambda: ops.avg_pool2d(xl, **kw, layout=layout),
                                    lambda: F.avg_pool2d(xt, **kw))
            else:
                ours_fn, peer_fn = (lambda: ops.global_avg_pool2d(xl, layout=layout),
                                    lambda: F.adaptive_avg_pool2d(xt, 1))
            out = ours_fn()
            ours, theirs = timer.pair(ours_fn, peer_fn)
            rows.append(_row("pool", case, f"{kind}_pool2d", layout, ours, "torch-cpu", theirs,
                             x.nbytes + out.nbytes, "GB/s", ceilings))
            rows += _pool_backward_rows(case, kind, kw, layout, x, xl, xt, out, torch, timer,
                                        ceilings, rng)
    return rows


def _pool_backward_rows(case, kind, kw, layout, x, xl, xt, out, torch, timer, ceilings, rng):
    """What autograd runs: max pooling with indices, and each pooling's backward, against
    ATen's own kernels for the same (the ones torch.autograd would call). Bytes: what a
    pass must read and write at least (int64 indices 2x a float32 output)."""
    A = torch.ops.aten
    dy = rng.standard_normal(out.shape).astype(np.float32)  # in xl's layout
    if kind != "gap":
        dyt = torch.from_numpy(dy if layout == "NCHW" else dy.transpose(0, 3, 1, 2))
        if layout == "NHWC":
            dyt = dyt.contiguous(memory_format=torch.channels_last)
    rows = []
    if kind == "max":
        k, s, pad = kw["kernel_size"], kw.get("stride", kw["kernel_size"]), kw.get("padding", 0)
        ours, theirs = timer.pair(
            lambda: ops.max_pool2d(xl, **kw, return_indices=True, layout=layout),
            lambda: torch.nn.functional.max_pool2d(xt, **kw, return_indices=True))
        rows.append(_row("pool", case, "max_pool2d_indices", layout, ours, "torch-cpu", theirs,
                         x.nbytes + 3 * out.nbytes, "GB/s", ceilings))
        _, idx = ops.max_pool2d(xl, **kw, return_indices=True, layout=layout)
        _, idxt = torch.nn.functional.max_pool2d(xt, **kw, return_indices=True)
        ours, theirs = timer.pair(
            lambda: ops.max_pool2d_backward(dy, xl, **kw, indices=idx, layout=layout),
            lambda: A.max_pool2d_with_indices_backward(dyt, xt, [k, k], [s, s], [pad, pad],
                                                       [1, 1], False, idxt))
        rows.append(_row("pool", case, "max_pool2d_backward", layout, ours, "torch-cpu", theirs,
                         x.nbytes + 3 * out.nbytes, "GB/s", ceilings))
    elif kind == "avg":
        k, s, pad = kw["kernel_size"], kw.get("stride", kw["kernel_size"]), kw.get("padding", 0)
        ours, theirs = timer.pair(
            lambda: ops.avg_pool2d_backward(dy, xl, **kw, layout=layout),
            lambda: A.avg_pool2d_backward(dyt, xt, [k, k], [s, s], [pad, pad], False, True, None))
        rows.append(_row("pool", case, "avg_pool2d_backward", layout, ours, "torch-cpu", theirs,
                         x.nbytes + out.nbytes, "GB/s", ceilings))
    else:
        gt = torch.from_numpy(dy.reshape(x.shape[0], x.shape[1], 1, 1))
        ours, theirs = timer.pair(
            lambda: ops.global_avg_pool2d_backward(dy, xl, layout=layout),
            lambda: A._adaptive_avg_pool2d_backward(gt, xt))
        rows.append(_row("pool", case, "global_avg_pool2d_backward", layout, ours, "torch-cpu",
                         theirs, x.nbytes + out.nbytes, "GB/s", ceilings))
    return rows


def neighbour_rows(torch, timer, ceilings, rng):
    """Each NEIGHBOUR op timed alone and alternating with PyTorch's, fastconv and PyTorch
    both: mode "alone" and mode "alternating" rows, `slowdown` = alternating / alone for
    each side. A good neighbour keeps both near 1."""
    import torch.nn.functional as F

    from . import torch as fct

    rows = []
    for case, (kind, shape) in NEIGHBOUR.items():
        if kind == "conv":
            N, C, H, W, K, R, stride, pad, groups = shape
            x = rng.standard_normal((N, C, H, W)).astype(np.float32)
            w = (rng.standard_normal((K, C, R, R)) / np.sqrt(C * R * R)).astype(np.float32)
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            ours = lambda: ops.conv2d(x, w, None, stride, pad)  # noqa: E731
            theirs = lambda: F.conv2d(xt, wt, None, stride, pad)  # noqa: E731
            op, work, unit = "conv2d", conv_flops(shape), "TFLOP/s"
        elif kind == "pool":
            x = rng.standard_normal(shape).astype(np.float32)
            xt = torch.from_numpy(x)
            ours = lambda: ops.max_pool2d(x, 3, 2, 1)  # noqa: E731
            theirs = lambda: F.max_pool2d(xt, 3, 2, 1)  # noqa: E731
            op, work, unit = "max_pool2d", x.nbytes * 1.25, "GB/s"
        else:  # LeNet-5's C2 block, forward and backward through autograd
            N, C, H, W, K, R = shape[:6]
            gen = torch.Generator().manual_seed(N)
            x = torch.rand(N, C, H, W, generator=gen).requires_grad_()
            w = (torch.randn(K, C, R, R, generator=gen) / (C * R * R) ** 0.5).requires_grad_()
            b = torch.randn(K, generator=gen).requires_grad_()
            dy = torch.randn(N, K, (H - R + 1) // 2, (W - R + 1) // 2, generator=gen)

            def ours():
                y = fct.conv2d_avgpool(x, w, b, 1, 0, activation="tanh", pool=2)
                torch.autograd.grad(y, (x, w, b), dy)

            def theirs():
                torch.autograd.grad(F.avg_pool2d(torch.tanh(F.conv2d(x, w, b)), 2), (x, w, b), dy)

            op, work, unit = "conv2d_avgpool_fwd_bwd", 3 * conv_flops(shape), "TFLOP/s"
        alone = timer.alone(ours), timer.alone(theirs)
        alternating = timer.pair(ours, theirs)
        for mode, (t_ours, t_theirs) in (("alone", alone), ("alternating", alternating)):
            row = _row("neighbour", case, op, "NCHW", t_ours, "torch-cpu", t_theirs, work, unit,
                       ceilings, mode=mode)
            row["slowdown"] = {"fastconv": t_ours / alone[0], "peer": t_theirs / alone[1]}
            rows.append(row)
    return rows


def _sobel_rows(timer, ceilings, rng):
    import scipy.ndimage as ndi

    rows = []
    for case, shape in SOBEL.items():
        x = rng.standard_normal(shape).astype(np.float32)
        planes = x.reshape(-1, *shape[-2:])

        def scipy_magnitude():
            return [np.hypot(ndi.sobel(p, 0), ndi.sobel(p, 1)) for p in planes]

        ours, theirs = timer.pair(lambda: ops.sobel(x), scipy_magnitude)
        rows.append(_row("sobel", case, "sobel_magnitude", "-", ours, "scipy.ndimage", theirs,
                         2 * x.nbytes, "GB/s", ceilings))
    return rows


def train_rows(torch, device, quick, pair, ceilings):
    """One LeNet-5 step, fastconv's layers against PyTorch's, same initial weights.
    pair(ours, theirs) times two zero-argument callables alternately."""
    import torch.nn.functional as F

    from .train import keras_init_, lenet5

    rows = []
    for batch in TRAIN_BATCHES[:1] if quick else TRAIN_BATCHES:
        gen = torch.Generator().manual_seed(batch)
        x = torch.rand(batch, 1, 28, 28, generator=gen).to(device)
        y = torch.randint(0, 10, (batch,), generator=gen).to(device)
        steps = []
        for backend in ("fastconv", "torch"):
            model = keras_init_(lenet5(backend), 0).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step(model=model, opt=opt):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()

            steps.append(step)
        ours, theirs = pair(*steps)
        # Work: the two convolutions' forward and backward FLOPs (the dense layers are
        # PyTorch's on both sides).
        flops = 3 * sum(conv_flops((batch,) + s[1:]) for s in LENET.values())
        rows.append(_row("train", f"lenet5_b{batch}", "train_step", "NCHW", ours,
                         "torch-cudnn" if device.type == "cuda" else "torch-cpu", theirs,
                         flops, "TFLOP/s", ceilings))
    return rows


def block_rows(torch, device, quick, pair, ceilings):
    """LeNet-5's blocks, forward + backward through autograd: fastconv.torch's
    conv2d_avgpool against PyTorch's conv2d, tanh and avg_pool2d (bias in the conv)."""
    import torch.nn.functional as F

    from . import torch as fct

    rows = []
    for batch in TRAIN_BATCHES[:1] if quick else TRAIN_BATCHES:
        for case, shape in LENET.items():
            _, C, H, W, K, R, stride, pad, _ = shape
            gen = torch.Generator().manual_seed(batch + K)
            x = torch.rand(batch, C, H, W, generator=gen).to(device).requires_grad_()
            w = (torch.randn(K, C, R, R, generator=gen) / (C * R * R) ** 0.5).to(device)
            b = torch.randn(K, generator=gen).to(device)
            w.requires_grad_(), b.requires_grad_()
            P, Q = conv_out((batch,) + shape[1:])
            dy = torch.randn(batch, K, P // 2, Q // 2, generator=gen).to(device)
            padding = "same" if pad else 0

            def ours():
                y = fct.conv2d_avgpool(x, w, b, stride, padding, activation="tanh", pool=2)
                torch.autograd.grad(y, (x, w, b), dy)

            def theirs():
                y = F.avg_pool2d(torch.tanh(F.conv2d(x, w, b, stride, pad)), 2)
                torch.autograd.grad(y, (x, w, b), dy)

            t_ours, t_theirs = pair(ours, theirs)
            flops = 3 * conv_flops((batch,) + shape[1:])
            rows.append(_row("train", f"{case}_block_b{batch}", "conv2d_avgpool_fwd_bwd", "NCHW",
                             t_ours, "torch-cudnn" if device.type == "cuda" else "torch-cpu",
                             t_theirs, flops, "TFLOP/s", ceilings))
    return rows


def model_rows(torch, device, quick, pair, ceilings):
    """torchvision's models, converted by fastconv.torch.convert against unconverted:
    forward (eval, no grad) and forward + backward (train mode). pair(ours, theirs) times
    two zero-argument callables alternately."""
    try:
        import torchvision
    except ImportError:
        raise RuntimeError("the models suite needs torchvision (pip install torchvision, "
                           "the build matching torch)") from None
    from torch.utils.flop_counter import FlopCounterMode

    from . import torch as fct

    peer = "torch-cudnn" if device.type == "cuda" else "torch-cpu"
    rows = []
    for name, size in MODELS.items():
        size = size // 2 if quick else size
        torch.manual_seed(0)
        theirs_model = getattr(torchvision.models, name)(weights=None).to(device)
        ours_model = fct.convert(theirs_model)  # the same parameters and buffers
        for batch in MODEL_BATCHES:
            gen = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, 3, size, size, generator=gen).to(device)

            def forward(model):
                model.eval()
                with torch.no_grad():
                    model(x)

            def step(model):
                model.train()
                model.zero_grad(set_to_none=True)
                model(x).sum().backward()

            for op, fn in (("forward", forward), ("forward_backward", step)):
                counter = FlopCounterMode(display=False)
                with counter:
                    fn(theirs_model)
                t_ours, t_theirs = pair(lambda: fn(ours_model), lambda: fn(theirs_model))
                rows.append(_row("models", f"{name}_{size}_b{batch}", op, "NCHW", t_ours, peer,
                                 t_theirs, counter.get_total_flops(), "TFLOP/s", ceilings))
    return rows


def _environment():
    # gpu_check.py names the commit it tests: the device machine's copy has no .git.
    commit = os.environ.get("FASTCONV_COMMIT", "")
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__), timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return commit or "unknown", cpu


# What each library is told to run on a host restricted to one instruction set: fastconv's
# dispatch (csrc/cpu/isa.cpp), ATen's kernels and oneDNN's JIT. Comparing fastconv's AVX2 path
# with a PyTorch that keeps AVX-512 says nothing about an AVX2-only host; this does.
_ISA_ENVIRONMENT = {
    "avx512": {"FASTCONV_CPU_ISA": "avx512", "ATEN_CPU_CAPABILITY": "avx512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"FASTCONV_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "portable": {"FASTCONV_CPU_ISA": "portable", "ATEN_CPU_CAPABILITY": "default",
                 "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def restrict_isa(isa):
    """Sets the variables that hold fastconv and PyTorch to one instruction set. Call it
    before torch is imported and before fastconv's first CPU op: both read them once."""
    import sys

    if "torch" in sys.modules:
        raise RuntimeError("restrict_isa: torch is already imported; its ISA is fixed")
    os.environ.update(_ISA_ENVIRONMENT[isa])
    from . import _cpu

    if _cpu.isa() != isa:  # fastconv._cpu chose its path when it loaded
        raise RuntimeError(f"restrict_isa: fastconv's CPU backend runs {_cpu.isa()}, not {isa}: "
                           f"set FASTCONV_CPU_ISA={isa} before fastconv loads")


def _peer_isa(torch):
    """PyTorch's instruction sets as this process runs them: ATen's and oneDNN's ceiling."""
    return {"aten": torch.backends.cpu.get_cpu_capability(),
            "onednn_max": os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL")}


def _cpu_rows(suites, quick, torch, timer, ceilings, rng):
    """The CPU suites' rows, in order."""
    rows = []
    for suite in suites:
        if suite == "lenet":
            rows += _conv_rows(suite, LENET, quick, torch, timer, ceilings, rng)
        elif suite == "resnet50":
            rows += _conv_rows(suite, RESNET50, quick, torch, timer, ceilings, rng)
            rows += _conv_rows(suite, batch_one(RESNET50), quick, torch, timer, ceilings, rng)
        elif suite == "depthwise":
            rows += _conv_rows(suite, DEPTHWISE, quick, torch, timer, ceilings, rng)
        elif suite == "backward":
            rows += _conv_rows(suite, {**LENET, **RESNET50}, quick, torch, timer, ceilings, rng)
        elif suite == "pool":
            rows += _pool_rows(quick, torch, timer, ceilings, rng)
        elif suite == "sobel":
            rows += _sobel_rows(timer, ceilings, rng)
        elif suite == "train":
            rows += block_rows(torch, torch.device("cpu"), quick, timer.pair, ceilings)
            rows += train_rows(torch, torch.device("cpu"), quick, timer.pair, ceilings)
        elif suite == "neighbour":
            rows += neighbour_rows(torch, timer, ceilings, rng)
        elif suite == "models":  # a call is up to seconds: fewer rounds
            rows += model_rows(torch, torch.device("cpu"), quick,
                               Timer(min(timer.repeat, 3 if quick else 5)).pair, ceilings)
        else:
            raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    return rows


def run(device="cpu", suites=SUITES, quick=False, repeat=None):
    """Runs the suites and returns the results dict (the --json layout)."""
    global _placement_probe
    _placement_probe = None
    try:
        import torch
    except ImportError:
        raise RuntimeError("the peers need PyTorch: pip install torch") from None
    if device == "cuda":
        from . import bench_gpu

        suites = [s for s in suites if s not in CPU_SUITES]
        if not suites:
            raise ValueError(f"suites {', '.join(CPU_SUITES)} are CPU-only: use --device cpu")

        ceilings, rows, dev = bench_gpu.run(suites, quick, repeat)
        commit, _ = _environment()
        return {"commit": commit, "date": _now(), "device": {**dev, "quick": quick},
                "ceilings": ceilings, "rows": rows}
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    from . import _cpu

    torch.set_num_threads(_cpu.num_threads())
    timer = Timer(repeat or (5 if quick else 15))
    rng = np.random.default_rng(0)
    ceilings = measure_ceilings(torch, timer)
    ceilings["core_rtt_ns"] = _cpu.core_round_trip_ns()
    _placement_probe = lambda: round(_cpu.core_round_trip_ns(2000), 1)
    try:
        rows = _cpu_rows(suites, quick, torch, timer, ceilings, rng)
    finally:
        _placement_probe = None
    commit, cpu = _environment()
    return {"commit": commit, "date": _now(),
            "device": {"name": cpu, "threads": _cpu.num_threads(), "isa": _cpu.isa(),
                       "peer_isa": _peer_isa(torch),
                       "driver": None, "cuda": None,
                       "torch": torch.__version__, "quick": quick},
            "ceilings": ceilings, "rows": rows}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _timing(r):
    t = r.get("timing")
    if not t:
        return ""
    short = {"graph": "graph", "loop": "loop", "wall clock": "wall"}
    return "/".join(short.get(t[side], "events") for side in ("fastconv", "peer"))


def format_table(result):
    d = result["device"]
    peer = d.get("peer_isa")
    peer = f", PyTorch {peer['aten']} / oneDNN {peer['onednn_max']}" if peer else ""
    where = (f"{d['name']} ({d['threads']} threads{', ' + d['isa'] if d.get('isa') else ''}{peer})"
             if "threads" in d else
             f"{d['name']}, driver {d['driver']}, CUDA {d['cuda']}, torch {d['torch']}")
    lines = [f"fastconv bench on {where}, commit {result['commit'][:10]}, {result['date']}",
             "ceilings: " + ", ".join(f"{k} {v:.3g}" for k, v in result["ceilings"].items()),
             f"{'suite':10s} {'case':20s} {'op':22s} {'layout':6s} {'mode':6s} {'timing':13s} "
             f"{'fastconv ms':>11s} {'peer':>19s} {'peer ms':>9s} {'speedup':>8s} "
             f"{'achieved':>16s} {'of ceil':>8s}"
             + (" rtt ns" if any("core_rtt_ns" in r for r in result["rows"]) else "")]
    for r in result["rows"]:
        head = (f"{r['suite']:10s} {r['case']:20s} {r['op']:22s} {r['layout']:6s} "
                f"{r['mode']:6s} ")
        if r["mode"] == "error":
            lines.append(head + f"{r['failed_mode']:13s} {r['error']}")
            continue
        slow = r.get("slowdown")
        lines.append(head + f"{_timing(r):13s} {r['fastconv_ms']:11.3f} {r['peer']:>19s} "
                     f"{r['peer_ms']:9.3f} {r['speedup']:7.2f}x {r['achieved']:9.3g} "
                     f"{r['unit']:>6s} {100 * r['of_ceiling']:7.1f}%"
                     + (f" {r['core_rtt_ns']:6.0f}" if "core_rtt_ns" in r else "")
                     + (f"  (x alone: fastconv {slow['fastconv']:.2f}, peer {slow['peer']:.2f})"
                        if slow and r["mode"] == "alternating" else ""))
    return "\n".join(lines)


def _label(r):
    label = f"{r['suite']}/{r['case']}"
    if r["layout"] not in ("NCHW", "-"):
        label += f" {r['layout']}"
    if r["op"] in ("conv2d_avgpool_fwd_bwd", "forward_backward"):
        label += " fwd+bwd"
    if r["op"].startswith("conv2d_bias"):
        label += f" +{r['op'][len('conv2d_'):]}"
    if r["mode"] != "eager":
        label += f" ({r['mode']}{', ' + _timing(r) if r['mode'] == 'device' else ''})"
    if r["peer"].startswith("cupyx"):
        label += " vs cupyx"
    return label


def plot(result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    rows = [r for r in result["rows"] if r["mode"] != "error"]  # the table lists those
    labels = [_label(r) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.5))
    colors = ["tab:green" if r["speedup"] >= 1 else "tab:red" for r in rows]
    ax.barh(range(len(rows)), [r["speedup"] for r in rows], color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speedup over the peer (peer time / fastconv time; > 1: fastconv faster)")
    failed = len(result["rows"]) - len(rows)
    ax.set_title(f"fastconv vs peers on {result['device']['name']}"
                 + (f" ({failed} cases failed: see the table)" if failed else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def save_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=1)

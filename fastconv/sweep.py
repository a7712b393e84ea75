"""`fastconv sweep --device cuda`: every applicable conv2d variant in every precision, on
every layer of the lenet, resnet50 (batch 32 and batch 1) and depthwise suites, forward,
grad input and grad weight, NCHW and NHWC, timed on the card beside cuDNN in the same
precision; the results JSON, and the table fragment that auto reads (fastconv/_autotable.py).

    fastconv sweep --device cuda --json sweep.json --table autotable-card.json
    python -m fastconv.sweep --merge autotable-card.json     # into fastconv/autotable.json

Method: device time only (each callable captured in a CUDA graph of `calls` calls over
input copies that span twice the L2, the graphs of one layer replayed in turn, medians;
bench_gpu.CudaTimer.device_many), cudnn.benchmark on. Precisions: float32 "strict",
"tf32" and "3xtf32", and float16 / bfloat16 inputs; cuDNN's peer is strict float32 for
strict and 3xtf32 (the same accuracy class), TF32 for tf32, and the same type for the
half types. A variant that computes strict float32 whatever is asked (direct, depthwise,
Winograd) is timed once and stands in every float32 precision. A variant that refuses a
case (its message kept) is left out of the choice; nothing is guessed.

The choice per layer class: the variant with the least geometric-mean slowdown against
the best variant of each of the class's layers, among those measured on all of them.
"""

import argparse
import datetime
import json
import math
import sys

import numpy as np

from . import _autotable, bench, ops
from .bench_gpu import _copies

FLOAT32_PRECISIONS = ("strict", "tf32", "3xtf32")
HALF_TYPES = ("bfloat16", "float16")
PEER = {"strict": "cudnn-strict", "tf32": "cudnn-tf32", "3xtf32": "cudnn-strict",
        "bfloat16": "cudnn-bfloat16", "float16": "cudnn-float16"}
PRECISION_VARIANTS = ("implicit_gemm",)  # the variants whose arithmetic follows precision=
OPS = ("fwd", "bwd_data", "bwd_filter")
LAYOUTS = ("NCHW", "NHWC")
# Each callable: 3 warm-up calls, a graph of CALLS, replayed ROUNDS times. ~1400 callables
# (19 layers x 2 layouts x 3 directions x ~12), the slowest (direct on ResNet-50's batch-32
# layers, some ms a call) ~40 calls each: the sweep's ~2 minutes on an H200 (NOTES.md).
CALLS, ROUNDS = 5, 5


def layers(quick=False):
    """name -> (N, C, H, W, K, R, stride, pad, groups), the suites' layers; quick keeps
    batch 1 out and cuts batch 32 to 8."""
    table = {**bench.LENET, **bench.RESNET50, **bench.DEPTHWISE}
    if quick:
        return {k: (min(s[0], 8),) + s[1:] for k, s in table.items()}
    return {**table, **bench.batch_one(bench.RESNET50)}


def params_of(shape, layout):
    """The conv2d params dict (as fastconv/_args.py builds it) of a suite shape."""
    N, C, H, W, K, R, stride, pad, groups = shape
    P, Q = bench.conv_out(shape)
    return dict(N=N, C=C, H=H, W=W, K=K, R=R, S=R, P=P, Q=Q, stride_h=stride, stride_w=stride,
                pad_h=pad, pad_w=pad, dil_h=1, dil_w=1, groups=groups,
                layout=LAYOUTS.index(layout), act=0, has_bias=False)


def applies(variant, shape, dtype):
    """Whether a variant can run a layer at all (the kernels refuse the rest)."""
    N, C, H, W, K, R, stride, pad, groups = shape
    if dtype != "float32":
        return variant in PRECISION_VARIANTS
    if variant == "depthwise":
        return groups == C and groups > 1
    if variant.startswith("winograd"):
        return R == 3 and stride == 1
    return True


class _Layer:
    """One layer's tensors in one layout and type, and the callables that time it."""

    def __init__(self, torch, shape, layout, dtype, gen, copies):
        N, C, H, W, K, R, stride, pad, groups = shape
        P, Q = bench.conv_out(shape)
        self.torch, self.shape, self.layout = torch, shape, layout
        self.stride, self.pad, self.groups = stride, pad, groups
        dt = getattr(torch, dtype)

        def rand(*s):
            return torch.randn(*s, device=gen.device, generator=gen).to(dt)

        # The peer sees the same memory as NCHW views (channels_last strides for NHWC:
        # cuDNN's NHWC kernels), so both sides read the same bytes.
        if layout == "NCHW":
            self.xs = [rand(N, C, H, W) for _ in range(copies)]
            self.dys = [rand(N, K, P, Q) for _ in range(copies)]
            self.w = rand(K, C // groups, R, R) / math.sqrt(C * R * R / groups)
            self.nchw = lambda t: t
            self.w_nchw = self.w
        else:
            self.xs = [rand(N, H, W, C) for _ in range(copies)]
            self.dys = [rand(N, P, Q, K) for _ in range(copies)]
            self.w = rand(R, R, C // groups, K) / math.sqrt(C * R * R / groups)
            self.nchw = lambda t: t.permute(0, 3, 1, 2)
            # The peer's weight in its own channels_last layout (PyTorch would otherwise
            # copy the permuted view at every call): the same values.
            self.w_nchw = self.w.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        self.copies = copies

    def ours(self, op, variant, precision):
        x, dy, w, k = self.xs, self.dys, self.w, self.copies
        common = dict(layout=self.layout, variant=variant, precision=precision)
        if op == "fwd":
            return lambda i: ops.conv2d(x[i % k], w, None, self.stride, self.pad, 1, self.groups,
                                        **common)
        mask = (True, False, False) if op == "bwd_data" else (False, True, False)
        return lambda i: ops.conv2d_backward(dy[i % k], x[i % k], w, self.stride, self.pad, 1,
                                             self.groups, output_mask=mask, **common)

    def peer(self, op, tf32):
        torch, k = self.torch, self.copies
        x = [self.nchw(t) for t in self.xs]
        dy = [self.nchw(t) for t in self.dys]
        w, s, p, g = self.w_nchw, [self.stride] * 2, [self.pad] * 2, self.groups

        def flags():
            return torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False,
                                              allow_tf32=tf32)

        if op == "fwd":
            def fn(i):
                with flags():
                    return torch.nn.functional.conv2d(x[i % k], w, None, s, p, 1, g)
            return fn
        mask = [True, False, False] if op == "bwd_data" else [False, True, False]

        def fn(i):
            with flags():
                return torch.ops.aten.convolution_backward(dy[i % k], x[i % k], w, None, s, p,
                                                           [1, 1], False, [0, 0], g, mask)
        return fn


def _probe(fn):
    """None if fn runs, else its message (a variant that refuses the case)."""
    try:
        fn(0)
        return None
    except (ValueError, TypeError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"[:300]


def _candidates(layer, op, dtype, variants):
    """(variant, precision, callable) of fastconv for one type; the peers as (None, mode)."""
    out = []
    for v in variants:
        if not applies(v, layer.shape, dtype):
            continue
        if dtype != "float32":
            out.append((v, dtype, layer.ours(op, v, None)))
        elif v in PRECISION_VARIANTS:
            out += [(v, prec, layer.ours(op, v, prec)) for prec in FLOAT32_PRECISIONS]
        else:
            out.append((v, "strict", layer.ours(op, v, "strict")))
    if dtype == "float32":
        out += [(None, "strict", layer.peer(op, False)), (None, "tf32", layer.peer(op, True))]
    else:
        out.append((None, dtype, layer.peer(op, False)))
    return out


def sweep(torch, timer, gen, variants, quick=False, log=print):
    """The rows: one per layer, op, layout, type and variant (the peers' rows have
    variant None), each with its time or the reason it did not run."""
    rows = []
    for name, shape in layers(quick).items():
        flops = bench.conv_flops(shape)
        for layout in LAYOUTS:
            for dtype in ("float32",) + HALF_TYPES:
                itemsize = 4 if dtype == "float32" else 2
                N, C, H, W = shape[:4]
                copies = _copies(itemsize * N * C * H * W, timer.l2_bytes)
                try:
                    layer = _Layer(torch, shape, layout, dtype, gen, copies)
                except Exception as e:  # noqa: BLE001 - recorded, and the sweep goes on
                    rows.append(dict(layer=name, layout=layout, dtype=dtype, op="-",
                                     error=f"{type(e).__name__}: {e}"[:300]))
                    continue
                for op in OPS:
                    cands = _candidates(layer, op, dtype, variants)
                    runnable = []
                    for v, prec, fn in cands:
                        row = dict(layer=name, shape=list(shape), layout=layout, dtype=dtype,
                                   op=op, variant=v, precision=prec,
                                   side="fastconv" if v else PEER[prec if dtype == "float32"
                                                                   else dtype])
                        why = _probe(fn)
                        if why:
                            row["refused"] = why
                        else:
                            runnable.append((row, fn))
                        rows.append(row)
                    if not runnable:
                        continue
                    try:
                        timed = timer.device_many([fn for _, fn in runnable], rounds=ROUNDS)
                    except Exception as e:  # noqa: BLE001
                        for row, _ in runnable:
                            row["error"] = f"{type(e).__name__}: {e}"[:300]
                        continue
                    for (row, _), (sec, how) in zip(runnable, timed):
                        row.update(ms=sec * 1e3, TFLOPs=flops / sec / 1e12, timing=how)
                log(f"sweep: {name} {layout} {dtype} done")
    return rows


def _modes(dtype):
    return FLOAT32_PRECISIONS if dtype == "float32" else (dtype,)


def choices(rows):
    """Per (layer, op, layout, mode): the fastest variant, its time and the peer's; a
    float32 variant that ignores precision counts in every float32 mode."""
    timed = [r for r in rows if "ms" in r]
    out = []
    groups = {}
    for r in timed:
        groups.setdefault((r["layer"], r["op"], r["layout"], r["dtype"]), []).append(r)
    for (layer, op, layout, dtype), rs in groups.items():
        for mode in _modes(dtype):
            ours = [r for r in rs if r["variant"] and
                    (r["precision"] == mode or r["variant"] not in PRECISION_VARIANTS)]
            peer = [r for r in rs if r["variant"] is None and
                    r["side"] == PEER[mode]]
            if not ours:
                continue
            best = min(ours, key=lambda r: r["ms"])
            out.append(dict(layer=layer, shape=best["shape"], op=op, layout=layout, dtype=dtype,
                            mode=mode, variant=best["variant"], ms=best["ms"],
                            times={r["variant"]: r["ms"] for r in ours},
                            peer=peer[0]["side"] if peer else None,
                            peer_ms=peer[0]["ms"] if peer else None,
                            speedup=peer[0]["ms"] / best["ms"] if peer else None))
    return out


def table_fragment(card, best, commit=None):
    """{"cards": {card: {"classes": {key: {"variant", "layers", "slowdown"}}}}} from
    choices(): per class, the variant with the least geometric-mean slowdown against
    each layer's best, among the variants measured on all the class's layers."""
    classes = {}
    for c in best:
        dtype = c["dtype"]
        key = _autotable.layer_class(c["op"], params_of(tuple(c["shape"]), c["layout"]), dtype,
                                     c["mode"] if dtype == "float32" else None)
        classes.setdefault(key, []).append(c)
    out = {}
    for key, cs in sorted(classes.items()):
        common = set.intersection(*(set(c["times"]) for c in cs))
        if not common:
            continue

        def slowdown(v):
            return math.exp(np.mean([math.log(c["times"][v] / c["ms"]) for c in cs]))

        v = min(sorted(common), key=slowdown)
        out[key] = {"variant": v, "layers": sorted({c["layer"] for c in cs}),
                    "slowdown": round(slowdown(v), 4)}
    entry = {"classes": out, "date": datetime.date.today().isoformat()}
    if commit:
        entry["commit"] = commit
    return {"cards": {card: entry}}


def format_table(best):
    lines = [f"{'layer':<20} {'op':<10} {'layout':<6} {'mode':<9} {'variant':<14} "
             f"{'ms':>9} {'peer ms':>9} {'x peer':>7}"]
    for c in best:
        peer = f"{c['peer_ms']:9.4f} {c['speedup']:7.2f}" if c["peer_ms"] else f"{'-':>9} {'-':>7}"
        lines.append(f"{c['layer']:<20} {c['op']:<10} {c['layout']:<6} {c['mode']:<9} "
                     f"{c['variant']:<14} {c['ms']:9.4f} {peer}")
    return "\n".join(lines)


def run(quick=False, timer=None, torch=None, gen=None, env=None, log=print):
    """The sweep on the current CUDA device (or, with timer/torch/gen given, wherever
    they say: the dry run's stand-in). Returns the result dict."""
    import fastconv

    if timer is None:
        import torch

        from . import bench_gpu

        if not fastconv.cuda_available() or not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but no usable CUDA GPU (see `fastconv info`)")
        torch.backends.cudnn.benchmark = True
        timer = bench_gpu.CudaTimer(torch, repeat=ROUNDS, calls=CALLS)
        gen = torch.Generator(device="cuda").manual_seed(0)
        env = {**bench_gpu._environment(torch), "l2_bytes": timer.l2_bytes}
        variants = fastconv.conv2d_variants("cuda")
    else:
        variants = fastconv.conv2d_variants("cuda" if env.get("cuda") else "cpu")
    rows = sweep(torch, timer, gen, variants, quick, log)
    best = choices(rows)
    return {"env": env, "date": datetime.date.today().isoformat(), "variants": list(variants),
            "rows": rows, "best": best}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastconv.sweep",
                                 description="fold a sweep's table fragment into "
                                             "fastconv/autotable.json")
    ap.add_argument("--merge", metavar="FRAGMENT", required=True,
                    help="the --table file a `fastconv sweep` run wrote")
    args = ap.parse_args(argv)
    with open(args.merge) as f:
        fragment = json.load(f)
    cards = _autotable.merge(fragment)
    print(f"merged {', '.join(cards)} into {_autotable.TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

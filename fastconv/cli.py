"""The `fastconv` command (also `python -m fastconv`).

  fastconv info   version, backends built, GPU name and architecture, CUDA versions
  fastconv bench  side-by-side timings against PyTorch / SciPy (benchmarks issue)
  fastconv demo   the main job: every op on the best backend present (the GPU if there
                  is one, else the CPU), checked against the float64 reference and timed
                  against it, as a small table
"""

import argparse
import sys
import time

import numpy as np

import fastconv
from fastconv import reference as ref


def _backends():
    rows = [("cpu", "built (C++17, OpenMP)")]
    try:
        from fastconv import _cuda
    except ImportError as e:
        rows.append(("cuda", f"not built ({e})"))
        return rows, None
    n = _cuda.device_count()
    if n == 0:
        rows.append(("cuda", "built; no CUDA device or driver on this machine"))
        return rows, None
    info = _cuda.device_info(0)
    rows.append(("cuda", f"built; {n} device(s)"))
    return rows, info


def cmd_info(args):
    print(f"fastconv {fastconv.__version__}")
    rows, info = _backends()
    for name, state in rows:
        print(f"  backend {name:5s} {state}")
    if info:
        major, minor = info["capability"]
        rt, drv = info["runtime_version"], info["driver_api_version"]
        print(f"  GPU 0: {info['name']}, sm_{major}{minor}, {info['multiprocessors']} SMs, "
              f"{info['memory_bytes'] / 2**30:.1f} GiB")
        print(f"  CUDA runtime {rt // 1000}.{rt % 1000 // 10}, driver supports {drv // 1000}.{drv % 1000 // 10}")
    return 0


def _on_device(a, use_gpu):
    if not use_gpu:
        return a
    import cupy

    return cupy.asarray(a)


def _to_numpy(a):
    return a if isinstance(a, np.ndarray) else a.get()


def _time(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        if not isinstance(out, np.ndarray) and hasattr(out, "device"):
            out.device.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cmd_demo(args):
    use_gpu = fastconv.cuda_available()
    if args.device == "cuda" and not use_gpu:
        print("fastconv demo: --device cuda, but no usable CUDA GPU (see `fastconv info`)",
              file=sys.stderr)
        return 2
    if args.device == "cpu":
        use_gpu = False
    if use_gpu:
        try:
            import cupy  # noqa: F401
        except ImportError:
            print("fastconv demo: a GPU is present but CuPy is not installed; running on the CPU")
            use_gpu = False
    where = "GPU (CuPy arrays)" if use_gpu else "CPU backend (NumPy arrays)"
    print(f"fastconv {fastconv.__version__} demo on the {where}: every op against the float64 reference\n")
    rng = np.random.default_rng(0)
    f32 = np.float32
    digits = rng.standard_normal((64, 1, 28, 28)).astype(f32)
    w1, b1 = rng.standard_normal((6, 1, 5, 5)).astype(f32) * 0.2, rng.standard_normal(6).astype(f32)
    feat = rng.standard_normal((64, 6, 14, 14)).astype(f32)
    w2 = rng.standard_normal((16, 6, 5, 5)).astype(f32) * 0.1
    image = rng.standard_normal((512, 512)).astype(f32)
    seq, taps = rng.standard_normal((16, 4096)).astype(f32), rng.standard_normal(31).astype(f32)
    table = [
        ("conv2d  LeNet C1, 5x5 same + tanh", "conv2d", (digits, w1, b1), dict(padding="same", activation="tanh")),
        ("conv2d  LeNet C2, 5x5 valid", "conv2d", (feat, w2), dict(padding="valid")),
        ("avg_pool2d 2x2", "avg_pool2d", (feat,), dict(kernel_size=2)),
        ("max_pool2d 3x3/s2/p1", "max_pool2d", (feat,), dict(kernel_size=3, stride=2, padding=1)),
        ("global_avg_pool2d", "global_avg_pool2d", (feat,), {}),
        ("sobel magnitude 512x512", "sobel", (image,), {}),
        ("filter2d 5x5", "filter2d", (image, w2[0, 0]), {}),
        ("conv1d 16 x 4096, 31 taps", "conv1d", (seq, taps), {}),
    ]
    print(f"{'op':36s} {'rel. error':>11s} {'fastconv ms':>12s} {'reference ms':>13s} {'speedup':>8s}")
    worst = 0.0
    for name, op, arrays, kwargs in table:
        dev = [_on_device(a, use_gpu) for a in arrays]
        ours = lambda: getattr(fastconv, op)(*dev, **kwargs)  # noqa: E731
        theirs = lambda: getattr(ref, op)(*arrays, **kwargs)  # noqa: E731
        expect = theirs()
        got = _to_numpy(ours())
        err = float(np.linalg.norm(got - expect) / np.linalg.norm(expect))
        worst = max(worst, err)
        t_ours, t_ref = _time(ours), _time(theirs, repeat=1)
        print(f"{name:36s} {err:11.2e} {t_ours * 1e3:12.3f} {t_ref * 1e3:13.1f} {t_ref / t_ours:7.1f}x")
    ok = worst < 1e-5
    print(f"\nworst relative error {worst:.2e}: {'OK' if ok else 'FAILED'} (bound 1e-5 for float32)")
    return 0 if ok else 1


def cmd_bench(args):
    from . import bench

    suites = bench.SUITES if not args.suite or "all" in args.suite else args.suite
    result = bench.run(args.device, suites, quick=args.quick)
    print(bench.format_table(result))
    if args.json:
        bench.save_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastconv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, backends, GPU").set_defaults(fn=cmd_info)
    demo = sub.add_parser("demo", help="every op against the reference, timed")
    demo.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    demo.set_defaults(fn=cmd_demo)
    from .bench import SUITES

    bench = sub.add_parser("bench", help="side-by-side timings against the peers")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bench.add_argument("--suite", nargs="+", choices=[*SUITES, "all"], metavar="NAME",
                       help=f"suites to run: {', '.join(SUITES)} or all (default: all)")
    bench.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG chart of the speedups")
    bench.set_defaults(fn=cmd_bench)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        print(f"fastconv {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

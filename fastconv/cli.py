"""The `fastconv` command (also `python -m fastconv`).

  fastconv demo   the main job, on the GPU when there is one, else on the CPU: the Sobel
                  edge map of scikit-image's camera photograph written to a PNG, a short
                  LeNet-5 training on handwritten digits, a small benchmark table
  fastconv sobel  IMAGE -o OUT: the edge map of a photograph (any format Pillow reads)
  fastconv train  LeNet-5 on fastconv's or PyTorch's kernels (see fastconv.train)
  fastconv bench  side-by-side timings against PyTorch / SciPy
  fastconv sweep  every conv2d variant x precision on the card, against cuDNN: the
                  measurements auto's table (fastconv/autotable.json) is made from
  fastconv check  every op on the best backend, against the float64 reference
  fastconv info   version, backends built, the CPU's ISA path, GPU name and architecture,
                  CUDA versions

Bad input (a missing file, an unknown option value, --device cuda without a GPU) gives
one line on stderr and a non-zero exit status, never a traceback.
"""

import argparse
import os
import sys
import time

import numpy as np

import fastconv
from fastconv import reference as ref


def _cpu_backend():
    """The CPU backend's row, and its ISA line (None where it does not load: a bad
    FASTCONV_CPU_ISA fails the import with the reason)."""
    try:
        from fastconv import _cpu
    except ImportError as e:
        return ("cpu", f"built but not loadable ({e})"), None
    isa = (f"CPU ISA path: {_cpu.isa()} (this CPU supports {', '.join(_cpu.supported_isas())}; "
           f"FASTCONV_CPU_ISA={os.environ.get('FASTCONV_CPU_ISA', '') or 'unset'})")
    return ("cpu", "built (C++17, OpenMP)"), isa


def _backends():
    cpu_row, _ = _cpu_backend()
    rows = [cpu_row]
    try:
        from fastconv import _cuda
    except ImportError as e:
        rows.append(("cuda", f"not built or not loadable ({e})"))
        return rows, None
    archs = ", ".join(f"sm_{a}" for a in getattr(_cuda, "built_archs", "?").split(";"))
    n, error = _cuda.device_status()
    if n == 0:
        rows.append(("cuda", f"built for {archs}; " + (error or "no CUDA device on this machine")))
        return rows, None
    info = _cuda.device_info(0)
    rows.append(("cuda", f"built for {archs}; {n} device(s)"))
    return rows, info


def cmd_info(args):
    print(f"fastconv {fastconv.__version__}")
    rows, info = _backends()
    isa = _cpu_backend()[1]
    for name, state in rows:
        print(f"  backend {name:5s} {state}")
        if name == "cpu" and isa:
            print(f"    {isa}")
    if info:
        major, minor = info["capability"]
        rt, drv = info["runtime_version"], info["driver_api_version"]
        print(f"  GPU 0: {info['name']}, sm_{major}{minor}, {info['multiprocessors']} SMs, "
              f"{info['memory_bytes'] / 2**30:.1f} GiB")
        print(f"  CUDA runtime {rt // 1000}.{rt % 1000 // 10} (built in), driver supports "
              f"{drv // 1000}.{drv % 1000 // 10}")
    reason = fastconv.cuda_unavailable_reason()
    print("GPU backend usable" if reason is None else f"GPU backend unusable: {reason}")
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


def cmd_check(args):
    use_gpu = fastconv.cuda_available()
    if args.device == "cuda" and not use_gpu:
        raise CommandError("--device cuda, but no usable CUDA GPU (see `fastconv info`)")
    if args.device == "cpu":
        use_gpu = False
    if use_gpu:
        try:
            import cupy  # noqa: F401
        except ImportError:
            print("fastconv check: a GPU is present but CuPy is not installed; running on the CPU")
            use_gpu = False
    where = "GPU (CuPy arrays)" if use_gpu else "CPU backend (NumPy arrays)"
    print(f"fastconv {fastconv.__version__} check on the {where}: every op against the float64 reference\n")
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

    _device(args.device)  # --device cuda without a GPU: one line, before any work
    if args.isa:
        if args.device != "cpu":
            raise SystemExit("fastconv bench: --isa is for --device cpu")
        bench.restrict_isa(args.isa)  # before torch loads: its libraries read the variables once
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


def cmd_sweep(args):
    import json

    from . import sweep

    _device(args.device)
    result = sweep.run(quick=args.quick, log=lambda line: print(line, flush=True))
    print(sweep.format_table(result["best"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.table:
        fragment = sweep.table_fragment(result["env"]["name"], result["best"], args.commit)
        with open(args.table, "w") as f:
            json.dump(fragment, f, indent=1, sort_keys=True)
        print(f"wrote {args.table} ({len(fragment['cards'][result['env']['name']]['classes'])} "
              f"layer classes)")
    return 0


# ----------------------------------------------------------------------- sobel


def read_gray(path):
    """An image file as a 2-D array: 8-bit images as uint8 (fastconv filters them in
    float32), 16-bit and float images as float32, colour converted to 8-bit luminance
    (ITU-R 601, as Pillow's "L")."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                return np.asarray(im, dtype=np.float32)
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise CommandError(f"{path}: not an image Pillow can read") from None
    except OSError as e:
        raise CommandError(f"{path}: cannot read it ({e.strerror or e})") from None


def edge_image(edges, axis):
    """Float edges as 8-bit: the magnitude scaled so its maximum is 255; a signed
    derivative centred on 128."""
    peak = float(np.abs(edges).max()) or 1.0
    if axis is None:
        return np.clip(np.rint(edges * (255.0 / peak)), 0, 255).astype(np.uint8)
    return np.clip(np.rint(128.0 + edges * (127.0 / peak)), 0, 255).astype(np.uint8)


def write_image(path, edges, axis):
    """A .npy path gets the float32 values; any other the 8-bit picture, in the format
    its extension names."""
    if path.lower().endswith(".npy"):
        np.save(path, edges)
        return
    from PIL import Image

    try:
        Image.fromarray(edge_image(edges, axis)).save(path)
    except (KeyError, ValueError):
        raise CommandError(f"{path}: unknown image format (use .png, .jpg, .tif, ... or .npy)") from None
    except OSError as e:
        raise CommandError(f"{path}: cannot write it ({e.strerror or e})") from None


def sobel_on(image, axis, mode, device):
    """fastconv.sobel of a 2-D NumPy image (uint8 or float32) on the device; a float32
    NumPy result."""
    if device == "cpu":
        return fastconv.sobel(image, axis=axis, mode=mode)
    import torch

    out = fastconv.sobel(torch.from_numpy(image).to("cuda"), axis=axis, mode=mode)
    return out.cpu().numpy()


_AXES = {"magnitude": None, "x": 1, "y": 0}


def cmd_sobel(args):
    device = _device(args.device)
    image = read_gray(args.image)
    t0 = time.perf_counter()
    edges = sobel_on(image, _AXES[args.axis], args.mode, device)
    ms = (time.perf_counter() - t0) * 1e3
    write_image(args.output, edges, _AXES[args.axis])
    print(f"{args.image}: {image.shape[1]}x{image.shape[0]} -> {args.output} "
          f"(sobel {args.axis}, mode {args.mode}, {device}, {ms:.1f} ms)")
    return 0


# ----------------------------------------------------------------------- train


def cmd_train(args):
    from .train import Config, train

    _device(args.device)  # a one-line error before any data is read
    cfg = Config(backend=args.backend, device=args.device, epochs=args.epochs,
                 batch_size=args.batch_size, lr=args.lr, seed=args.seed, data=args.data,
                 validation_split=args.validation_split, flip=args.flip,
                 progress=not args.no_progress)
    train(cfg)
    return 0


# ----------------------------------------------------------------------- demo


def _demo_bench(device):
    """fastconv against the peer a user would otherwise call, alternating in one process."""
    import torch
    import torch.nn.functional as F

    from .bench import Timer

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dev)

    x1, w1, b1 = rand(256, 1, 28, 28), rand(6, 1, 5, 5) * 0.2, rand(6)
    x2, w2, b2 = rand(256, 6, 14, 14), rand(16, 6, 5, 5) * 0.1, rand(16)
    feat = rand(256, 6, 28, 28)
    photo = rand(1024, 1024)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=dev)
    kernels = torch.stack([kx, kx.T])[:, None]

    def torch_sobel():
        g = F.conv2d(F.pad(photo[None, None], (1, 1, 1, 1), mode="reflect"), kernels)
        return torch.sqrt(g[0, 0] ** 2 + g[0, 1] ** 2)

    cases = [
        ("conv2d LeNet C1 5x5 same + bias + tanh", "torch conv2d + tanh",
         lambda: fastconv.conv2d(x1, w1, b1, padding="same", activation="tanh"),
         lambda: torch.tanh(F.conv2d(x1, w1, b1, padding="same"))),
        ("conv2d LeNet C2 5x5 valid + bias + tanh", "torch conv2d + tanh",
         lambda: fastconv.conv2d(x2, w2, b2, activation="tanh"),
         lambda: torch.tanh(F.conv2d(x2, w2, b2))),
        ("avg_pool2d 2x2 (256 x 6 x 28 x 28)", "torch avg_pool2d",
         lambda: fastconv.avg_pool2d(feat, 2), lambda: F.avg_pool2d(feat, 2)),
        ("sobel magnitude 1024 x 1024", "torch conv2d sobel",
         lambda: fastconv.sobel(photo), torch_sobel),
    ]
    timer = Timer(15)
    print(f"\n{'op':42s} {'fastconv ms':>11s} {'peer':>22s} {'peer ms':>9s} {'speedup':>8s}")
    for name, peer, ours, theirs in cases:
        def timed(fn):
            def run():
                fn()
                sync()
            return run
        t_ours, t_peer = timer.pair(timed(ours), timed(theirs))
        print(f"{name:42s} {t_ours * 1e3:11.3f} {peer:>22s} {t_peer * 1e3:9.3f} "
              f"{t_peer / t_ours:7.2f}x")


def cmd_demo(args):
    import skimage.data

    from .train import Config, train

    device = _device(args.device)
    where = "the GPU" if device == "cuda" else "the CPU"
    print(f"fastconv {fastconv.__version__} demo on {where}\n")

    photo = skimage.data.camera()  # 8-bit, filtered as it is
    t0 = time.perf_counter()
    edges = sobel_on(photo, None, "reflect", device)
    ms = (time.perf_counter() - t0) * 1e3
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, "camera-sobel.png")
    write_image(out, edges, None)
    print(f"1. Sobel edge map of scikit-image's camera photograph "
          f"({photo.shape[1]}x{photo.shape[0]}, {ms:.1f} ms) -> {out}\n")

    print(f"2. LeNet-5 on fastconv's kernels, {args.epochs} epochs:")
    train(Config(backend="fastconv", device=device, epochs=args.epochs, progress=False))

    print("\n3. fastconv against the peer, same inputs, alternating calls (median of 15):")
    _demo_bench(device)
    return 0


# ----------------------------------------------------------------------- main


class CommandError(Exception):
    """A user error the command reports in one line."""


def _device(name):
    """"auto" -> "cuda" when the GPU backend can run, else "cpu"; "cuda" without one is
    a CommandError."""
    gpu = fastconv.cuda_available()
    if name == "cuda" and not gpu:
        raise CommandError("--device cuda, but no usable CUDA GPU (see `fastconv info`)")
    return "cuda" if name == "cuda" or (name == "auto" and gpu) else "cpu"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}\n")


def _positive_int(v):
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return n


def _fraction(v):
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {v!r}") from None
    if not 0.0 < f < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {v!r}")
    return f


def build_parser():
    from .bench import SUITES

    parser = _Parser(prog="fastconv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    devices = ["auto", "cpu", "cuda"]

    demo = sub.add_parser("demo", help="Sobel of a photograph, a short LeNet-5 training, a "
                                       "benchmark table")
    demo.add_argument("--device", choices=devices, default="auto")
    demo.add_argument("--out-dir", default=".", metavar="DIR",
                      help="where camera-sobel.png goes (default: the current folder)")
    demo.add_argument("--epochs", type=_positive_int, default=3)
    demo.set_defaults(fn=cmd_demo)

    sobel = sub.add_parser("sobel", help="edge map of an image file")
    sobel.add_argument("image", help="any format Pillow reads; 8-bit, 16-bit or colour")
    sobel.add_argument("-o", "--output", required=True, metavar="OUT",
                       help="an image file (.png, .jpg, .tif, ...: 8-bit) or .npy (float32)")
    sobel.add_argument("--axis", choices=list(_AXES), default="magnitude",
                       help="magnitude sqrt(gx^2 + gy^2) (default), x (d/dx) or y (d/dy)")
    sobel.add_argument("--mode", choices=["reflect", "mirror", "nearest", "constant", "wrap"],
                       default="reflect", help="border mode, as scipy.ndimage names them")
    sobel.add_argument("--device", choices=devices, default="auto")
    sobel.set_defaults(fn=cmd_sobel)

    train = sub.add_parser("train", help="LeNet-5 on handwritten digits (torchrun for DDP)")
    train.add_argument("--backend", choices=["fastconv", "torch"], default="fastconv",
                       help="whose kernels: fastconv's or PyTorch's (default fastconv)")
    train.add_argument("--device", choices=devices, default="auto")
    train.add_argument("--epochs", type=_positive_int, default=10)
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--data", metavar="PATH",
                       help="MNIST IDX files (a folder or the images file) or a folder with "
                            "one sub-folder per class; default: scikit-learn's digits")
    train.add_argument("--validation-split", type=_fraction, default=0.2)
    train.add_argument("--flip", action="store_true",
                       help="random horizontal flips of the training images")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(fn=cmd_train)

    bench = sub.add_parser("bench", help="side-by-side timings against the peers")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bench.add_argument("--suite", nargs="+", choices=[*SUITES, "all"], metavar="NAME",
                       help=f"suites to run: {', '.join(SUITES)} or all (default: all)")
    bench.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    bench.add_argument("--isa", choices=["avx512", "avx2", "portable"],
                       help="run fastconv and PyTorch (ATen and oneDNN) on this instruction set only: "
                            "what a host without the wider units would measure (default: the best "
                            "each library finds)")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG chart of the speedups")
    bench.set_defaults(fn=cmd_bench)

    sweep = sub.add_parser("sweep", help="every conv2d variant and precision on the suites' "
                                         "layers, against cuDNN: the table auto reads")
    sweep.add_argument("--device", choices=["cuda"], default="cuda")
    sweep.add_argument("--quick", action="store_true", help="batch 8, no batch-1 layers")
    sweep.add_argument("--json", metavar="PATH", help="write every timing as JSON")
    sweep.add_argument("--table", metavar="PATH",
                       help="write auto's table fragment for this card (fold it into "
                            "fastconv/autotable.json with python -m fastconv.sweep --merge)")
    sweep.add_argument("--commit", help="the commit the kernels were built from, for the table")
    sweep.set_defaults(fn=cmd_sweep)

    check = sub.add_parser("check", help="every op against the float64 reference, timed")
    check.add_argument("--device", choices=devices, default="auto")
    check.set_defaults(fn=cmd_check)

    sub.add_parser("info", help="version, backends, GPU").set_defaults(fn=cmd_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CommandError as e:
        print(f"fastconv {args.command}: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as e:
        print(f"fastconv {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastconv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

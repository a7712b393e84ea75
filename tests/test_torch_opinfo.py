"""PyTorch's own samples through fastconv (issue 16, item 1): the OpInfo samples of
nn.functional.conv2d, max_pool2d, avg_pool2d and adaptive_avg_pool2d (at output size 1,
the global average pool fastconv has), and the ModuleInfo samples of nn.Conv2d,
MaxPool2d, AvgPool2d and AdaptiveAvgPool2d(1), forward and gradients, float32 and
float64, on the plain functions, the autograd path and the fastconv.torch modules.

Zero mismatches and zero crashes: every sample either matches torch or is refused by
one of the REFUSALS below (each in the README's table), with that refusal's exception
type and message. A refusal outside the list, any other exception, or a refusal class
that lets its sample through, fails the test."""

import itertools
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest "
                    "(in fastconv's test extra)")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402

FLOATS = (torch.float32, torch.float64)
BOUND = {torch.float32: 1e-5, torch.float64: 1e-12}
MAX_SAMPLES = 96  # per op and dtype: max_pool2d alone has 1440; a fixed stride through them


def _divisor(sample):
    d = sample.kwargs.get("divisor_override", sample.args[5] if len(sample.args) > 5 else None)
    return d if d is not None else 0


# name: (does this sample fall in the class?, exception type, message pattern). Mirrors the
# README's table "What fastconv refuses that torch accepts".
REFUSALS = {
    "dtype": (lambda op, s: s.input.dtype not in FLOATS, TypeError,
              r"takes float32 or float64 arrays, got (float16|bfloat16|complex\d+|u?int\d+)"),
    "negative divisor_override": (lambda op, s: op == "nn.functional.avg_pool2d"
                                  and _divisor(s) < 0, ValueError,
                                  r"divisor_override must be >= 1"),
}

# The fastconv function run on each OpInfo sample, called as torch's is.
OURS = {
    "nn.functional.conv2d": fastconv.conv2d,
    "nn.functional.max_pool2d": fastconv.max_pool2d,
    "nn.functional.avg_pool2d": fastconv.avg_pool2d,
    # Output size 1 only: the global average pool, (N, C) -> (N, C, 1, 1).
    "nn.functional.adaptive_avg_pool2d": lambda x, *_: fastconv.global_avg_pool2d(x)[..., None, None],
}
THEIRS_ARGS = {"nn.functional.adaptive_avg_pool2d": lambda s: (s.input, 1)}


def _refusals_of(op, sample):
    """The refusal classes a sample falls in (a float16 sample with a negative divisor
    may be refused for either)."""
    return [name for name, (applies, _, _) in REFUSALS.items() if applies(op, sample)]


def _tensors(out):
    return list(out) if isinstance(out, tuple) else [out]


def _compare(what, got, want, dtype, problems):
    for i, (g, w) in enumerate(zip(_tensors(got), _tensors(want))):
        if g.shape != w.shape or g.dtype != w.dtype:
            problems.append(f"{what}[{i}]: {tuple(g.shape)} {g.dtype}, torch "
                            f"{tuple(w.shape)} {w.dtype}")
        elif not w.is_floating_point():  # max_pool2d's indices
            if not torch.equal(g, w):
                problems.append(f"{what}[{i}]: indices differ")
        elif w.numel():
            err = ((g.double() - w.double()).norm() / w.double().norm().clamp_min(1e-30)).item()
            if not err < BOUND[dtype]:
                problems.append(f"{what}[{i}]: relative error {err:.3g}")


def _differentiable(args):
    return [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad]


def _run_sample(what, ours, theirs, sample_args, dtype, problems):
    """Forward of both on the same sample; then gradients of <out, dy> for every
    tensor that requires grad."""
    want = theirs(*sample_args)
    got = ours(*sample_args)
    _compare(what, got, want, dtype, problems)
    leaves = _differentiable(sample_args)
    if not leaves or not _tensors(want)[0].requires_grad:
        return
    if not _tensors(got)[0].requires_grad:
        problems.append(f"{what}: torch's result has a gradient, fastconv's none")
        return
    dy = torch.randn_like(_tensors(want)[0])
    g_want = torch.autograd.grad(_tensors(want)[0], leaves, dy, allow_unused=True)
    g_got = torch.autograd.grad(_tensors(got)[0], leaves, dy, allow_unused=True)
    for i, (a, b) in enumerate(zip(g_got, g_want)):
        if (a is None) != (b is None):
            problems.append(f"{what}: gradient {i} is None on one side only")
        elif a is not None:
            _compare(f"{what} grad {i}", a, b, dtype, problems)


def _strided(samples, limit, refused):
    """At most limit samples, spread over all of them; for a refused dtype the first few
    (generating all 1440 of max_pool2d's for each would take seconds)."""
    if refused:
        return list(itertools.islice(samples, limit))
    samples = list(samples)
    step = max(1, len(samples) // limit)
    return samples[::step][:limit]


def _expect_refusal(what, names, call, problems):
    try:
        call()
    except Exception as e:  # noqa: BLE001: anything but a listed refusal is a crash
        if not any(isinstance(e, REFUSALS[n][1]) and re.search(REFUSALS[n][2], str(e))
                   for n in names):
            problems.append(f"{what}: should be refused as {' or '.join(names)}, raised "
                            f"{type(e).__name__}: {e}")
        return
    problems.append(f"{what}: refusal class {' / '.join(names)} let the sample through")


OPS = {op.name: op for op in op_db if op.name in OURS and op.variant_test_name == ""}


@pytest.mark.parametrize("name", sorted(OURS))
def test_opinfo_samples_match_torch_or_are_refused_as_documented(name):
    op = OPS[name]
    problems, seen = [], 0
    dtypes = sorted(op.supported_dtypes("cpu"), key=str)
    for dtype in dtypes:
        grad = dtype in FLOATS
        limit = MAX_SAMPLES if dtype in FLOATS else 3  # a refused dtype: a few samples show it
        for k, s in enumerate(_strided(op.sample_inputs("cpu", dtype, requires_grad=grad), limit,
                                      not grad)):
            what = f"{name} {dtype} sample {k} {tuple(s.input.shape)} {s.args} {s.kwargs}"
            args = THEIRS_ARGS[name](s) if name in THEIRS_ARGS else (s.input, *s.args)
            ours = OURS[name]
            seen += 1
            refusals = _refusals_of(name, s)
            if refusals:
                _expect_refusal(what, refusals, lambda: ours(s.input, *s.args, **s.kwargs),
                                problems)
                continue
            try:
                _run_sample(what, lambda *a: ours(*((s.input, *s.args) if name not in THEIRS_ARGS
                                                    else a), **s.kwargs),
                            lambda *a: op(*a, **s.kwargs), args, dtype, problems)
            except Exception as e:  # noqa: BLE001: a crash is reported with its sample
                problems.append(f"{what}: {type(e).__name__}: {e}")
    assert seen > 0
    assert not problems, f"{len(problems)} of {seen} samples:\n" + "\n".join(problems[:20])


# ModuleInfo: torch.nn class -> the fastconv.torch module built from the same arguments.
MODULES = {nn.Conv2d: fct.Conv2d, nn.MaxPool2d: fct.MaxPool2d, nn.AvgPool2d: fct.AvgPool2d,
           nn.AdaptiveAvgPool2d: fct.AdaptiveAvgPool2d}


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda c: c.__name__)
def test_moduleinfo_samples_match_torch(cls):
    info = next(m for m in module_db if m.module_cls is cls)
    problems, seen = [], 0
    for dtype in FLOATS:
        for training in (True, False):
            for k, mi in enumerate(info.module_inputs_func(info, device="cpu", dtype=dtype,
                                                           requires_grad=True,
                                                           training=training)):
                c, fwd = mi.constructor_input, mi.forward_input
                if cls is nn.AdaptiveAvgPool2d and c.args[0] not in (1, (1, 1)):
                    with pytest.raises(ValueError, match="output_size must be 1"):
                        MODULES[cls](*c.args, **c.kwargs)
                    continue
                what = f"{cls.__name__} {dtype} sample {k} {c.args} {c.kwargs}"
                seen += 1
                torch.manual_seed(0)
                theirs = cls(*c.args, **c.kwargs).to(dtype).train(training)
                ours = MODULES[cls](*c.args, **c.kwargs).to(dtype).train(training)
                ours.load_state_dict(theirs.state_dict())
                if list(ours.state_dict()) != list(theirs.state_dict()):
                    problems.append(f"{what}: state_dict keys differ")
                try:
                    params = list(zip(ours.parameters(), theirs.parameters()))
                    _run_sample(what, ours, theirs, fwd.args, dtype, problems)
                    x = fwd.args[0]
                    dy = torch.randn_like(_tensors(theirs(x))[0])
                    _tensors(ours(x))[0].backward(dy)
                    _tensors(theirs(x))[0].backward(dy)
                    for i, (p, q) in enumerate(params):
                        _compare(f"{what} parameter {i} grad", p.grad, q.grad, dtype, problems)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{what}: {type(e).__name__}: {e}")
    assert seen > 0
    assert not problems, "\n".join(problems[:20])


def test_the_refusals_are_the_readmes():
    """Each refusal class is named in the README's table, so the list cannot drift."""
    import pathlib

    readme = (pathlib.Path(fastconv.__file__).parent.parent / "README.md").read_text()
    table = readme[readme.index("What fastconv refuses that torch accepts"):]
    for name in REFUSALS:
        assert f"| {name} |" in table, name

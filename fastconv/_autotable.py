"""auto's measured choices: the conv2d variant per layer class on a named card.

`fastconv sweep --device cuda` times every applicable variant and precision of the
convolution layers of the benchmark suites on the card it runs on, and writes a table
fragment: for each layer class it saw, the variant that was fastest over that class's
layers (the least geometric-mean slowdown against the best variant of each layer).
`python -m fastconv.sweep --merge FRAGMENT` folds a fragment into autotable.json, next
to this module, under the card's name.

On the GPU, a call with variant="auto" looks its layer class up in the table of the card
it runs on (once per call plan, so no call pays for it twice) and runs the variant found
there; where the card or the class is missing, auto keeps the kernels' own shape rules
(cuda::conv2d_auto_variant). The table holds measurements only, never guesses.

A layer class is what a variant's speed depends on and what generalises across layers:
the direction (fwd, bwd_data, bwd_filter), the type and precision, the layout, the kind
(dense, grouped, depthwise), the kernel (1x1, 3x3 or other, stride 1 or more), narrow
(at most 16 filters a group: a 64-wide GEMM tile is mostly empty) or wide, and small or
large (below or above 2^28 multiply-add flops: LeNet's layers and ResNet-50's at batch 1
against ResNet-50's at batch 32).
"""

import json
from pathlib import Path

TABLE = Path(__file__).with_name("autotable.json")
SMALL_FLOPS = 2**28

_tables = {}  # path -> the parsed file, or {} where there is none
_names = {}  # device index -> the card's name


def layer_class(op, params, dtype, precision):
    """The class key of a convolution: op is "fwd", "bwd_data" or "bwd_filter"; params
    the conv2d params dict (fastconv/_args.py); precision None for float16/bfloat16."""
    p = params
    groups, C, K = p["groups"], p["C"], p["K"]
    kind = "depthwise" if groups == C and groups > 1 else "grouped" if groups > 1 else "dense"
    R, S = p["R"], p["S"]
    undilated = p["dil_h"] == 1 and p["dil_w"] == 1
    kernel = f"{R}x{S}" if R == S and R in (1, 3) and undilated else "other"
    kernel += "s1" if p["stride_h"] == 1 and p["stride_w"] == 1 else "s2+"
    Kg, Cg = K // groups, C // groups
    flops = 2 * p["N"] * p["P"] * p["Q"] * K * Cg * R * S
    mode = dtype if dtype != "float32" else f"float32-{precision}"
    layout = "NCHW" if p["layout"] == 0 else "NHWC"
    return "/".join((op, mode, layout, kind, kernel, "narrow" if Kg <= 16 else "wide",
                     "small" if flops < SMALL_FLOPS else "large"))


def load(path=None):
    """The table file as a dict ({} where there is none); read once per process."""
    path = path or TABLE
    key = str(path)
    if key not in _tables:
        try:
            _tables[key] = json.loads(Path(path).read_text())
        except FileNotFoundError:
            _tables[key] = {}
    return _tables[key]


def lookup(card, key, path=None):
    """The variant measured fastest for class key on the card, or None."""
    entry = load(path).get("cards", {}).get(card, {}).get("classes", {}).get(key)
    return entry["variant"] if entry else None


def card_name(backend):
    """The name of the GPU a backend call runs on (as cudaDeviceProp says it)."""
    index = backend.device[1]
    if index not in _names:
        _names[index] = backend.module.device_info(index)["name"]
    return _names[index]


def choose(backend, op, variant, params, precision):
    """variant, unless it is "auto" on the GPU and the card's table names a variant for
    this layer class (one the backend has: a table from a newer build may name more)."""
    if variant != "auto" or not backend.is_cuda or not load().get("cards"):
        return variant
    found = lookup(card_name(backend), layer_class(op, params, backend.dtype, precision))
    return found if found in backend.module.conv2d_variants else variant


def merge(fragment, path=None):
    """Folds a sweep's table fragment ({"cards": {name: {...}}}) into the table file,
    replacing that card's entry whole. Returns the card names merged."""
    path = path or TABLE
    table = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    table.setdefault("about", "auto's measured choices per card and layer class; written by "
                              "`fastconv sweep` (see fastconv/_autotable.py)")
    cards = table.setdefault("cards", {})
    cards.update(fragment["cards"])
    Path(path).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    _tables.pop(str(path), None)
    return sorted(fragment["cards"])

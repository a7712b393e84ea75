"""Winograd's accuracy: where F(4x4, 3x3)'s points come from, and what the winograd variants'
float32 rounding costs against the float64 reference.

    python benchmarks/winograd_accuracy.py points   candidate points for F(4, 3), each
                                                    simulated in float32 with NumPy
    python benchmarks/winograd_accuracy.py          fastconv's winograd2 / winograd4 / gemm in
                                                    float32 against fastconv.reference, by
                                                    channels, input distribution and scale,
                                                    and on ResNet-50's 3x3 layers
    python benchmarks/winograd_accuracy.py cuda     the same for the GPU's variants (CuPy
                                                    arrays; implicit_gemm in gemm's column)

derive() builds the transform matrices from the points exactly (fractions.Fraction);
tests/test_winograd.py checks csrc/common/winograd.h's tables against it. Errors are
relative, ||out - ref|| / ||ref|| over the whole output ("norm"), and the largest element
error over the largest reference element ("max").
"""

import sys
from fractions import Fraction
from math import gcd, lcm
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# csrc/common/winograd.h's points (infinity is implied).
POINTS = {2: (0, 1, -1), 4: (0, 1, -1, 2, Fraction(-1, 2))}


def _inverse(a):
    """The inverse of a square matrix of Fractions (Gauss-Jordan)."""
    n = len(a)
    m = [list(map(Fraction, row)) + [Fraction(int(i == j)) for j in range(n)]
         for i, row in enumerate(a)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[pivot] = m[pivot], m[col]
        m[col] = [v / m[col][col] for v in m[col]]
        for r in range(n):
            if r != col and m[r][col] != 0:
                m[r] = [v - m[r][col] * p for v, p in zip(m[r], m[col])]
    return [row[n:] for row in m]


def derive(points, m, r=3):
    """(B^T, G, A^T) of F(m, r) for the finite points (plus infinity), as lists of Fractions.

    E_n evaluates a polynomial of n coefficients at the points (the infinity row takes the
    leading coefficient). Toom-Cook's linear convolution s = E_a^-1 [(E_r g) . (E_m h)],
    transposed, is the correlation y = E_m^T [(E_r g) . (E_a^-T d)]: A^T = E_m^T, G = E_r,
    B^T = E_a^-T. Each row of B^T is then scaled to primitive integers and G's row divided
    by the same factor (the product is unchanged)."""
    a = m + r - 1
    points = [Fraction(p) for p in points]
    assert len(points) == a - 1

    def evaluation(n):
        return [[p ** k for k in range(n)] for p in points] + [[Fraction(0)] * (n - 1) + [Fraction(1)]]

    e_m, g = evaluation(m), evaluation(r)
    at = [[e_m[j][i] for j in range(a)] for i in range(m)]
    inv = _inverse(evaluation(a))
    bt = [[inv[j][i] for j in range(a)] for i in range(a)]
    for j in range(a):
        den = lcm(*(v.denominator for v in bt[j]))
        num = gcd(*(int(v * den) for v in bt[j]))
        s = Fraction(den, num)
        bt[j] = [v * s for v in bt[j]]
        g[j] = [v / s for v in g[j]]
    return bt, g, at


def identity_holds(bt, g, at):
    """y_i = sum_k g_k d_{i+k} for every g and d: the coefficient of g_k d_l in y_i,
    sum_j A^T[i][j] G[j][k] B^T[j][l], is 1 where l = i + k and 0 elsewhere."""
    m, a, r = len(at), len(bt), len(g[0])
    return all(sum(at[i][j] * g[j][k] * bt[j][l] for j in range(a)) == (l == i + k)
               for i in range(m) for k in range(r) for l in range(a))


def simulate(points, m, channels, seed=0, tiles=32, filters=16):
    """Relative error (norm, max) of F(m x m, 3 x 3) with these points on random tiles:
    U in float64 rounded once to float32, V, the channel sums and Y in float32."""
    bt, g, at = (np.array(t, dtype=np.float64) for t in derive(points, m))
    a = m + 2
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((tiles, channels, a, a))
    w = rng.standard_normal((filters, channels, 3, 3))
    ref = np.zeros((tiles, filters, m, m))
    for i in range(m):
        for j in range(m):
            ref[:, :, i, j] = np.einsum("tcrs,kcrs->tk", d[:, :, i:i + 3, j:j + 3], w)
    f32 = np.float32
    u = np.einsum("ar,kcrs,bs->abkc", g, w, g).astype(f32)
    v = np.einsum("ai,tcij,bj->abtc", bt.astype(f32), d.astype(f32), bt.astype(f32))
    y = np.einsum("ia,abtk,jb->tkij", at.astype(f32), np.matmul(v, np.swapaxes(u, 2, 3)), at.astype(f32))
    return (np.linalg.norm(y - ref) / np.linalg.norm(ref), np.abs(y - ref).max() / np.abs(ref).max())


def points_table():
    candidates = {"0, +-1, +-2 (Lavin & Gray)": (0, 1, -1, 2, -2),
                  "0, +-1, +-1/2": (0, 1, -1, Fraction(1, 2), Fraction(-1, 2)),
                  "0, +-1, 2, -1/2 (winograd.h)": POINTS[4]}
    print("F(4, 3) points                    nonzeros(B^T)  C=64 norm  C=512 norm  C=2048 norm  max")
    for name, pts in candidates.items():
        bt = derive(pts, 4)[0]
        errs = {c: [simulate(pts, 4, c, seed) for seed in range(2)] for c in (64, 512, 2048)}
        norm = {c: np.mean([e[0] for e in errs[c]]) for c in errs}
        worst = max(e[1] for es in errs.values() for e in es)
        print(f"{name:32s}  {sum(v != 0 for row in bt for v in row):13d}  {norm[64]:.2e}   "
              f"{norm[512]:.2e}    {norm[2048]:.2e}     {worst:.2e}")


def _errors(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(out - ref) / np.linalg.norm(ref), np.abs(out - ref).max() / np.abs(ref).max()


def fastconv_table(device="cpu"):
    sys.path.insert(0, str(ROOT))  # this checkout's fastconv, not an installed one
    import fastconv
    from fastconv import reference

    variants = ("gemm" if device == "cpu" else "implicit_gemm", "winograd2", "winograd4")
    if device == "cuda":
        import cupy

        def conv(x, w, variant):
            return cupy.asnumpy(fastconv.conv2d(cupy.asarray(x), cupy.asarray(w), padding=1,
                                                variant=variant))
    else:
        def conv(x, w, variant):
            return fastconv.conv2d(x, w, padding=1, variant=variant)
    rng = np.random.default_rng(0)
    dists = {"normal": lambda s: rng.standard_normal(s),
             "relu(normal)": lambda s: np.maximum(rng.standard_normal(s), 0),
             "normal + 10": lambda s: rng.standard_normal(s) + 10}
    print("float32, relative error (norm / max) against the float64 reference; 1 x C x 14 x 14 "
          "-> 32 filters (He-scaled normal), padding 1")
    print(f"{'C':>5s}  {'input':14s} {'scale':>6s}  " + "  ".join(f"{v:>19s}" for v in variants))
    for c in (64, 256, 512, 2048):
        w = (rng.standard_normal((32, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
        for dist, draw in dists.items():
            base = draw((1, c, 14, 14))
            scales = ("2^-120", "2^-20", "1e-3", "1", "1e3", "2^20", "2^120") if dist == "normal" else ("1",)
            for label in scales:
                scale = 2.0 ** int(label[2:]) if label.startswith("2^") else float(label)
                x = (base * scale).astype(np.float32)
                ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
                errs = [_errors(conv(x, w, v), ref) for v in variants]
                print(f"{c:5d}  {dist:14s} {label:>6s}  " +
                      "  ".join(f"{e[0]:.2e} / {e[1]:.2e}" for e in errs), flush=True)
    print("\nResNet-50's 3x3 layers, batch 1, relu(normal) inputs, He-scaled filters, padding 1")
    for c, hw in ((64, 56), (128, 28), (256, 14), (512, 7)):
        x = np.maximum(rng.standard_normal((1, c, hw, hw)), 0).astype(np.float32)
        w = (rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
        ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
        errs = [_errors(conv(x, w, v), ref) for v in variants]
        print(f"{c:4d} x {hw:2d}x{hw:<2d}  " + "  ".join(f"{v} {e[0]:.2e} / {e[1]:.2e}"
                                                       for v, e in zip(variants, errs)), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["points"]:
        points_table()
    else:
        fastconv_table("cuda" if sys.argv[1:] == ["cuda"] else "cpu")

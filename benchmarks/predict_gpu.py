"""Predicted TFLOP/s of the GPU convolution kernels on ResNet-50's layers (batch 32), written
before any GPU run so that the first sweep (`fastconv sweep`, gpu_check.py's sweep step)
can be read against them. Prints the markdown table that benchmarks/NOTES.md holds.

    python benchmarks/predict_gpu.py [--anchors ../shared/anchors/h100-cudnn-2026-11-28.json]

The model, per kernel, on an H100 (132 SMs; the H200 lent now has the same SMs and clocks
and more memory bandwidth, so compute-bound rows carry over):

    rate = bound x waves x e

- bound: what one full wave of the kernel's blocks can issue. Tensor-core kernels (WMMA,
  32 x 32 warp tiles reading their fragments from shared memory with no reuse across
  k-steps) are bound by shared-memory bandwidth to half the spec's dense tensor rate
  (benchmarks/NOTES.md, "Tensor-core implicit GEMM forward"): TF32 247, bf16 / fp16 495
  TFLOP/s; 3xTF32 a third of TF32's. The SIMT kernels: the strict-fp32 SGEMM ceiling the
  anchors measured (51 TFLOP/s), Winograd's on the multiplies it keeps (2.25x / 4x fewer).
- waves: the tiles' share of the SMs' block slots in the last wave (a layer of 104 tiles
  on 132 SMs x 2 slots fills 39% of the machine's slots once: one partial wave).
- e: the fraction of the bound that the rest costs (gathers, barriers, pipeline fill,
  epilogue), a judgement from the kernel's structure, stated per kernel below; NCHW's
  element-by-element A gather (two multiply-highs an element) lowers it.
- bytes: no layer here is bandwidth-bound at these rates except where the table says so
  (Winograd's transforms move V and M through DRAM: counted as time at the anchors' copy
  rate on top of the GEMM's).
"""

import argparse
import json
import math
from pathlib import Path

LAYERS = {  # name: (N, C, H, W, K, R, stride, pad)
    "r50_conv1": (32, 3, 224, 224, 64, 7, 2, 3),
    "r50_l1_1x1": (32, 64, 56, 56, 64, 1, 1, 0),
    "r50_l1_3x3": (32, 64, 56, 56, 64, 3, 1, 1),
    "r50_l1_expand": (32, 64, 56, 56, 256, 1, 1, 0),
    "r50_l2_3x3s2": (32, 128, 56, 56, 128, 3, 2, 1),
    "r50_l2_3x3": (32, 128, 28, 28, 128, 3, 1, 1),
    "r50_l3_3x3": (32, 256, 14, 14, 256, 3, 1, 1),
    "r50_l4_3x3": (32, 512, 7, 7, 512, 3, 1, 1),
}
SMS = 132
COPY_GBPS = 2960
# kernel: (tile M, tile N, tile K, blocks an SM, bound TFLOP/s, e NHWC, e NCHW)
KERNELS = {
    "simt_strict": (64, 64, 16, 2, 51.2, 0.35, 0.35),
    "tc_tf32": (128, 64, 32, 2, 247.0, 0.45, 0.25),
    "tc_3xtf32": (128, 64, 32, 2, 247.0 / 3, 0.50, 0.30),
    "tc_bf16": (128, 64, 32, 3, 495.0, 0.40, 0.20),
}


def out_size(n, k, stride, pad):
    return (n + 2 * pad - k) // stride + 1


def shape_of(layer):
    N, C, H, W, K, R, stride, pad = layer
    P, Q = out_size(H, R, stride, pad), out_size(W, R, stride, pad)
    return N, C, H, W, K, R, stride, pad, P, Q


def flops(layer):
    N, C, H, W, K, R, stride, pad, P, Q = shape_of(layer)
    return 2.0 * N * P * Q * K * C * R * R


def waves(tiles, slots):
    """Busy fraction of the machine's block slots over the layer's waves."""
    full = math.ceil(tiles / slots)
    return tiles / (full * slots)


def predict(kernel, layer, layout):
    bm, bn, bk, blocks, bound, e_nhwc, e_nchw = KERNELS[kernel]
    N, C, H, W, K, R, stride, pad, P, Q = shape_of(layer)
    M, red = N * P * Q, C * R * R
    # Ragged tiles: the share of each tile's multiply-adds that are real.
    fill = (M / (bm * math.ceil(M / bm))) * (K / (bn * math.ceil(K / bn))) * \
        (red / (bk * math.ceil(red / bk)))
    tiles = math.ceil(M / bm) * math.ceil(K / bn)
    e = e_nhwc if layout == "NHWC" else e_nchw
    return bound * waves(tiles, SMS * blocks) * fill * e


def predict_winograd(m, layer):
    """F(m x m, 3 x 3), strict float32, NCHW: the alpha^2 GEMMs at the SIMT kernel's rate
    on the multiplies they keep, plus V and M through DRAM once each way."""
    N, C, H, W, K, R, stride, pad, P, Q = shape_of(layer)
    if R != 3 or stride != 1:
        return None
    alpha, t = m + 2, N * math.ceil(P / m) * math.ceil(Q / m)
    gemm_flops = 2.0 * alpha * alpha * K * C * t
    bm, bn, bk, blocks, bound, e, _ = KERNELS["simt_strict"]
    tiles = alpha * alpha * math.ceil(K / bm) * math.ceil(t / bn)
    t_gemm = gemm_flops / (bound * 1e12 * waves(tiles, SMS * blocks) * e)
    bytes_ = 4.0 * alpha * alpha * t * (C + K) * 2 + 4.0 * N * (C * H * W + K * P * Q)
    t_io = bytes_ / (COPY_GBPS * 1e9)
    return flops(layer) / (t_gemm + t_io) / 1e12


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anchors", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                             "anchors" / "h100-cudnn-2026-11-28.json"))
    args = ap.parse_args(argv)
    anchors = {}
    if Path(args.anchors).exists():
        for row in json.loads(Path(args.anchors).read_text())["conv"]:
            anchors[(row["shape"], row["mode"])] = row["fwd_TFLOPs"]
    print("| layer | GFLOP | cuDNN fp32 / TF32 / bf16 (NHWC) | SIMT strict | TC TF32 NHWC (NCHW) | "
          "TC 3xTF32 NHWC | TC bf16 NHWC | Winograd F(2x2) / F(4x4) strict |")
    print("|---|---|---|---|---|---|---|---|")
    for name, layer in LAYERS.items():
        cud = [anchors.get((name, m)) for m in ("fp32", "tf32", "bf16_nhwc")]
        w2, w4 = predict_winograd(2, layer), predict_winograd(4, layer)
        cells = [
            name, f"{flops(layer) / 1e9:.2f}",
            " / ".join("-" if c is None else f"{c:.0f}" for c in cud),
            f"{predict('simt_strict', layer, 'NCHW'):.0f}",
            f"{predict('tc_tf32', layer, 'NHWC'):.0f} ({predict('tc_tf32', layer, 'NCHW'):.0f})",
            f"{predict('tc_3xtf32', layer, 'NHWC'):.0f}",
            f"{predict('tc_bf16', layer, 'NHWC'):.0f}",
            "-" if w2 is None else f"{w2:.0f} / {w4:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""The benchmark layer shapes, named once (the shapes of ../shared/anchors/, where cuDNN
was measured on the target card).

Conv tuple: N, C, H, W, K, R (= S), stride, pad, groups. FLOPs = 2 * N * K * P * Q * C/groups * R * S.
"""

CONV = {
    # LeNet-5 (the course notes' network), batch 256
    "lenet_c1": (256, 1, 28, 28, 6, 5, 1, 2, 1),
    "lenet_c2": (256, 6, 14, 14, 16, 5, 1, 0, 1),
    # ResNet-50 convolution layers, batch 32
    "r50_conv1": (32, 3, 224, 224, 64, 7, 2, 3, 1),
    "r50_l1_1x1": (32, 64, 56, 56, 64, 1, 1, 0, 1),
    "r50_l1_3x3": (32, 64, 56, 56, 64, 3, 1, 1, 1),
    "r50_l1_expand": (32, 64, 56, 56, 256, 1, 1, 0, 1),
    "r50_l2_3x3s2": (32, 128, 56, 56, 128, 3, 2, 1, 1),
    "r50_l2_3x3": (32, 128, 28, 28, 128, 3, 1, 1, 1),
    "r50_l3_3x3": (32, 256, 14, 14, 256, 3, 1, 1, 1),
    "r50_l4_3x3": (32, 512, 7, 7, 512, 3, 1, 1, 1),
    # MobileNet-style depthwise 3x3
    "dw3x3_mbv2": (32, 256, 56, 56, 256, 3, 1, 1, 256),
}

# name: (op, input shape NCHW, kwargs)
POOL = {
    "maxpool3s2p1_r50": ("max", (32, 64, 112, 112), dict(kernel_size=3, stride=2, padding=1)),
    "avgpool2_lenet": ("avg", (256, 6, 28, 28), dict(kernel_size=2)),
    "maxpool2_big": ("max", (64, 128, 128, 128), dict(kernel_size=2)),
    "avgpool2_big": ("avg", (64, 128, 128, 128), dict(kernel_size=2)),
    "gap_r50": ("gap", (32, 2048, 7, 7), {}),
}

SOBEL = {
    "img4096": (4096, 4096),
    "batch64_512": (64, 512, 512),
}


def conv_flops(shape):
    N, C, H, W, K, R, stride, pad, groups = shape
    P = (H + 2 * pad - R) // stride + 1
    Q = (W + 2 * pad - R) // stride + 1
    return 2 * N * K * P * Q * (C // groups) * R * R

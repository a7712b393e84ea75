"""Convert torchvision's ResNet-50 to fastconv's layers and train it a few steps.

    python examples/convert_resnet50.py [--steps 5] [--size 96] [--batch 4]
        [--channels-last] [--autocast] [--compile]

The model is randomly initialised (weights=None: nothing downloads) and trained on one
batch of random images and labels, which it memorises: the loss falls within a few
steps, which shows the gradients flowing through every converted layer, not anything
learnt. `fastconv.torch.convert` swaps every nn.Conv2d, nn.MaxPool2d and
nn.AdaptiveAvgPool2d(1) for fastconv's module sharing the same parameters: the
state_dict, the optimizer and everything else about the model stay as they were.
"""

import argparse
import time

import torch
import torchvision
from torch.nn import functional as F

import fastconv.torch as fct


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, default=96, help="image side (224 as trained)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels-last", action="store_true",
                        help="model and images in torch.channels_last (no copies inside)")
    parser.add_argument("--autocast", action="store_true",
                        help="bfloat16 autocast (fastconv's layers compute float32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=10)
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 10, (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    converted = fct.convert(model)  # model itself is left as it was
    print(str(converted.fastconv_report).splitlines()[0])
    with torch.no_grad():  # the same function: compare once in eval mode
        converted.eval(), model.eval()
        a, b = converted(images), model(images)
        print(f"eval output vs torch.nn: relative difference {((a - b).norm() / b.norm()):.1e}")

    converted.train()
    step_model = torch.compile(converted, fullgraph=True) if args.compile else converted
    opt = torch.optim.Adam(converted.parameters(), lr=1e-3)
    for step in range(args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast):
            loss = F.cross_entropy(step_model(images), labels)
        loss.backward()
        opt.step()
        print(f"step {step + 1}/{args.steps}: loss {loss.item():.4f}, "
              f"{time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

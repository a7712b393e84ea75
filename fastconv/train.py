"""`fastconv train`: LeNet-5 as in the course notes, trained with Adam on handwritten
digits, on fastconv's kernels or on PyTorch's, from the same seed and initial weights.

    Conv 6@5x5 "same" tanh -> AvgPool 2 -> Conv 16@5x5 "valid" tanh -> AvgPool 2
    -> Flatten -> Dense 120 tanh -> Dense 84 tanh -> Dense 10 softmax

Adam (learning rate 1e-3), sparse categorical cross-entropy (the softmax is folded into
the loss, as Keras does with from_logits; predictions apply it). Weights start as Keras
starts them: Glorot-uniform kernels, zero biases, drawn from the seed on the CPU, so
both backends and every process begin from the same numbers.

Started under torchrun (WORLD_SIZE > 1), the loop trains with DistributedDataParallel:
gloo on the CPU, NCCL on GPUs; each process takes its shard of every epoch, and rank 0
prints.
"""

import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import data as datasets

BACKENDS = ("fastconv", "torch")


class LeNet5(nn.Module):
    """LeNet-5 of the course notes, with LeCun's layer names. backend "fastconv" builds
    each convolution + tanh + average pool as one fastconv.torch.Conv2dAvgPool2d block
    (held by c1 and c3; s2 and s4 are identities), "torch" from torch.nn's modules;
    the parameters and state_dict keys are the same, so either loads the other's
    weights. Returns logits: the softmax is in the loss, and in predict()."""

    def __init__(self, backend="fastconv"):
        super().__init__()
        if backend == "fastconv":
            from . import torch as fct

            # Each convolution, its tanh and the average pool after it are one block
            # (one kernel on the GPU); the blocks hold the convolutions' parameters.
            self.c1 = fct.Conv2dAvgPool2d(1, 6, 5, padding="same", activation="tanh", pool=2)
            self.s2 = nn.Identity()
            self.c3 = fct.Conv2dAvgPool2d(6, 16, 5, activation="tanh", pool=2)
            self.s4 = nn.Identity()
            self.conv_act = nn.Identity()
        elif backend == "torch":
            self.c1 = nn.Conv2d(1, 6, 5, padding="same")
            self.s2 = nn.AvgPool2d(2)
            self.c3 = nn.Conv2d(6, 16, 5)
            self.s4 = nn.AvgPool2d(2)
            self.conv_act = nn.Tanh()
        else:
            raise ValueError(f"LeNet5: backend must be 'fastconv' or 'torch', got {backend!r}")
        self.backend = backend
        self.f5 = nn.Linear(16 * 5 * 5, 120)
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, 10)

    def forward(self, x):
        x = self.s2(self.conv_act(self.c1(x)))
        x = self.s4(self.conv_act(self.c3(x)))
        x = torch.tanh(self.f5(x.flatten(1)))
        return self.out(torch.tanh(self.f6(x)))

    def predict(self, x):
        """Class probabilities (the course's softmax output layer)."""
        return torch.softmax(self(x), dim=1)


def lenet5(backend="fastconv"):
    return LeNet5(backend)


def keras_init_(model, seed):
    """Glorot-uniform weights and zero biases, from `seed`, in a fixed order."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
                fan_in = m.weight[0].numel()
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                w = torch.rand(m.weight.shape, generator=gen, dtype=torch.float64)
                m.weight.copy_((2 * w - 1) * bound)
                m.bias.zero_()
    return model


@dataclass
class Config:
    backend: str = "fastconv"
    device: str = "auto"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    data: str = None
    validation_split: float = 0.2
    flip: bool = False
    progress: bool = True
    max_steps: int = 0  # > 0: stop each epoch after this many steps (demo, tests)


@dataclass
class EpochResult:
    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    step_ms: float


class _Dist:
    """The process group when started under torchrun; a single process otherwise."""

    def __init__(self, device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.on = self.world > 1
        if self.on and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # The epoch statistics go through a group DDP never sees (see close()).
        self.stats_group = torch.distributed.new_group() if self.on else None

    @property
    def main(self):
        return self.rank == 0

    def all_sum(self, values, device):
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.on:
            torch.distributed.all_reduce(t, group=self.stats_group)
        return t.tolist()

    def close(self):
        """Destroys the process groups, joining the statistics group's worker threads.

        A gloo worker thread drops its reference to a collective's tensors after the
        caller's wait() has returned; for a tensor made in Python that takes the GIL. If
        the interpreter is finalizing by then, the thread is unwound out of a noexcept
        destructor: "terminate called without an active exception", SIGABRT (core dumps:
        ProcessGroupGloo::runLoop -> ~AsyncAllreduceWork -> decref_pyobject -> take_gil
        during Py_FinalizeEx; 4 of 19 runs of test_ddp_with_two_processes_on_the_cpu).
        destroy_process_group() joins a group's threads only when the group's last
        reference goes, and DDP keeps references to its group that are never released
        (torch 2.14: a DDP object adds 11, deleting it removes 1), so that group's
        threads live until exit. Hence the statistics, the last Python tensors reduced,
        use a group of their own whose threads are joined here, while the interpreter is
        alive. DDP's group only reduces gradient buckets made in C++, whose release needs
        no GIL.
        """
        if self.on and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group(self.stats_group)
            self.stats_group = None  # the last reference: joins its worker threads
            torch.distributed.destroy_process_group()


def resolve_device(name):
    """"auto": the GPU when fastconv's CUDA backend and PyTorch both see one, else the CPU."""
    import fastconv

    if name == "auto":
        name = "cuda" if fastconv.cuda_available() and torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not (fastconv.cuda_available() and torch.cuda.is_available()):
            raise RuntimeError("--device cuda, but no CUDA GPU is usable (see `fastconv info`)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device("cpu")


def _evaluate(model, x, y, dist, device):
    model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(x), 1024):
            logits = model(x[i:i + 1024])
            loss += F.cross_entropy(logits, y[i:i + 1024], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + 1024]).sum().item()
    loss, correct, n = dist.all_sum([loss, correct, len(x)], device)
    model.train()
    return loss / n, correct / n


def train(cfg, log=print):
    """Trains LeNet-5 per `cfg`; returns the list of EpochResult (on every rank)."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"backend must be 'fastconv' or 'torch', got {cfg.backend!r}")
    device = resolve_device(cfg.device)
    dist = _Dist(device)
    try:
        return _train(cfg, device, dist, log if dist.main else (lambda *a, **k: None))
    finally:
        dist.close()


def _train(cfg, device, dist, log):
    split = datasets.load(cfg.data, cfg.validation_split, cfg.seed)
    x_train = torch.from_numpy(split.x_train).to(device)
    y_train = torch.from_numpy(split.y_train).to(device)
    # Each process validates on its own shard; the sums are all-reduced.
    x_val = torch.from_numpy(split.x_val[dist.rank::dist.world]).to(device)
    y_val = torch.from_numpy(split.y_val[dist.rank::dist.world]).to(device)

    model = keras_init_(lenet5(cfg.backend), cfg.seed).to(device)
    net = model
    if dist.on:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x_train)
    per_rank = n // dist.world
    steps = math.ceil(per_rank / cfg.batch_size)
    if cfg.max_steps > 0:
        steps = min(steps, cfg.max_steps)
    log(f"LeNet-5 on {cfg.backend}'s kernels, {device.type}"
        f"{f' x {dist.world} processes (DDP)' if dist.on else ''}; {split.source}: "
        f"{n} training / {len(split.x_val)} validation images; batch {cfg.batch_size}, "
        f"Adam lr {cfg.lr}")

    results = []
    for epoch in range(1, cfg.epochs + 1):
        # The same permutation on every rank (same generator); each takes its shard.
        order = torch.randperm(n, generator=gen)[dist.rank:per_rank * dist.world:dist.world]
        order = order.to(device)
        flips = torch.rand(n, generator=gen) < 0.5 if cfg.flip else None
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = _progress(steps, f"epoch {epoch}/{cfg.epochs}", cfg.progress and dist.main)
        t0 = time.perf_counter()
        for step in range(steps):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if flips is not None:
                f = flips[idx.cpu()].to(device)
                xb = torch.where(f[:, None, None, None], xb.flip(-1), xb)
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(idx)
            if bar is not None:
                bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_ms = (time.perf_counter() - t0) / max(steps, 1) * 1e3
        if bar is not None:
            bar.close()
        loss_total, correct_total, seen_total = dist.all_sum(
            [loss_sum.item(), correct.item(), seen], device)
        val_loss, val_acc = _evaluate(net, x_val, y_val, dist, device)
        r = EpochResult(epoch, loss_total / seen_total, correct_total / seen_total, val_loss,
                        val_acc, step_ms)
        results.append(r)
        log(f"epoch {epoch:2d}/{cfg.epochs}  loss {r.loss:.4f}  accuracy {r.accuracy:.4f}  "
            f"val_loss {r.val_loss:.4f}  val_accuracy {r.val_accuracy:.4f}  "
            f"{r.step_ms:.2f} ms/step")
    return results


def _progress(total, desc, on):
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)

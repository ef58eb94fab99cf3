"""How far a small network trained from scratch gets on CIFAR-10 on this CPU, and how fast
(issue 29): the measurement behind a `scratch` method, before it is one.

The recipe is our implementation of the published facts of the fast CIFAR-10 training runs
(Keller Jordan's airbench, 2024: 94.0% in 9.9 epochs with widths 64/256/256): a frozen
2x2 patch-whitening convolution, three conv-pool-BN-GELU groups, label smoothing 0.2,
Nesterov SGD on the summed loss with a warm-up then linear decay, a lookahead average of
the weights, flips that alternate between epochs, 2-pixel translations, and test-time
averaging over flips and 1-pixel shifts. Widths and epochs are arguments: on 2 AVX2 cores
the published widths train at about 190 images/s (43 minutes for 10 epochs), a quarter of
the width at about 700.

    python benchmarks/scratch_cifar.py --widths 64 128 128 --epochs 10

Prints the time per epoch, held-out accuracy (5,000 training images kept out) and test
accuracy with and without test-time averaging.

Measured on 2 AMD EPYC cores (AVX2, no AVX-512; alone), widths 64/128/128, 10 epochs on
45,000 of the training JPEGs: 136 s per epoch (318 images/s with augmentation and the
lookahead), training 1,386 s; test accuracy 88.1% plain, 88.6% with flips, 88.8% with flips
and shifts; the held-out estimate 89.2% (5,000 images no choice saw). Short of the
published runs' 93-94% at their widths: the gap is still to be explained (narrower widths,
JPEG-compressed photos, or a difference in our recipe). A first run with SGD's weight
decay not divided by the learning rate (700x too weak) reached 86.5%.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ZIP = Path(
    os.environ.get(
        "TLEARN_CIFAR_ZIP", Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip"
    )
)


def read_split(zf: zipfile.ZipFile, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = sorted(n for n in zf.namelist() if n.startswith(f"{split}/") and n.endswith(".jpg"))
    classes = sorted({n.split("/")[1] for n in names})
    data = [zf.read(n) for n in names]

    def decode(b: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((32, 32)))

    with ThreadPoolExecutor(2) as pool:
        images = np.stack(list(pool.map(decode, data, chunksize=512)))
    labels = np.array([classes.index(n.split("/")[1]) for n in names])
    return images, labels, classes


class Whiten(nn.Conv2d):
    """2x2 patches projected on the eigenvectors of their covariance, scaled to unit
    variance, each direction twice (+ and -): 24 channels, weights frozen."""

    def __init__(self) -> None:
        super().__init__(3, 24, 2, padding=0, bias=True)
        self.weight.requires_grad_(False)

    def init_from(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2).float()
        flat = patches.reshape(len(patches), -1)
        cov = (flat.T @ flat) / len(flat)
        values, vectors = torch.linalg.eigh(cov)
        w = (vectors.T / torch.sqrt(values + eps)[:, None]).reshape(12, 3, 2, 2)
        self.weight.data[:] = torch.cat([w, -w])


def group(ci: int, co: int) -> nn.Sequential:
    def bn() -> nn.BatchNorm2d:
        b = nn.BatchNorm2d(co, momentum=0.4, eps=1e-12)
        b.weight.requires_grad_(False)  # scale fixed at 1; the bias learns
        return b

    c1, c2 = (
        nn.Conv2d(ci, co, 3, padding=1, bias=False),
        nn.Conv2d(co, co, 3, padding=1, bias=False),
    )
    for c in (c1, c2):  # partly the identity: each conv starts by passing its input on
        nn.init.dirac_(c.weight.data[: c.in_channels])
    return nn.Sequential(c1, nn.MaxPool2d(2), bn(), nn.GELU(), c2, bn(), nn.GELU())


class Net(nn.Module):
    def __init__(self, widths: tuple[int, int, int], n_classes: int = 10) -> None:
        super().__init__()
        self.whiten = Whiten()
        self.body = nn.Sequential(
            nn.GELU(),
            group(24, widths[0]),
            group(widths[0], widths[1]),
            group(widths[1], widths[2]),
            nn.MaxPool2d(3),
            nn.Flatten(),
        )
        self.head = nn.Linear(widths[2], n_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.whiten(x))) / 9


def translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to ``pad`` pixels (reflected at the border)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            chosen = (dy == oy) & (dx == ox)
            if chosen.any():
                out[chosen] = padded[chosen, :, oy : oy + h, ox : ox + w]
    return out


def tta_logits(net: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), 1000):
            b = x[i : i + 1000].contiguous(memory_format=torch.channels_last)
            logits = net(b) if level == 0 else 0.5 * (net(b) + net(b.flip(3)))
            if level >= 2:
                shifted = F.pad(b, (1, 1, 1, 1), mode="reflect")
                up, left = shifted[:, :, :-2, :-2], shifted[:, :, 2:, 2:]
                moved = 0.5 * (net(up) + net(up.flip(3))) + 0.5 * (net(left) + net(left.flip(3)))
                logits = 0.5 * logits + 0.25 * moved
            out.append(logits)
    return torch.cat(out)


def optimizer(net: Net, bs: int, total: int) -> tuple[torch.optim.SGD, list[float], Any]:
    """Nesterov SGD on the summed loss, the published hyperparameters (learning rates per
    "kilostep", norm biases 64x faster), and the schedule: warm-up over 23% of the steps
    from 0.2x, then linear decay to 0.07x. Returns the optimiser, each group's base rate
    and the schedule's factor for a step."""
    momentum, lr0, wd0, bias_scaler = 0.85, 11.5, 0.0153, 64.0
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = lr0 / kilostep, wd0 * bs / kilostep
    named = list(net.named_parameters())
    norm_biases = [p for n, p in named if "body" in n and p.ndim == 1 and p.requires_grad]
    others = [p for _, p in named if p.requires_grad and p.ndim > 1]
    opt = torch.optim.SGD(
        [  # SGD multiplies the decay by the learning rate: wd / lr decays by wd a step
            {
                "params": norm_biases,
                "lr": lr * bias_scaler,
                "weight_decay": wd / (lr * bias_scaler),
            },
            {"params": [net.whiten.bias], "lr": lr, "weight_decay": wd / lr},
            {"params": others, "lr": lr, "weight_decay": wd / lr},
        ],
        momentum=momentum,
        nesterov=True,
    )
    warm = int(0.23 * total)

    def factor(step: int) -> float:
        if step < warm:
            return 0.2 + 0.8 * step / warm
        return 1.0 - 0.93 * (step - warm) / max(1, total - warm)

    return opt, [g["lr"] for g in opt.param_groups], factor


def pull(net: Net, slow: list[torch.Tensor], decay: float) -> None:
    """Lookahead: the slow copy moves towards the weights by ``1 - decay``, and the
    weights (and the BatchNorm statistics) are set to it."""
    with torch.no_grad():
        for s, p in zip(slow, list(net.parameters()) + list(net.buffers()), strict=True):
            if p.dtype.is_floating_point:
                s.lerp_(p, 1 - decay)
                p.copy_(s)


def train(
    net: Net, x_train: torch.Tensor, y_train: torch.Tensor, args: Any, held_out: Any
) -> float:
    """The training run; prints each epoch's time and held-out accuracy; returns seconds."""
    bs = args.batch_size
    steps_per_epoch = len(x_train) // bs
    total = int(args.epochs * steps_per_epoch)
    opt, base, factor = optimizer(net, bs, total)
    slow = [p.detach().clone() for p in net.parameters()] + [b.clone() for b in net.buffers()]
    gen = torch.Generator().manual_seed(args.seed)
    flip_bits = torch.rand(len(x_train), generator=gen) < 0.5
    step, epoch, t_train = 0, 0, time.perf_counter()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum")
    while step < total:
        t_epoch = time.perf_counter()
        flips = flip_bits ^ bool(epoch % 2)  # each image flipped every other epoch
        perm = torch.randperm(len(x_train), generator=gen)
        if epoch == 3:  # the whitening bias stops learning
            base[1] = 0.0
        net.train()
        for i in range(min(steps_per_epoch, total - step)):
            idx = perm[i * bs : (i + 1) * bs]
            x = x_train[idx]
            x = translate(torch.where(flips[idx][:, None, None, None], x.flip(3), x), 2, gen)
            for g, b in zip(opt.param_groups, base, strict=True):
                g["lr"] = b * factor(step)
            loss = loss_fn(net(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 5 == 0:
                pull(net, slow, 0.95**5 * (step / total) ** 3)
        epoch += 1
        net.eval()
        x_val, y_val = held_out
        val_acc = (tta_logits(net, x_val, 0).argmax(1).numpy() == y_val).mean()
        took = time.perf_counter() - t_epoch
        print(f"epoch {epoch}: {took:.0f} s, loss {loss.item() / bs:.3f}, held-out {val_acc:.4f}",
              flush=True)  # fmt: skip
    if step % 5:  # the steps since the lookahead's last pull
        pull(net, slow, 0.95**5 * (step / total) ** 3)
    pull(net, slow, 1.0)  # decay 1: the slow copy stays, and the weights become it
    return time.perf_counter() - t_train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs=3, default=[64, 128, 128])
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--holdout", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    with zipfile.ZipFile(ZIP) as zf:
        Xtr, ytr, _ = read_split(zf, "train")
        Xte, yte, _ = read_split(zf, "test")
    print(f"decoded {len(Xtr) + len(Xte)} images in {time.perf_counter() - t0:.1f} s", flush=True)
    order = np.random.default_rng(args.seed).permutation(len(Xtr))
    val, rest = order[: args.holdout], order[args.holdout :]
    mean = torch.tensor(Xtr[rest].reshape(-1, 3).mean(0) / 255, dtype=torch.float32)
    std = torch.tensor(Xtr[rest].reshape(-1, 3).std(0) / 255, dtype=torch.float32)

    def tensor(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a).permute(0, 3, 1, 2).float().div_(255)
        x = (x - mean[:, None, None]) / std[:, None, None]
        return x.contiguous(memory_format=torch.channels_last)

    x_train, x_val, x_test = tensor(Xtr[rest]), tensor(Xtr[val]), tensor(Xte)
    net = Net(tuple(args.widths)).to(memory_format=torch.channels_last)
    net.whiten.init_from(x_train[:5000])
    train_s = train(net, x_train, torch.from_numpy(ytr[rest]), args, (x_val, ytr[val]))
    net.eval()
    for level in (0, 1, 2):
        t = time.perf_counter()
        acc = (tta_logits(net, x_test, level).argmax(1).numpy() == yte).mean()
        va = (tta_logits(net, x_val, level).argmax(1).numpy() == ytr[val]).mean()
        took = time.perf_counter() - t
        print(f"TTA level {level}: test {acc:.4f}, held-out {va:.4f} ({took:.0f} s)")
    seen = (len(x_train) // args.batch_size) * args.batch_size * args.epochs
    print(f"widths {args.widths}, {args.epochs} epochs: training {train_s:.0f} s, "
          f"{seen / train_s:.0f} images/s; total {time.perf_counter() - t0:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()

"""The training loop as plain functions: ``fit_loop`` -> ``run_epoch`` -> ``train_step``,
and ``validate``. The estimator in :mod:`tlearn.finetune.estimator` prepares the pieces.

Every source of randomness is seeded from ``(random_state, epoch)`` at the start of each
epoch (data order, crops, flips, dropout), so resuming from the checkpoint of epoch k and
training on gives the same weights as never stopping.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlearn.data.images import Preprocessing
from tlearn.data.loader import ImageInput, iter_batches
from tlearn.exceptions import TlearnError
from tlearn.finetune.augment import augment_batch
from tlearn.finetune.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from tlearn.finetune.distributed import DistInfo, all_reduce_sum, maybe_wrap
from tlearn.finetune.optim import lr_factor, make_optimizer, set_trainable

__all__ = ["Classifier", "LoopConfig", "LoopResult", "fit_loop"]


class Classifier(nn.Module):
    """A backbone returning pooled features, and a new linear head for the user's classes."""

    def __init__(self, backbone: nn.Module, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not any(p.requires_grad for p in self.backbone.parameters()):
            with torch.no_grad():  # frozen: no activations kept for a backward pass
                features = self.backbone(x)
            return self.head(features)
        return self.head(self.backbone(x))


@dataclass
class LoopConfig:
    strategy: str
    unfreeze_stages: int
    head_epochs: int
    optimizer: str
    lr: float
    backbone_lr_ratio: float
    momentum: float
    weight_decay: float
    schedule: str
    warmup_epochs: float
    label_smoothing: float
    class_weights: list[float] | None
    augmentation: str
    epochs: int
    batch_size: int
    autocast_dtype: torch.dtype | None
    channels_last: bool
    patience: int | None
    random_state: int
    n_workers: int | None
    checkpoint_dir: str | None
    fingerprint: dict[str, Any]
    verbose: int = 1


@dataclass
class LoopResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False


def _phase(cfg: LoopConfig, epoch: int) -> tuple[str, float]:
    """``(strategy, backbone lr ratio)`` for an epoch; lp-ft trains the head first."""
    if cfg.strategy == "lp-ft":
        return ("head", 0.0) if epoch < cfg.head_epochs else ("full", cfg.backbone_lr_ratio)
    return cfg.strategy, cfg.backbone_lr_ratio


def _train_mode(net: Classifier) -> None:
    """Train mode, but frozen BatchNorm layers keep their running statistics, and a fully
    frozen backbone runs exactly as at inference (no dropout either)."""
    net.train()
    if not any(p.requires_grad for p in net.backbone.parameters()):
        net.backbone.eval()
        return
    for m in net.backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in m.parameters()
        ):
            m.eval()


class _Inputs:
    """uint8 NHWC batches -> normalised float NCHW tensors on the device."""

    def __init__(self, pre: Preprocessing, device: torch.device, channels_last: bool) -> None:
        self.device, self.channels_last = device, channels_last
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.device).float() - self.mean) / self.std
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)


def _oom(e: BaseException, batch_size: int) -> TlearnError:
    return TlearnError(
        f"ran out of memory with batch_size={batch_size} ({str(e)[:200]}); try a smaller "
        f"batch size, e.g. --batch-size {max(1, batch_size // 2)}, or a smaller --image-size"
    )


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: LoopConfig,
    weight: torch.Tensor | None,
    scaler: Any,
) -> float:
    """One optimisation step; returns the batch's loss."""
    device_type = x.device.type
    with torch.autocast(
        device_type,
        dtype=cfg.autocast_dtype or torch.float32,
        enabled=cfg.autocast_dtype is not None,
    ):
        logits = net(x)
    loss = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=cfg.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def _epoch_seed(random_state: int, epoch: int) -> int:
    return (random_state * 1_000_003 + epoch * 7919) % (2**31)


def run_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    X: ImageInput,
    y: np.ndarray,
    epoch: int,
    step: int,
    total_steps: int,
    cfg: LoopConfig,
    info: DistInfo,
    pre_train: Preprocessing,
    size: int,
    to_input: _Inputs,
    weight: torch.Tensor | None,
    scaler: Any,
) -> tuple[float, int, int]:
    """Train one epoch on this process's shard; returns (mean loss, steps done, images)."""
    torch.manual_seed(_epoch_seed(cfg.random_state, epoch))
    order = np.random.default_rng([cfg.random_state, epoch]).permutation(len(y))
    per_rank = max(1, cfg.batch_size // info.world_size)
    usable = (len(order) // info.world_size) * info.world_size
    shard = order[:usable][info.rank :: info.world_size]
    if len(shard) % per_rank == 1 and len(shard) > 1:
        shard = shard[:-1]  # a batch of one image breaks BatchNorm's batch statistics
    X_shard = X[shard] if isinstance(X, np.ndarray) else [X[i] for i in shard]
    warmup = int(round(cfg.warmup_epochs * total_steps / max(1, cfg.epochs)))
    losses, seen = [], 0
    for batch in iter_batches(X_shard, pre_train, per_rank, n_workers=cfg.n_workers):
        factor = lr_factor(step, total_steps, warmup, cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        images = torch.from_numpy(batch.images).permute(0, 3, 1, 2)
        x = to_input(augment_batch(images, cfg.augmentation, size))
        target = torch.from_numpy(y[shard[batch.indices]]).to(x.device)
        try:
            losses.append(train_step(net, optimizer, x, target, cfg, weight, scaler))
        except torch.OutOfMemoryError as e:
            raise _oom(e, cfg.batch_size) from None
        except RuntimeError as e:
            if "memory" in str(e).lower() and "alloc" in str(e).lower():
                raise _oom(e, cfg.batch_size) from None
            raise
        step += 1
        seen += len(batch.indices)
    total_loss, total_n = all_reduce_sum([float(np.sum(losses)), float(len(losses))], info)
    return total_loss / max(1.0, total_n), step, int(all_reduce_sum([float(seen)], info)[0])


@torch.no_grad()
def validate(
    net: nn.Module,
    X: ImageInput,
    y: np.ndarray,
    cfg: LoopConfig,
    info: DistInfo,
    pre_eval: Preprocessing,
    to_input: _Inputs,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the validation images, summed over processes."""
    net.eval()
    idx = np.arange(len(y))[info.rank :: info.world_size]
    X_part = X[idx] if isinstance(X, np.ndarray) else [X[i] for i in idx]
    loss_sum, correct = 0.0, 0.0
    for batch in iter_batches(X_part, pre_eval, max(1, cfg.batch_size), n_workers=cfg.n_workers):
        x = to_input(torch.from_numpy(batch.images).permute(0, 3, 1, 2))
        with torch.autocast(
            x.device.type,
            dtype=cfg.autocast_dtype or torch.float32,
            enabled=cfg.autocast_dtype is not None,
        ):
            logits = net(x).float()
        target = torch.from_numpy(y[idx[batch.indices]]).to(x.device)
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += float((logits.argmax(1) == target).sum())
    loss_sum, correct, n = all_reduce_sum([loss_sum, correct, float(len(idx))], info)
    return loss_sum / max(1.0, n), correct / max(1.0, n)


def _write_history(history: list[dict[str, float]], folder: str) -> None:
    path = os.path.join(folder, "history.csv")
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(path + ".tmp", path)
    plot_history(history, os.path.join(folder, "curves.png"))


def plot_history(history: list[dict[str, float]], path: str) -> None:
    """Loss and accuracy curves per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if any(not math.isnan(h["val_loss"]) for h in history):
        ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
        ax2.plot(epochs, [h["val_accuracy"] for h in history], "o-", color="C2")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend()
    ax2.set_xlabel("epoch")
    ax2.set_title("validation accuracy")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def _log(cfg: LoopConfig, info: DistInfo, text: str) -> None:
    if cfg.verbose and info.is_main:
        print(text, file=sys.stderr, flush=True)


def fit_loop(
    net: Classifier,
    X: ImageInput,
    y: np.ndarray,
    X_val: ImageInput | None,
    y_val: np.ndarray | None,
    cfg: LoopConfig,
    info: DistInfo,
    device: torch.device,
    pre_train: Preprocessing,
    pre_eval: Preprocessing,
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> LoopResult:
    """Train ``net`` in place for ``cfg.epochs`` (or until early stopping); the best
    epoch's weights (by validation accuracy, ties by loss) are loaded at the end."""
    size = pre_eval.input_size
    to_input = _Inputs(pre_eval, device, cfg.channels_last)
    weight = (
        torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
        if cfg.class_weights is not None
        else None
    )
    scaler = (
        torch.amp.GradScaler("cuda")
        if cfg.autocast_dtype == torch.float16 and device.type == "cuda"
        else None
    )
    optimizer = make_optimizer(
        net.backbone,
        net.head,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        backbone_lr_ratio=cfg.backbone_lr_ratio,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
    )
    per_rank = max(1, cfg.batch_size // info.world_size)
    steps_per_epoch = math.ceil((len(y) // info.world_size) / per_rank)
    total_steps = steps_per_epoch * cfg.epochs
    result = LoopResult()
    best_state: dict[str, torch.Tensor] | None = None
    best_key = (-1.0, 0.0)
    bad_epochs, start_epoch, step = 0, 0, 0
    ckpt_path = os.path.join(cfg.checkpoint_dir, CHECKPOINT_NAME) if cfg.checkpoint_dir else None
    if resume:
        if ckpt_path is None:
            raise CheckpointError("resume needs a checkpoint_dir (CLI: --checkpoint-dir)")
        parts, meta = load_checkpoint(ckpt_path)
        if meta.get("fingerprint") != cfg.fingerprint:
            theirs, ours = meta.get("fingerprint", {}), cfg.fingerprint
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise CheckpointError(
                f"the checkpoint {ckpt_path!r} was written by a different run (it differs in "
                f"{diff}: {[theirs.get(k) for k in diff]} vs {[ours.get(k) for k in diff]}); "
                "resume with the same data and settings, or use another --checkpoint-dir"
            )
        net.load_state_dict(parts["net"])
        best_state = parts["best"]
        restore_optimizer(optimizer, parts["optim"], meta["optimizer_groups"])
        result.history = meta["history"]
        result.best_epoch, best_key = meta["best_epoch"], tuple(meta["best_key"])
        bad_epochs, start_epoch, step = meta["bad_epochs"], meta["epoch"], meta["step"]
        result.stopped_early = meta.get("stopped_early", False)
        _log(cfg, info, f"resuming after epoch {start_epoch} of {cfg.epochs}")
    current_phase = None
    model: nn.Module = net
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        if result.stopped_early:
            break
        phase = _phase(cfg, epoch)
        if phase != current_phase:
            set_trainable(net.backbone, net.head, phase[0], cfg.unfreeze_stages)
            for group in optimizer.param_groups[:2]:  # the backbone's groups
                group["base_lr"] = cfg.lr * phase[1]
            model = maybe_wrap(net, info, device)
            current_phase = phase
        _train_mode(net)
        t0 = time.perf_counter()
        train_loss, step, seen = run_epoch(
            model,
            optimizer,
            X,
            y,
            epoch,
            step,
            total_steps,
            cfg,
            info,
            pre_train,
            size,
            to_input,
            weight,
            scaler,
        )
        rate = seen / max(1e-9, time.perf_counter() - t0)
        if X_val is not None and y_val is not None and len(y_val):
            val_loss, val_acc = validate(net, X_val, y_val, cfg, info, pre_eval, to_input)
        else:
            val_loss, val_acc = float("nan"), float("nan")
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "images_per_second": rate,
            "lr": optimizer.param_groups[-1]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        result.history.append(row)
        key = (val_acc, -val_loss) if not math.isnan(val_acc) else (float(epoch), 0.0)
        if key > best_key:
            best_key, result.best_epoch, bad_epochs = key, epoch + 1, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            bad_epochs += 1
        if cfg.patience is not None and bad_epochs >= cfg.patience and not math.isnan(val_acc):
            result.stopped_early = True
        elapsed = time.perf_counter() - t_start
        left = elapsed / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1)
        _log(
            cfg,
            info,
            f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f}  "
            f"val loss {val_loss:.4f}  val acc {val_acc:.4f}  {rate:.0f} img/s  "
            f"{row['seconds']:.0f} s" + ("" if result.stopped_early else f"  ~{left:.0f} s left"),
        )
        if ckpt_path is not None and info.is_main:
            save_checkpoint(
                ckpt_path,
                net.state_dict(),
                best_state,
                optimizer,
                {
                    "fingerprint": cfg.fingerprint,
                    "epoch": epoch + 1,
                    "step": step,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_key": list(best_key),
                    "bad_epochs": bad_epochs,
                    "stopped_early": result.stopped_early,
                },
            )
            _write_history(result.history, cfg.checkpoint_dir)  # type: ignore[arg-type]
        if on_epoch is not None:
            on_epoch(row)
        if result.stopped_early:
            _log(
                cfg,
                info,
                f"early stop: no improvement for {cfg.patience} epochs; best was "
                f"epoch {result.best_epoch}",
            )
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return result

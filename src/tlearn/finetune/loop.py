"""The training loop as a short story: ``fit_loop`` -> ``run_epoch`` -> ``train_step``, and
``validate``. Everything else a run does (unfreezing, keeping the best weights, early
stopping, checkpoints, history, progress) is a callback (:mod:`tlearn.finetune.callbacks`),
told about each event; callbacks change the shared :class:`LoopState` (early stopping sets
``state.stop``), never raise to steer the loop.

Every source of randomness is seeded from ``(random_state, epoch)`` at the start of each
epoch (data order, crops, flips, dropout), so resuming from the checkpoint of epoch k and
training on gives the same weights as never stopping. The loop runs the same under one
process, ``torchrun`` or Ray Train: it only reads the :class:`DistInfo` it is given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from tlearn.data.images import Preprocessing
from tlearn.data.loader import ImageInput, iter_batches
from tlearn.exceptions import TrainingError
from tlearn.finetune.augment import augment_batch
from tlearn.finetune.distributed import DistInfo, all_reduce_array, all_reduce_sum
from tlearn.finetune.optim import lr_factor, make_optimizer
from tlearn.finetune.task import Task
from tlearn.finetune.tasks import ONE_LABEL
from tlearn.runtime.normalise import normalise_torch

if TYPE_CHECKING:
    from tlearn.finetune.callbacks import Callback

__all__ = [
    "Classifier",
    "LoopConfig",
    "LoopData",
    "LoopState",
    "fit_loop",
    "training_rate",
    "validate",
]


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
    """The loop's settings. The fields named like :class:`FineTuneClassifier`'s parameters
    are taken from them (:meth:`from_params`), so each setting is defined once."""

    strategy: str = "lp-ft"
    unfreeze_stages: int = 2
    head_epochs: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-3
    backbone_lr_ratio: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    augmentation: str = "flip_crop"
    epochs: int = 10
    batch_size: int = 32
    channels_last: bool = True
    patience: int | None = 3
    random_state: int = 0
    n_workers: int | None = None
    verbose: int = 1
    # derived by the estimator
    task: Task = ONE_LABEL  # the loss, and the validation score that chooses the epoch
    class_weights: list[float] | None = None
    autocast_dtype: torch.dtype | None = None
    checkpoint_dir: str | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict[str, Any], **derived: Any) -> LoopConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in params.items() if k in names}, **derived})


@dataclass
class LoopData:
    """What the loop trains on: images and integer labels, and the two preprocessings
    (training images are decoded larger for random crops); per-image weights of the
    training images (``w``: mean 1, the class weights folded in) and of the validation
    images (``w_val``), or ``None`` for equal weights."""

    X: ImageInput
    y: np.ndarray
    X_val: ImageInput | None
    y_val: np.ndarray | None
    pre_train: Preprocessing
    pre_eval: Preprocessing
    w: np.ndarray | None = None
    w_val: np.ndarray | None = None


@dataclass
class LoopState:
    """The run so far: what callbacks read and change."""

    net: Classifier
    optimizer: torch.optim.Optimizer
    model: nn.Module  # ``net``, or DistributedDataParallel around it
    total_steps: int
    epoch: int = 0  # epochs completed
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_key: tuple[float, float] = (-1.0, 0.0)
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stop: bool = False
    scaler: Any = None  # gradient scaling for fp16 autocast
    val_logits: list[np.ndarray] = field(default_factory=list)  # this run's epochs only


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: LoopConfig,
    scaler: Any,
    sample_weight: torch.Tensor | None = None,
) -> float:
    """One optimisation step; returns the batch's loss: the mean of the task's loss per
    image, each times its ``sample_weight`` (mean 1 over the training set, class weights
    folded in) when given, so a batch of light images moves the weights less."""
    with torch.autocast(
        x.device.type,
        dtype=cfg.autocast_dtype or torch.float32,
        enabled=cfg.autocast_dtype is not None,
    ):
        logits = net(x)
    each = cfg.task.loss_per_image(logits, y, cfg.label_smoothing)
    loss = each.mean() if sample_weight is None else (each * sample_weight).mean()
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


def _oom(e: BaseException, batch_size: int) -> TrainingError:
    return TrainingError(
        f"ran out of memory with batch_size={batch_size} ({str(e)[:200]}); try a smaller "
        f"batch size, e.g. --batch-size {max(1, batch_size // 2)}, or a smaller --image-size"
    )


def _step_safely(
    state: LoopState,
    x: torch.Tensor,
    target: torch.Tensor,
    cfg: LoopConfig,
    scaler: Any,
    sample_weight: torch.Tensor | None = None,
) -> float:
    try:
        return train_step(state.model, state.optimizer, x, target, cfg, scaler, sample_weight)
    except torch.OutOfMemoryError as e:
        raise _oom(e, cfg.batch_size) from None
    except RuntimeError as e:
        if "memory" in str(e).lower() and "alloc" in str(e).lower():
            raise _oom(e, cfg.batch_size) from None
        raise


def run_epoch(
    state: LoopState, data: LoopData, cfg: LoopConfig, info: DistInfo, device: torch.device
) -> tuple[float, int]:
    """Train one epoch on this process's shard; returns (mean loss, images seen)."""
    torch.manual_seed(_epoch_seed(cfg.random_state, state.epoch))
    order = np.random.default_rng([cfg.random_state, state.epoch]).permutation(len(data.y))
    per_rank = max(1, cfg.batch_size // info.world_size)
    usable = (len(order) // info.world_size) * info.world_size
    shard = order[:usable][info.rank :: info.world_size]
    if len(shard) % per_rank == 1 and len(shard) > 1:
        shard = shard[:-1]  # a batch of one image breaks BatchNorm's batch statistics
    X = data.X[shard] if isinstance(data.X, np.ndarray) else [data.X[i] for i in shard]
    warmup = int(round(cfg.warmup_epochs * state.total_steps / max(1, cfg.epochs)))
    losses, seen = [], 0
    for batch in iter_batches(X, data.pre_train, per_rank, n_workers=cfg.n_workers):
        factor = lr_factor(state.step, state.total_steps, warmup, cfg.schedule)
        for group in state.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        images = torch.from_numpy(batch.images).permute(0, 3, 1, 2)
        crops = augment_batch(images, cfg.augmentation, data.pre_eval.input_size)
        x = normalise_torch(crops.to(device), data.pre_eval, cfg.channels_last)
        rows = shard[batch.indices]
        target = torch.from_numpy(data.y[rows]).to(device)
        w = None if data.w is None else torch.from_numpy(data.w[rows]).float().to(device)
        losses.append(_step_safely(state, x, target, cfg, state.scaler, w))
        state.step += 1
        seen += len(batch.indices)
    total_loss, total_n = all_reduce_sum([float(np.sum(losses)), float(len(losses))], info)
    return total_loss / max(1.0, total_n), int(all_reduce_sum([float(seen)], info)[0])


@torch.no_grad()
def validate(
    net: Classifier,
    X: ImageInput,
    y: np.ndarray,
    cfg: LoopConfig,
    info: DistInfo,
    pre_eval: Preprocessing,
    device: torch.device,
    w: np.ndarray | None = None,
) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy, accuracy, logits) on the validation images, summed over
    processes (means weighted by ``w``, when given); the logits ``(n_val, n_classes)``
    let the caller choose an epoch on some of the images and judge it on the others. With
    several labels per image (``y`` an indicator matrix) the loss is the binary
    cross-entropy and the accuracy the mean average precision."""
    net.eval()
    idx = np.arange(len(y))[info.rank :: info.world_size]
    X_part = X[idx] if isinstance(X, np.ndarray) else [X[i] for i in idx]
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
    loss_sum, correct = 0.0, 0.0
    all_logits = np.zeros((len(y), net.head.out_features), np.float32)
    for batch in iter_batches(X_part, pre_eval, max(1, cfg.batch_size), n_workers=cfg.n_workers):
        x = torch.from_numpy(batch.images).to(device).permute(0, 3, 1, 2)
        x = normalise_torch(x, pre_eval, cfg.channels_last)
        with torch.autocast(
            x.device.type,
            dtype=cfg.autocast_dtype or torch.float32,
            enabled=cfg.autocast_dtype is not None,
        ):
            logits = net(x).float()
        target = torch.from_numpy(y[idx[batch.indices]]).to(x.device)
        each = torch.from_numpy(w[idx[batch.indices]]).to(x.device)
        loss_sum += float((cfg.task.loss_per_image(logits, target, 0.0) * each).sum())
        correct += float((cfg.task.correct(logits, target) * each).sum())
        all_logits[idx[batch.indices]] = logits.cpu().numpy()
    loss_sum, correct, n = all_reduce_sum([loss_sum, correct, float(w[idx].sum())], info)
    n = n if n > 0 else 1.0
    logits_all = all_reduce_array(all_logits, info)  # every process holds them all now
    return loss_sum / n, cfg.task.validation_score(logits_all, y, w, correct, n), logits_all


def notify(callbacks: Sequence[Callback], event: str, state: LoopState) -> None:
    for callback in callbacks:
        getattr(callback, event)(state)


def run_validation(
    state: LoopState, data: LoopData, cfg: LoopConfig, info: DistInfo, device: torch.device
) -> tuple[float, float]:
    """(loss, accuracy) on the validation images, or NaNs when there are none; their
    logits are kept in ``state.val_logits``, one array per epoch."""
    if data.X_val is None or data.y_val is None or not len(data.y_val):
        return float("nan"), float("nan")
    loss, accuracy, logits = validate(
        state.net, data.X_val, data.y_val, cfg, info, data.pre_eval, device, data.w_val
    )
    state.val_logits.append(logits)
    return loss, accuracy


def fit_loop(
    net: Classifier,
    data: LoopData,
    cfg: LoopConfig,
    info: DistInfo,
    device: torch.device,
    callbacks: Sequence[Callback] = (),
) -> LoopState:
    """Train ``net`` in place for ``cfg.epochs`` epochs, or until a callback stops it."""
    per_rank = max(1, cfg.batch_size // info.world_size)
    steps_per_epoch = math.ceil((len(data.y) // info.world_size) / per_rank)
    state = LoopState(net, make_optimizer(net, cfg), net, steps_per_epoch * cfg.epochs)
    if cfg.autocast_dtype == torch.float16 and device.type == "cuda":
        state.scaler = torch.amp.GradScaler("cuda")
    notify(callbacks, "on_train_begin", state)
    while state.epoch < cfg.epochs and not state.stop:
        notify(callbacks, "on_epoch_begin", state)
        t0 = time.perf_counter()
        train_loss, seen = run_epoch(state, data, cfg, info, device)
        seconds = time.perf_counter() - t0
        val_loss, val_accuracy = run_validation(state, data, cfg, info, device)
        state.epoch += 1
        state.history.append(
            {
                "epoch": state.epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "images_per_second": seen / max(1e-9, seconds),
                "lr": state.optimizer.param_groups[-1]["lr"],
                "seconds": seconds,
            }
        )
        notify(callbacks, "on_epoch_end", state)
    notify(callbacks, "on_train_end", state)
    net.eval()
    return state


def training_rate(
    backbone: str,
    size: int,
    batch: int,
    *,
    channels_last: bool,
    autocast: torch.dtype | None,
    steps: int = 3,
    optimizer: str = "sgd",
) -> float:
    """Training images per second of ``backbone`` with a new 10-class head: forward,
    cross-entropy, backward and an optimiser step (SGD with momentum, or AdamW) on random
    images, timed after a warm-up step (random weights: the cost is the same). What
    ``tlearn bench``, auto's estimates and :class:`ScratchClassifier`'s plan measure."""
    from tlearn.backbones import load_backbone

    bb = load_backbone(backbone, None)
    net = Classifier(bb.model, bb.n_features, 10).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    params = net.parameters()
    opt = (torch.optim.AdamW(params, lr=1e-4) if optimizer == "adamw"
           else torch.optim.SGD(params, lr=1e-3, momentum=0.9))  # fmt: skip
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.zeros(batch, dtype=torch.long)

    def step() -> None:
        with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
            logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / max(1e-9, time.perf_counter() - t0)

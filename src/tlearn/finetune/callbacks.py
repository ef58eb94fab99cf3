"""Callbacks of the training loop (skorch's pattern): a base class with empty ``on_*``
hooks; the loop notifies, each callback decides. None of them raises to steer the loop:
early stopping sets ``state.stop``.

The order they are given in matters, and :func:`default_callbacks` gets it right: the
phase is set before an epoch (:class:`Unfreeze`), the best weights and the stopping
decision are updated before the checkpoint is written, and the best weights are put back
at the end.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import shutil
import tempfile
import time
from typing import Any

from torch import nn

from tlearn._io import atomic_path
from tlearn._log import logger
from tlearn.exceptions import CheckpointError
from tlearn.finetune.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from tlearn.finetune.distributed import DistInfo, maybe_wrap
from tlearn.finetune.loop import Classifier, LoopConfig, LoopState
from tlearn.finetune.optim import set_trainable
from tlearn.plotting import plot_history

__all__ = [
    "BestWeights",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "History",
    "ProgressLog",
    "Unfreeze",
    "default_callbacks",
]


class Callback:
    """Hooks called by :func:`~tlearn.finetune.loop.fit_loop`; override the ones you need."""

    def on_train_begin(self, state: LoopState) -> None:
        """Before the first epoch (after a resume, before the first remaining one)."""

    def on_epoch_begin(self, state: LoopState) -> None:
        """Before epoch ``state.epoch + 1`` trains."""

    def on_epoch_end(self, state: LoopState) -> None:
        """After an epoch; its figures are ``state.history[-1]``."""

    def on_train_end(self, state: LoopState) -> None:
        """After the last epoch, or after a callback stopped the run."""


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


class Unfreeze(Callback):
    """What trains in each epoch: ``head``, ``full``, ``partial`` (the last
    ``unfreeze_stages`` stages), or ``lp-ft`` (the head for ``head_epochs``, then all at the
    backbone's lower learning rate). Wraps the network for DDP when distributed."""

    def __init__(self, cfg: LoopConfig, info: DistInfo, device: Any) -> None:
        self.cfg, self.info, self.device = cfg, info, device
        self.phase: tuple[str, float] | None = None

    def _phase(self, epoch: int) -> tuple[str, float]:
        cfg = self.cfg
        if cfg.strategy == "lp-ft":
            return ("head", 0.0) if epoch < cfg.head_epochs else ("full", cfg.backbone_lr_ratio)
        return cfg.strategy, cfg.backbone_lr_ratio

    def on_epoch_begin(self, state: LoopState) -> None:
        phase = self._phase(state.epoch)
        if phase != self.phase:
            set_trainable(state.net.backbone, state.net.head, phase[0], self.cfg.unfreeze_stages)
            for group in state.optimizer.param_groups[:2]:  # the backbone's groups
                group["base_lr"] = self.cfg.lr * phase[1]
            state.model = maybe_wrap(state.net, self.info, self.device)
            self.phase = phase
        _train_mode(state.net)


def _score(row: dict[str, float]) -> tuple[float, float]:
    """Validation accuracy (mean average precision with several labels per image), then
    lower loss; without validation, the latest epoch."""
    if math.isnan(row["val_accuracy"]):
        return float(row["epoch"]), 0.0
    return row["val_accuracy"], -row["val_loss"]


class BestWeights(Callback):
    """Keep the best epoch's weights (by :func:`_score`) and put them back at the end."""

    def on_epoch_end(self, state: LoopState) -> None:
        key = _score(state.history[-1])
        if key > state.best_key:
            state.best_key, state.best_epoch, state.bad_epochs = key, state.epoch, 0
            state.best_state = copy.deepcopy(state.net.state_dict())
        else:
            state.bad_epochs += 1

    def on_train_end(self, state: LoopState) -> None:
        if state.best_state is not None:
            state.net.load_state_dict(state.best_state)


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a better validation score."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience

    def on_epoch_end(self, state: LoopState) -> None:
        validated = not math.isnan(state.history[-1]["val_accuracy"])
        if self.patience is not None and validated and state.bad_epochs >= self.patience:
            state.stop = True


class Checkpoint(Callback):
    """Write ``checkpoint.safetensors`` after every epoch (atomically, main process only);
    with ``resume``, start from it, refusing a checkpoint written by another run."""

    def __init__(self, folder: str, cfg: LoopConfig, info: DistInfo, resume: bool) -> None:
        self.path = os.path.join(folder, CHECKPOINT_NAME)
        self.cfg, self.info, self.resume = cfg, info, resume

    def on_train_begin(self, state: LoopState) -> None:
        if not self.resume:
            return
        parts, meta = load_checkpoint(self.path)
        theirs, ours = meta.get("fingerprint", {}), self.cfg.fingerprint
        if theirs != ours:
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise CheckpointError(
                f"the checkpoint {self.path!r} was written by a different run (it differs in "
                f"{diff}: {[theirs.get(k) for k in diff]} vs {[ours.get(k) for k in diff]}); "
                "resume with the same data and settings, or use another --checkpoint-dir"
            )
        state.net.load_state_dict(parts["net"])
        state.best_state = parts["best"]
        restore_optimizer(state.optimizer, parts["optim"], meta["optimizer_groups"])
        state.history, state.best_epoch = meta["history"], meta["best_epoch"]
        state.best_key = (float(meta["best_key"][0]), float(meta["best_key"][1]))
        state.bad_epochs, state.epoch, state.step = meta["bad_epochs"], meta["epoch"], meta["step"]
        state.stop = meta.get("stopped_early", False)
        if self.cfg.verbose and self.info.is_main:
            logger.info("resuming after epoch %d of %d", state.epoch, self.cfg.epochs)

    def on_epoch_end(self, state: LoopState) -> None:
        if not self.info.is_main:
            return
        meta = {
            "fingerprint": self.cfg.fingerprint,
            "epoch": state.epoch,
            "step": state.step,
            "history": state.history,
            "best_epoch": state.best_epoch,
            "best_key": list(state.best_key),
            "bad_epochs": state.bad_epochs,
            "stopped_early": state.stop,
        }
        save_checkpoint(self.path, state.net.state_dict(), state.best_state, state.optimizer, meta)


class History(Callback):
    """``history.csv`` and ``curves.png`` in the run folder after every epoch."""

    def __init__(self, folder: str, info: DistInfo) -> None:
        self.folder, self.info = folder, info

    def on_epoch_end(self, state: LoopState) -> None:
        if not self.info.is_main:
            return
        path = os.path.join(self.folder, "history.csv")
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(state.history[0]))
            writer.writeheader()
            writer.writerows(state.history)
        plot_history(state.history, os.path.join(self.folder, "curves.png"))


class RayTrainReport(Callback):
    """Under Ray Train: every worker reports each epoch's metrics (a barrier Ray Train
    needs), and the main one the epoch's checkpoint, which Ray Train keeps in its storage
    and hands back to the workers it restarts after a failure (``max_failures``)."""

    def __init__(self, folder: str | None, info: DistInfo) -> None:
        self.folder, self.info = folder, info

    def on_epoch_end(self, state: LoopState) -> None:
        import ray.train

        metrics = {**state.history[-1], "epoch": state.epoch}
        if not (self.info.is_main and self.folder):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="tlearn-ckpt-") as tmp:
            for name in (CHECKPOINT_NAME, "history.csv"):
                if os.path.isfile(os.path.join(self.folder, name)):
                    shutil.copy2(os.path.join(self.folder, name), tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class ProgressLog(Callback):
    """One line per epoch (losses, accuracy, images/s, time left) on the ``tlearn`` logger."""

    def __init__(self, cfg: LoopConfig, info: DistInfo) -> None:
        self.cfg, self.info = cfg, info
        self.t_start, self.first_epoch = 0.0, 0

    def on_train_begin(self, state: LoopState) -> None:
        self.t_start, self.first_epoch = time.perf_counter(), state.epoch

    def on_epoch_end(self, state: LoopState) -> None:
        if not (self.cfg.verbose and self.info.is_main):
            return
        row, epochs = state.history[-1], self.cfg.epochs
        elapsed = time.perf_counter() - self.t_start
        left = elapsed / max(1, state.epoch - self.first_epoch) * (epochs - state.epoch)
        logger.info(
            f"epoch {state.epoch}/{epochs}  train loss {row['train_loss']:.4f}  "
            f"val loss {row['val_loss']:.4f}  val {self.cfg.task.score_name} "
            f"{row['val_accuracy']:.4f}  "
            f"{row['images_per_second']:.0f} img/s  {row['seconds']:.0f} s"
            + ("" if state.stop else f"  ~{left:.0f} s left")
        )
        if state.stop:
            logger.info(
                f"early stop: no improvement for {self.cfg.patience} epochs; best was "
                f"epoch {state.best_epoch}"
            )


def default_callbacks(
    cfg: LoopConfig, info: DistInfo, device: Any, resume: bool = False
) -> list[Callback]:
    """The callbacks ``FineTuneClassifier`` runs, in the order that makes them right."""
    if resume and cfg.checkpoint_dir is None:
        raise CheckpointError("resume needs a checkpoint_dir (CLI: --checkpoint-dir)")
    callbacks: list[Callback] = [
        Unfreeze(cfg, info, device),
        BestWeights(),
        EarlyStopping(cfg.patience),
    ]
    if cfg.checkpoint_dir is not None:
        callbacks += [
            Checkpoint(cfg.checkpoint_dir, cfg, info, resume),
            History(cfg.checkpoint_dir, info),
        ]
    if info.launcher == "ray":  # after Checkpoint: it reports the file just written
        callbacks.append(RayTrainReport(cfg.checkpoint_dir, info))
    return [*callbacks, ProgressLog(cfg, info)]

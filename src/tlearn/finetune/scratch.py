"""``ScratchClassifier``: a compact network (:mod:`tlearn.backbones.compact`) trained from
scratch on small images, fast enough for a CPU (``tlearn fit --method scratch``).

The recipe is our implementation of the published facts of the fast CIFAR-10 runs (Keller
Jordan's airbench, 2024): label smoothing 0.2; Nesterov SGD on the summed loss, with the
learning rate and weight decay given per 1,024-image "kilostep" and BatchNorm biases
learning 64x faster; a warm-up over the first 23% of the steps then a linear decay to
7%; a lookahead average of the weights every 5 steps; each image mirrored every other
epoch (half of them starting mirrored) and shifted by up to 2 pixels; averaging over
mirror images and one-pixel shifts when predicting (the network's evaluation mode).

What makes it fast on a CPU: the images are decoded once into one uint8 tensor in memory;
augmentation works on whole batches; the network runs channels-last, in bf16 autocast
where the CPU computes bf16 natively (checked against fp32 on the first batch).

The fitted model is a fine-tuned model like any other (its backbone's weights are its own),
so it saves, predicts, serves and exports as one; 10% of the images (``validation_size``)
are held out to calibrate its probabilities and to measure it honestly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlearn._log import ensure_handler
from tlearn._validation import (
    Interval,
    Options,
    Predicate,
    check_sample_weight,
    encode_class_weight,
    validate_params,
)
from tlearn.backbones.compact import COMPACT, INPUT_SIZE, CompactNet
from tlearn.backbones.registry import build_backbone
from tlearn.data.loader import ImageInput, OnError, check_images, iter_batches, sample_indices
from tlearn.exceptions import DataError, InvalidParameterError
from tlearn.finetune.estimator import FineTuneClassifier
from tlearn.finetune.loop import Classifier, training_rate
from tlearn.finetune.tasks import ONE_LABEL, task_for
from tlearn.runtime.engines import CALIBRATION_IMAGES, ENGINES
from tlearn.runtime.normalise import normalise_torch

__all__ = ["ScratchClassifier", "scratch_epochs", "scratch_train_rate"]

log = logging.getLogger("tlearn.scratch")

#: The published recipe's settings that are not parameters.
BIAS_SCALER, WHITEN_BIAS_EPOCHS, WARMUP, FINAL_LR, LOOKAHEAD_EVERY = 64.0, 3, 0.23, 0.07, 5


def scratch_epochs(n: int) -> int:
    """Epochs for ``n`` training images: the published 10 for 50,000, more for fewer
    (growing as the square root, so that a small set still takes a few hundred steps)."""
    return int(min(200, max(10, round(10 * math.sqrt(50_000 / max(1, n))))))


class ScratchClassifier(FineTuneClassifier):
    """A compact network trained from scratch on small images, as a scikit-learn
    classifier over image paths or uint8 arrays.

    Parameters
    ----------
    backbone : str, default="compact_m"
        One of :data:`tlearn.backbones.compact.COMPACT`: ``"compact_s"`` (widths
        64/128/128), ``"compact_m"`` (64/256/256, the published ones), ``"compact_l"``;
        ``"tlearn:compact_m"`` names the same.
    epochs : int or None
        Passes over the training images; ``None``: :func:`scratch_epochs`.
    batch_size : int, default=1024
        Images per step (at most a tenth of the training images).
    lr, momentum, weight_decay : float
        Nesterov SGD's; ``lr`` and ``weight_decay`` per 1,024-image kilostep.
    label_smoothing : float, default=0.2
        Of the cross-entropy loss.
    class_weight : "balanced", dict or None
        Weigh each class's loss: ``"balanced"`` by inverse class frequency, a dict of
        class -> weight as given (a class not named weighs 1).
    translate : int, default=2
        Largest random shift, in pixels.
    precision : {"auto", "bf16", "fp32"}
        ``"auto"``: bf16 autocast where the CPU (or GPU) computes it natively and it
        agrees with fp32 on the first batch, fp32 elsewhere.
    validation_size : float, default=0.1
        Share of the images held out (stratified) to calibrate and measure the model;
        0 trains on all of them (then it is neither).
    time_limit : float or None
        Seconds training may take: after the first epoch, the run is shortened (the
        schedule compressed) when it would take longer.
    engine, device, n_workers, on_error, random_state, verbose
        As :class:`FineTuneClassifier`'s.
    """

    #: inherited prediction code reads these; the input size is the network's
    image_size = None
    crop = "auto"  # small images are enlarged whole, as the network was trained
    checkpoint_dir = None

    def __init__(
        self,
        backbone: str = "compact_m",
        *,
        epochs: int | None = None,
        batch_size: int = 1024,
        lr: float = 11.5,
        momentum: float = 0.85,
        weight_decay: float = 0.0153,
        label_smoothing: float = 0.2,
        class_weight: str | dict[Any, float] | None = None,
        translate: int = 2,
        precision: str = "auto",
        validation_size: float = 0.1,
        time_limit: float | None = None,
        engine: str = "auto",
        device: str = "auto",
        n_workers: int | None = None,
        on_error: str = "raise",
        random_state: int = 0,
        verbose: int = 1,
    ) -> None:
        self.backbone = backbone
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.translate = translate
        self.precision = precision
        self.validation_size = validation_size
        self.time_limit = time_limit
        self.engine = engine
        self.device = device
        self.n_workers = n_workers
        self.on_error = on_error
        self.random_state = random_state
        self.verbose = verbose

    _parameter_constraints: dict[str, list[Any]] = {
        "backbone": [Options((*COMPACT, *(f"tlearn:{n}" for n in COMPACT)))],
        "epochs": [Interval(Integral, 1, 10_000), None],
        "batch_size": [Interval(Integral, 2, 65_536)],
        "lr": [Interval(Real, 0.0, 1_000.0, closed="neither")],
        "momentum": [Interval(Real, 0.0, 0.999, closed="right")],  # Nesterov: above 0
        "weight_decay": [Interval(Real, 0.0, 10.0)],
        "label_smoothing": [Interval(Real, 0.0, 0.99)],
        "class_weight": [
            Options({"balanced"}),
            Predicate(lambda v: isinstance(v, dict), "a dict of class -> weight"),
            None,
        ],
        "translate": [Interval(Integral, 0, 8)],
        "precision": [Options(("auto", "bf16", "fp32"))],
        "validation_size": [Interval(Real, 0, 0.5, closed="left")],
        "time_limit": [Interval(Real, 0.0, 1e7, closed="right"), None],
        "engine": [Options(ENGINES)],
        "device": ["str"],
        "n_workers": [Interval(Integral, 1, 256), None],
        "on_error": [Options(("raise", "skip"))],
        "random_state": ["random_state"],
        "verbose": [Interval(Integral, 0, None), "boolean"],
    }

    def _validate_params(self) -> None:
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)

    # -- fitting ----------------------------------------------------------------------
    def fit(
        self,
        X: object,
        y: object,
        sample_weight: object = None,
        *,
        X_val: object = None,
        y_val: object = None,
        resume: bool = False,
    ) -> ScratchClassifier:
        """Train from scratch. ``sample_weight`` weighs each image's loss (0 leaves it
        out); the held-out images (``validation_size`` of ``X``) calibrate the temperature
        and give ``heldout_proba_``. ``X_val``, ``y_val`` and ``resume`` are
        :class:`FineTuneClassifier`'s, which a run of minutes does without: refused."""
        if X_val is not None or y_val is not None or resume:
            raise InvalidParameterError(
                "ScratchClassifier holds out validation_size of X itself and does not "
                "resume: leave X_val, y_val and resume out"
            )
        self._validate_params()
        if self.verbose:
            ensure_handler()
        images = check_images(X)
        task = task_for(y)  # the table's choice, as fine-tuning makes it
        if task is not ONE_LABEL:
            raise DataError(
                "ScratchClassifier trains one label per image; for several labels per image "
                "use the probe or FineTuneClassifier"
            )
        classes, y_enc = task.encode(y, len(images))
        sw = check_sample_weight(sample_weight, len(images))
        device = self._device()[0]
        torch.manual_seed(self.random_state)  # the initial weights, built afresh
        bb = build_backbone(self.backbone, None)
        pixels, keep, self.skipped_ = self._decode(images, bb.preprocessing)
        if sw is not None:
            keep = keep[sw[keep] > 0]
        tr, va = self._split_rows(y_enc, keep, len(classes))
        net = bb.model
        assert isinstance(net, CompactNet)
        head = nn.Linear(bb.n_features, len(classes), bias=False)
        x = normalise_torch(torch.from_numpy(pixels[tr[:5000]]).permute(0, 3, 1, 2),
                            bb.preprocessing)  # fmt: skip
        net.whiten.fit(x)
        run = _Run.plan(self, len(tr), device)
        w = self._weights(sw, y_enc, tr, classes)
        data = _Data(torch.from_numpy(pixels), tr, torch.as_tensor(y_enc), w, bb.preprocessing)
        state = _train(net, head, data, run, self, device)
        self._fitted(bb, net, head, classes, state, images, keep, va, y_enc, pixels)
        return self

    def _weights(
        self, sw: np.ndarray | None, y: np.ndarray, tr: np.ndarray, classes: np.ndarray
    ) -> torch.Tensor | None:
        """Each training image's loss weight (mean 1): its ``sample_weight`` times its
        class's weight; ``None`` when all weigh the same."""
        w = np.ones(len(tr)) if sw is None else sw[tr].astype(np.float64)
        if self.class_weight is not None:
            from sklearn.utils.class_weight import compute_class_weight

            wanted = encode_class_weight(self.class_weight, classes)
            k = np.arange(len(classes))
            w = w * compute_class_weight(wanted, classes=k, y=y[tr])[y[tr]]
        if sw is None and self.class_weight is None:
            return None
        return torch.as_tensor(w / w.mean(), dtype=torch.float32)

    def _decode(
        self, images: ImageInput, pre: Any
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]]]:
        """Every image decoded once at the network's size: ``(pixels, readable rows,
        skipped (row, name, reason))``; with ``on_error="raise"`` the first bad image
        raises."""
        size = pre.input_size
        pixels = np.zeros((len(images), size, size, 3), np.uint8)
        ok = np.zeros(len(images), bool)
        skipped: list[tuple[int, str, str]] = []
        on_error: OnError = "skip" if self.on_error == "skip" else "raise"
        for batch in iter_batches(images, pre, 256, n_workers=self.n_workers, on_error=on_error):
            pixels[batch.indices] = batch.images
            ok[batch.indices] = True
            skipped += batch.errors
        if not ok.any():
            raise DataError(f"none of the {len(images)} images could be read")
        return pixels, np.flatnonzero(ok), skipped

    def _split_rows(
        self, y: np.ndarray, keep: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training and held-out rows (stratified), among ``keep``."""
        from sklearn.model_selection import train_test_split

        counts = np.bincount(y[keep], minlength=n_classes)
        if (counts < 1).any():
            raise DataError("every class needs a readable image of weight > 0 to train on")
        if self.validation_size == 0:
            return keep, keep[:0]
        if counts.min() < 2:
            raise DataError(
                f"a class has a single image: the held-out split (validation_size="
                f"{self.validation_size}) needs two of each; give more or validation_size=0"
            )
        n_val = max(n_classes, int(round(self.validation_size * len(keep))))
        tr, va = train_test_split(keep, test_size=n_val, stratify=y[keep],
                                  random_state=self.random_state)  # fmt: skip
        return np.sort(tr), np.sort(va)

    def _fitted(
        self,
        bb: Any,
        net: CompactNet,
        head: nn.Linear,
        classes: np.ndarray,
        state: Any,
        images: ImageInput,
        keep: np.ndarray,
        va: np.ndarray,
        y: np.ndarray,
        pixels: np.ndarray,
    ) -> None:
        """Set the fitted state: the model, its calibration and held-out estimate."""
        net.eval()
        whole = Classifier(net, bb.n_features, len(classes))
        with torch.no_grad():  # the published head divides its scores by 9
            whole.head.weight.copy_(head.weight / 9)
            whole.head.bias.zero_()
        self.task_, self.multilabel_ = ONE_LABEL, False
        self.image_size_ = bb.preprocessing.input_size
        # what engines calibrate on: a sample of the decoded images, not the files again
        sample = keep[sample_indices(len(keep), CALIBRATION_IMAGES)]
        self._finish(bb, whole, classes, state, pixels[sample])
        self.epochs_ = state.epochs
        self.train_images_per_second_ = state.rate
        self.precision_ = state.precision
        self.task_.uncalibrated(self)
        self.validation_ = None
        self.heldout_proba_ = np.full((len(images), len(classes)), np.nan)
        self.heldout_method_, self.heldout_labels_ = "", None
        if not len(va):
            return
        x_val = torch.from_numpy(pixels[va]).permute(0, 3, 1, 2)
        logits = _logits(whole, x_val, bb.preprocessing)
        self.task_.calibrate(self, logits, y[va], None)
        proba, _, how = self.task_.held_out(self, [logits], y[va], None)
        self.heldout_proba_[va] = proba
        share = len(va) / (len(va) + state.n_train)
        self.heldout_method_ = (
            f"held-out {share:.0%} split never trained on, each half calibrated on the other"
        )


def _logits(net: nn.Module, x: torch.Tensor, pre: Any, batch: int = 1000) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out.append(net(normalise_torch(x[i : i + batch], pre)).float())
    return torch.cat(out).numpy().astype(np.float64)


@dataclass
class _Data:
    """The decoded images (uint8, n x h x w x 3), the training rows, every image's class
    index, the training rows' weights (mean 1) or ``None``, the preprocessing."""

    pixels: torch.Tensor
    rows: np.ndarray
    y: torch.Tensor
    weights: torch.Tensor | None
    pre: Any


@dataclass
class _Run:
    """A training run's plan: batch size, steps, epochs, autocast dtype."""

    batch: int
    steps_per_epoch: int
    total: int
    epochs: int
    autocast: torch.dtype | None

    @classmethod
    def plan(cls, model: ScratchClassifier, n: int, device: torch.device) -> _Run:
        batch = int(max(2, min(model.batch_size, n // 10 or 1)))
        steps = max(1, n // batch)
        epochs = int(model.epochs or scratch_epochs(n))
        autocast = _autocast(model.precision, device)
        return cls(batch, steps, steps * epochs, epochs, autocast)


def _autocast(precision: str, device: torch.device) -> torch.dtype | None:
    from tlearn.runtime.engines import _bf16_native

    if precision == "fp32" or (precision == "auto" and not _bf16_native(device)):
        return None
    return torch.bfloat16


def _optimizer(net: CompactNet, head: nn.Linear, model: ScratchClassifier, batch: int) -> Any:
    """Nesterov SGD with the published per-kilostep rates; the whitening bias in a group
    of its own (it stops learning after :data:`WHITEN_BIAS_EPOCHS`)."""
    kilostep = 1024 * (1 + 1 / (1 - model.momentum))
    lr, wd = model.lr / kilostep, model.weight_decay * batch / kilostep
    named = list(net.body.named_parameters())
    biases = [p for _, p in named if p.ndim == 1 and p.requires_grad]
    others = [p for _, p in named if p.ndim > 1 and p.requires_grad] + [head.weight]

    def group(params: Sequence[torch.Tensor], rate: float) -> dict[str, Any]:
        # SGD multiplies the decay by the rate: wd / rate decays by wd a step
        return {"params": params, "lr": rate, "weight_decay": wd / rate, "base": rate}

    whiten_bias = [p for p in net.whiten.parameters() if p.requires_grad]
    groups = [group(biases, lr * BIAS_SCALER), group(whiten_bias, lr), group(others, lr)]
    return torch.optim.SGD(groups, momentum=model.momentum, nesterov=True)


def _factor(step: int, total: int) -> float:
    """The schedule: warm-up from 0.2 over the first 23% of the steps, then linear decay
    to :data:`FINAL_LR`."""
    warm = max(1, int(WARMUP * total))
    if step < warm:
        return 0.2 + 0.8 * step / warm
    return 1.0 - (1.0 - FINAL_LR) * (step - warm) / max(1, total - warm)


def _translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to ``pad`` pixels each way (reflected at the border)."""
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            chosen = torch.nonzero((dy == oy) & (dx == ox)).flatten()
            if len(chosen):
                out[chosen] = padded[chosen, :, oy : oy + h, ox : ox + w]
    return out


class _Lookahead:
    """A slow copy of the weights (and BatchNorm statistics) pulled towards them every
    few steps, the weights then set to it; the pull weakens as training ends."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.live = [t for m in modules for t in [*m.parameters(), *m.buffers()]
                     if t.dtype.is_floating_point]  # fmt: skip
        self.slow = [t.detach().clone() for t in self.live]

    def pull(self, decay: float) -> None:
        with torch.no_grad():
            for s, p in zip(self.slow, self.live, strict=True):
                s.lerp_(p, 1 - decay)
                p.copy_(s)


def _batch(
    data: _Data, rows: torch.Tensor, flip: torch.Tensor, pad: int, gen: torch.Generator
) -> torch.Tensor:
    """The augmented, normalised, channels-last batch of ``rows``."""
    x = normalise_torch(data.pixels[rows].permute(0, 3, 1, 2), data.pre)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return _translate(x, pad, gen).contiguous(memory_format=torch.channels_last)


def _loss(
    net: nn.Module,
    head: nn.Linear,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    smoothing: float,
    autocast: torch.dtype | None,
) -> torch.Tensor:
    on = autocast is not None
    with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=on):
        logits = head(net(x)) / 9
    per_image = F.cross_entropy(logits.float(), y, label_smoothing=smoothing, reduction="none")
    return (per_image if w is None else per_image * w).sum()


def _check_autocast(
    net: nn.Module, head: nn.Linear, x: torch.Tensor, y: torch.Tensor, run: _Run, smoothing: float
) -> None:
    """bf16 stays on only where its loss on the first batch is within 2% of fp32's."""
    if run.autocast is None:
        return
    kept = [b.clone() for b in net.buffers()]  # the two passes move BatchNorm's statistics
    with torch.no_grad():
        exact = _loss(net, head, x, y, None, smoothing, None)
        fast = _loss(net, head, x, y, None, smoothing, run.autocast)
        for b, k in zip(net.buffers(), kept, strict=True):
            b.copy_(k)
    if not torch.isfinite(fast) or abs(float(fast - exact)) > 0.02 * abs(float(exact)):
        log.info("bf16 disagrees with fp32 on the first batch (loss %.4g vs %.4g): fp32",
                 float(fast), float(exact))  # fmt: skip
        run.autocast = None


def _train(
    net: CompactNet,
    head: nn.Linear,
    data: _Data,
    run: _Run,
    model: ScratchClassifier,
    device: torch.device,
) -> SimpleNamespace:
    """The training run; returns what it did (epochs, images/s, precision)."""
    net.to(device).to(memory_format=torch.channels_last).train()
    head.to(device)
    opt = _optimizer(net, head, model, run.batch)
    ahead = _Lookahead([net, head])
    gen = torch.Generator().manual_seed(int(model.random_state or 0))
    n = len(data.rows)
    rows = torch.as_tensor(data.rows)
    mirrored = torch.rand(n, generator=gen) < 0.5
    step, epoch, t0, history = 0, 0, time.perf_counter(), []
    while step < run.total:
        t_epoch, order = time.perf_counter(), torch.randperm(n, generator=gen)
        flips = mirrored ^ bool(epoch % 2)  # each image mirrored every other epoch
        if epoch == WHITEN_BIAS_EPOCHS:
            opt.param_groups[1]["base"] = 0.0
        for i in range(min(run.steps_per_epoch, run.total - step)):
            pick = order[i * run.batch : (i + 1) * run.batch]
            x = _batch(data, rows[pick], flips[pick], model.translate, gen).to(device)
            y = data.y[rows[pick]].to(device)
            w = None if data.weights is None else data.weights[pick].to(device)
            loss = _step(net, head, opt, (x, y, w), run, step, model.label_smoothing)
            step += 1
            if step % LOOKAHEAD_EVERY == 0 or step == run.total:
                ahead.pull(0.95**LOOKAHEAD_EVERY * (step / run.total) ** 3)
        epoch += 1
        took = time.perf_counter() - t_epoch
        nan = float("nan")  # no validation pass between epochs: the schedule is fixed
        history.append({"epoch": epoch, "train_loss": loss, "val_loss": nan,
                        "val_accuracy": nan, "seconds": took})  # fmt: skip
        if model.verbose:
            log.info("epoch %d/%d: loss %.3f, %.0f s", epoch, run.epochs,
                     history[-1]["train_loss"], took)  # fmt: skip
        _shorten(run, step, time.perf_counter() - t0, model.time_limit)
    ahead.pull(1.0)  # the weights become the slow copy
    seconds = time.perf_counter() - t0
    return SimpleNamespace(
        epochs=epoch, history=history, best_epoch=epoch, stop=False, n_train=n,
        rate=step * run.batch / max(1e-9, seconds),
        precision="bf16" if run.autocast is not None else "fp32",
    )  # fmt: skip


def _step(
    net: nn.Module,
    head: nn.Linear,
    opt: Any,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    run: _Run,
    step: int,
    smoothing: float,
) -> float:
    """One optimisation step on ``batch`` ``(x, y, weights)`` at the schedule's rate for
    ``step`` (the first checks bf16 against fp32); returns the loss per image."""
    x, y, w = batch
    if step == 0:
        _check_autocast(net, head, x, y, run, smoothing)
    for g in opt.param_groups:
        g["lr"] = g["base"] * _factor(step, run.total)
    loss = _loss(net, head, x, y, w, smoothing, run.autocast)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()) / len(x)


def _shorten(run: _Run, step: int, spent: float, limit: float | None) -> None:
    """When the steps left would overrun ``limit`` seconds, fewer: the schedule is a
    function of the share done, so it ends as planned, only sooner."""
    if limit is None or step >= run.total or not math.isfinite(limit):
        return
    affordable = int(step + (limit - spent) * step / max(1e-9, spent))
    if affordable < run.total:
        run.total = max(step + 1, affordable)
        run.epochs = math.ceil(run.total / run.steps_per_epoch)
        log.info("the time limit allows %d epochs", run.epochs)


def scratch_train_rate(backbone: str = "compact_m", batch: int = 256, steps: int = 3) -> float:
    """Training images per second of ``backbone`` here, as :class:`ScratchClassifier`
    trains it (precision and layout included), timed after a warm-up step."""
    import tlearn.runtime  # noqa: F401  (thread settings)

    autocast = _autocast("auto", torch.device("cpu"))
    return training_rate(backbone, INPUT_SIZE, batch, channels_last=True, autocast=autocast,
                         steps=steps)  # fmt: skip

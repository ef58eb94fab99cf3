"""``FineTuneClassifier``: replace a pretrained backbone's head with a linear layer for your
classes and train it (head only, fully, last stages, or head-then-everything), as a
scikit-learn classifier over image paths or uint8 arrays."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted

from tlearn._log import ensure_handler
from tlearn._validation import (
    Interval,
    Options,
    Predicate,
    check_sample_weight,
    encode_class_weight,
    validate_params,
)
from tlearn.backbones import Backbone, load_backbone, state_dict_sha256
from tlearn.backbones.policy import DEFAULT_BACKBONE, SMALL_IMAGES, SMALL_INPUT
from tlearn.data.images import Preprocessing
from tlearn.data.loader import ImageInput, check_images, iter_batches, median_short_side
from tlearn.exceptions import DataError, InvalidParameterError
from tlearn.features import (
    FINE_TUNED,
    ForwardsFeatureParams,
    PretrainedFeatures,
    calibration_images,
    effective_preprocessing,
)
from tlearn.finetune.augment import AUGMENTATIONS
from tlearn.finetune.callbacks import default_callbacks
from tlearn.finetune.distributed import DistInfo, dist_info
from tlearn.finetune.loop import Classifier, LoopConfig, LoopData, fit_loop
from tlearn.finetune.task import Task
from tlearn.finetune.tasks import TASKS, task_for
from tlearn.multilabel import THRESHOLD_TARGETS, valid_threshold_target
from tlearn.probe import ScoresNamedTargets
from tlearn.runtime import resolve_device
from tlearn.runtime.engines import CALIBRATION_IMAGES, ENGINES

__all__ = ["STRATEGIES", "FineTuneClassifier", "refit_on_all"]

STRATEGIES = ("head", "full", "partial", "lp-ft")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _subset(X: ImageInput, idx: np.ndarray) -> ImageInput:
    return X[idx] if isinstance(X, np.ndarray) else [X[i] for i in idx]


def _split_weights(
    sw: np.ndarray | None, keep: np.ndarray, rows_v: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The training and validation images' sample weights (``keep``: the images used;
    ``rows_v``: the validation split's positions among them, ``None`` without a split)."""
    if sw is None:
        return None, None
    w = sw[keep]
    if rows_v is None:
        return w, None
    train = np.ones(len(w), bool)
    train[rows_v] = False
    return w[train], w[rows_v]


def _training_weights(
    w: np.ndarray | None, y: np.ndarray, class_weights: list[float] | None
) -> np.ndarray | None:
    """Per training image, its sample weight times its class's weight (scikit-learn's
    convention), scaled to mean 1: then a batch's loss is the mean of its weighted losses
    and the learning rate means what it means unweighted; ``None`` when nothing weighs."""
    if w is None and class_weights is None:
        return None
    w = np.ones(len(y)) if w is None else w
    if class_weights is not None:
        w = w * np.asarray(class_weights)[y]
    return (w / w.mean()).astype(np.float32)


class FineTuneClassifier(ForwardsFeatureParams, ScoresNamedTargets, BaseEstimator):
    """Fine-tune a pretrained backbone with a new linear head, as a scikit-learn classifier.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        The pretrained network (see :func:`tlearn.load_backbone`).
    weights : "pretrained", path or None
        Where its weights come from.
    strategy : {"lp-ft", "full", "head", "partial"}, default="lp-ft"
        What trains. ``head``: backbone frozen (BatchNorm in inference mode); ``full``:
        everything; ``partial``: the last ``unfreeze_stages`` stages and the head;
        ``lp-ft``: the head alone for ``head_epochs``, then everything at the lower
        backbone learning rate.
    unfreeze_stages : int, default=2
        For ``partial``: how many of the backbone's last stages train.
    head_epochs : int, default=1
        For ``lp-ft``: epochs of head-only training before the backbone joins.
    optimizer : {"adamw", "sgd"}, default="adamw"
        The optimiser.
    lr : float, default=1e-3
        The head's learning rate; the backbone's is ``lr * backbone_lr_ratio``.
    backbone_lr_ratio : float, default=0.1
        The backbone's learning rate as a fraction of the head's.
    momentum : float, default=0.9
        For SGD.
    weight_decay : float, default=0.01
        Decoupled weight decay; not applied to norm layers and biases.
    schedule : {"cosine", "constant"}, default="cosine"
        The learning-rate schedule after warm-up.
    warmup_epochs : float, default=0.5
        Linear warm-up, in epochs.
    label_smoothing : float, default=0.1
        Label smoothing of the cross-entropy loss.
    class_weight : "balanced", dict or None, default=None
        Weigh each class's loss: ``"balanced"`` by inverse class frequency, a dict of
        class -> weight as given (a class not named weighs 1).
    threshold_for : str, default="f1"
        With several labels per image: what each label's threshold maximises on the
        validation images, ``"f1"``, or ``"precision=0.9"`` (the most recall at that
        precision) or ``"recall=0.9"``.
    augmentation : {"flip_crop", "flip", "none", "trivialaugment", "randaugment"}
        Training-time augmentation. Random crops (``flip_crop`` and the policies on top of
        it) take the input size out of the image resized to ``input_size / crop_pct``; a
        small image that evaluation shows whole (``crop="auto"``) is enlarged to the input
        size and its border reflected out instead, so crops shift it without zooming in
        (CIFAR-10 500/class, lp-ft 128 px: 76.8% against 74.4%).
    image_size : int, optional
        Input side in pixels. Default: 128 for small images (a median shorter side below
        96 px, upsampled anyway), else the backbone's own. Smaller trains much faster.
    crop : {"auto", "center"}, default="auto"
        How images are cropped for evaluation (see :class:`PretrainedFeatures`): ``"auto"``
        enlarges an image smaller than the input whole instead of cropping its border.
    epochs : int, optional
        The most epochs to train (early stopping may end sooner). Default: about 30,000
        images' worth, between 3 and 15 epochs (15 for 2,000 images or fewer, 6 for 5,000,
        3 for 10,000 or more).
    batch_size : int, default=32
        Images per optimisation step (across all processes).
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        ``auto``: bf16 autocast on CUDA GPUs that support it (else fp16), fp32 on CPU, where
        bf16 autocast measured slower for training. ``fp16`` is for CUDA (with gradient
        scaling).
    channels_last : bool, default=True
        Channels-last memory layout (faster for convolutional networks).
    validation_size : float, default=0.1
        Stratified hold-out scored every epoch (0 disables validation and early stopping).
    patience : int or None, default=3
        Stop after this many epochs without a better validation accuracy.
    device : str, default="auto"
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``...
    n_workers : int, optional
        Decoding threads.
    checkpoint_dir : path, optional
        Write ``checkpoint.safetensors``, ``history.csv`` and ``curves.png`` there after
        every epoch; ``fit(..., resume=True)`` continues from it.
    on_error : {"raise", "skip"}
        Unreadable training images: stop before training (naming them) or leave them out.
    engine : str, default="torch"
        The inference engine of the fitted model (see :class:`PretrainedFeatures`);
        training always runs in PyTorch.
    random_state : int, default=0
        Seeds the split, the data order, the augmentation and the new head.
    verbose : int, default=1
        Log one line per epoch.

    Attributes
    ----------
    classes_, features_ (a :class:`PretrainedFeatures` over the fine-tuned backbone),
    head_weight_ (n_classes, n_features), head_bias_, history_, best_epoch_, skipped_.
    temperature_ : float
        Calibrates the probabilities (fitted on the validation images; 1.0 without them).
    calibration_ : dict
        The temperature, and the validation accuracy and calibration error before/after.
    heldout_proba_ : ndarray of shape (n_samples, n_classes)
        Honest probabilities of the validation split's images (rows of NaN for the
        others): each half scored by the epoch the other half chose, with a cross-fitted
        temperature (:mod:`tlearn.finetune.heldout`); ``heldout_method_`` says so in one
        line.
    validation_ : tuple of (images, labels) or None
        The images the validation scores come from.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        weights: str | os.PathLike[str] | None = "pretrained",
        strategy: str = "lp-ft",
        unfreeze_stages: int = 2,
        head_epochs: int = 1,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        backbone_lr_ratio: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.01,
        schedule: str = "cosine",
        warmup_epochs: float = 0.5,
        label_smoothing: float = 0.1,
        class_weight: str | dict[Any, float] | None = None,
        threshold_for: str = "f1",
        augmentation: str = "flip_crop",
        image_size: int | None = None,
        crop: str = "auto",
        epochs: int | None = None,
        batch_size: int = 32,
        precision: str = "auto",
        channels_last: bool = True,
        validation_size: float = 0.1,
        patience: int | None = 3,
        device: str = "auto",
        n_workers: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        engine: str = "auto",
        random_state: int = 0,
        verbose: int = 1,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.strategy = strategy
        self.unfreeze_stages = unfreeze_stages
        self.head_epochs = head_epochs
        self.optimizer = optimizer
        self.lr = lr
        self.backbone_lr_ratio = backbone_lr_ratio
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.warmup_epochs = warmup_epochs
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.threshold_for = threshold_for
        self.augmentation = augmentation
        self.image_size = image_size
        self.crop = crop
        self.epochs = epochs
        self.batch_size = batch_size
        self.precision = precision
        self.channels_last = channels_last
        self.validation_size = validation_size
        self.patience = patience
        self.device = device
        self.n_workers = n_workers
        self.checkpoint_dir = checkpoint_dir
        self.on_error = on_error
        self.engine = engine
        self.random_state = random_state
        self.verbose = verbose

    _parameter_constraints: dict[str, list[Any]] = {
        "backbone": ["str"],
        "weights": ["path", None],
        "strategy": [Options(STRATEGIES)],
        "unfreeze_stages": [Interval(Integral, 0, 100)],
        "head_epochs": [Interval(Integral, 0, 10_000)],
        "optimizer": [Options(("adamw", "sgd"))],
        "lr": [Interval(Real, 1e-7, 10.0)],
        "backbone_lr_ratio": [Interval(Real, 0.0, 10.0)],
        "momentum": [Interval(Real, 0.0, 0.999)],
        "weight_decay": [Interval(Real, 0.0, 1.0)],
        "schedule": [Options(("cosine", "constant"))],
        "warmup_epochs": [Interval(Real, 0.0, 10_000)],
        "label_smoothing": [Interval(Real, 0.0, 0.99)],
        "threshold_for": [Predicate(valid_threshold_target, THRESHOLD_TARGETS)],
        "class_weight": [
            Options({"balanced"}),
            Predicate(lambda v: isinstance(v, dict), "a dict of class -> weight"),
            None,
        ],
        "augmentation": [Options(AUGMENTATIONS)],
        "image_size": [Interval(Integral, 8, 4096), None],
        "crop": [Options(("auto", "center"))],
        "epochs": [Interval(Integral, 1, 10_000), None],
        "batch_size": [Interval(Integral, 1, 65_536)],
        "precision": [Options(PRECISIONS)],
        "channels_last": ["boolean"],
        "validation_size": [Interval(Real, 0, 1, closed="left")],
        "patience": [Interval(Integral, 1, 10_000), None],
        "device": ["str"],
        "engine": [Options(ENGINES)],
        "n_workers": [Interval(Integral, 1, 256), None],
        "checkpoint_dir": ["path", None],
        "on_error": [Options(("raise", "skip"))],
        "random_state": ["random_state"],
        "verbose": [Interval(Integral, 0, None), "boolean"],
    }

    # -- checking ---------------------------------------------------------------------
    def _validate_params(self) -> None:
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)
        self._autocast_dtype(resolve_device(self.device))
        if self.epochs is not None and (
            self.head_epochs > self.epochs or self.warmup_epochs > self.epochs
        ):
            raise InvalidParameterError(
                f"FineTuneClassifier: head_epochs ({self.head_epochs}) and warmup_epochs "
                f"({self.warmup_epochs}) must not exceed epochs ({self.epochs})"
            )

    def _autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        p = self.precision
        if p == "fp32":
            return None
        if p == "fp16":
            if device.type != "cuda":
                raise InvalidParameterError(
                    "precision='fp16' needs a CUDA GPU; use 'bf16' or 'fp32' on CPU"
                )
            return torch.float16
        if p == "bf16":
            return torch.bfloat16
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # On CPU "auto" stays fp32: bf16 autocast trained EfficientNet-Lite0 *slower* than
        # fp32 channels-last on an AVX512-BF16 Zen 4 (benchmarks/finetune.py); ask for
        # precision="bf16" explicitly to use it.
        return None

    def _check_images_readable(
        self, X: ImageInput, pre: Preprocessing
    ) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """Decode every training image once before training, so a broken file stops the run
        in seconds (naming it) rather than mid-epoch; with on_error="skip" it is left out."""
        ok, errors = [], []
        small = pre.with_size(8)
        for batch in iter_batches(X, small, 256, n_workers=self.n_workers, on_error=self.on_error):  # type: ignore[arg-type]
            ok.extend(batch.indices.tolist())
            errors.extend(batch.errors)
        return np.asarray(sorted(ok), dtype=np.int64), errors

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
    ) -> FineTuneClassifier:
        """Train. ``sample_weight`` weighs each image's loss (with ``class_weight``'s, if
        any), and the validation accuracy and loss that choose the epoch; an image of
        weight 0 is left out. ``X_val``/``y_val`` replace the automatic validation split
        (their images weigh the same); ``resume`` continues from ``checkpoint_dir``'s last
        complete epoch."""
        self._validate_params()
        if self.verbose:
            ensure_handler()
        images = check_images(X)
        task, classes, y_enc = self._targets(y, len(images))
        sw = check_sample_weight(sample_weight, len(images))
        device, info = self._device()
        torch.manual_seed(self.random_state)
        bb = load_backbone(self.backbone, self.weights)
        self.image_size_ = self.image_size or (
            SMALL_INPUT if median_short_side(images) < SMALL_IMAGES else None
        )
        pre_eval = effective_preprocessing(bb, self.image_size_, self.crop)
        self._check_size(bb, pre_eval.input_size)
        keep, self.skipped_ = self._check_images_readable(images, pre_eval)
        if sw is not None:
            keep = keep[sw[keep] > 0]  # weight 0: as if the image were not given
            task.check_trainable(y_enc[keep], classes)
        X_tr, y_tr, X_v, y_v, rows_v = self._split(
            task, _subset(images, keep), y_enc[keep], classes, X_val, y_val
        )
        torch.manual_seed(self.random_state)  # the new head starts the same on every process
        net = Classifier(bb.model, bb.n_features, len(classes)).to(device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        w_tr, w_v = _split_weights(sw, keep, rows_v)
        used = None if sw is None else sw[keep]  # the training and validation images'
        fingerprint = self._fingerprint(bb, classes, pre_eval, len(y_tr), used, task)
        cfg = self._loop_config(device, y_tr, classes, fingerprint, task)
        if cfg.checkpoint_dir and info.is_main:
            os.makedirs(cfg.checkpoint_dir, exist_ok=True)
        data = LoopData(X_tr, y_tr, X_v, y_v, self._train_preprocessing(pre_eval), pre_eval,
                        _training_weights(w_tr, y_tr, cfg.class_weights), w_v)  # fmt: skip
        state = fit_loop(net, data, cfg, info, device, default_callbacks(cfg, info, device, resume))
        self.task_, self.multilabel_ = task, task.multilabel  # trained: the model is the new one
        self._finish(bb, net, classes, state, X_tr)
        self._calibrate(X_v, y_v, w_v)
        self.validation_ = None
        if X_v is not None and y_v is not None:
            self.validation_ = (X_v, self.task_.decode(classes, y_v))
        rows = None if rows_v is None else keep[rows_v]  # keep: the used rows' indices
        self._held_out(state, len(images), y_v, rows, len(X_tr), w_v)
        return self

    def _targets(self, y: object, n: int) -> tuple[Task, np.ndarray, np.ndarray]:
        """``(task, classes, encoded targets)``: the task ``y`` calls for, and the targets
        as it encodes them (class indices for one label per image; an indicator matrix for
        several). ``task_`` is set once training has ended."""
        task = task_for(y)
        task.check_params(self)
        classes, encoded = task.encode(y, n)
        return task, classes, encoded

    @property
    def _task(self) -> Task:
        """The fitted task; a model pickled before tasks existed has only ``multilabel_``."""
        task = getattr(self, "task_", None)
        if task is None:
            return TASKS["multilabel" if getattr(self, "multilabel_", False) else "one_label"]
        return task

    def _held_out(
        self,
        state: Any,
        n: int,
        y_v: np.ndarray | None,
        rows: np.ndarray | None,
        n_tr: int,
        w_v: np.ndarray | None = None,
    ) -> None:
        """``heldout_proba_`` over the images given to ``fit`` (NaN but the validation
        split's rows): each half of the split scored by the epoch (and whatever else the
        task fits) the other half chose (:meth:`Task.held_out`); ``heldout_labels_`` where
        the task predicts labels apart from the probabilities (-1 outside the split).
        Validation images given apart have no rows in ``X``; a resumed run lacks the
        earlier epochs' logits (all of them when the checkpoint had every epoch), so it
        says it is optimistic."""
        self.heldout_proba_ = np.full((n, len(self.classes_)), np.nan)
        self.heldout_method_ = ""
        self.heldout_labels_: np.ndarray | None = None
        if rows is None or y_v is None or not len(y_v):
            return
        size = f"held-out {len(rows) / (len(rows) + n_tr):.0%} validation split"
        if len(state.val_logits) != len(state.history) and self.validation_ is not None:
            F, _ = self.features_.extract(self.validation_[0], on_error="skip")
            self.heldout_proba_[rows] = self.predict_proba_features(F)
            self.heldout_method_ = f"{size} that also chose the epoch (a resumed run)"
            return
        proba, labels, how = self.task_.held_out(self, state.val_logits, y_v, w_v)
        self.heldout_proba_[rows] = proba
        if labels is not None:
            self.heldout_labels_ = np.full(self.heldout_proba_.shape, -1, np.int8)
            self.heldout_labels_[rows] = labels
        self.heldout_method_ = f"{size}, {how}"

    def _calibrate(
        self, X_val: ImageInput | None, y_val: np.ndarray | None, w_val: np.ndarray | None
    ) -> None:
        """The task's calibration on the validation images (temperature scaling for one
        label, as label smoothing leaves a fine-tuned model under-confident; each label's
        Platt scaling and threshold for several); without validation images, none."""
        self.task_.uncalibrated(self)
        if X_val is None or y_val is None or not len(y_val):
            return
        F, _ = self.features_.extract(X_val, on_error="skip")
        ok = ~np.isnan(F).any(axis=1)
        logits = F[ok] @ self.head_weight_.T + self.head_bias_
        self.task_.calibrate(self, logits, y_val[ok], None if w_val is None else w_val[ok])

    def _device(self) -> tuple[torch.device, DistInfo]:
        device = resolve_device(self.device)
        info = dist_info(device)
        if device.type == "cuda" and info.enabled:
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
        return device, info

    def _train_preprocessing(self, pre_eval: Preprocessing) -> Preprocessing:
        """Random crops need the whole resized image: decode without the centre crop. A
        small image evaluated whole (``crop="auto"``) is enlarged to the evaluation size and
        its border reflected out instead, so the crops shift it without zooming in."""
        if self.augmentation in ("none", "flip"):
            return pre_eval
        pad = (pre_eval.resize_size - pre_eval.input_size) // 2
        return replace(pre_eval, input_size=pre_eval.input_size + 2 * pad, crop_pct=1.0,
                       pad_small=pad)  # fmt: skip

    def _loop_config(
        self,
        device: torch.device,
        y_tr: np.ndarray,
        classes: np.ndarray,
        fingerprint: dict[str, Any],
        task: Task | None = None,
    ) -> LoopConfig:
        weights = None
        if self.class_weight == "balanced":
            indices = np.arange(len(classes))
            weights = compute_class_weight("balanced", classes=indices, y=y_tr).tolist()
        elif isinstance(self.class_weight, dict):  # a class not named weighs 1
            given = encode_class_weight(self.class_weight, classes)
            weights = [given.get(i, 1.0) for i in range(len(classes))]
        self.epochs_ = self.epochs or int(np.clip(round(30_000 / max(1, len(y_tr))), 3, 15))
        if self.epochs is None and (self.head_epochs >= self.epochs_):
            raise InvalidParameterError(
                f"head_epochs={self.head_epochs} leaves no epoch for the backbone in the "
                f"{self.epochs_} chosen for {len(y_tr)} images; set epochs"
            )
        return LoopConfig.from_params(
            self.get_params(),
            task=task or self._task,
            epochs=self.epochs_,
            class_weights=weights,
            autocast_dtype=self._autocast_dtype(device),
            checkpoint_dir=None if self.checkpoint_dir is None else os.fspath(self.checkpoint_dir),
            fingerprint=fingerprint,
        )

    def _check_size(self, bb: Backbone, size: int) -> None:
        try:
            with torch.no_grad():
                bb.model.eval()(torch.zeros(1, 3, size, size))
        except Exception as e:
            raise DataError(
                f"image_size={size} does not fit backbone {self.backbone!r} ({str(e)[:200]}); "
                f"try its own size, {bb.preprocessing.input_size}"
            ) from None

    def _split(
        self,
        task: Task,
        X: ImageInput,
        y: np.ndarray,
        classes: np.ndarray,
        X_val: object,
        y_val: object,
    ) -> tuple[ImageInput, np.ndarray, ImageInput | None, np.ndarray | None, np.ndarray | None]:
        """Training and validation images and labels, and the validation rows' positions
        in ``X`` (``None`` when the validation images were given apart, or there are
        none)."""
        if X_val is not None:
            if y_val is None:
                raise DataError("X_val needs y_val: the labels of the validation images")
            Xv = check_images(X_val)
            return X, y, Xv, task.encode(y_val, len(Xv), classes)[1], None
        if self.validation_size == 0:
            return X, y, None, None, None
        idx_tr, idx_v = task.split(y, classes, self.validation_size, self.random_state)
        return _subset(X, idx_tr), y[idx_tr], _subset(X, idx_v), y[idx_v], idx_v

    def _fingerprint(
        self,
        bb: Backbone,
        classes: np.ndarray,
        pre: Preprocessing,
        n_train: int,
        weights: np.ndarray | None = None,
        task: Task | None = None,
    ) -> dict[str, Any]:
        params = {
            k: v
            for k, v in self.get_params().items()
            if k
            not in (
                "verbose",
                "n_workers",
                "checkpoint_dir",
                "device",
                "engine",
                "epochs",
                "patience",
            )
        }
        params["weights"] = None if params["weights"] is None else str(params["weights"])
        if isinstance(params["class_weight"], dict):  # as JSON keeps it: text keys, in order
            given = {str(k): float(v) for k, v in params["class_weight"].items()}
            params["class_weight"] = dict(sorted(given.items()))
        found = {
            "architecture": bb.architecture,
            "weights_sha256": bb.weights_sha256,
            "classes": [str(c) for c in classes],
            "input_size": pre.input_size,
            "n_train": int(n_train),
            "params": params,
        }
        found.update((task or self._task).fingerprint())  # another task's run is another run
        if weights is not None:  # resumed with other sample weights, it is another run
            relative = weights / weights.mean()  # (all of them doubled is the same run)
            digest = hashlib.sha256(np.ascontiguousarray(relative, np.float64).tobytes())
            found["sample_weight_sha256"] = digest.hexdigest()
        return found

    def _finish(
        self, bb: Backbone, net: Classifier, classes: np.ndarray, state: Any, X: ImageInput
    ) -> None:
        bb.model = net.backbone.to("cpu").to(memory_format=torch.contiguous_format)
        bb.weights_sha256 = state_dict_sha256(bb.model.state_dict())
        bb.weights_source = "fine-tuned"
        calibration = None
        if self.engine in ("auto", "openvino-int8"):  # engines that calibrate on images
            pre = effective_preprocessing(bb, self.image_size_, self.crop)
            calibration = calibration_images(X, pre, CALIBRATION_IMAGES, self.n_workers)
        self._set_fitted(
            bb,
            classes,
            net.head.weight.detach().cpu().numpy(),
            net.head.bias.detach().cpu().numpy(),
            calibration=calibration,
        )
        self.history_ = state.history
        self.best_epoch_ = state.best_epoch
        self.stopped_early_ = state.stop

    def _set_fitted(
        self,
        bb: Backbone,
        classes: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        calibration: np.ndarray | None = None,
    ) -> None:
        """Set the fitted state after training. The feature extractor records that its
        weights are the fine-tuned ones."""
        features = PretrainedFeatures.from_backbone(
            bb,
            calibration=calibration,
            backbone=self.backbone,
            weights=FINE_TUNED,
            image_size=getattr(self, "image_size_", self.image_size),
            crop=self.crop,
            pooling="last",  # the head was trained on the pooled last layer
            flip_average=False,
            batch_size=max(1, int(self.batch_size)),
            device=self.device,
            n_workers=self.n_workers,
            on_error=self.on_error,
            engine=self.engine,
        )
        self.features_ = features
        self.classes_ = classes
        self.head_weight_ = weight.astype(np.float32)
        self.head_bias_ = bias.astype(np.float32)
        self.n_features_in_ = weight.shape[1]

    @classmethod
    def from_fitted(
        cls,
        features: PretrainedFeatures,
        classes: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        *,
        history: list[dict[str, float]] | None = None,
        best_epoch: int = -1,
        temperature: float = 1.0,
        calibration: dict[str, Any] | None = None,
        multilabel: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        **params: Any,
    ) -> FineTuneClassifier:
        """A fitted model from its parts (what a model file holds): the feature extractor
        over the fine-tuned backbone, the class labels, the head's weight and bias, the
        training history, the temperature; ``multilabel``: each label's calibration slope,
        offset and threshold (several labels per image); ``params`` are the estimator's."""
        model = cls(**params)
        model.features_, model.classes_ = features, classes
        model.head_weight_ = weight.astype(np.float32)
        model.head_bias_ = bias.astype(np.float32)
        model.n_features_in_ = model.head_weight_.shape[1]
        model.history_, model.best_epoch_ = history or [], best_epoch
        model.stopped_early_, model.skipped_ = False, []
        model.temperature_, model.calibration_ = float(temperature), calibration or {}
        model.image_size_ = features.preprocessing_.input_size
        model.epochs_ = len(model.history_)
        model.task_ = TASKS["multilabel" if multilabel is not None else "one_label"]
        model.multilabel_ = model.task_.multilabel
        if multilabel is not None:
            slope, offset, thresholds = multilabel
            model.calibration_slope_ = slope.astype(np.float64)
            model.calibration_offset_ = offset.astype(np.float64)
            model.thresholds_ = thresholds
        return model

    # -- predicting -------------------------------------------------------------------
    def predict_proba_features(self, F: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "head_weight_")
        logits = F.astype(np.float32) @ self.head_weight_.T + self.head_bias_
        return self._task.proba(self, logits)

    def predict_proba(self, X: object) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)`` in ``classes_`` order (with
        several labels per image, each label's own: they need not sum to 1)."""
        check_is_fitted(self, "head_weight_")
        return self.predict_proba_features(self.features_.transform(X))

    def predict(self, X: object) -> np.ndarray:
        """The best class of each image; with several labels per image, the indicator
        matrix ``(n_samples, n_labels)``: 1 where a label's probability reaches its
        threshold."""
        check_is_fitted(self, "head_weight_")
        return self._task.predict(self, self.predict_proba(X))

    def score(self, X: object, y: object, sample_weight: object = None) -> float:
        """Accuracy; with several labels per image, macro-averaged F1 of :meth:`predict`."""
        check_is_fitted(self, "head_weight_")
        return self._task.score(self, X, y, sample_weight)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags


def refit_on_all(
    model: FineTuneClassifier,
    X: ImageInput,
    y: Any,
    say: Any = lambda line: None,
    sample_weight: Any = None,
) -> FineTuneClassifier:
    """The fine-tuned ``model`` trained again on every image (weighing ``sample_weight``),
    for its best number of epochs, keeping the temperature of the validation run (the
    refit of :class:`tlearn.models.ModelKind`). A model trained without a validation split
    already saw every image and is returned as it is."""
    import warnings

    from sklearn.base import clone

    if model.validation_size == 0:
        return model
    epochs = max(1, model.best_epoch_)
    say(f"refitting on all {len(y)} images for {epochs} epoch(s), the best of the first run")
    final = clone(model).set_params(validation_size=0, epochs=epochs, checkpoint_dir=None)
    if final.head_epochs > epochs:
        final.set_params(head_epochs=epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bad files are listed by the caller
        final.fit(X, y, sample_weight)
    for name in model._task.fitted:  # the validation run's calibration (and thresholds)
        setattr(final, name, getattr(model, name))
    return final

"""``FineTuneClassifier``: replace a pretrained backbone's head with a linear layer for your
classes and train it (head only, fully, last stages, or head-then-everything), as a
scikit-learn classifier over image paths or uint8 arrays."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted

from tlearn.backbones import DEFAULT_BACKBONE, Backbone, load_backbone, state_dict_sha256
from tlearn.data.images import Preprocessing
from tlearn.data.loader import ImageInput, check_images, iter_batches
from tlearn.exceptions import DataError
from tlearn.features import PretrainedFeatures
from tlearn.finetune.augment import AUGMENTATIONS
from tlearn.finetune.distributed import dist_info
from tlearn.finetune.loop import Classifier, LoopConfig, fit_loop
from tlearn.probe import check_labels
from tlearn.runtime import resolve_device

__all__ = ["STRATEGIES", "FineTuneClassifier"]

STRATEGIES = ("head", "full", "partial", "lp-ft")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _subset(X: ImageInput, idx: np.ndarray) -> ImageInput:
    return X[idx] if isinstance(X, np.ndarray) else [X[i] for i in idx]


class FineTuneClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained backbone with a new linear head, as a scikit-learn classifier.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
    weights : "pretrained", path or None
    strategy : {"lp-ft", "full", "head", "partial"}, default="lp-ft"
        ``head``: backbone frozen (BatchNorm in inference mode); ``full``: everything;
        ``partial``: the last ``unfreeze_stages`` stages and the head; ``lp-ft``: the head
        alone for ``head_epochs``, then everything at the lower backbone learning rate.
    unfreeze_stages : int, default=2
    head_epochs : int, default=1
    optimizer : {"adamw", "sgd"}, default="adamw"
    lr : float, default=1e-3
        The head's learning rate; the backbone's is ``lr * backbone_lr_ratio``.
    backbone_lr_ratio : float, default=0.1
    momentum : float, default=0.9
        For SGD.
    weight_decay : float, default=0.01
        Not applied to norm layers and biases.
    schedule : {"cosine", "constant"}, default="cosine"
    warmup_epochs : float, default=0.5
    label_smoothing : float, default=0.1
    class_weight : None or "balanced"
    augmentation : {"flip_crop", "flip", "none", "trivialaugment", "randaugment"}
    image_size : int, optional
        Default: the backbone's own input size. Smaller trains much faster.
    epochs : int, default=10
    batch_size : int, default=32
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        ``auto``: bf16 autocast on CUDA GPUs that support it (else fp16), fp32 on CPU, where
        bf16 autocast measured slower for training. ``fp16`` is for CUDA (with gradient
        scaling).
    channels_last : bool, default=True
    validation_size : float, default=0.1
        Stratified hold-out scored every epoch (0 disables validation and early stopping).
    patience : int or None, default=3
        Stop after this many epochs without a better validation accuracy.
    device : str, default="auto"
    n_workers : int, optional
    checkpoint_dir : path, optional
        Write ``checkpoint.safetensors``, ``history.csv`` and ``curves.png`` there after
        every epoch; ``fit(..., resume=True)`` continues from it.
    on_error : {"raise", "skip"}
        Unreadable training images: stop before training (naming them) or leave them out.
    random_state : int, default=0
    verbose : int, default=1

    Attributes
    ----------
    classes_, features_ (a :class:`PretrainedFeatures` over the fine-tuned backbone),
    head_weight_ (n_classes, n_features), head_bias_, history_, best_epoch_, skipped_.
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
        class_weight: str | None = None,
        augmentation: str = "flip_crop",
        image_size: int | None = None,
        epochs: int = 10,
        batch_size: int = 32,
        precision: str = "auto",
        channels_last: bool = True,
        validation_size: float = 0.1,
        patience: int | None = 3,
        device: str = "auto",
        n_workers: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
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
        self.augmentation = augmentation
        self.image_size = image_size
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
        self.random_state = random_state
        self.verbose = verbose

    # -- checking ---------------------------------------------------------------------
    def _check_params(self) -> None:
        def choice(name: str, allowed: tuple[Any, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"FineTuneClassifier.{name} must be one of {allowed}, got "
                    f"{getattr(self, name)!r}"
                )

        def number(name: str, low: float, high: float, integer: bool = False) -> None:
            v = getattr(self, name)
            ok = (
                isinstance(v, (int, np.integer))
                if integer
                else isinstance(v, (int, float, np.number))
            )
            if not ok or not low <= v <= high:
                kind = "an int" if integer else "a number"
                raise ValueError(
                    f"FineTuneClassifier.{name} must be {kind} in [{low}, {high}], got {v!r}"
                )

        choice("strategy", STRATEGIES)
        choice("optimizer", ("adamw", "sgd"))
        choice("schedule", ("cosine", "constant"))
        choice("augmentation", AUGMENTATIONS)
        choice("precision", PRECISIONS)
        choice("class_weight", (None, "balanced"))
        choice("on_error", ("raise", "skip"))
        number("lr", 1e-7, 10.0)
        number("backbone_lr_ratio", 0.0, 10.0)
        number("epochs", 1, 10_000, integer=True)
        number("batch_size", 1, 65_536, integer=True)
        number("momentum", 0.0, 0.999)
        number("weight_decay", 0.0, 1.0)
        number("warmup_epochs", 0.0, float(self.epochs))
        number("label_smoothing", 0.0, 0.99)
        number("head_epochs", 0, self.epochs, integer=True)
        number("unfreeze_stages", 0, 100, integer=True)
        if not (self.validation_size == 0 or 0 < self.validation_size < 1):
            raise ValueError(
                "FineTuneClassifier.validation_size must be 0 or in (0, 1), got "
                f"{self.validation_size!r}"
            )
        if self.patience is not None:
            number("patience", 1, 10_000, integer=True)

    def _autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        p = self.precision
        if p == "fp32":
            return None
        if p == "fp16":
            if device.type != "cuda":
                raise ValueError("precision='fp16' needs a CUDA GPU; use 'bf16' or 'fp32' on CPU")
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
        *,
        X_val: object = None,
        y_val: object = None,
        resume: bool = False,
    ) -> FineTuneClassifier:
        """Train. ``X_val``/``y_val`` replace the automatic validation split; ``resume``
        continues from ``checkpoint_dir``'s last complete epoch."""
        self._check_params()
        images = check_images(X)
        classes, y_enc = check_labels(y, len(images))
        device = resolve_device(self.device)
        info = dist_info(device)
        if device.type == "cuda" and info.enabled:
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
        torch.manual_seed(self.random_state)
        bb = load_backbone(self.backbone, self.weights)
        pre_eval = bb.preprocessing.with_size(self.image_size)
        self._check_size(bb, pre_eval.input_size)
        keep, self.skipped_ = self._check_images_readable(images, pre_eval)
        images, y_enc = _subset(images, keep), y_enc[keep]
        X_tr, y_tr, X_v, y_v = self._split(images, y_enc, classes, X_val, y_val)
        weights = (
            compute_class_weight("balanced", classes=np.arange(len(classes)), y=y_tr).tolist()
            if self.class_weight == "balanced"
            else None
        )
        crop = self.augmentation not in ("none", "flip")
        pre_train = (
            Preprocessing(
                pre_eval.resize_size, pre_eval.mean, pre_eval.std, pre_eval.interpolation, 1.0
            )
            if crop
            else pre_eval
        )
        torch.manual_seed(self.random_state)  # the new head starts the same on every process
        net = Classifier(bb.model, bb.n_features, len(classes)).to(device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        cfg = LoopConfig(
            strategy=self.strategy,
            unfreeze_stages=self.unfreeze_stages,
            head_epochs=self.head_epochs,
            optimizer=self.optimizer,
            lr=float(self.lr),
            backbone_lr_ratio=float(self.backbone_lr_ratio),
            momentum=float(self.momentum),
            weight_decay=float(self.weight_decay),
            schedule=self.schedule,
            warmup_epochs=float(self.warmup_epochs),
            label_smoothing=float(self.label_smoothing),
            class_weights=weights,
            augmentation=self.augmentation,
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            autocast_dtype=self._autocast_dtype(device),
            channels_last=self.channels_last,
            patience=self.patience,
            random_state=int(self.random_state),
            n_workers=self.n_workers,
            checkpoint_dir=None if self.checkpoint_dir is None else os.fspath(self.checkpoint_dir),
            fingerprint=self._fingerprint(bb, classes, pre_eval, len(y_tr)),
            verbose=self.verbose,
        )
        if cfg.checkpoint_dir and info.is_main:
            os.makedirs(cfg.checkpoint_dir, exist_ok=True)
        result = fit_loop(
            net, X_tr, y_tr, X_v, y_v, cfg, info, device, pre_train, pre_eval, resume=resume
        )
        self._finish(bb, net, classes, pre_eval, result)
        return self

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
        self, X: ImageInput, y: np.ndarray, classes: np.ndarray, X_val: object, y_val: object
    ) -> tuple[ImageInput, np.ndarray, ImageInput | None, np.ndarray | None]:
        if X_val is not None:
            Xv = check_images(X_val)
            yv = np.asarray(y_val)
            unknown = sorted({str(v) for v in yv if v not in set(classes.tolist())})
            if unknown:
                raise DataError(f"the validation labels {unknown} are not training classes")
            return X, y, Xv, np.searchsorted(classes, yv).astype(np.int64)
        if self.validation_size == 0:
            return X, y, None, None
        counts = np.bincount(y, minlength=len(classes))
        need = max(2, int(np.ceil(1 / self.validation_size)))
        if counts.min() < need:
            small = [f"{str(classes[i])!r} ({c})" for i, c in enumerate(counts) if c < need]
            raise DataError(
                f"class(es) {', '.join(small[:10])} have too few images for a "
                f"{self.validation_size:.0%} validation split; give at least {need} images per "
                "class, or pass validation_size=0 (CLI: --validation-size 0)"
            )
        idx_tr, idx_v = train_test_split(
            np.arange(len(y)),
            test_size=self.validation_size,
            stratify=y,
            random_state=self.random_state,
        )
        idx_tr, idx_v = np.sort(idx_tr), np.sort(idx_v)
        return _subset(X, idx_tr), y[idx_tr], _subset(X, idx_v), y[idx_v]

    def _fingerprint(
        self, bb: Backbone, classes: np.ndarray, pre: Preprocessing, n_train: int
    ) -> dict[str, Any]:
        params = {
            k: v
            for k, v in self.get_params().items()
            if k not in ("verbose", "n_workers", "checkpoint_dir", "device", "epochs", "patience")
        }
        params["weights"] = None if params["weights"] is None else str(params["weights"])
        return {
            "architecture": bb.architecture,
            "weights_sha256": bb.weights_sha256,
            "classes": [str(c) for c in classes],
            "input_size": pre.input_size,
            "n_train": int(n_train),
            "params": params,
        }

    def _finish(
        self, bb: Backbone, net: Classifier, classes: np.ndarray, pre: Preprocessing, result: Any
    ) -> None:
        bb.model = net.backbone.to("cpu").to(memory_format=torch.contiguous_format)
        bb.weights_sha256 = state_dict_sha256(bb.model.state_dict())
        bb.weights_source = "fine-tuned"
        self._install(
            bb,
            classes,
            net.head.weight.detach().cpu().numpy(),
            net.head.bias.detach().cpu().numpy(),
        )
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.stopped_early_ = result.stopped_early

    def _install(
        self, bb: Backbone, classes: np.ndarray, weight: np.ndarray, bias: np.ndarray
    ) -> None:
        """Set the fitted state (used by fit and when loading a model file)."""
        features = PretrainedFeatures(
            self.backbone,
            image_size=self.image_size,
            batch_size=max(1, int(self.batch_size)),
            device=self.device,
            n_workers=self.n_workers,
            on_error=self.on_error,
        )
        features._set_backbone(bb)
        self.features_ = features
        self.classes_ = classes
        self.head_weight_ = weight.astype(np.float32)
        self.head_bias_ = bias.astype(np.float32)
        self.n_features_in_ = weight.shape[1]

    # -- predicting -------------------------------------------------------------------
    def predict_proba_features(self, F: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "head_weight_")
        logits = F.astype(np.float32) @ self.head_weight_.T + self.head_bias_
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict_proba(self, X: object) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)`` in ``classes_`` order."""
        check_is_fitted(self, "head_weight_")
        return self.predict_proba_features(self.features_.transform(X))

    def predict(self, X: object) -> np.ndarray:
        check_is_fitted(self, "head_weight_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags

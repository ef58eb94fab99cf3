"""``PretrainedFeatures``: a pretrained image backbone as a scikit-learn transformer."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from tlearn.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from tlearn.data.images import Preprocessing
from tlearn.data.loader import ImageInput, check_images, iter_batches, sample_indices
from tlearn.runtime import FeatureCache, resolve_device
from tlearn.runtime.cache import content_key
from tlearn.runtime.engines import (
    CALIBRATION_IMAGES,
    ENGINES,
    MIN_CALIBRATION_IMAGES,
    Engine,
    EngineError,
    available_engines,
    make_engine,
)

__all__ = ["PretrainedFeatures"]

_ON_ERROR = ("raise", "skip")


class PretrainedFeatures(TransformerMixin, BaseEstimator):
    """Frozen features of a pretrained backbone, for any scikit-learn model.

    ``X`` is a list of image paths (files, or members of a zip as ``"data.zip/cat/1.jpg"``)
    or a uint8 array ``(n_samples, height, width[, 3])``. Decoding runs in threads beside
    the network; preprocessing (size, mean/std, interpolation, crop) comes from the
    backbone's pretrained configuration.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        A name for :func:`tlearn.load_backbone`: ``"efficientnet_lite0"``, ``"resnet50"``,
        ``"timm:convnext_tiny"``, ``"torchvision:resnet18"``...
    weights : "pretrained", path or None, default="pretrained"
        Where the weights come from (``None``: random, for speed tests only).
    image_size : int, optional
        Input side in pixels; default the backbone's own (224 for EfficientNet-Lite0).
    batch_size : int, default=64
    device : str, default="auto"
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``...
    n_workers : int, optional
        Decoding threads; default one less than the number of cores (at least 1, at most 8).
    cache_dir : path, optional
        Cache features on disk there, keyed by backbone, weights hash, preprocessing and
        each image's content: a second pass over the same images skips the network.
    on_error : {"raise", "skip"}, default="raise"
        ``"skip"``: unreadable images give a row of NaN, are warned about, and are listed
        in ``errors_`` as ``(index, path, reason)``; every other image is still processed.
    engine : str, default="torch"
        What runs the network (see :mod:`tlearn.runtime.engines`): ``"torch"`` (fp32),
        ``"torch-bf16"``, ``"torch-fp16"`` (CUDA), ``"onnxruntime"``, ``"openvino"``
        (fp32), ``"openvino-bf16"``, ``"openvino-int8"`` (quantised on the images given to
        ``fit``) or ``"auto"``: the fastest available engine whose features agree with fp32
        torch on the calibration images (cosine >= 0.999 for fp32 engines, mean cosine >=
        0.98 for bf16 and int8), which records its choice in ``engine_``. ``auto`` and
        ``openvino-int8`` use ``X`` from ``fit(X)``; without it, ``auto`` checks on the
        first batch and skips int8.
    verbose : int, default=0
        Show a progress bar when > 0 and there are many images.

    Attributes
    ----------
    backbone_ : Backbone
    preprocessing_ : Preprocessing
    n_features_out_ : int
    errors_ : list of (int, str, str)
        Images that failed in the last ``transform`` (only with ``on_error="skip"``).

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.linear_model import LogisticRegression
    >>> clf = make_pipeline(PretrainedFeatures(), StandardScaler(),
    ...                     LogisticRegression(max_iter=1000))  # doctest: +SKIP
    >>> clf.fit(paths, labels).score(test_paths, test_labels)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        weights: str | os.PathLike[str] | None = "pretrained",
        image_size: int | None = None,
        batch_size: int = 64,
        device: str = "auto",
        n_workers: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        engine: str = "torch",
        verbose: int = 0,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.n_workers = n_workers
        self.cache_dir = cache_dir
        self.on_error = on_error
        self.engine = engine
        self.verbose = verbose

    def _check_params(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(
                f"PretrainedFeatures.engine must be one of {ENGINES}, got {self.engine!r}"
            )
        if self.on_error not in _ON_ERROR:
            raise ValueError(
                f"PretrainedFeatures.on_error must be one of {_ON_ERROR}, got {self.on_error!r}"
            )
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(
                f"PretrainedFeatures.batch_size must be a positive int, got {self.batch_size!r}"
            )
        if self.image_size is not None and (
            not isinstance(self.image_size, (int, np.integer)) or self.image_size < 8
        ):
            raise ValueError(
                f"PretrainedFeatures.image_size must be None or an int >= 8, "
                f"got {self.image_size!r}"
            )

    def fit(self, X: object = None, y: object = None) -> PretrainedFeatures:
        """Load the backbone. The network stays frozen (``y`` is not used).

        ``X`` calibrates the engines that need it: ``openvino-int8`` (and ``auto``, which
        may choose it) quantises on up to 300 images spread over ``X`` and needs at least
        100. Other engines ignore ``X``.
        """
        self._check_params()
        self._set_backbone(load_backbone(self.backbone, self.weights))
        if self.engine == "openvino-int8" and X is None:
            raise EngineError(
                "engine='openvino-int8' calibrates on your images: call fit(X) with at least "
                f"{MIN_CALIBRATION_IMAGES} of them (a Pipeline or LinearProbe does this)"
            )
        if X is not None and self.engine in ("auto", "openvino-int8"):
            # auto only needs the 32 images of its agreement check unless int8 is possible
            int8 = self.engine == "openvino-int8" or "openvino-int8" in available_engines(
                resolve_device(self.device)
            )
            self._get_engine(
                self._calibration_images(check_images(X), CALIBRATION_IMAGES if int8 else 32)
            )
        return self

    def _calibration_images(self, images: ImageInput, k: int) -> np.ndarray | None:
        """Up to ``k`` readable images spread over ``images``, preprocessed:
        ``(n, size, size, 3)`` uint8."""
        idx = sample_indices(len(images), k)
        subset: ImageInput = (
            images[idx] if isinstance(images, np.ndarray) else [images[i] for i in idx]
        )
        arrays = [
            b.images
            for b in iter_batches(
                subset, self.preprocessing_, 64, n_workers=self.n_workers, on_error="skip"
            )
            if len(b.images)
        ]
        return np.concatenate(arrays) if arrays else None

    def _set_backbone(self, backbone: Backbone) -> None:
        """Install a ready backbone (used by ``fit`` and when loading a model file)."""
        self.backbone_ = backbone
        self.preprocessing_: Preprocessing = backbone.preprocessing.with_size(self.image_size)
        self.n_features_out_ = backbone.n_features
        self.errors_: list[tuple[int, str, str]] = []
        self._engine: Engine | None = None

    def _get_engine(self, calibration: np.ndarray | None = None) -> Engine:
        engine = getattr(self, "_engine", None)
        if engine is None:
            engine, why = make_engine(
                self.engine,
                self.backbone_.model,
                self.preprocessing_,
                resolve_device(self.device),
                self._cache_key(),
                calibration,
            )
            self._engine, self.engine_ = engine, why
            if self.verbose and self.engine == "auto":
                print(f"tlearn: {why}", file=sys.stderr)
        return engine

    def _cache_key(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "architecture": self.backbone_.architecture,
            "weights_sha256": self.backbone_.weights_sha256,
            "preprocessing": self.preprocessing_.to_dict(),
        }

    def iter_features(
        self, X: object, *, hflip: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]]]]:
        """Stream ``(indices, features (k, n_features), errors)`` over ``X`` in order.

        Memory stays bounded whatever the number of images; used by :meth:`transform` and
        by batch prediction. ``hflip=True`` gives the features of the mirrored images (for
        test-time augmentation; not cached).
        """
        check_is_fitted(self, "backbone_")
        images = check_images(X)
        if self.cache_dir is None or hflip:
            yield from self._iter_computed(images, np.arange(len(images)), hflip)
            return
        cache = FeatureCache(self.cache_dir, self._cache_key())
        try:
            keys = [content_key(images, i) for i in range(len(images))]
            hits = cache.get_many(keys, self.n_features_out_)
            hit_idx = np.array([i for i, k in enumerate(keys) if k in hits], dtype=np.int64)
            if len(hit_idx):
                yield hit_idx, np.stack([hits[str(keys[i])] for i in hit_idx]), []
            todo = np.array([i for i, k in enumerate(keys) if k not in hits], dtype=np.int64)
            for idx, feats, errors in self._iter_computed(images, todo):
                cache.put_many(
                    (keys[i], f) for i, f in zip(idx, feats, strict=True) if keys[i] is not None
                )
                yield idx, feats, errors
        finally:
            cache.close()

    def _iter_computed(
        self, images: ImageInput, positions: np.ndarray, hflip: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]]]]:
        if not len(positions):
            return
        subset: ImageInput = (
            images[positions] if isinstance(images, np.ndarray) else [images[i] for i in positions]
        )
        engine = getattr(self, "_engine", None)
        for batch in iter_batches(
            subset,
            self.preprocessing_,
            int(self.batch_size),
            n_workers=self.n_workers,
            on_error=self.on_error,  # type: ignore[arg-type]
        ):
            errors = [(int(positions[i]), p, r) for i, p, r in batch.errors]
            pixels = np.ascontiguousarray(batch.images[:, :, ::-1]) if hflip else batch.images
            if engine is None and len(pixels):
                engine = self._get_engine(calibration=pixels[:16])
            feats = (
                engine(pixels)
                if engine is not None and len(batch.indices)
                else np.empty((0, self.n_features_out_), np.float32)
            )
            yield positions[batch.indices], feats, errors

    def transform(self, X: object) -> np.ndarray:
        """Features ``(n_samples, n_features)`` float32; rows of NaN for skipped images."""
        check_is_fitted(self, "backbone_")
        n = len(check_images(X))
        out = np.full((n, self.n_features_out_), np.nan, dtype=np.float32)
        errors: list[tuple[int, str, str]] = []
        with _progress(n, self.verbose, f"features ({self.backbone})") as advance:
            for idx, feats, errs in self.iter_features(X):
                out[idx] = feats
                errors.extend(errs)
                advance(len(idx) + len(errs))
        self.errors_ = sorted(errors)
        if errors:
            listing = "; ".join(f"{p}: {r}" for _, p, r in self.errors_[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            warnings.warn(
                f"{len(errors)} of {n} images could not be read and have NaN "
                f"features: {listing}{more}. See .errors_ for the full list.",
                UserWarning,
                stacklevel=2,
            )
        return out

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "backbone_")
        return np.array([f"feature{i}" for i in range(self.n_features_out_)], dtype=object)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_engine"] = None  # rebuilt on first use, on whatever device is there
        return state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        return tags


class _RateColumn:
    """Images per second, for rich's Progress."""

    def __new__(cls) -> Any:
        from rich.progress import ProgressColumn
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:6.0f} img/s" if speed else "    ... img/s")

        return Rate()


class _progress:
    """A rich progress bar for long runs on a terminal; silent otherwise."""

    def __init__(self, total: int, verbose: int, label: str) -> None:
        self.enabled = verbose > 0 and total >= 256 and sys.stderr.isatty()
        self.total, self.label = total, label

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda k: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda k: self._bar.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()

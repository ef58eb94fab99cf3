"""``PretrainedFeatures``: a pretrained image backbone as a scikit-learn transformer."""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Iterator
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from tlearn._log import ensure_handler, logger
from tlearn._progress import progress
from tlearn._validation import Interval, Options, validate_params
from tlearn.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from tlearn.backbones.pooling import EnsembleNet, FeatureNet, pyramid_stages, supports_stages
from tlearn.data.images import Preprocessing
from tlearn.data.loader import ImageInput, check_images, iter_batches, sample_indices
from tlearn.exceptions import EngineError, InvalidParameterError
from tlearn.runtime import FeatureCache, resolve_device
from tlearn.runtime.cache import content_key
from tlearn.runtime.engines import (
    CALIBRATION_IMAGES,
    ENGINES,
    MIN_CALIBRATION_IMAGES,
    Engine,
    make_engine,
)

__all__ = [
    "FINE_TUNED",
    "INT8_AT_FIT",
    "iter_engine",
    "FeatureErrors",
    "ForwardsFeatureParams",
    "PretrainedFeatures",
    "calibration_images",
    "effective_preprocessing",
    "synthetic_check_images",
]

#: ``weights`` of a feature extractor whose weights were trained by tlearn: they live in
#: the fitted model (and its file), not in any package or cache.
FINE_TUNED = "fine-tuned"
#: ``(position in X, path, reason)`` of each image that could not be read.
FeatureErrors = list[tuple[int, str, str]]
#: Why an extractor without an int8 engine cannot be given one after fitting.
INT8_AT_FIT = (
    "int8 calibrates on training images, so it is chosen at fit time: fit with "
    "engine='openvino-int8' (CLI: tlearn fit ... --engine openvino-int8) and the calibrated "
    "engine is kept in the model file"
)
#: Parameters that change how features are computed, not what they are, and are read each
#: time images are: set on a fitted estimator, they reach its feature extractor at once.
#: ``engine`` and ``device`` are not among them: the engine is built when fitting or
#: loading (``tlearn.load(path, engine=...)``, :meth:`PretrainedFeatures.with_engine`).
RUNTIME_PARAMS = ("batch_size", "n_workers", "cache_dir", "on_error", "verbose")


def effective_preprocessing(backbone: Backbone, image_size: int | None, crop: str) -> Preprocessing:
    """What the network is given: the backbone's preprocessing at ``image_size`` (``None``:
    its own), small images centred when ``crop`` is ``"center"``."""
    pre = backbone.preprocessing.with_size(image_size)
    return dataclasses.replace(pre, crop_small=crop == "center")


def calibration_images(
    images: ImageInput, pre: Preprocessing, k: int, n_workers: int | None = None
) -> np.ndarray:
    """Up to ``k`` readable images spread over ``images``, preprocessed by ``pre``:
    ``(n, size, size, 3)`` uint8, for the engines that calibrate on images (int8) or check
    their agreement on them (``auto``)."""
    idx = sample_indices(len(images), k)
    subset: ImageInput = images[idx] if isinstance(images, np.ndarray) else [images[i] for i in idx]
    arrays = [
        b.images
        for b in iter_batches(subset, pre, 64, n_workers=n_workers, on_error="skip")
        if len(b.images)
    ]
    if not arrays:
        return np.empty((0, pre.input_size, pre.input_size, 3), np.uint8)
    return np.concatenate(arrays)


def synthetic_check_images(size: int, n: int = 16, seed: int = 0) -> np.ndarray:
    """``n`` deterministic uint8 pictures (colour gradients with soft blobs), on which
    ``auto`` checks an engine against fp32 torch when ``fit`` was given no images: enough
    to catch a conversion bug, whatever the data."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = np.stack([(a * xx + b * yy + c) for a, b, c in rng.uniform(-1, 1, (3, 3))], -1)
        for _ in range(3):
            cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(-1, 1, 3)
        img = (img - img.min()) / max(1e-6, float(img.max() - img.min()))
        out[i] = (img * 255).astype(np.uint8)
    return out


def iter_engine(
    images: ImageInput,
    pre: Preprocessing,
    engine: Engine,
    batch_size: int,
    *,
    positions: np.ndarray | None = None,
    n_workers: int | None = None,
    on_error: str = "raise",
    hflip: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, FeatureErrors]]:
    """Decode ``images`` (at ``positions``, default all) in threads, run ``engine`` batch by
    batch, and yield ``(positions, outputs, errors)`` in order. ``hflip``: mirror first."""
    if positions is None:
        positions = np.arange(len(images))
    if not len(positions):
        return
    subset: ImageInput = (
        images[positions] if isinstance(images, np.ndarray) else [images[int(i)] for i in positions]
    )
    for batch in iter_batches(
        subset,
        pre,
        batch_size,
        n_workers=n_workers,
        on_error=on_error,  # type: ignore[arg-type]
    ):
        errors = [(int(positions[i]), p, r) for i, p, r in batch.errors]
        if not len(batch.indices):
            yield positions[batch.indices], np.empty((0, 0), np.float32), errors
            continue
        pixels = np.ascontiguousarray(batch.images[:, :, ::-1]) if hflip else batch.images
        yield positions[batch.indices], engine(pixels), errors


class PretrainedFeatures(TransformerMixin, BaseEstimator):
    """Frozen features of a pretrained backbone, for any scikit-learn model.

    ``X`` is a list of image paths (files, or members of a zip as ``"data.zip/cat/1.jpg"``)
    or a uint8 array ``(n_samples, height, width[, 3])``. Decoding runs in threads beside
    the network; preprocessing (size, mean/std, interpolation, crop) comes from the
    backbone's pretrained configuration.

    ``fit`` loads the backbone and builds (and warms up) the engine; ``transform`` changes
    nothing on the estimator, so one fitted instance may be used from many threads.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        A name for :func:`tlearn.load_backbone`: ``"efficientnet_lite0"``, ``"resnet50"``,
        ``"timm:convnext_tiny"``, ``"torchvision:resnet18"``... Names joined by ``+``
        (``"efficientnet_lite0+efficientnet_lite2"``) run each backbone on the same
        images, preprocessed as the first wants, and put their features side by side
        (``blocks_``); :class:`~tlearn.probe.LinearProbe` fits one head per block and
        averages their scores.
    weights : "pretrained", path or None, default="pretrained"
        Where the weights come from (``None``: random, for speed tests only;
        ``"fine-tuned"``: the weights a FineTuneClassifier trained, kept in its model).
    image_size : int, optional
        Input side in pixels; default the backbone's own (224 for EfficientNet-Lite0).
    crop : {"auto", "center"}, default="auto"
        ``"center"``: the backbone's evaluation transform for every image (resize, then
        centre-crop ``crop_pct``). ``"auto"``: the same for images at least as large as the
        input, but an image smaller than the input is enlarged to it whole (only a longer
        side is cropped to a square): a 32 px image has no border to spare.
    pooling : {"auto", "last", "multistage"}, default="auto"
        ``"last"``: the pooled last layer. ``"multistage"``: that, plus the mean-pooled maps
        of the last three stages of the backbone's feature pyramid (timm backbones; 1,752
        features for EfficientNet-Lite0 instead of 1,280). ``"auto"``: multistage where
        the backbone supports it.
    flip_average : bool, default=True
        Average each image's features with those of its mirror image (twice the compute).
    batch_size : int, default=64
        Images decoded and run together.
    device : str, default="auto"
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``...
    n_workers : int, optional
        Decoding threads; default one less than the number of cores (at least 1, at most 8).
    cache_dir : path, optional
        Cache features on disk there, keyed by backbone, weights hash, preprocessing, the
        engine that ran and each image's content: a second pass skips the network.
    on_error : {"raise", "skip"}, default="raise"
        ``"skip"``: unreadable images give a row of NaN and are warned about; every other
        image is still processed (:meth:`extract` returns the list).
    engine : str, default="auto"
        What runs the network (see :mod:`tlearn.runtime.engines`). ``"auto"``: the fastest
        fp32 engine here whose features agree with fp32 torch (cosine >= 0.999 on every
        one of 32 of the images given to ``fit``, or of synthetic pictures without them):
        OpenVINO, then ONNX Runtime, then torch. Or by name: ``"torch"`` (fp32),
        ``"torch-bf16"``, ``"torch-fp16"`` (CUDA), ``"onnxruntime"``, ``"openvino"``,
        ``"openvino-bf16"``, ``"openvino-int8"`` (quantised on up to 300 of the images given
        to ``fit``; about 2x faster again). The engine that ran is recorded in ``engine_``.
    verbose : int, default=0
        Log the engine chosen and show a progress bar when > 0 and there are many images.

    Attributes
    ----------
    backbone_ : Backbone
    preprocessing_ : Preprocessing
    n_features_out_ : int
    blocks_ : list of int
        The columns of each backbone's features, in order (one block for one backbone).
    engine_ : str
        The engine that runs (what ``auto`` chose, or the one asked for).
    engine_reason_ : str
        Why (for ``auto``: the agreement figure).
    runner_ : Engine
        The engine itself: uint8 pixels in, features out, from any number of threads.
    network_ : FeatureNet
        The module the engine runs (backbone, pooled stages, flip averaging).

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.linear_model import LogisticRegression
    >>> clf = make_pipeline(PretrainedFeatures(), StandardScaler(),
    ...                     LogisticRegression(max_iter=1000))  # doctest: +SKIP
    >>> clf.fit(paths, labels).score(test_paths, test_labels)  # doctest: +SKIP
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "backbone": ["str"],
        "weights": ["path", None],
        "image_size": [Interval(Integral, 8, 4096), None],
        "crop": [Options(("auto", "center"))],
        "pooling": [Options(("auto", "last", "multistage"))],
        "flip_average": ["boolean"],
        "batch_size": [Interval(Integral, 1, 1 << 16)],
        "device": ["str"],
        "n_workers": [Interval(Integral, 1, 256), None],
        "cache_dir": ["path", None],
        "on_error": [Options(("raise", "skip"))],
        "engine": [Options(ENGINES)],
        "verbose": [Interval(Integral, 0, None), "boolean"],
    }

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        weights: str | os.PathLike[str] | None = "pretrained",
        image_size: int | None = None,
        crop: str = "auto",
        pooling: str = "auto",
        flip_average: bool = True,
        batch_size: int = 64,
        device: str = "auto",
        n_workers: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        engine: str = "auto",
        verbose: int = 0,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.crop = crop
        self.pooling = pooling
        self.flip_average = flip_average
        self.batch_size = batch_size
        self.device = device
        self.n_workers = n_workers
        self.cache_dir = cache_dir
        self.on_error = on_error
        self.engine = engine
        self.verbose = verbose

    # -- fitting ------------------------------------------------------------------------
    def fit(self, X: object = None, y: object = None) -> PretrainedFeatures:
        """Load the backbone and build the engine (the network stays frozen; ``y`` is not
        used).

        ``X`` calibrates the engines that need it: ``openvino-int8`` (and ``auto``, which
        may choose it) quantises on up to 300 images spread over ``X`` and needs at least
        100; ``auto`` checks agreement on the first 32. Other engines ignore ``X``.
        """
        self._validate_params()
        if self.engine == "openvino-int8" and X is None:
            raise EngineError(
                "engine='openvino-int8' calibrates on your images: call fit(X) with at least "
                f"{MIN_CALIBRATION_IMAGES} of them (a Pipeline or LinearProbe does this)"
            )
        backbone = self._load_backbone()
        pre = self._preprocessing(backbone)
        calibration = None
        if X is not None and self.engine in ("auto", "openvino-int8"):
            # auto needs the 32 images of its agreement check; int8 quantises on up to 300
            k = CALIBRATION_IMAGES if self.engine == "openvino-int8" else 32
            calibration = calibration_images(check_images(X), pre, k, self.n_workers)
        self._install(backbone, calibration=calibration)
        return self

    @classmethod
    def from_backbone(
        cls,
        loaded: Backbone,
        *,
        runtime: str | Engine | None = None,
        calibration: np.ndarray | None = None,
        **params: Any,
    ) -> PretrainedFeatures:
        """A fitted extractor on a backbone already loaded (a model file's, or one that
        fine-tuning trained), its engine built once.

        Parameters
        ----------
        loaded : Backbone
            The network, its weights and preprocessing.
        runtime : str or Engine, optional
            The engine to run: a name (default: the ``engine`` parameter; a model file
            gives the one ``auto`` chose at fit), or a ready engine (one a model file
            carries).
        calibration : ndarray of uint8, optional
            Preprocessed images for the engines that calibrate (int8) or check (``auto``).
        **params
            The constructor's parameters (``backbone`` defaults to the loaded one's name).
        """
        features = cls(**{"backbone": loaded.name, **params})
        features._validate_params()
        if runtime is None or isinstance(runtime, str):
            features._install(loaded, calibration=calibration, engine_name=runtime)
        else:
            features._install(loaded, engine=runtime)
        return features

    def with_engine(
        self, engine: str | None = None, device: str | None = None
    ) -> PretrainedFeatures:
        """This fitted extractor on another engine or device: a new one, sharing the
        backbone (a copy of it on another device), its engine built and warmed up once;
        ``self`` is unchanged (a predictor may be using it). The int8 engine is calibrated
        on training images when fitting, so only an extractor already running it can keep
        it."""
        check_is_fitted(self, "backbone_")
        params = self.get_params()
        params.update({k: v for k, v in (("engine", engine), ("device", device)) if v})
        loaded = self.backbone_
        if resolve_device(params["device"]) != resolve_device(self.device):
            # the torch engine moves its network to its device: a copy, not ours
            loaded = copy.deepcopy(loaded)
        if params["engine"] == "openvino-int8":
            if self.engine_ != "openvino-int8":
                raise EngineError(f"this extractor runs {self.engine_!r}: {INT8_AT_FIT}")
            return type(self).from_backbone(loaded, runtime=self.runner_, **params)
        return type(self).from_backbone(loaded, **params)

    def _validate_params(self) -> Any:
        """Check every parameter (and that the device is there); returns the device."""
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)
        return resolve_device(self.device)

    def _load_backbone(self) -> Backbone:
        if self.weights != FINE_TUNED:
            return load_backbone(self.backbone, self.weights)
        fitted: Backbone | None = getattr(self, "backbone_", None)
        if fitted is None:
            raise InvalidParameterError(
                "weights='fine-tuned' names weights that live only inside the fitted model "
                "that trained them; save that model and load it (tlearn.load), or use "
                "weights='pretrained'"
            )
        return fitted

    def _install(
        self,
        backbone: Backbone,
        *,
        calibration: np.ndarray | None = None,
        engine_name: str | None = None,
        engine: Engine | None = None,
    ) -> None:
        """Set the fitted state: backbone, preprocessing and a warmed-up engine (``fit``
        and loading a model file use it). ``engine_name`` overrides the parameter (a model
        file records what ``auto`` chose); ``engine`` installs a ready one."""
        self.backbone_ = backbone
        self.preprocessing_: Preprocessing = self._preprocessing(backbone)
        self.stages_, extra = self._stages(backbone)
        self.n_features_out_ = backbone.n_features + extra
        model = backbone.model
        self.blocks_ = (
            list(model.widths) if isinstance(model, EnsembleNet) else [self.n_features_out_]
        )
        net = FeatureNet(backbone.model, self.stages_, bool(self.flip_average))
        self.network_ = net
        if engine is None:
            name = engine_name or self.engine
            if calibration is None or not len(calibration):
                calibration = (
                    synthetic_check_images(self.preprocessing_.input_size)
                    if name == "auto"
                    else calibration
                )
            engine, reason = make_engine(
                name,
                net,
                self.preprocessing_,
                self.device,
                self._model_key(),
                calibration,
            )
        else:
            reason = f"engine {engine.name} (from the model file)"
        engine(
            np.zeros(
                (1, self.preprocessing_.input_size, self.preprocessing_.input_size, 3), np.uint8
            )
        )
        self.runner_: Engine = engine
        self.engine_, self.engine_reason_ = engine.name, reason
        if self.verbose and self.engine == "auto":
            ensure_handler()
            logger.info("tlearn: %s", reason)

    def _preprocessing(self, backbone: Backbone) -> Preprocessing:
        return effective_preprocessing(backbone, self.image_size, self.crop)

    def _stages(self, backbone: Backbone) -> tuple[tuple[int, ...], int]:
        """The feature-pyramid stages to pool, and how many features they add."""
        if isinstance(backbone.model, EnsembleNet):  # each member pools its own stages
            try:
                backbone.model.use_stages(
                    self.pooling != "last", required=self.pooling == "multistage"
                )
            except ValueError as e:
                raise InvalidParameterError(
                    f"pooling='multistage' needs backbones with timm's feature API; in "
                    f"{backbone.name!r} {e}. Use pooling='last' or 'auto'"
                ) from None
            return (), sum(backbone.model.widths) - backbone.n_features
        if self.pooling == "last":
            return (), 0
        if not supports_stages(backbone.model):
            if self.pooling == "multistage":
                raise InvalidParameterError(
                    f"pooling='multistage' needs a backbone with timm's feature API; "
                    f"{backbone.name!r} has none. Use pooling='last' or 'auto'"
                )
            return (), 0
        return pyramid_stages(backbone.model)

    def _model_key(self) -> dict[str, Any]:
        model = self.backbone_.model
        ensemble = {"member_stages": model.stages} if isinstance(model, EnsembleNet) else {}
        return {
            "architecture": self.backbone_.architecture,
            "weights_sha256": self.backbone_.weights_sha256,
            "preprocessing": self.preprocessing_.to_dict(),
            "stages": list(self.stages_),
            "flip_average": bool(self.flip_average),
            **ensemble,
        }

    def _cache_key(self) -> dict[str, Any]:
        """What features depend on: the model and the engine that actually ran."""
        key = {**self._model_key(), "engine": self.engine_}
        carried = self.runner_.carried()
        if carried:  # a calibrated engine: its own quantisation
            import hashlib

            key["engine_sha256"] = hashlib.sha256(b"".join(carried.values())).hexdigest()[:16]
        return key

    # -- transforming -------------------------------------------------------------------
    def iter_features(
        self,
        X: object,
        *,
        on_error: str | None = None,
        hflip: bool = False,
        batch_size: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, FeatureErrors]]:
        """Stream ``(indices, features (k, n_features), errors)`` over ``X`` in order.

        Memory stays bounded whatever the number of images. ``on_error`` overrides the
        parameter for this call; ``hflip=True`` gives the features of the mirrored images
        (test-time augmentation; not cached).
        """
        check_is_fitted(self, "backbone_")
        images = check_images(X)
        on_error = self.on_error if on_error is None else on_error
        if self.cache_dir is None or hflip:
            yield from self._iter_computed(images, None, on_error, hflip, batch_size)
            return
        cache = FeatureCache(self.cache_dir, self._cache_key())
        try:
            keys = [content_key(images, i) for i in range(len(images))]
            hits = cache.get_many(keys, self.n_features_out_)
            hit_idx = np.array([i for i, k in enumerate(keys) if k in hits], dtype=np.int64)
            if len(hit_idx):
                yield hit_idx, np.stack([hits[str(keys[i])] for i in hit_idx]), []
            todo = np.array([i for i, k in enumerate(keys) if k not in hits], dtype=np.int64)
            for idx, feats, errors in self._iter_computed(
                images, todo, on_error, False, batch_size
            ):
                cache.put_many(
                    (keys[i], f) for i, f in zip(idx, feats, strict=True) if keys[i] is not None
                )
                yield idx, feats, errors
        finally:
            cache.close()

    def _iter_computed(
        self,
        images: ImageInput,
        positions: np.ndarray | None,
        on_error: str,
        hflip: bool,
        batch_size: int | None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, FeatureErrors]]:
        yield from iter_engine(
            images,
            self.preprocessing_,
            self.runner_,
            int(batch_size or self.batch_size),
            positions=positions,
            n_workers=self.n_workers,
            on_error=on_error,
            hflip=hflip,
        )

    def extract(
        self, X: object, *, on_error: str | None = None, hflip: bool = False
    ) -> tuple[np.ndarray, FeatureErrors]:
        """Features ``(n_samples, n_features)`` float32 (rows of NaN for skipped images) and
        the list of ``(index, path, reason)`` for the images that could not be read."""
        check_is_fitted(self, "backbone_")
        n = len(check_images(X))
        out = np.full((n, self.n_features_out_), np.nan, dtype=np.float32)
        errors: FeatureErrors = []
        with progress(n, self.verbose, f"features ({self.backbone})") as advance:
            for idx, feats, errs in self.iter_features(X, on_error=on_error, hflip=hflip):
                if len(idx):
                    out[idx] = feats
                errors.extend(errs)
                advance(len(idx) + len(errs))
        return out, sorted(errors)

    def transform(self, X: object) -> np.ndarray:
        """Features ``(n_samples, n_features)`` float32; rows of NaN for skipped images,
        which are named in a warning."""
        F, errors = self.extract(X)
        if errors:
            warn_skipped(errors, len(F))
        return F

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "backbone_")
        return np.array([f"feature{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        return tags


def warn_skipped(errors: FeatureErrors, n: int) -> None:
    listing = "; ".join(f"{p}: {r}" for _, p, r in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    warnings.warn(
        f"{len(errors)} of {n} images could not be read and have NaN features: "
        f"{listing}{more}. Use .extract(X) for the full list.",
        UserWarning,
        stacklevel=3,
    )


class ForwardsFeatureParams:
    """For estimators holding a fitted :class:`PretrainedFeatures` in ``features_``:
    ``set_params`` of a parameter read each time images are (:data:`RUNTIME_PARAMS`: batch
    size, decoding threads, ...) after ``fit`` or ``load`` reaches the feature extractor at
    once instead of going stale. ``engine`` and ``device`` are stored, as scikit-learn
    stores every parameter, and used by the next ``fit``; a fitted model runs elsewhere
    through ``tlearn.load(path, engine=..., device=...)`` or ``Predictor(model,
    engine=...)``."""

    def set_params(self, **params: Any) -> Any:
        super().set_params(**params)  # type: ignore[misc]
        features: PretrainedFeatures | None = getattr(self, "features_", None)
        if features is not None:
            forward = {k: v for k, v in params.items() if k in RUNTIME_PARAMS}
            if forward:
                features.set_params(**forward)
        return self

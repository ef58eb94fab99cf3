"""``Predictor``: the one object every interface uses to turn images into predictions.

Built from a fitted estimator, a model file, an ONNX/OpenVINO export or
``imagenet:BACKBONE``; the engine is built and warmed up when the predictor is made, never
on the first request. It is re-entrant: it keeps no per-call state, so any number of
threads may call one predictor at once and get exactly what serial calls get. Per-call
options (``top_k``, ``on_error``, ``tta``) are arguments.

It pickles as "load from these bytes or this path" (the model file's bytes, or its path
when it was loaded from one and ``ship="path"``), so it can be shipped to worker processes,
which rebuild it (engine included) when they unpickle it.

Three entry points, from the lowest level up:

- :meth:`Predictor.predict_pixels`: a batch of preprocessed uint8 pixels -> probabilities;
- :meth:`Predictor.predict_images`: image bytes, PIL images or arrays -> one prediction
  (top-k) or one error per image;
- :meth:`Predictor.iter_predict` (and :meth:`Predictor.iter_featurize`): paths (folders,
  zips, CSVs, globs) -> rows, streaming.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from tlearn._io import python_value
from tlearn._validation import Interval, Options, validate_params
from tlearn.data.images import (
    decode_image,
    load_array_image,
    preprocess_image,
    to_rgb,
)
from tlearn.data.loader import ImageInput, check_images
from tlearn.data.sources import iter_image_paths, path_text
from tlearn.exceptions import DataError, EngineError, ImageReadError, InvalidParameterError
from tlearn.features import FeatureErrors, iter_engine
from tlearn.models import IMAGENET_PREFIX, ModelParts, imagenet_parts, split_model
from tlearn.rows import ROW_KINDS, RowKind, error_row, top_k_rows

__all__ = ["Predictor", "error_row", "iter_manifest", "load_predictor", "top_k_rows"]

_EXPORTS = (".onnx", ".xml")


class Predictor:
    """Turn images into predictions with a fitted model, from any number of threads.

    Parameters
    ----------
    model : fitted estimator or ModelParts
        A LinearProbe, FineTuneClassifier or Pipeline(PretrainedFeatures, ...), or the
        parts of an export (:func:`tlearn.export.load_exported`). Use :func:`load_predictor`
        (or :meth:`Predictor.load`) for files and ``imagenet:BACKBONE``.
    batch_size : int, optional
        Images per engine call in :meth:`iter_predict` (default: the model's).
    n_workers : int, optional
        Decoding threads for :meth:`iter_predict`.
    warmup : bool, default=True
        Run one batch at once, so the first request does not pay for it.
    engine, device : str, optional
        Run the model's feature extractor on this engine or device instead of its own
        (built once, here; the model itself is not changed).

    Examples
    --------
    >>> predictor = load_predictor("model.safetensors")  # doctest: +SKIP
    >>> predictor.predict_images([open("cat.jpg", "rb").read()], top_k=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int | None = None,
        n_workers: int | None = None,
        warmup: bool = True,
        engine: str | None = None,
        device: str | None = None,
        _recipe: tuple[Any, ...] | None = None,
    ) -> None:
        #: the engine and device asked for, which a pickle of the model carries along
        self._options = {k: v for k, v in (("engine", engine), ("device", device)) if v}
        self.parts: ModelParts = _on_runtime(split_model(model), self._options)
        #: the kind of row its predictions make (one label, or several: multi-label)
        self.rows: RowKind = ROW_KINDS[self.parts.rows]
        features = self.parts.features
        self.batch_size = int(batch_size or (features.batch_size if features else 32))
        self.n_workers = n_workers
        self.model = None if isinstance(model, ModelParts) else model
        self._recipe = _recipe
        self.warmup_seconds = 0.0
        if warmup:
            t0 = time.perf_counter()
            size = self.parts.preprocessing.input_size
            self.predict_pixels(np.zeros((1, size, size, 3), np.uint8))
            self.warmup_seconds = time.perf_counter() - t0

    # -- building ---------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str],
        *,
        engine: str | None = None,
        device: str | None = None,
        ship: str = "path",
        **options: Any,
    ) -> Predictor:
        """A predictor for a model file, an export (``.onnx``/``.xml``) or
        ``imagenet:BACKBONE``. ``engine``/``device`` override the model's own; ``ship``
        says how the predictor pickles: ``"path"`` (workers read the same file) or
        ``"bytes"`` (the file travels with it)."""
        validate_params("Predictor.load", {"ship": ship}, {"ship": [Options(("path", "bytes"))]})
        source = os.fspath(source)
        runtime = {k: v for k, v in (("engine", engine), ("device", device)) if v is not None}
        if source.startswith(IMAGENET_PREFIX):
            parts = imagenet_parts(source, **runtime)
            return cls(parts, _recipe=("imagenet", source, runtime), **options)
        if source.lower().endswith(_EXPORTS):
            if runtime.get("engine", "auto") not in ("auto", "onnxruntime", "openvino"):
                raise InvalidParameterError(
                    f"{source!r} is an export: it runs on its own runtime "
                    f"({'ONNX Runtime' if source.lower().endswith('.onnx') else 'OpenVINO'}), "
                    f"not engine={runtime['engine']!r}"
                )
            from tlearn.export import load_exported

            return cls(load_exported(source), **options)
        from tlearn.persistence import load

        model = load(source, **runtime)  # the engine asked for, built once
        recipe = ("path", source, runtime) if ship == "path" else None
        return cls(model, _recipe=recipe, **options)

    def __reduce__(self) -> tuple[Any, ...]:
        options = {"batch_size": self.batch_size, "n_workers": self.n_workers}
        if self._recipe is not None:
            return (_restore, (self._recipe, options))
        if self.model is not None:
            try:
                from tlearn.persistence import dumps

                recipe = ("bytes", dumps(self.model), self._options)
                return (_restore, (recipe, options))
            except TypeError:  # a kind the file format cannot hold: pickle the estimator
                return (_restore, (("estimator", self.model, self._options), options))
        return (_restore, (("parts", self.parts, {}), options))

    # -- describing -------------------------------------------------------------------
    @property
    def classes(self) -> np.ndarray:
        return self.parts.classes

    @property
    def preprocessing(self) -> Any:
        return self.parts.preprocessing

    def describe(self) -> dict[str, Any]:
        """Classes, backbone, preprocessing and engine, as JSON-ready data."""
        features = self.parts.features
        info: dict[str, Any] = {
            **self.parts.info,
            "classes": [python_value(c) for c in self.classes],
            "preprocessing": self.preprocessing.to_dict(),
            "engine": getattr(self.parts.engine, "name", "unknown"),
            "precision": getattr(self.parts.engine, "precision", "fp32"),
            "task": "multi-label" if self.parts.thresholds is not None else "single-label",
        }
        if self.parts.thresholds is not None:
            info["thresholds"] = [float(t) for t in self.parts.thresholds]
        if features is not None:
            info["backbone"] = features.backbone_.name
            info["architecture"] = features.backbone_.architecture
            info["weights_sha256"] = features.backbone_.weights_sha256
        return info

    # -- entry point 1: preprocessed pixels -------------------------------------------
    def predict_pixels(self, pixels: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 pixels, preprocessed -> probabilities
        ``(n, n_classes)`` float64; ``tta`` averages with the mirror images."""
        if not len(pixels):
            return np.empty((0, len(self.classes)))
        engine, head = self.parts.engine, self.parts.head
        proba = np.asarray(head(engine(pixels)), dtype=np.float64)
        if tta:
            mirrored = np.ascontiguousarray(pixels[:, :, ::-1])
            proba = (proba + np.asarray(head(engine(mirrored)), dtype=np.float64)) / 2
        return proba

    def features_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The backbone's features of preprocessed pixels (not for exports)."""
        if self.parts.features is None:
            raise EngineError("an exported model gives probabilities, not features")
        return self.parts.engine(pixels)

    # -- entry point 2: images in memory ----------------------------------------------
    def preprocess(self, item: Any) -> np.ndarray:
        """Image bytes, a PIL image or a uint8 array -> ``(size, size, 3)`` uint8 pixels;
        raises :class:`~tlearn.exceptions.ImageReadError` for what cannot be read."""
        pre = self.preprocessing
        if isinstance(item, (bytes, bytearray, memoryview)):
            img = decode_image(bytes(item), "<image bytes>", min_side=pre.resize_size)
        elif isinstance(item, np.ndarray):
            img = load_array_image(item)
        elif hasattr(item, "mode") and hasattr(item, "size"):
            img = to_rgb(item)
        else:
            raise ImageReadError(
                "<input>",
                f"expected image bytes, a PIL image or a uint8 array, got {type(item).__name__}",
            )
        return preprocess_image(img, pre)

    @property
    def default_top_k(self) -> int:
        """Labels per row when ``top_k`` is not given: the best one, or a multi-label
        model's every label (those that apply are ``above_threshold``)."""
        return 1 if self.parts.thresholds is None else len(self.classes)

    def prediction_rows(self, proba: np.ndarray, top_k: int | None = None) -> list[dict[str, Any]]:
        """Probabilities -> one row each, of this model's kind (:attr:`rows`), the
        ``top_k`` best labels in each (default :attr:`default_top_k`)."""
        k = self.default_top_k if top_k is None else top_k
        return self.rows.build(proba, self.classes, k, self.parts.thresholds)

    def predict_images(
        self, items: Sequence[Any], *, top_k: int | None = None, tta: bool = False
    ) -> list[dict[str, Any]]:
        """One result per item, in order: ``label``, ``probability``, ``top_labels``,
        ``top_probabilities`` (and a multi-label model's ``above_threshold``) and ``error``
        (empty), or only ``error`` filled in for an item that could not be read. A bad item
        never affects the others."""
        _check_top_k(top_k)
        pixels, where, results = [], [], [self.rows.failed_row("")] * len(items)
        for i, item in enumerate(items):
            try:
                pixels.append(self.preprocess(item))
                where.append(i)
            except ImageReadError as e:
                results[i] = self.rows.failed_row(e.reason)
        if pixels:
            proba = self.predict_pixels(np.stack(pixels), tta=tta)
            for i, row in zip(where, self.prediction_rows(proba, top_k), strict=True):
                results[i] = row
        return results

    # -- entry point 3: files, streaming ----------------------------------------------
    def iter_proba(
        self, X: object, *, on_error: str = "raise", tta: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray, FeatureErrors]]:
        """Stream ``(indices, probabilities, errors)`` over ``X`` (paths or a uint8 array),
        in order, memory bounded. Uses the feature cache of the model, when it has one."""
        images: ImageInput = check_images(X)
        features = self.parts.features
        if features is not None and not tta:
            for idx, feats, errors in features.iter_features(
                images, on_error=on_error, batch_size=self.batch_size
            ):
                proba = self.parts.head(feats) if len(idx) else np.empty((0, len(self.classes)))
                yield idx, np.asarray(proba, dtype=np.float64), errors
            return
        engine = functools.partial(self.predict_pixels, tta=tta)
        yield from iter_engine(
            images,
            self.preprocessing,
            engine,  # type: ignore[arg-type]
            self.batch_size,
            n_workers=self.n_workers,
            on_error=on_error,
        )

    def iter_predict(
        self,
        inputs: Iterable[str],
        *,
        top_k: int | None = None,
        tta: bool = False,
        chunk_size: int = 1024,
        skip: Mapping[int, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One row per image, in input order: ``row_id`` (the image's position in the
        expanded input), ``path``, ``label``, ``probability``, ``top_labels``,
        ``top_probabilities``, a multi-label model's ``above_threshold``, and ``error``
        (empty when the image was read). ``inputs`` are
        files, folders, zips, CSVs or globs, expanded lazily; images are taken
        ``chunk_size`` at a time, so memory stays flat. Unreadable images get a row with
        the error; the rows in ``skip`` (``{row id: path}``, done by an earlier run) are
        passed over."""
        _check_top_k(top_k)
        for chunk in iter_manifest(inputs, chunk_size, skip):
            paths = [p for _, p in chunk]
            rows: list[dict[str, Any] | None] = [None] * len(chunk)
            for idx, proba, errors in self.iter_proba(paths, on_error="skip", tta=tta):
                for i, row in zip(idx, self.prediction_rows(proba, top_k), strict=True):
                    rows[i] = row
                for i, _, reason in errors:
                    rows[i] = self.rows.failed_row(reason)
            for (row_id, path), done in zip(chunk, rows, strict=True):
                yield {"row_id": row_id, "path": path,
                       **(done or self.rows.failed_row("not processed"))}  # fmt: skip

    def iter_featurize(
        self,
        inputs: Iterable[str],
        *,
        chunk_size: int = 1024,
        skip: Mapping[int, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One row per image, in input order: ``row_id``, ``path``, ``features`` (float32
        vector, ``None`` for an unreadable image) and ``error``; streamed like
        :meth:`iter_predict`. The features are the backbone's (not for exports)."""
        features = self.parts.features
        if features is None:
            raise EngineError(
                "an exported model gives probabilities, not features; featurize with a model "
                "file from `tlearn fit` or imagenet:BACKBONE"
            )
        kind = ROW_KINDS["features"]
        for chunk in iter_manifest(inputs, chunk_size, skip):
            rows: list[dict[str, Any] | None] = [None] * len(chunk)
            for idx, feats, errors in features.iter_features(
                [p for _, p in chunk], on_error="skip", batch_size=self.batch_size
            ):
                for i, row in zip(idx, kind.build(feats), strict=True):
                    rows[i] = row
                for i, _, reason in errors:
                    rows[i] = kind.failed_row(reason)
            for (row_id, path), done in zip(chunk, rows, strict=True):
                yield {"row_id": row_id, "path": path,
                       **(done or kind.failed_row("not processed"))}  # fmt: skip


def iter_manifest(
    inputs: Iterable[str], chunk_size: int, skip: Mapping[int, str] | None = None
) -> Iterator[list[tuple[int, str]]]:
    """``(row_id, path)`` pairs in chunks of ``chunk_size``: the row id is the image's
    position in the expanded input, so it stays the same when a resumed run passes over
    the rows in ``skip`` (``{row id: path}``, done by an earlier run). Keyed on row ids, an
    image listed twice is done twice; a row whose path changed is refused."""
    pairs = ((i, p) for i, p in enumerate(iter_image_paths(inputs)) if not _done(skip, i, p))
    while chunk := [pair for _, pair in zip(range(chunk_size), pairs, strict=False)]:
        yield chunk


def _done(skip: Mapping[int, str] | None, row_id: int, path: str) -> bool:
    if not skip or row_id not in skip:
        return False
    if skip[row_id] not in (path, path_text(path)):  # a Parquet output holds the text form
        raise DataError(
            f"row {row_id} of the output being resumed is {skip[row_id]!r}, but image "
            f"{row_id} of the inputs is now {path!r}: the inputs changed since that run; "
            "resume with the same inputs, or pass --overwrite to start afresh"
        )
    return True


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None:
        validate_params("Predictor", {"top_k": top_k}, {"top_k": [Interval(int, 1, None)]})


def _restore(recipe: tuple[Any, ...], options: dict[str, Any]) -> Predictor:
    kind, payload, runtime = recipe
    if kind in ("path", "imagenet"):
        return Predictor.load(payload, **runtime, **options)
    if kind == "bytes":
        from tlearn.persistence import loads

        return Predictor(loads(payload, **runtime), **options)
    return Predictor(payload, **runtime, **options)


def load_predictor(source: Any, **options: Any) -> Predictor:
    """A :class:`Predictor` for a fitted estimator, a model file, an export or
    ``imagenet:BACKBONE`` (``options``: ``engine``, ``device``, ``batch_size``, ...)."""
    if isinstance(source, Predictor):
        return source
    if isinstance(source, (str, os.PathLike)):
        return Predictor.load(source, **options)
    return Predictor(source, **options)


def _on_runtime(parts: ModelParts, runtime: dict[str, Any]) -> ModelParts:
    """``parts`` with their feature extractor on another engine or device (a new one:
    the model's own is left as it is); an export's parts have none and run as they are."""
    if not runtime or parts.features is None:
        return parts
    features = parts.features.with_engine(**runtime)
    return dataclasses.replace(parts, engine=features.runner_, features=features)

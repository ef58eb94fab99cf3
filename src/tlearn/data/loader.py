"""The batched, prefetching image loader: decoding runs in threads beside the model.

PIL releases the GIL while it decodes and resizes, so a few threads keep a model on the
same cores busy. Batches come out in input order; memory stays bounded by ``prefetch``
batches however many images there are.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Literal, TypeVar

import numpy as np

from tlearn.data.images import (
    Preprocessing,
    decode_image,
    load_array_image,
    preprocess_image,
    read_bytes,
)
from tlearn.exceptions import DataError, ImageReadError

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "Batch",
    "ImageInput",
    "check_images",
    "iter_batches",
    "load_preprocessed",
    "median_short_side",
    "sample_indices",
]

#: What every estimator accepts as ``X``: image paths, or uint8 images ``(n, h, w[, 3])``.
ImageInput = Sequence[str] | np.ndarray
OnError = Literal["raise", "skip"]


@dataclass
class Batch:
    """``images`` (n_ok, size, size, 3) uint8 for the positions ``indices`` of the input;
    ``errors`` lists ``(position, path, reason)`` for the images that failed in this batch."""

    indices: np.ndarray
    images: np.ndarray
    errors: list[tuple[int, str, str]] = field(default_factory=list)


def check_images(X: object) -> ImageInput:
    """Validate ``X``: a 1-d sequence of paths, or a uint8 array of images."""
    if isinstance(X, np.ndarray) and X.dtype != object and X.ndim in (3, 4):
        if X.dtype != np.uint8:
            raise DataError(
                f"image arrays must be uint8 with values 0-255, got dtype {X.dtype}; "
                "convert with (X * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1]"
            )
        if X.ndim == 4 and X.shape[3] not in (1, 3):
            raise DataError(f"image arrays must be (n, h, w) or (n, h, w, 3), got {X.shape}")
        return X
    if isinstance(X, (str, os.PathLike)):
        raise DataError(
            f"X must be a list of image paths or an array of images, got the single path "
            f"{os.fspath(X)!r}; use load_image_folder({os.fspath(X)!r}).filenames for a folder"
        )
    try:
        paths = np.asarray(X, dtype=object)
    except Exception as e:
        raise DataError(f"X must be a list of image paths or a uint8 image array ({e})") from e
    if paths.ndim != 1:
        raise DataError(
            f"X must be a 1-d list of image paths or a uint8 array (n, h, w[, 3]); got an "
            f"array of shape {paths.shape} and dtype {paths.dtype}"
        )
    bad = [i for i, p in enumerate(paths[:1000]) if not isinstance(p, (str, os.PathLike))]
    if bad:
        raise DataError(f"X[{bad[0]}] is {paths[bad[0]]!r}, not an image path")
    return [os.fspath(p) for p in paths]


def load_preprocessed(X: ImageInput, i: int, pre: Preprocessing) -> np.ndarray:
    """Decode and preprocess image ``i`` of ``X`` into ``(size, size, 3)`` uint8."""
    if isinstance(X, np.ndarray):
        return preprocess_image(load_array_image(X[i], i), pre)
    path = X[i]
    img = decode_image(read_bytes(path), path, min_side=pre.resize_size)
    return preprocess_image(img, pre)


def sample_indices(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` positions spread evenly over ``range(n)``: a deterministic sample that
    sees every part of a folder listing (which is grouped by class)."""
    if n <= k:
        return np.arange(n)
    return np.linspace(0, n - 1, k).round().astype(np.int64)


def median_short_side(images: object, k: int = 16) -> int:
    """The median shorter side of up to ``k`` images spread over ``images`` (file headers
    only; unreadable ones are passed over), or 224 when none can be read."""
    import io

    from PIL import Image

    X = check_images(images)
    if isinstance(X, np.ndarray):
        return int(min(X.shape[1:3]))
    sides = []
    for i in sample_indices(len(X), k):
        try:
            with Image.open(io.BytesIO(read_bytes(X[int(i)]))) as img:
                sides.append(min(img.size))
        except Exception:
            continue
    return int(np.median(sides)) if sides else 224


def _name(X: ImageInput, i: int) -> str:
    return f"X[{i}]" if isinstance(X, np.ndarray) else str(X[i])


def iter_batches(
    X: ImageInput,
    pre: Preprocessing,
    batch_size: int = 64,
    *,
    n_workers: int | None = None,
    prefetch: int = 2,
    on_error: OnError = "raise",
) -> Iterator[Batch]:
    """Yield preprocessed batches of ``X`` in order, decoding ahead in threads.

    With ``on_error="raise"`` the first unreadable image raises
    :class:`~tlearn.exceptions.ImageReadError`; with ``"skip"`` it is reported in the
    batch's ``errors`` and every other image is still returned.
    """
    n = len(X)
    if n_workers is None:
        # one core is left to the model: decoding is ~10x cheaper than the network here
        n_workers = max(1, min(8, (os.cpu_count() or 2) - 1))

    def work(start: int) -> Batch:
        idx, imgs, errors = [], [], []
        for i in range(start, min(start + batch_size, n)):
            try:
                imgs.append(load_preprocessed(X, i, pre))
                idx.append(i)
            except ImageReadError as e:
                if on_error == "raise":
                    raise
                errors.append((i, _name(X, i), e.reason))
        size = pre.input_size
        images = np.stack(imgs) if imgs else np.empty((0, size, size, 3), np.uint8)
        return Batch(np.asarray(idx, dtype=np.int64), images, errors)

    # One batch per task keeps ordering trivial; several tasks in flight keep the threads busy.
    yield from ordered_map(work, range(0, n, batch_size), n_workers, max(prefetch, n_workers))


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], n_workers: int, ahead: int
) -> Iterator[R]:
    """``fn(item)`` for each item, in order, computed in ``n_workers`` threads with at most
    ``ahead`` results pending (memory stays bounded however many items there are)."""
    rest = iter(items)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="tlearn-decode") as pool:
        pending: deque[Future[R]] = deque(pool.submit(fn, x) for x in islice(rest, ahead))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fn, x) for x in islice(rest, 1))  # the next, if any
            yield result

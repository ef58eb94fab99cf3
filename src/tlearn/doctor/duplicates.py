"""Exact and near duplicates, within a set and between a training and a test set (leakage).

- Exact: the same decoded pixels (a SHA-256 of the RGB array and its shape), whatever the
  file format, name or metadata.
- Near: the cosine similarity of two images' backbone features at least ``threshold``, the
  features first centred on the first set's mean (pooled activations are all positive, so
  raw cosines crowd near 1: on 150 CIFAR-10 test images distinct images reached 0.88 raw
  but 0.71 centred) and L2-normalised. The default features are flip-averaged, so a
  mirrored copy scores 1.0. Each image is compared with
  all others in blocks, keeping its ``k`` most similar, so memory stays bounded (a block of
  256 rows against 100,000 images is 100 MB) and nothing beyond numpy is needed; the
  brute-force search is exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tlearn.data.images import decode_image, load_array_image, read_bytes, to_rgb
from tlearn.data.loader import check_images
from tlearn.exceptions import DataError, ImageReadError

__all__ = [
    "NEAR_THRESHOLD",
    "Pair",
    "exact_duplicates",
    "iter_decoded",
    "near_duplicates",
    "pixel_hash",
    "pixel_hashes",
]

#: Default centred cosine similarity above which two images are near duplicates. Measured
#: on 150 CIFAR-10 test images (lite0, default features): distinct pairs at most 0.71
#: (99.9th percentile 0.57); copies shifted 2 px, recoloured, cropped 2 px a side, resized
#: to 3/4 and back, or saved as JPEG quality 40 had medians 0.92, 0.95, 0.92, 0.85, 0.77.
#: Preliminary: benchmarks/doctor.py is to measure it on the whole CIFAR-10 zip.
NEAR_THRESHOLD = 0.75
BLOCK = 256


@dataclass(frozen=True)
class Pair:
    """Image ``i`` (of the first set) and image ``j`` (of the second, or the same set) with
    their similarity (1.0 for exact duplicates)."""

    i: int
    j: int
    similarity: float


def iter_decoded(X: object) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """``(index, RGB pixels or None, error)`` for each image of ``X`` (paths or an array),
    in order; an unreadable image gives its reason, never an exception."""
    images = check_images(X)
    for index in range(len(images)):
        try:
            if isinstance(images, np.ndarray):
                img = load_array_image(images, index)
            else:
                img = decode_image(read_bytes(str(images[index])), str(images[index]))
            yield index, np.ascontiguousarray(np.asarray(to_rgb(img))), ""
        except (ImageReadError, OSError) as err:
            yield index, None, str(err)


def pixel_hash(arr: np.ndarray) -> str:
    """SHA-256 of decoded pixels and their shape."""
    digest = hashlib.sha256(repr(arr.shape).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def pixel_hashes(X: object) -> tuple[list[str | None], dict[int, str]]:
    """One hash of the decoded RGB pixels per image (None for an unreadable one), and the
    reason each unreadable image could not be read."""
    hashes: list[str | None] = []
    errors: dict[int, str] = {}
    for index, arr, error in iter_decoded(X):
        hashes.append(None if arr is None else pixel_hash(arr))
        if arr is None:
            errors[index] = error
    return hashes, errors


def exact_duplicates(hashes: list[str | None], other: list[str | None] | None = None) -> list[Pair]:
    """Pairs with equal pixel hashes: within ``hashes`` (``i < j``), or, given ``other``,
    between the two lists."""
    first: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            first.setdefault(h, []).append(i)
    if other is None:
        return [Pair(a, b, 1.0) for group in first.values()
                for n, a in enumerate(group) for b in group[n + 1:]]  # fmt: skip
    return [Pair(i, j, 1.0) for j, h in enumerate(other) if h is not None
            for i in first.get(h, [])]  # fmt: skip


def _check(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise DataError(
            f"features must be a 2-D array (n_images, n_features), got {features.shape}"
        )
    return features


def _normalise(features: np.ndarray, mean: np.ndarray | float) -> np.ndarray:
    features = features - mean
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def near_duplicates(
    features: np.ndarray,
    other: np.ndarray | None = None,
    *,
    threshold: float = NEAR_THRESHOLD,
    k: int = 5,
) -> list[Pair]:
    """Pairs whose feature cosine similarity is at least ``threshold``, most similar first.

    Parameters
    ----------
    features : ndarray of shape (n, d)
        Features of the images (rows of NaN, for unreadable images, are never paired).
    other : ndarray of shape (m, d), optional
        A second set (the test set): then each of its images is paired with its most similar
        images in ``features`` (``Pair.i`` indexes ``features``, ``Pair.j`` ``other``).
        Without it, pairs within ``features`` with ``i < j``.
    threshold : float, default=NEAR_THRESHOLD
    k : int, default=5
        The most partners kept per image.
    """
    if not 0.0 < threshold <= 1.0:
        raise DataError(f"threshold must be in (0, 1], got {threshold}")
    features = _check(features)
    mean = np.nanmean(features, axis=0) if np.isfinite(features).any() else 0.0
    base = _normalise(features, mean)
    queries = base if other is None else _normalise(_check(other), mean)
    base_ok = np.isfinite(base).all(axis=1)
    base = np.where(base_ok[:, None], base, 0.0)
    pairs: dict[tuple[int, int], float] = {}
    for start in range(0, len(queries), BLOCK):
        block = queries[start : start + BLOCK]
        sims = np.nan_to_num(block @ base.T, nan=-1.0)
        sims[:, ~base_ok] = -1.0
        if other is None:  # not with itself
            rows = np.arange(len(block))
            sims[rows, start + rows] = -1.0
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        for r, cols in enumerate(top):
            for c in cols:
                s = float(sims[r, c])
                if s >= threshold:
                    q = start + r
                    key = (int(c), q) if other is not None else (min(q, int(c)), max(q, int(c)))
                    pairs[key] = max(s, pairs.get(key, -1.0))
    return sorted((Pair(i, j, s) for (i, j), s in pairs.items()), key=lambda p: -p.similarity)

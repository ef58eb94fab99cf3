"""Exact and near duplicates, within a set and between a training and a test set (leakage).

- Exact: the same decoded pixels (a SHA-256 of the RGB array and its shape), whatever the
  file format, name or metadata.
- Near, in two stages. Candidates: each image's ``k`` most similar images by the cosine of
  their backbone features, centred on the first set's mean when it holds enough images
  (:func:`feature_centre`) and L2-normalised; compared in blocks, so memory stays
  bounded (a block of 256 rows against 100,000 images is 100 MB); the brute-force
  search is exact. Features alone cannot tell an edited copy from a similar photo (two red
  cars reach the cosines of a re-encoded copy), so the pixels confirm each candidate: from
  32x32 grey thumbnails (:func:`thumbnail`, 1 KB an image), every window of one (the whole
  image, or 95% to 70% of each side at several places: crops, zooms, shifts) is resampled
  to 16x16 and correlated with the whole other, mirrored or not; at the best alignment the
  layout must correlate at least ``PIXEL_MATCH`` and the details (each image minus its 3x3
  local mean) at least ``NEAR_THRESHOLD``. Distinct photos with one layout (ships on a
  horizon, cars in one pose) line up their broad shapes, not their details.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlearn.data.images import decode_image, load_array_image, read_bytes, to_rgb
from tlearn.data.loader import check_images, ordered_map
from tlearn.exceptions import DataError, ImageReadError

__all__ = [
    "NEAR_THRESHOLD",
    "CANDIDATE",
    "CENTRED_FROM",
    "PIXEL_MATCH",
    "Pair",
    "exact_duplicates",
    "feature_centre",
    "iter_decoded",
    "near_duplicates",
    "pixel_hash",
    "pixel_hashes",
    "thumbnail",
]

#: Feature cosine (centred) from which a pair is a candidate (each image's ``k`` nearest).
CANDIDATE = 0.5
#: Features are centred on the set's mean from this many images (:func:`feature_centre`).
CENTRED_FROM = 32
#: Correlation of the grey 16x16 thumbnails, at their best alignment, a candidate needs.
PIXEL_MATCH = 0.9
#: Correlation of their details at that alignment: the near-duplicate threshold.
NEAR_THRESHOLD = 0.8
#: Windows tried: (share of each side, places along the side); sides are crossed.
WINDOW_SCALES = ((0.95, 3), (0.9, 3), (0.875, 5), (0.85, 3), (0.8, 5), (0.75, 5), (0.7, 5))
#: Square windows of at least this share of the side are also matched with windows of the
#: same size at other places (a copy moved, with a new border).
SHIFT_SCALE = 0.8
THUMB = 32  # stored: grey, uint8, 1 KB an image
#: A 16x16 window whose grey values deviate from their mean by less than this in all (the
#: norm over its 256 pixels: 1/16 of a grey level each) is flat: it has no layout or
#: details to correlate. Resampling leaves float rounding of about 1e-3 on a flat image,
#: and that rounding, scaled to unit length, is the same pattern in every flat image (two
#: flat images of grey levels 1 and 2 correlated 1.0 in layout and 0.97 in detail).
FLAT = 1.0
SIDE = 16  # compared
BLOCK = 256
PAIR_BLOCK = 64
#: Images decoded and measured per thread task (tiny images cost less than handing one
#: to a thread).
DECODE_CHUNK = 16
#: Mean pixels from which decoding and measuring run in threads (~200x150: below, one
#: thread is faster; a 12 MP photo runs 1.9x faster on 2 cores).
THREADED_PIXELS = 30_000


@dataclass(frozen=True)
class Pair:
    """Image ``i`` (of the first set) and image ``j`` (of the second, or the same set) with
    their score: 1.0 for exact duplicates; for near duplicates the detail correlation, or
    the feature cosine when no thumbnails were given."""

    i: int
    j: int
    similarity: float


def _n_threads() -> int:
    """One thread per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def iter_decoded(
    X: object, then: Callable[[np.ndarray], Any] | None = None, n_workers: int | None = None
) -> Iterator[tuple[int, Any, str]]:
    """``(index, RGB pixels or None, error)`` for each image of ``X`` (paths or an array),
    in order; an unreadable image gives its reason, never an exception.

    With ``then``, ``then(pixels)`` is given instead of the pixels. Images larger than
    :data:`THREADED_PIXELS` on average (judged on the first few) are decoded, and given to
    ``then``, ahead in ``n_workers`` threads (default: one per core, at most 8); smaller
    ones in this thread, where threads would only contend for the GIL.
    """
    images = check_images(X)
    n_workers = n_workers or _n_threads()
    pixels: list[int] = []

    def one(index: int) -> tuple[int, Any, str]:
        try:
            if isinstance(images, np.ndarray):
                img = load_array_image(images[index], index)
            else:
                img = decode_image(read_bytes(str(images[index])), str(images[index]))
            arr = np.ascontiguousarray(np.asarray(to_rgb(img)))
        except (ImageReadError, OSError) as err:
            return index, None, str(err)
        if len(pixels) < DECODE_CHUNK:
            pixels.append(arr.shape[0] * arr.shape[1])
        return index, arr if then is None else then(arr), ""

    # pixels are handed back one image a task (a few in flight: 36 MB each for 12 MP)
    size = DECODE_CHUNK if then is not None else 1

    def chunk(start: int) -> list[tuple[int, Any, str]]:
        return [one(i) for i in range(start, min(start + size, len(images)))]

    starts = iter(range(0, len(images), size))
    while len(pixels) < DECODE_CHUNK and (start := next(starts, None)) is not None:
        yield from chunk(start)
    if not pixels or np.mean(pixels) < THREADED_PIXELS or n_workers == 1:
        for start in starts:
            yield from chunk(start)
        return
    for done in ordered_map(chunk, starts, n_workers, 2 * n_workers):
        yield from done


def thumbnail(arr: np.ndarray) -> np.ndarray:
    """``(32, 32)`` uint8: the image in grey, box-filtered to 32x32 (aspect not kept), what
    the pixel check of :func:`near_duplicates` compares."""
    from PIL import Image

    img = Image.fromarray(arr).convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def _axis(start: float, width: float) -> np.ndarray:
    """``(SIDE, THUMB)``: the area average of ``[start, start + width)`` of a side into
    ``SIDE`` pixels."""
    m = np.zeros((SIDE, THUMB))
    step = width / SIDE
    for k in range(SIDE):
        lo, hi = start + k * step, start + (k + 1) * step
        for p in range(int(lo), min(int(np.ceil(hi)), THUMB)):
            m[k, p] = max(0.0, min(hi, p + 1) - max(lo, p))
        m[k] /= m[k].sum()
    return m


@functools.cache
def _spans() -> tuple[tuple[float, float], ...]:
    """(start, width) of the whole side (first), then of each window of ``WINDOW_SCALES``
    at evenly spaced places along the side."""
    spans = [(0.0, float(THUMB))]
    for scale, places in WINDOW_SCALES:
        spans += [(p * (1 - scale) * THUMB, scale * THUMB) for p in np.linspace(0, 1, places)]
    return tuple(spans)


@functools.cache
def _windows() -> np.ndarray:
    """Resampling of each span of :func:`_spans` into ``SIDE`` pixels:
    ``(n_windows, SIDE, THUMB)``."""
    return np.stack([_axis(a, w) for a, w in _spans()]).astype(np.float32)


@functools.cache
def _shift_groups() -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The square views (as in :func:`_views`: row span x column span of one scale) of at
    least ``SHIFT_SCALE`` of the side, grouped by scale: two windows of one scale at
    different places line up an image with a shifted copy of it. And the permutation that
    mirrors views: view ``v`` of a mirrored image is view ``perm[v]`` mirrored."""
    spans = _spans()
    k = len(spans)
    mirror = [next(m for m, (b, u) in enumerate(spans) if u == w and abs(b + a + w - THUMB) < 1e-6)
              for a, w in spans]  # fmt: skip
    groups: dict[float, list[int]] = {}
    for r, (_, height) in enumerate(spans):
        for c, (_, width) in enumerate(spans):
            if height == width >= SHIFT_SCALE * THUMB - 1e-6:
                groups.setdefault(width, []).append(r * k + c)
    perm = np.array([r * k + mirror[c] for r in range(k) for c in range(k)])
    return tuple(np.array(g) for g in groups.values()), perm


def _unit(v: np.ndarray) -> np.ndarray:
    v = v.reshape(*v.shape[:-2], SIDE * SIDE)
    v = v - v.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(norm < FLAT, 0.0, v / np.maximum(norm, FLAT))  # flat: correlates 0


def _detail(v: np.ndarray) -> np.ndarray:
    """The image minus its 3x3 local mean: edges and texture without the broad layout."""
    padded = np.pad(v, [(0, 0)] * (v.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    blur = sum(padded[..., dy : dy + SIDE, dx : dx + SIDE] for dy in range(3) for dx in range(3))
    return v - blur / 9.0


def _whole(thumbs: np.ndarray) -> np.ndarray:
    """``(n, 2, 16, 16)``: each thumbnail at 16x16, and mirrored."""
    a = _windows()[0]
    v = a @ thumbs.astype(np.float32) @ a.T
    return np.stack([v, v[:, :, ::-1]], axis=1)


def _views(thumbs: np.ndarray) -> np.ndarray:
    """``(n, V, 256)``: every window (each side's windows crossed) at 16x16; the first is
    the whole image."""
    a = _windows().reshape(-1, THUMB)  # (A * SIDE, THUMB)
    n, k = len(thumbs), len(a) // SIDE
    cols = (thumbs.astype(np.float32) @ a.T).reshape(n, THUMB, k, SIDE)  # columns resampled
    v = np.matmul(a, cols.transpose(0, 2, 1, 3))  # then rows: (n, A, A * SIDE, SIDE)
    return v.reshape(n, k * k, SIDE * SIDE)


def _aligned(ta: np.ndarray, tb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair by pair: the best layout correlation of a window of either thumbnail with the
    whole other (mirror allowed; the whole image is a window), and the best correlation of
    their details (:func:`_detail`) among the windows whose layout reaches ``PIXEL_MATCH``.
    Both are high when one image is the other re-encoded, recoloured, cropped, zoomed or
    shifted; similar but distinct photos (ships on a sea) can line up their broad layout,
    not their details."""
    layout, detail = np.full(len(ta), -1.0), np.full(len(ta), -1.0)
    va, vb = _views(ta), _views(tb)
    for vx, y in ((va, tb), (vb, ta)):
        wy = _whole(y)
        unit_wy = _unit(wy)  # centred, so vx @ unit_wy == (centred vx) @ unit_wy
        centred_sq = (vx * vx).sum(axis=2) - vx.sum(axis=2) ** 2 / (SIDE * SIDE)
        corr = np.matmul(vx, unit_wy.transpose(0, 2, 1))
        corr /= np.sqrt(np.maximum(centred_sq, FLAT**2))[:, :, None]  # flat: about 0
        layout = np.maximum(layout, corr.max(axis=(1, 2)))
        n, v, m = np.nonzero(corr >= PIXEL_MATCH)  # few windows, so details only for them
        fine = np.einsum("kd,kd->k", _unit(_detail(vx[n, v].reshape(-1, SIDE, SIDE))),
                         _unit(_detail(wy))[n, m])  # fmt: skip
        np.maximum.at(detail, n, fine)
    _shifted(va, vb, layout, detail)
    return layout, detail


def _shifted(va: np.ndarray, vb: np.ndarray, layout: np.ndarray, detail: np.ndarray) -> None:
    """Raise ``layout`` and ``detail`` (in place) to the best match between square windows
    of one scale of each image at any places, the second mirrored or not: a copy moved,
    with a new border (padding, or the scene beyond the old edge), matches in the overlap
    (up to 6 px of 32 each way, at most 0.4 px from a place tried)."""
    groups, perm = _shift_groups()
    sel = np.concatenate(groups)
    bounds = np.cumsum([0] + [len(g) for g in groups])
    a = va[:, sel].reshape(len(va), len(sel), SIDE, SIDE)
    ua = _unit(a)
    b = vb[:, sel].reshape(a.shape)
    mirrored = vb[:, perm[sel]].reshape(a.shape)[..., ::-1]
    for other in (b, mirrored):
        ub = _unit(other)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            corr = np.matmul(ua[:, lo:hi], ub[:, lo:hi].transpose(0, 2, 1))
            np.maximum(layout, corr.max(axis=(1, 2)), out=layout)
            n, i, j = np.nonzero(corr >= PIXEL_MATCH)
            if len(n):
                da = _unit(_detail(a[n, lo + i]))
                db = _unit(_detail(other[n, lo + j]))
                np.maximum.at(detail, n, np.einsum("kd,kd->k", da, db))


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
    """Images with equal pixel hashes, each paired with the first image of its hash: within
    ``hashes`` (``i < j``: every later image of a group with the group's first), or, given
    ``other``, each image of ``other`` with the first image of ``hashes`` that it equals.

    One pair per copy, not one per two copies: 3,000 copies of one placeholder image gave
    4.5 million pairs (2 minutes and 1.9 GB for the doctor's rows); now 2,999.
    """
    first: dict[str, int] = {}
    pairs = []
    for j, h in enumerate(hashes):
        if h is None:
            continue
        i = first.setdefault(h, j)
        if other is None and i != j:
            pairs.append(Pair(i, j, 1.0))
    if other is None:
        return pairs
    return [Pair(first[h], j, 1.0) for j, h in enumerate(other) if h in first]


def _check(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise DataError(
            f"features must be a 2-D array (n_images, n_features), got {features.shape}"
        )
    return features


def feature_centre(features: np.ndarray) -> np.ndarray | float:
    """What the candidate search subtracts from every feature row before the cosine: the
    mean of the finite rows of ``features``, from :data:`CENTRED_FROM` of them; else 0.

    Centring on a large set's mean leaves fewer candidates for the pixel check (1,000
    CIFAR-10 test images and 100 edited copies, Lite0: 1,576 pairs centred, 4,230 raw,
    2.4x the time, for 84 copies found against 87). But in a small set the mean is mostly
    the images compared: two copies alone centre to opposite vectors (cosine -1), and
    with 1, 2 or 6 other images a copy was found 25%, 54% or 81% of the time (raw: 87%
    each time, the pixel check's own limit). From 16 images centring found as many as on
    1,000; 32 keeps a margin, and below it the few raw candidates cost little.
    """
    finite = np.isfinite(features).all(axis=1)
    if finite.sum() < CENTRED_FROM:
        return 0.0
    # no copy of every row when all are finite (the usual case; 500 MB at 100,000)
    return features.mean(axis=0) if finite.all() else features[finite].mean(axis=0)


def _normalise(features: np.ndarray, mean: np.ndarray | float) -> np.ndarray:
    """Centred and L2-normalised rows, in one new array (not two: 700 MB at 100,000)."""
    out = features - mean
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def near_duplicates(
    features: np.ndarray,
    other: np.ndarray | None = None,
    *,
    threshold: float = NEAR_THRESHOLD,
    min_cosine: float = CANDIDATE,
    k: int = 5,
    thumbnails: np.ndarray | None = None,
    other_thumbnails: np.ndarray | None = None,
    advance: Callable[[int], None] | None = None,
) -> list[Pair]:
    """Near-duplicate pairs, most similar first.

    Each image's ``k`` most similar images by feature cosine (at least ``min_cosine``) are
    candidates. With thumbnails, a candidate is kept when a window of one thumbnail
    (the whole image, or a crop of 95% to 70% of each side) matches the whole other: its
    layout correlation reaches ``PIXEL_MATCH`` and its detail correlation ``threshold``
    (``Pair.similarity``). Without thumbnails every candidate is kept, scored by cosine.

    Parameters
    ----------
    features : ndarray of shape (n, d)
        Features of the images (rows of NaN, for unreadable images, are never paired).
    other : ndarray of shape (m, d), optional
        A second set (the test set): then each of its images is paired with its most similar
        images in ``features`` (``Pair.i`` indexes ``features``, ``Pair.j`` ``other``).
        Without it, pairs within ``features`` with ``i < j``.
    threshold : float, default=NEAR_THRESHOLD
        The detail correlation a candidate needs (with thumbnails).
    min_cosine : float, default=CANDIDATE
        The feature cosine (centred on :func:`feature_centre` of ``features``) a
        candidate needs.
    k : int, default=5
        The most partners kept per image.
    thumbnails, other_thumbnails : ndarray of shape (n, 32, 32), optional
        :func:`thumbnail` of each image (of ``other`` for the second), for the pixel check.
    advance : callable, optional
        Called with units of work done, for a progress bar: one unit per query image for
        the search and, with thumbnails, as many again for the pixel check (``2 * m`` in
        all, ``m`` the number of query images).
    """
    check_thresholds(threshold, min_cosine)
    if other is not None and (thumbnails is None) != (other_thumbnails is None):
        raise DataError("give thumbnails for both sets, or for neither")
    _check_thumbnails(thumbnails, features, "thumbnails")
    _check_thumbnails(other_thumbnails, other, "other_thumbnails")
    advance = advance or (lambda n: None)
    candidates = _candidates(features, other, min_cosine, k, advance)
    n_queries = len(features) if other is None else len(other)
    if not candidates:
        advance(n_queries if thumbnails is not None else 0)
        return []
    qi, qj = np.array(list(candidates), dtype=np.int64).T
    score = np.array(list(candidates.values()))
    if thumbnails is not None:
        theirs = thumbnails if other is None else other_thumbnails
        assert theirs is not None
        layout, score = _pixel_scores(thumbnails, theirs, qi, qj, n_queries, advance)
        keep = (layout >= PIXEL_MATCH) & (score >= threshold)
        qi, qj, score = qi[keep], qj[keep], score[keep]
    order = np.argsort(-score, kind="stable")
    return [Pair(int(qi[n]), int(qj[n]), float(score[n])) for n in order]


def check_thresholds(threshold: float, min_cosine: float = CANDIDATE) -> None:
    """Refuse thresholds outside (0, 1] before any image is read."""
    for name, value in (("threshold", threshold), ("min_cosine", min_cosine)):
        if not 0.0 < value <= 1.0:
            raise DataError(f"{name} must be in (0, 1], got {value}")


def _check_thumbnails(thumbs: np.ndarray | None, features: np.ndarray | None, name: str) -> None:
    if thumbs is None or features is None:
        return
    if np.shape(thumbs) != (len(features), THUMB, THUMB):
        raise DataError(
            f"{name} must have shape ({len(features)}, {THUMB}, {THUMB}), one thumbnail() "
            f"per image, got {np.shape(thumbs)}"
        )


def _pixel_scores(
    mine: np.ndarray,
    theirs: np.ndarray,
    qi: np.ndarray,
    qj: np.ndarray,
    n_queries: int,
    advance: Callable[[int], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Layout and detail correlations (:func:`_aligned`) of each candidate, in blocks of
    ``PAIR_BLOCK`` pairs (the windows of a block fit in the CPU's cache: ~1.5 ms a pair),
    the blocks spread over one thread per core (numpy lets go of the GIL in them);
    ``advance`` gets ``n_queries`` units in all, in proportion to the pairs done."""
    layout, detail = np.empty(len(qi)), np.empty(len(qi))

    def block(start: int) -> int:
        part = slice(start, start + PAIR_BLOCK)
        layout[part], detail[part] = _aligned(mine[qi[part]], theirs[qj[part]])
        return min(start + PAIR_BLOCK, len(qi))

    done = 0
    with ThreadPoolExecutor(_n_threads(), thread_name_prefix="tlearn-doctor") as pool:
        for end in pool.map(block, range(0, len(qi), PAIR_BLOCK)):
            units = n_queries * end // len(qi)
            advance(units - done)
            done = units
    return layout, detail


def _candidates(
    features: np.ndarray,
    other: np.ndarray | None,
    floor: float,
    k: int,
    advance: Callable[[int], None],
) -> dict[tuple[int, int], float]:
    """Each query image's ``k`` most similar images with a cosine of at least ``floor``."""
    features = _check(features)
    mean = feature_centre(features)
    base = _normalise(features, mean)
    queries = base if other is None else _normalise(_check(other), mean)
    base_ok = np.isfinite(base).all(axis=1)
    base[~base_ok] = 0.0  # in place: a copy would be another n x d floats
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
                if s >= floor:
                    q = start + r
                    key = (int(c), q) if other is not None else (min(q, int(c)), max(q, int(c)))
                    pairs[key] = max(s, pairs.get(key, -1.0))
        advance(len(block))
    return pairs

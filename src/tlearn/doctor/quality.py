"""Image-quality checks, with cleanvision's definitions (cleanvision 0.3, Apache-2.0; we
match its formulas and default thresholds rather than depend on it and on pandas), except
for ``blurry``, where we measured it to fail (below).

Each check gives a score in [0, 1], lower meaning worse, and flags an image whose score is
below the threshold:

- dark (0.32): the 99th percentile of pixel brightness,
  sqrt(.241 R^2 + .691 G^2 + .068 B^2) / 255;
- light (0.05): 1 - the 5th percentile of brightness;
- odd_aspect_ratio (0.35): min(w / h, h / w);
- low_information (0.3): the entropy of the greyscale histogram in bits / 10, at most 1;
- blurry (0.1): 1 - exp(-0.01 * the std of PIL's FIND_EDGES on the image shrunk to 64 px),
  on the interior. cleanvision keeps the 1-pixel border that FIND_EDGES leaves unfiltered
  (raw intensities, which dominate a 64 px image) and adds a term for the greyscale
  histogram's spread, so a photo blurred with a Gaussian of radius 6 still scored above its
  0.29 threshold. Measured on scikit-image photo crops: sharp ones 0.16 to 0.52, the same
  blurred with radius 2 at most 0.07;
- odd_size (0.5): 1 - the distance of sqrt(w * h) from the middle of
  [Q1 - 3 IQR, Q3 + 3 IQR] over the set, divided by that range's width;
- grayscale (0.5): 0 for an image whose channels are all equal, in a set that is mostly
  colour (cleanvision flags every single-channel file).

An image over :data:`QUALITY_SIDE` pixels a side is measured reduced by an integer factor
(a box filter) to at most that; its size and aspect ratio are the original's. cleanvision
measures every pixel: a 12 MP photo then takes about 1 s; reduced, a few tens of ms, and
percentiles of brightness, the grey histogram and the edges hardly change.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["QUALITY_SIDE", "THRESHOLDS", "image_properties", "quality_scores"]

THRESHOLDS = {
    "dark": 0.32,
    "light": 0.05,
    "odd_aspect_ratio": 0.35,
    "low_information": 0.3,
    "blurry": 0.1,
    "odd_size": 0.5,
    "grayscale": 0.5,
}
BLUR_SIDE = 64
#: Larger images are measured reduced to at most this many pixels a side.
QUALITY_SIDE = 1024
_SQUARES = np.arange(256, dtype=np.float64) ** 2  # the same values as r.astype(float) ** 2


def _brightness(arr: np.ndarray) -> np.ndarray:
    r, g, b = (_SQUARES[arr[..., c]] for c in range(3))
    return np.sqrt(0.241 * r + 0.691 * g + 0.068 * b) / 255


def image_properties(img: Image.Image) -> dict[str, Any]:
    """The raw measurements of one decoded RGB image."""
    w, h = img.size
    factor = -(-max(w, h) // QUALITY_SIDE)
    if factor > 1:
        img = img.reduce(factor)
    arr = np.asarray(img)
    p5, p99 = np.percentile(_brightness(arr), [5, 99])
    ratio = max(img.size) / BLUR_SIDE
    small = (
        img.resize((max(int(img.width // ratio), 1), max(int(img.height // ratio), 1)))
        if ratio > 1
        else img
    )
    grey = small.convert("L")
    return {
        "brightness_p5": float(p5),
        "brightness_p99": float(p99),
        "aspect_ratio": min(w / h, h / w),
        "entropy": float(img.entropy()),
        "blurriness": _edge_std(grey),
        "size": math.sqrt(w) * math.sqrt(h),
        "is_grey": bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()),
    }


def _edge_std(grey: Image.Image) -> float:
    edges = np.asarray(grey.filter(ImageFilter.FIND_EDGES), dtype=np.float64)
    inner = edges[1:-1, 1:-1] if min(edges.shape) > 2 else edges
    return float(inner.std())


def _odd_size(sizes: np.ndarray, iqr_factor: float = 3.0) -> np.ndarray:
    q1, q3 = np.percentile(sizes, [25, 75])
    low, high = q1 - iqr_factor * (q3 - q1), q3 + iqr_factor * (q3 - q1)
    gap = high - low
    norm = gap if gap > 0 else (low + high) / 2
    score = 1 - np.clip(np.abs(sizes - (low + high) / 2) / norm, 0, 1)
    return score if gap > 0 else np.where(score < 1, 0.0, 1.0)


def quality_scores(props: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """``{issue: scores}`` over a set of images' :func:`image_properties`."""
    col = {k: np.array([p[k] for p in props], dtype=np.float64) for k in props[0]}
    blur = 1 - np.exp(-0.01 * col["blurriness"])
    grey = col["is_grey"].astype(bool)
    return {
        "dark": col["brightness_p99"],
        "light": 1 - col["brightness_p5"],
        "odd_aspect_ratio": col["aspect_ratio"],
        "low_information": np.minimum(col["entropy"] / 10, 1.0),
        "blurry": blur,
        "odd_size": _odd_size(col["size"]),
        # greyscale matters only in a set that is mostly colour
        "grayscale": np.where(grey & (grey.mean() < 0.5), 0.0, 1.0),
    }

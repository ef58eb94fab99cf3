"""Small real image files written into tmp_path, so unit and contract tests need nothing
outside the repository: random crops of the photos that ship with scikit-image (one photo
per class: natural image statistics, so engines and int8 calibration behave as on real
data), or coloured shapes on textured backgrounds. Pretrained features separate the classes
easily, so a probe fitted on a few dozen images predicts held-out ones well above chance."""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("astronaut", "coffee", "rocket")
PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry", "colorwheel")
GEOMETRY = ("circle", "square", "triangle", "stripes")


@functools.cache
def _photo(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())[..., :3]


def crop(name: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A random crop (30-80% of the side) of photo ``name``, maybe mirrored, with a little
    brightness change, resized to ``size``."""
    photo = _photo(name)
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.3, 0.8))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    img = Image.fromarray(photo[top : top + side, left : left + side])
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return Image.fromarray(np.clip(arr * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8))


def draw(name: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """An image of class ``name``: a photo crop, or a shape from :data:`GEOMETRY`."""
    if name in PHOTOS:
        return crop(name, rng, size)
    return shape(name, rng, size)


def shape(shape: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """One picture of ``shape`` at a random place, size and colour."""
    bg = rng.integers(0, 256, 3)
    noise = rng.normal(0, 25, (size, size, 3))
    base = np.clip(bg + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(base).filter(ImageFilter.GaussianBlur(1))
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r, 2)
    colour = tuple(int(c) for c in (255 - bg + rng.integers(-40, 40, 3)) % 256)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:  # stripes
        for k in range(-size, size, 8):
            d.line([(k, 0), (k + size, size)], fill=colour, width=3)
    return img


def make_folder(
    root: Path,
    n_per_class: int,
    *,
    classes: tuple[str, ...] = SHAPES,
    size: int = 48,
    seed: int = 0,
    fmt: str = "jpg",
) -> Path:
    """``root/<class>/<i>.<fmt>`` for each class; returns ``root``."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            draw(cls, rng, size).save(root / cls / f"{i:04d}.{fmt}", quality=92)
    return root


def make_zip(
    path: Path,
    per_split: dict[str, int],
    *,
    classes: tuple[str, ...] = SHAPES,
    seed: int = 0,
    size: int = 32,
) -> Path:
    """A stored (uncompressed) zip of ``<split>/<class>/<i>.jpg``, laid out like the CIFAR-10
    JPEG zip; ``per_split`` gives the images per class of each split."""
    import io

    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for split, n_per_class in per_split.items():
            for cls in classes:
                for i in range(n_per_class):
                    buf = io.BytesIO()
                    draw(cls, rng, size).save(buf, format="JPEG", quality=90)
                    zf.writestr(f"{split}/{cls}/{i:05d}.jpg", buf.getvalue())
    return path


def paths_and_labels(root: Path) -> tuple[list[str], np.ndarray]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [str(p) for p in files], np.array([p.parent.name for p in files], dtype=object)

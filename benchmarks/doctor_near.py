"""The doctor's near-duplicate rule against features alone, on the same features.

10,000 CIFAR-10 training images (1,000 a class) and the 10,000 test images; 300 test images
copied ten ways (JPEG quality 40, resized to 3/4 and back, recoloured, "shifted 2 px"
(cropped 2 px at one corner and enlarged back), cropped 2 px a side, 26 px at JPEG quality
70, cropped 10% off-centre, cropped 20% and saved at JPEG quality 75, moved 3,2 px with a
black border, moved 5,4 px with the edge repeated). Prints, for each rule: the pairs flagged
among the 20,000 (and how many join train and test), and the share of copies paired with
their original. Features are cached (``--cache-dir``), so a second run takes a few minutes.

    python benchmarks/doctor_near.py     # about 8 minutes on 2 cores the first time
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from tlearn import PretrainedFeatures, load_image_folder
from tlearn.data.images import read_bytes
from tlearn.doctor.duplicates import iter_decoded, near_duplicates, thumbnail

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ZIP = Path(os.environ.get("TLEARN_CIFAR_ZIP", ROOT.parent / "shared/data/cifar10-jpeg.zip"))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(buf).convert("RGB")


def _moved(im: Image.Image, dx: int, dy: int, border: str) -> Image.Image:
    """``im`` moved ``dx`` px right and ``dy`` down, the uncovered border black or the
    edge pixels repeated (what a shift augmentation or a re-framed screenshot leaves)."""
    a = np.asarray(im)
    h, w = a.shape[:2]
    if border == "black":
        out = np.zeros_like(a)
        out[dy:, dx:] = a[: h - dy, : w - dx]
    else:
        out = np.pad(a, ((dy, 0), (dx, 0), (0, 0)), mode="edge")[:h, :w]
    return Image.fromarray(out)


EDITS = {
    "jpeg q40": lambda im: _jpeg(im, 40),
    "resized 3/4": lambda im: im.resize((24, 24), Image.Resampling.BICUBIC).resize((32, 32)),
    "recoloured": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.2)).enhance(
        0.7
    ),
    "shifted 2 px": lambda im: im.crop((2, 2, 32, 32)).resize((32, 32)),
    "cropped 2 px": lambda im: im.crop((2, 2, 30, 30)).resize((32, 32)),
    "26 px q70": lambda im: _jpeg(im.resize((26, 26), Image.Resampling.BICUBIC), 70).resize(
        (32, 32), Image.Resampling.BICUBIC
    ),
    "cropped 10% off-centre": lambda im: im.crop((0, 3, 29, 32)).resize(
        (32, 32), Image.Resampling.BICUBIC
    ),
    "cropped 20% + q75": lambda im: _jpeg(
        im.crop((3, 3, 29, 29)).resize((32, 32), Image.Resampling.BICUBIC), 75
    ),
    "moved 3,2 px, black border": lambda im: _moved(im, 3, 2, "black"),
    "moved 5,4 px, edge border": lambda im: _moved(im, 5, 4, "edge"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--copies", type=int, default=300)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache/tlearn/bench-features"))
    args = ap.parse_args()
    train = load_image_folder(f"{CIFAR_ZIP}/train", max_per_class=args.per_class).filenames
    test = load_image_folder(f"{CIFAR_ZIP}/test").filenames
    paths = [*train, *test]
    extractor = PretrainedFeatures(cache_dir=args.cache_dir).fit()
    F = extractor.transform(paths)
    T = np.stack([thumbnail(arr) for _, arr, _ in iter_decoded(paths)])
    rng = np.random.default_rng(0)
    picked = len(train) + rng.choice(len(test), args.copies, replace=False)
    originals = [Image.open(io.BytesIO(read_bytes(paths[i]))).convert("RGB") for i in picked]
    print(f"{len(train)} training + {len(test)} test images; {args.copies} test images "
          f"copied {len(EDITS)} ways")  # fmt: skip
    rules = {
        "features alone, cosine >= 0.75": {"min_cosine": 0.75},
        "features + aligned pixel check (default)": {"with_thumbnails": True},
    }
    for name, rule in rules.items():
        thumbs = rule.pop("with_thumbnails", False)
        pairs = near_duplicates(F, thumbnails=T if thumbs else None, **rule)
        cross = sum((p.i < len(train)) != (p.j < len(train)) for p in pairs)
        found = {}
        for edit, fn in EDITS.items():
            copies = [np.asarray(fn(img)) for img in originals]
            G = extractor.transform(np.stack(copies))
            GT = np.stack([thumbnail(c) for c in copies])
            kw = {"thumbnails": T, "other_thumbnails": GT} if thumbs else {}
            hits = {(p.i, p.j) for p in near_duplicates(F, G, **kw, **rule)}
            found[edit] = np.mean([(int(o), r) in hits for r, o in enumerate(picked)])
        recall = ", ".join(f"{e} {v:.0%}" for e, v in found.items())
        print(f"{name}: {len(pairs)} pairs flagged ({cross} train/test); copies found: {recall}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""CIFAR-10 accuracy check of the core recipe (issue: core linear probe).

Fits on N training images per class from ../shared/data/cifar10-jpeg.zip (default 200) and
evaluates on the full official test set (10,000 images), printing, in one run:
  - raw-pixel logistic regression (StandardScaler + LogisticRegression on 32x32x3 pixels),
  - the plain pipeline on EfficientNet-Lite0 features (StandardScaler + LogisticRegression,
    default C=1.0),
  - tlearn's LinearProbe (C chosen on a held-out 20% of the training images).
Features are computed once and cached in --cache-dir, so the CLI can reuse them.

    python benchmarks/cifar10_probe.py [--per-class 200] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tlearn import LinearProbe, PretrainedFeatures, load_image_folder
from tlearn.data.images import decode_image, read_bytes

ROOT = Path(__file__).resolve().parents[1]


def pixels(paths: np.ndarray) -> np.ndarray:
    return (
        np.stack([np.asarray(decode_image(read_bytes(p), p)) for p in paths])
        .reshape(len(paths), -1)
        .astype(np.float32)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default=str(ROOT.parent / "shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--cache-dir", default=str(ROOT / "bench-output" / "feature-cache"))
    ap.add_argument(
        "--engine", default="torch", help="torch, torch-bf16, onnxruntime, openvino or auto"
    )
    args = ap.parse_args()
    train = load_image_folder(f"{args.zip}/train", max_per_class=args.per_class)
    test = load_image_folder(f"{args.zip}/test")
    names = np.asarray(train.target_names, dtype=object)
    y, y_test = names[train.target], names[test.target]
    print(f"CIFAR-10: {len(y)} training images ({args.per_class}/class), {len(y_test)} test")

    t0 = time.perf_counter()
    raw = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    raw.fit(pixels(train.filenames), y)
    raw_acc = raw.score(pixels(test.filenames), y_test)
    print(
        f"raw-pixel logistic regression      accuracy {raw_acc:.4f}  "
        f"({time.perf_counter() - t0:.0f} s)"
    )

    t0 = time.perf_counter()
    features = PretrainedFeatures(
        args.backbone, cache_dir=args.cache_dir, engine=args.engine, verbose=1
    ).fit()
    F, F_test = features.transform(train.filenames), features.transform(test.filenames)
    t_feat = time.perf_counter() - t0
    print(
        f"features: {len(F) + len(F_test)} images in {t_feat:.0f} s "
        f"({(len(F) + len(F_test)) / t_feat:.1f} images/s, cached in {args.cache_dir})"
    )
    plain = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    plain.fit(F, y)
    plain_acc = plain.score(F_test, y_test)
    print(f"features + default-C pipeline      accuracy {plain_acc:.4f}")

    t0 = time.perf_counter()
    probe = LinearProbe(args.backbone, cache_dir=args.cache_dir, engine=args.engine)
    probe.fit(train.filenames, y)
    probe_acc = probe.score(test.filenames, y_test)
    print(
        f"tlearn LinearProbe (C={probe.C_:g})     accuracy {probe_acc:.4f}  "
        f"({time.perf_counter() - t0:.0f} s with cached features)"
    )
    print(
        f"probe - raw pixels: {100 * (probe_acc - raw_acc):+.2f} points; "
        f"probe - default C: {100 * (probe_acc - plain_acc):+.2f} points"
    )


if __name__ == "__main__":
    main()

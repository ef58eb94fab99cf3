"""Feature-extraction throughput: PretrainedFeatures against the naive per-image loop.

On the same N CIFAR-10 test JPEGs (default 2,000) from ../shared/data/cifar10-jpeg.zip, in
one run:
  1. naive: open, resize/crop/normalise (timm's eval transform) and run ONE image at a time
     in eager PyTorch, as hand-written scripts do;
  2. PretrainedFeatures: threaded decoding beside batched, channels-last inference;
  3. PretrainedFeatures with cache_dir: the first pass fills the cache, the second reads it.
Prints images per second, the ratios against the naive loop, and how closely the features
agree (cosine similarity), since these machines are shared and only ratios are meaningful.

    python benchmarks/features.py [--n 2000] [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tlearn import PretrainedFeatures, load_backbone, load_image_folder
from tlearn.bench import naive_loop

ROOT = Path(__file__).resolve().parents[1]


def timed(label: str, fn, n: int, baseline: float | None = None):
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    rate = n / dt
    ratio = f"  {rate / baseline:5.1f}x naive" if baseline else ""
    print(f"{label:<44} {dt:7.1f} s  {rate:8.1f} images/s{ratio}", flush=True)
    return result, rate


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(1)
    return float((num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default=str(ROOT.parent / "shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    data = load_image_folder(f"{args.zip}/test", max_per_class=max(1, args.n // 10))
    paths = list(data.filenames[: args.n])
    n = len(paths)
    print(
        f"{n} CIFAR-10 test JPEGs, backbone {args.backbone}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    load_backbone(args.backbone)  # build once, so no timing below includes the first load
    naive, base = timed(
        "naive loop (one image at a time, eager)", lambda: naive_loop(args.backbone, paths), n
    )
    est = PretrainedFeatures(args.backbone, batch_size=args.batch_size).fit()
    ours, _ = timed("PretrainedFeatures (no cache)", lambda: est.transform(paths), n, base)
    with tempfile.TemporaryDirectory() as cache:
        cached = PretrainedFeatures(
            args.backbone, batch_size=args.batch_size, cache_dir=cache
        ).fit()
        timed("PretrainedFeatures, cache_dir, first pass", lambda: cached.transform(paths), n, base)
        again, _ = timed(
            "PretrainedFeatures, cache_dir, second pass", lambda: cached.transform(paths), n, base
        )
    print(
        f"min cosine similarity of features, ours vs naive: {cosine(ours, naive):.6f}; "
        f"cached vs fresh: {cosine(again, ours):.6f}"
    )


if __name__ == "__main__":
    main()

"""Training throughput and accuracy: fp32 vs channels-last vs bf16 autocast, one run.

Fine-tunes EfficientNet-Lite0 (strategy full) on N CIFAR-10 training images per class at a
reduced input size for the same number of epochs in each configuration, and prints the
training images per second, the ratio against plain fp32, and the test accuracy reached.

    python benchmarks/finetune.py [--per-class 100] [--image-size 96] [--epochs 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tlearn import FineTuneClassifier, load_image_folder

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default=str(ROOT.parent / "shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    train = load_image_folder(f"{args.zip}/train", max_per_class=args.per_class)
    test = load_image_folder(f"{args.zip}/test", max_per_class=args.test_per_class)
    names = np.asarray(train.target_names, dtype=object)
    y, y_test = names[train.target], names[test.target]
    bf16 = torch.cpu._is_avx512_bf16_supported()
    print(
        f"{len(y)} training / {len(y_test)} test CIFAR-10 images at {args.image_size} px, "
        f"{args.epochs} epochs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"native CPU bf16: {bf16}"
    )
    base = None
    for precision, channels_last in CONFIGS:
        model = FineTuneClassifier(
            strategy="full",
            image_size=args.image_size,
            epochs=args.epochs,
            precision=precision,
            channels_last=channels_last,
            validation_size=0,
            verbose=0,
        )
        t0 = time.perf_counter()
        model.fit(train.filenames, y)
        wall = time.perf_counter() - t0
        rate = float(np.mean([h["images_per_second"] for h in model.history_]))
        base = base or rate
        acc = model.score(test.filenames, y_test)
        layout = "channels_last" if channels_last else "contiguous"
        print(
            f"{precision:<5} {layout:<14} {rate:7.1f} train images/s  {rate / base:4.2f}x  "
            f"test accuracy {acc:.4f}  ({wall:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()

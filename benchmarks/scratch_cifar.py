"""How far a compact network trained from scratch gets on CIFAR-10 on this CPU, and how
fast (issue 29): ``ScratchClassifier`` (``tlearn fit --method scratch``) on the CIFAR-10
JPEG zip, its precision and length as arguments.

    python benchmarks/scratch_cifar.py --backbone compact_m --epochs 11
    python benchmarks/scratch_cifar.py --backbone compact_s --epochs 5 --precision bf16 fp32

Prints, for each precision: test accuracy, the held-out estimate (10% of the training
images no choice saw), the fit's seconds and its training images/s.

Measured on 2 Zen 4 cores (AVX512-BF16), alone (docs/scratch.md):
- compact_s, 5 epochs: bf16 86.6% test at 994 images/s, fp32 86.1% at 525;
- compact_m, 11 epochs, bf16 (through `tlearn fit --method scratch`): 90.5% test.
An earlier version of this script, the recipe written out here, measured on 2 AVX2 cores
(no native bf16): widths 64/128/128, 10 epochs, 88.8% test at 318 images/s in fp32.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from tlearn import ScratchClassifier, load_image_folder

ZIP = Path(
    os.environ.get(
        "TLEARN_CIFAR_ZIP", Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip"
    )
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="compact_m")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--precision", nargs="+", default=["auto"])
    ap.add_argument("--max-per-class", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train = load_image_folder(f"{ZIP}/train", max_per_class=args.max_per_class)
    test = load_image_folder(f"{ZIP}/test")
    for precision in args.precision:
        model = ScratchClassifier(args.backbone, epochs=args.epochs, precision=precision,
                                  random_state=args.seed, engine="torch")  # fmt: skip
        t0 = time.perf_counter()
        model.fit(train.filenames, train.target)
        seconds = time.perf_counter() - t0
        held = ~np.isnan(model.heldout_proba_).any(axis=1)
        estimate = (model.heldout_proba_[held].argmax(1) == train.target[held]).mean()
        accuracy = model.score(test.filenames, test.target)
        print(f"{args.backbone}, {model.epochs_} epochs, {model.precision_}: test {accuracy:.4f}, "
              f"held-out {estimate:.4f} ({held.sum()} images), fit {seconds:.0f} s, "
              f"{model.train_images_per_second_:.0f} training images/s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

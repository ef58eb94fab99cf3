"""Fine-tuning vs the linear probe on the same CIFAR-10 split, with wall times.

Trains on N images per class of ../shared/data/cifar10-jpeg.zip (default 500) and tests on
the full official test set (10,000), in one run:
  - tlearn's LinearProbe on EfficientNet-Lite0 features at the backbone's 224 px;
  - FineTuneClassifier (lp-ft: head first, then everything) at a reduced input size, with
    its test-set calibration error before and after the temperature fitted on validation.

    python benchmarks/finetune_cifar10.py [--per-class 500] [--image-size 128] [--epochs 6]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from tlearn import FineTuneClassifier, LinearProbe, load_image_folder
from tlearn.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default=str(ROOT.parent / "shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--crop", default="auto", choices=["auto", "center"])
    ap.add_argument("--cache-dir", default=str(ROOT / "bench-output" / "feature-cache"))
    ap.add_argument("--run-dir", default=str(ROOT / "bench-output" / "finetune-run"))
    ap.add_argument("--skip-probe", action="store_true")
    args = ap.parse_args()
    train = load_image_folder(f"{args.zip}/train", max_per_class=args.per_class)
    test = load_image_folder(f"{args.zip}/test")
    names = np.asarray(train.target_names, dtype=object)
    y, y_test = names[train.target], names[test.target]
    print(
        f"CIFAR-10: {len(y)} training images, {len(y_test)} test; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    if not args.skip_probe:
        t0 = time.perf_counter()
        probe = LinearProbe(cache_dir=args.cache_dir).fit(train.filenames, y)
        r = evaluate(probe, test.filenames, y_test)
        print(
            f"linear probe (224 px, C={probe.C_:g}): test accuracy {r.accuracy:.4f}, loss "
            f"{r.log_loss:.4f}, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    t0 = time.perf_counter()
    ft = FineTuneClassifier(
        image_size=args.image_size,
        epochs=args.epochs,
        precision=args.precision,
        crop=args.crop,
        checkpoint_dir=args.run_dir,
    )
    ft.fit(train.filenames, y)
    t_fit = time.perf_counter() - t0
    r = evaluate(ft, test.filenames, y_test)
    rates = [h["images_per_second"] for h in ft.history_]
    print(
        f"fine-tuned lp-ft ({args.image_size} px, crop={args.crop}, {len(ft.history_)} "
        f"epochs, best {ft.best_epoch_}): test accuracy {r.accuracy:.4f}, loss "
        f"{r.log_loss:.4f}, train {t_fit:.0f} s ({np.mean(rates):.0f} images/s), total "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    raw = copy.copy(ft)
    raw.temperature_ = 1.0  # the same network without the fitted temperature
    r_raw = evaluate(raw, test.filenames, y_test)
    print(
        f"fine-tuned calibration on the test set: temperature {ft.temperature_:.3f} (fitted "
        f"on the validation split), ECE {r_raw.expected_calibration_error:.4f} before -> "
        f"{r.expected_calibration_error:.4f} after, log loss {r_raw.log_loss:.4f} -> "
        f"{r.log_loss:.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()

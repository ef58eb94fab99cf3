"""`tlearn doctor` on the CIFAR-10 JPEG zip, in one run: time per stage and in total, peak
memory, how many test images have a near duplicate in train, and precision/recall (and
AUROC) of the label-issue flag after flipping a fraction of the training labels at random.

    python benchmarks/doctor.py                      # all 60,000 images (about 1 hour on 2 cores)
    python benchmarks/doctor.py --per-class 500      # a quick look
    python benchmarks/doctor.py --per-class 1000 --lookalike   # human-like label noise

``--cache-dir DIR`` keeps the features for a second run (the label noise does not change
them); ``--out DIR`` also writes the findings (issues.csv) and the flipped images.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from tlearn.cli import _label_backbones
from tlearn.doctor import inspect
from tlearn.training import load_labelled

ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


#: The asymmetric noise of Patrini et al. (2017) for CIFAR-10, the usual stand-in for human
#: mistakes: each image of these classes may take the look-alike class's label.
LOOKALIKE = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog",
             "dog": "cat"}  # fmt: skip


def flip(
    y: np.ndarray, fraction: float, seed: int = 0, lookalike: bool = False
) -> tuple[np.ndarray, set[int]]:
    """``y`` with ``fraction`` of its labels moved to another class: at random, or (with
    ``lookalike``) to the class of :data:`LOOKALIKE`, drawn among those classes' images."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    pool = np.flatnonzero(np.isin(y, list(LOOKALIKE))) if lookalike else np.arange(len(y))
    chosen = rng.choice(pool, int(round(fraction * len(y))), replace=False)
    noisy = y.copy()
    for i in chosen:
        noisy[i] = LOOKALIKE[y[i]] if lookalike else rng.choice(classes[classes != y[i]])
    return noisy, set(chosen.tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=None, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=None)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--lookalike", action="store_true",
                        help="flip to look-alike classes (cat<->dog, truck->automobile...) "
                        "instead of at random")  # fmt: skip
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--label-backbone", action="append", default=None,
                        help="as tlearn doctor's (default: auto; 'none': Lite0 alone)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="write the findings there too (issues.csv, flipped.txt)")  # fmt: skip
    args = parser.parse_args()
    X, y = load_labelled(f"{ZIP}/train", args.per_class)
    X_test, y_test = load_labelled(f"{ZIP}/test", args.test_per_class)
    noisy, flipped = flip(y, args.flip, lookalike=args.lookalike)
    t0 = time.perf_counter()
    label_backbones = _label_backbones(args.label_backbone)
    findings = inspect(X, noisy, X_test, y_test, cache_dir=args.cache_dir,
                       label_backbones=label_backbones, say=print)  # fmt: skip
    total = time.perf_counter() - t0
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        findings.to_csv(args.out / "issues.csv")
        lines = [f"{X[i]}\t{y[i]}\t{noisy[i]}\n" for i in sorted(flipped)]
        (args.out / "flipped.txt").write_text("".join(lines))
    index = {p: i for i, p in enumerate(X)}
    flagged = {index[r["path"]] for r in findings.of("label_issue") if r["path"] in index}
    hits = len(flagged & flipped)
    quality = np.array([findings.label_quality.get(p, np.nan) for p in X])
    is_flipped = np.isin(np.arange(len(X)), list(flipped))
    ok = np.isfinite(quality)
    ranks = (-quality[ok]).argsort().argsort()  # low quality -> high rank
    pos = is_flipped[ok]
    auroc = (ranks[pos].mean() - (pos.sum() - 1) / 2) / (~pos).sum()
    leaks = {r["path"] for r in findings.of("leakage")}
    print(f"\n{len(X)} training + {len(X_test)} test images; {len(flipped)} labels flipped")
    for stage, seconds in findings.summary["seconds"].items():
        print(f"  {stage:<30} {seconds / 60:6.1f} min")
    print(f"  {'total':<30} {total / 60:6.1f} min ({len(X) + len(X_test)} images, "
          f"{(len(X) + len(X_test)) / total:.0f} images/s)")  # fmt: skip
    print(f"test images with a near or exact duplicate in train: {len(leaks)}")
    print(f"near duplicates within train: {len(findings.of('near_duplicate'))}, "
          f"exact: {len(findings.of('exact_duplicate'))}")  # fmt: skip
    precision, recall = hits / max(1, len(flagged)), hits / len(flipped)
    print(f"label issues flagged in train: {len(flagged)}; precision {precision:.3f}, "
          f"recall {recall:.3f}; AUROC of the label-quality score {auroc:.3f}")  # fmt: skip
    print(f"label backbones besides the main one: {findings.summary['label_backbones']}")
    print(f"issues: {findings.counts()}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak:.0f} MiB")


if __name__ == "__main__":
    main()

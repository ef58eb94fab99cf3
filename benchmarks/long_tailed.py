"""Imbalanced classes (issue 28): long-tailed CIFAR-10, 500 training images of the largest
class down to 10 of the smallest (ratio 50, each class 0.65 times the one before, as in
the long-tailed CIFAR benchmarks), tested on 100 test images of every class.

``tlearn.train`` (what ``tlearn fit`` runs) with the default settings, which weigh the
classes by inverse frequency when the smallest is under a fifth of the largest, against
the same fit with ``class_weight=None``; balanced accuracy (the mean of per-class recall)
and accuracy on the balanced test images, and what each run reported held out.

    python benchmarks/long_tailed.py --method probe --out long_tailed.json
    python benchmarks/long_tailed.py --method auto --time-budget 300
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"
ZIP = Path(os.environ.get("TLEARN_CIFAR_ZIP", SHARED_ZIP))


def write_long_tailed(out: Path, largest: int = 500, ratio: float = 50, seed: int = 0) -> dict:
    """``out/train/<class>/`` long-tailed and ``out/test/<class>/`` 100 each; returns the
    training counts per class (the class order shuffled by ``seed``)."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        classes = sorted({n.split("/")[1] for n in names})
        order = [classes[i] for i in rng.permutation(len(classes))]
        counts = {c: round(largest * ratio ** (-i / (len(order) - 1))) for i, c in enumerate(order)}
        for split, wanted in (("train", counts), ("test", dict.fromkeys(classes, 100))):
            for c in classes:
                members = [n for n in names if n.startswith(f"{split}/{c}/")]
                for m in rng.choice(members, size=wanted[c], replace=False):
                    target = out / split / c / Path(m).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(m))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="/tmp/tlearn-long-tailed")
    ap.add_argument("--method", default="probe")
    ap.add_argument("--time-budget", type=float)
    ap.add_argument("--out")
    args = ap.parse_args()

    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from tlearn import train
    from tlearn.training import load_labelled

    folder = Path(args.folder)
    counts = write_long_tailed(folder) if not (folder / "train").is_dir() else None
    X_test, y_test = load_labelled(folder / "test")
    runs = {}
    for name, extra in (("default", {}), ("class_weight=None", {"class_weight": None})):
        t0 = time.perf_counter()
        said: list[str] = []
        result = train(folder / "train", method=args.method, time_budget=args.time_budget,
                       cache_dir=str(folder / "cache"), say=said.append, **extra)  # fmt: skip
        pred = result.model.predict(X_test)
        runs[name] = {
            "class_weight": result.model.get_params().get("class_weight"),
            "balanced_accuracy": float(balanced_accuracy_score(y_test, pred)),
            "accuracy": float(accuracy_score(y_test, pred)),
            "reported_held_out_balanced_accuracy": result.report.balanced_accuracy,
            "auto_kept": [r["candidate"] for r in result.leaderboard if r.get("chosen")],
            "said": [s for s in said if "imbalanced" in s],
            "seconds": time.perf_counter() - t0,
        }
        print(name, json.dumps(runs[name], indent=2), flush=True)
    result = {"train_counts": counts, "method": args.method, "runs": runs}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

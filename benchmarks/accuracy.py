"""The default path against yesterday's, on real data, in one run: accuracy, expected
calibration error and wall time (fit + predicting the test set).

Rows: CIFAR-10 at 200 and 500 training images per class against the full 10,000-image test
set, and Fashion-MNIST at 100 per class (written to a temporary folder of PNGs, so every
method reads files as a user's would), each with
  - "0.1 default": what `tlearn fit` did before this change (centre crop, pooled last layer,
    no flip averaging, C on one 20% hold-out, no calibration, fp32 torch);
  - "probe": today's `tlearn fit DATA --method probe`;
  - "auto": today's `tlearn fit DATA` (``--method auto``, default budget; ``--budget``).

    python benchmarks/accuracy.py                       # all rows (about an hour on 2 cores)
    python benchmarks/accuracy.py --sets cifar200       # one dataset
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image
from sklearn.model_selection import StratifiedShuffleSplit

from tlearn import evaluate, train
from tlearn.data import fetch_fashion_mnist, subsample_per_class
from tlearn.probe import LinearProbe
from tlearn.training import load_labelled

ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


def fashion_folder(root: Path, per_class: int, test_per_class: int) -> tuple[str, str]:
    """Fashion-MNIST subsets as class folders of PNGs."""
    for split, n in (("train", per_class), ("test", test_per_class)):
        data = fetch_fashion_mnist(split)
        keep = subsample_per_class(data.target, n, 0)
        for i in keep:
            folder = root / split / data.target_names[data.target[i]].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i]).save(folder / f"{i:05d}.png")
    return str(root / "train"), str(root / "test")


def old_default(train_dir: str, test_dir: str, per_class: int | None) -> dict[str, float]:
    """Yesterday's `tlearn fit DATA --test TEST`, with its settings spelled out."""
    t0 = time.perf_counter()
    X, y = load_labelled(train_dir, per_class)
    probe = LinearProbe(
        crop="center",
        pooling="last",
        flip_average=False,
        cv=StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=0),
        calibrate=False,
        engine="torch",
    ).fit(X, y)
    X_test, y_test = load_labelled(test_dir)
    report = evaluate(probe, X_test, y_test)
    return _row(report, time.perf_counter() - t0)


def new_default(train_dir: str, test_dir: str, per_class: int | None, **kw) -> dict[str, float]:
    t0 = time.perf_counter()
    result = train(train_dir, test=test_dir, max_per_class=per_class, say=lambda s: None, **kw)
    row = _row(result.report, time.perf_counter() - t0)
    if result.leaderboard:
        row["chosen"] = next(r["candidate"] for r in result.leaderboard if r.get("chosen"))
    return row


def _row(report, seconds: float) -> dict[str, float]:
    return {
        "accuracy": report.accuracy,
        "ece": report.expected_calibration_error,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", default="cifar200,cifar500,fmnist100")
    parser.add_argument("--methods", default="old,probe,auto")
    parser.add_argument("--budget", type=float, default=None, help="auto's budget, seconds")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {
            "cifar200": (f"{ZIP}/train", f"{ZIP}/test", 200),
            "cifar500": (f"{ZIP}/train", f"{ZIP}/test", 500),
        }
        if "fmnist100" in args.sets:
            sources["fmnist100"] = (*fashion_folder(Path(tmp), 100, 1000), None)
        for name in args.sets.split(","):
            train_dir, test_dir, per_class = sources[name]
            for method in args.methods.split(","):
                if method == "old":
                    row = old_default(train_dir, test_dir, per_class)
                else:
                    kw = {"method": method}
                    if method == "auto" and args.budget:
                        kw["time_budget"] = args.budget
                    row = new_default(train_dir, test_dir, per_class, **kw)
                rows.append((name, method, row))
                print(
                    f"{name:<10} {method:<6} accuracy {100 * row['accuracy']:6.2f}%  "
                    f"ECE {row['ece']:.3f}  {row['seconds'] / 60:5.1f} min"
                    + (f"  ({row['chosen']})" if "chosen" in row else ""),
                    flush=True,
                )
    print("\n| data | method | accuracy | ECE | wall time |\n|---|---|---|---|---|")
    for name, method, row in rows:
        print(
            f"| {name} | {method} | {100 * row['accuracy']:.2f}% | {row['ece']:.3f} | "
            f"{row['seconds'] / 60:.1f} min |"
        )


if __name__ == "__main__":
    main()

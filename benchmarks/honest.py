"""Is the held-out accuracy that `tlearn fit` reports honest? (issue 26.13)

For each seed: a different random 50 images per class of CIFAR-10's training JPEGs, fitted
by the default `tlearn fit DATA` (``tlearn.train``: ``--method auto``, default budget, no
``--test``), so the figure it prints is its own held-out estimate; then the saved model is
scored on fresh test images no part of the fit has seen. Over the seeds, the mean of
(reported - fresh) should be near 0 (the issue asks for within 1 point), where the old
estimate (C chosen on the folds that reported; the best of auto's candidates) was above.

    python benchmarks/honest.py                      # 20 seeds, 2,000 test images
    python benchmarks/honest.py --seeds 5 --method probe --out honest.jsonl

Features are cached in one folder for every seed (--cache-dir), so most of the time is
auto measuring the machine and fitting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tlearn import evaluate, train
from tlearn.data import subsample_per_class
from tlearn.training import load_labelled

ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--method", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None, help="append one JSON line per seed")
    args = ap.parse_args()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="tlearn-honest-")
    X_test, y_test = load_labelled(f"{ZIP}/test")
    keep = subsample_per_class(np.searchsorted(np.unique(y_test), y_test), args.test_per_class, 99)
    X_test, y_test = X_test[keep], y_test[keep]
    gaps = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        result = train(f"{ZIP}/train", method=args.method, max_per_class=args.per_class,
                       seed=seed, cache_dir=cache, say=lambda _: None)  # fmt: skip
        fresh = evaluate(result.model, X_test, y_test).accuracy
        reported = result.evaluation["accuracy"]
        gaps.append(reported - fresh)
        chosen = [r["candidate"] for r in result.leaderboard if r.get("chosen")]
        row = {"seed": seed, "reported": reported, "fresh": fresh, "gap": reported - fresh,
               "method": result.evaluation["method"], "seconds": time.perf_counter() - t0,
               "chosen": chosen}  # fmt: skip
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    sd = statistics.stdev(gaps) if len(gaps) > 1 else float("nan")
    print(f"{len(gaps)} seeds: reported - fresh = {100 * statistics.mean(gaps):+.2f} points "
          f"(sd {100 * sd:.2f}, standard error {100 * sd / len(gaps) ** 0.5:.2f}); "
          f"reported above fresh in {sum(g > 0 for g in gaps)} of {len(gaps)}")  # fmt: skip


if __name__ == "__main__":
    main()

"""End-to-end featurisation throughput per engine (files on disk to features), model-only
throughput, GFLOP/s and peak memory, beside the naive per-image eager loop, in one run.
The same measurement as `tlearn bench`.

    python benchmarks/featurize.py [--n 2000] [--backbone efficientnet_lite0] [--image-size N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tlearn.bench import run_bench
from tlearn.data import load_image_folder

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default=str(ROOT.parent / "shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--engine", action="append", default=None)
    args = ap.parse_args()
    data = load_image_folder(f"{args.zip}/test", max_per_class=max(1, args.n // 10))
    run_bench(
        list(data.filenames[: args.n]), args.backbone, args.engine, image_size=args.image_size
    )


if __name__ == "__main__":
    main()

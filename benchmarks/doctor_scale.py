"""Memory and time of the doctor's stages after featurisation, at 100,000 images.

The features of 100,000 images are 100,000 x 1,752 float32 (700 MB); the question is
whether the near-duplicate search and the out-of-fold probe stay within bounds on top of
them. Featurising 100,000 images takes ~20 minutes on 2 cores and is measured elsewhere
(``benchmarks/speed_cifar10.py``; it streams in constant memory), so this benchmark gives
the stages synthetic inputs of the real shapes: features drawn around 10 class centres
(non-negative, like pooled activations), 32x32 grey thumbnails of smooth random images, and
labels with 5% flipped. It prints seconds and the growth of peak memory (max RSS) per
stage, and the peak against the features' own size.

    python benchmarks/doctor_scale.py                # 100,000 images, about 15 minutes
    python benchmarks/doctor_scale.py --n 20000      # a quick look
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from tlearn.doctor.duplicates import near_duplicates
from tlearn.doctor.labels import find_label_issues, out_of_fold_proba


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inputs(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Features around class centres, smooth random thumbnails, labels with 5% flipped."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.gamma(1.0, 1.0, (classes, d)).astype(np.float32)
    F = np.empty((n, d), np.float32)
    for start in range(0, n, 10_000):  # in blocks, so the inputs cost no more than F
        part = slice(start, start + 10_000)
        F[part] = centres[y[part]] + rng.gamma(1.0, 1.0, (len(y[part]), d)).astype(np.float32)
    coarse = rng.integers(0, 256, (n, 4, 4)).astype(np.float32)
    thumbs = np.kron(coarse, np.ones((8, 8), np.float32)).astype(np.uint8)  # 32x32, blocky
    noisy = y.copy()
    flip = rng.choice(n, n // 20, replace=False)
    noisy[flip] = (y[flip] + rng.integers(1, classes, len(flip))) % classes
    return F, thumbs, noisy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=1752, help="Lite0's default features")
    args = parser.parse_args()
    base = peak_mib()
    F, thumbs, y = inputs(args.n, args.dims, 10)
    size = F.nbytes / 2**20
    print(f"{args.n} images: features {size:.0f} MiB, thumbnails {thumbs.nbytes / 2**20:.0f} "
          f"MiB; peak so far {peak_mib():.0f} MiB (Python and libraries {base:.0f})")  # fmt: skip
    for stage, run in (
        ("near duplicates", lambda: len(near_duplicates(F, thumbnails=thumbs))),
        ("out-of-fold probe", lambda: out_of_fold_proba(F, y)),
    ):
        before, t0 = peak_mib(), time.perf_counter()
        out = run()
        if stage == "out-of-fold probe":
            out = f"{len(find_label_issues(y, out).indices)} label issues"
        else:
            out = f"{out} pairs"
        print(f"  {stage:<18} {time.perf_counter() - t0:7.1f} s  peak {peak_mib():6.0f} MiB "
              f"(+{peak_mib() - before:.0f})  {out}", flush=True)  # fmt: skip
    print(f"peak memory {peak_mib():.0f} MiB = {peak_mib() / size:.1f}x the features")


if __name__ == "__main__":
    main()

"""The speed check of the speed issue, on the CIFAR-10 JPEG zip, in one run:

1. end to end (JPEG files in the zip -> features), ``engine="auto"`` over the 10,000 test
   images against the naive per-image eager loop (open, timm transform, one forward pass
   per image) measured in the same run, on the first ``--naive-n`` of them;
2. the linear-probe accuracy of the core issue's check (200 training images per class, the
   full test set) with ``engine="auto"`` against fp32 torch (fp32 features are cached in
   ``--cache-dir``, so a second run skips them);
3. model-only images/s of the engine auto chose, batch 32 at 224 px, against the issue's
   table (EfficientNet-Lite0: best 411/s, OpenVINO int8);
4. peak memory (max RSS of a fresh process) featurising 5,000 and 50,000 images.

    python benchmarks/speed_cifar10.py [--naive-n 2000] [--skip-memory]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tlearn import LinearProbe, PretrainedFeatures, load_image_folder
from tlearn.bench import naive_loop

ROOT = Path(__file__).resolve().parents[1]
TABLE_BEST = {"efficientnet_lite0": 411.0, "resnet50": 99.0}


def memory_child(zip_path: str, n: int, engine: str) -> None:
    """Featurise the first ``n`` training images in this process; print the peak RSS."""
    paths = list(load_image_folder(f"{zip_path}/train").filenames[:n])
    t0 = time.perf_counter()
    est = PretrainedFeatures(engine=engine).fit(paths)
    F = est.transform(paths)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} {peak:.0f} {dt:.1f} {F.shape[0]} {est.engine_}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default=str(ROOT.parent / "shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--naive-n", type=int, default=2000)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--cache-dir", default=str(ROOT / "bench-output" / "feature-cache"))
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="auto")
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.zip, args.memory_child, args.engine)
        return

    train = load_image_folder(f"{args.zip}/train", max_per_class=args.per_class)
    test = load_image_folder(f"{args.zip}/test")
    names = np.asarray(train.target_names, dtype=object)
    y, y_test = names[train.target], names[test.target]
    X, X_test = list(train.filenames), list(test.filenames)
    print(f"CIFAR-10 zip: {len(X)} training images, {len(X_test)} test images")

    # 1. end to end, auto vs the naive loop
    t0 = time.perf_counter()
    naive_loop(args.backbone, X_test[: args.naive_n])
    naive = args.naive_n / (time.perf_counter() - t0)
    print(f"naive eager loop: {naive:.1f} images/s (first {args.naive_n} test images)")
    t0 = time.perf_counter()
    auto = PretrainedFeatures(args.backbone, engine=args.engine).fit(X)
    setup = time.perf_counter() - t0
    print(
        f"auto: {auto.engine_reason_} (set up in {setup:.1f} s, calibrating on the training images)"
    )
    t0 = time.perf_counter()
    F_test_auto = auto.transform(X_test)
    e2e = len(X_test) / (time.perf_counter() - t0)
    print(
        f"auto end to end: {e2e:.1f} images/s over {len(X_test)} test images = "
        f"{e2e / naive:.1f}x the naive loop (goal: >= 8x)"
    )

    # 2. probe accuracy, auto vs fp32 torch (same features code, same C search)
    F_auto = auto.transform(X)
    fp32 = PretrainedFeatures(args.backbone, engine="torch", cache_dir=args.cache_dir).fit()
    t0 = time.perf_counter()
    F, F_test = fp32.transform(X), fp32.transform(X_test)
    print(f"fp32 torch features: {time.perf_counter() - t0:.0f} s (cached in {args.cache_dir})")
    accs = {}
    for label, (A, B) in {"fp32 torch": (F, F_test), "auto": (F_auto, F_test_auto)}.items():
        probe = LinearProbe(args.backbone)
        classes, y_enc = np.unique(y, return_inverse=True)
        C, _ = probe._choose_C(A, y_enc, tuple(float(c) for c in np.logspace(-4, 2, 13)))
        scaler, clf = probe._head(C)
        clf.fit(scaler.fit_transform(A), y_enc)
        accs[label] = float((classes[clf.predict(scaler.transform(B))] == y_test).mean())
        print(f"linear probe on {label} features: {100 * accs[label]:.2f}% (C={C:g})")
    diff = 100 * (accs["auto"] - accs["fp32 torch"])
    print(f"auto - fp32 torch: {diff:+.2f} points (goal: within 0.3)")

    # 3. model-only of the chosen engine, batch 32 at the backbone's size
    engine = auto._engine
    size = auto.preprocessing_.input_size
    batch = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    engine(batch)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 10:
        engine(batch)
        n += 32
    model_only = n / (time.perf_counter() - t0)
    best = TABLE_BEST.get(args.backbone)
    versus = f" = {100 * model_only / best:.0f}% of the table's best {best:.0f}/s" if best else ""
    print(f"model only ({engine.name}, batch 32, {size} px): {model_only:.1f} images/s{versus}")

    # 4. peak memory, each size in a fresh process
    if not args.skip_memory:
        peaks = {}
        for n_images in (5000, 50000):
            out = subprocess.run(
                [sys.executable, __file__, "--zip", args.zip, "--engine", args.engine]
                + ["--memory-child", str(n_images)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            peaks[n_images] = float(out[1])
            print(
                f"featurising {n_images} images: peak RSS {out[1]} MiB, {out[2]} s "
                f"({n_images / float(out[2]):.0f} images/s with set-up)"
            )
        print(f"peak 50k / 5k: {peaks[50000] / peaks[5000]:.2f} (goal: <= 1.5)")


if __name__ == "__main__":
    main()

"""Featurising speed on the CIFAR-10 JPEG zip, in one run:

1. end to end (JPEG files in the zip -> features) over the 10,000 test images with the
   default ``PretrainedFeatures()`` (engine ``auto``: the fastest fp32 engine that agrees
   with torch), against, measured in the same run on the first ``--ref-n`` test images:
   the naive per-image eager loop; the 0.1 default (fp32 torch, centre crop, pooled last
   layer, no flip averaging); and torch on today's feature recipe (the engine's own gain);
2. the linear probe (200 training images per class, full test set) on the default
   engine's features against fp32 torch's (the same recipe; fp32 torch features are cached
   in ``--cache-dir``, so a second run skips them);
3. model-only images/s of the engine, batch 32, against the issue's table (best 411/s);
4. peak memory (max RSS of a fresh process) featurising 5,000 and 50,000 images.

``--engine openvino-int8`` measures the int8 engine instead (one word away).

    python benchmarks/speed_cifar10.py [--ref-n 2000] [--skip-memory] [--engine NAME]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tlearn import PretrainedFeatures, load_image_folder
from tlearn.bench import naive_loop
from tlearn.probe import tune_linear_head

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


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default=str(ROOT.parent / "shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--ref-n", type=int, default=2000)
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
    est, torch_now, F_test_new = end_to_end(args, X, X_test)
    probe_agreement(args, est, torch_now, F_test_new, X, y, X_test, y_test)
    model_only(args, est)
    if not args.skip_memory:
        memory(args)


def end_to_end(args, X, X_test):
    """1. The default engine against the naive loop, the 0.1 default and torch. The engine
    and torch on today's features take turns on the same chunks of images (paired, so a
    neighbour's load on the shared cores hits both alike)."""
    refs = X_test[: args.ref_n]
    rates = {"naive eager loop": _rate(lambda: naive_loop(args.backbone, refs), len(refs))}
    old = PretrainedFeatures(args.backbone, engine="torch", crop="center", pooling="last",
                             flip_average=False).fit()  # fmt: skip
    rates["0.1 default (torch, crop, last layer)"] = _rate(lambda: old.transform(refs), len(refs))
    t0 = time.perf_counter()
    est = PretrainedFeatures(args.backbone, engine=args.engine).fit(X)
    print(
        f"engine {args.engine}: {est.engine_reason_} (set up in {time.perf_counter() - t0:.1f} s)"
    )
    torch_fresh = PretrainedFeatures(args.backbone, engine="torch").fit()  # never cached
    seconds = {"torch": 0.0, "engine": 0.0}
    turn = -(-len(refs) // 4)
    for i in range(0, len(refs), turn):
        chunk = refs[i : i + turn]
        for name, fitted in (("torch", torch_fresh), ("engine", est)):
            t0 = time.perf_counter()
            fitted.transform(chunk)
            seconds[name] += time.perf_counter() - t0
    rates["torch, today's features"] = len(refs) / seconds["torch"]
    paired = seconds["torch"] / seconds["engine"]
    t0 = time.perf_counter()
    F_test_new = est.transform(X_test)
    rate = len(X_test) / (time.perf_counter() - t0)
    for name, r in rates.items():
        print(f"{name}: {r:.1f} images/s (first {len(refs)} test images)")
    engine_rate = len(refs) / seconds["engine"]
    print(f"{est.engine_} on the same images, in turns with torch: {engine_rate:.1f} images/s "
          f"= {paired:.2f}x torch, today's features")  # fmt: skip
    print(f"{est.engine_} end to end, today's features: {rate:.1f} images/s over {len(X_test)} "
          "test images")  # fmt: skip
    for name, r in rates.items():
        print(f"  = {rate / r:.2f}x {name}")
    torch_now = PretrainedFeatures(args.backbone, engine="torch", cache_dir=args.cache_dir).fit()
    return est, torch_now, F_test_new


def probe_agreement(args, est, torch_now, F_test_new, X, y, X_test, y_test):
    """2. Probe accuracy on the default engine's features vs fp32 torch's (same recipe)."""
    t0 = time.perf_counter()
    F, F_test = torch_now.transform(X), torch_now.transform(X_test)
    print(f"fp32 torch features: {time.perf_counter() - t0:.0f} s (cached in {args.cache_dir})")
    F_new = est.transform(X)
    classes, y_enc = np.unique(y, return_inverse=True)
    accs = {}
    for label, (A, B) in {"fp32 torch": (F, F_test), est.engine_: (F_new, F_test_new)}.items():
        head = tune_linear_head(A, y_enc)
        pred = classes[head.classifier.predict(head.scaler.transform(B))]
        accs[label] = float((pred == y_test).mean())
        print(f"linear probe on {label} features: {100 * accs[label]:.2f}% (C={head.C:g})")
    diff = 100 * (accs[est.engine_] - accs["fp32 torch"])
    print(f"{est.engine_} - fp32 torch: {diff:+.2f} points")


def model_only(args, est):
    """3. Model-only images/s of the chosen engine, batch 32 at the backbone's size."""
    engine = est.runner_
    size = est.preprocessing_.input_size
    batch = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    engine(batch)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 10:
        engine(batch)
        n += 32
    rate = n / (time.perf_counter() - t0)
    best = TABLE_BEST.get(args.backbone)
    versus = f" = {100 * rate / best:.0f}% of the table's best {best:.0f}/s" if best else ""
    print(f"model only ({engine.name}, batch 32, {size} px): {rate:.1f} images/s{versus}")


def memory(args):
    """4. Peak memory, each size in a fresh process."""
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

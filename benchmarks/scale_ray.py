"""Ray against in-process prediction, in one run, on CIFAR-10 test JPEGs read from the zip:

- in-process `predict_to_file` with one engine thread (and its one decoding thread);
- Ray Data with 1 predictor actor of 1 thread;
- Ray Data with 2 actors of 1 thread each, against the 1-actor run;
- peak memory (PSS, shared pages counted once) of the local cluster and the driver.

Rates are images/s once the workers are up (from the first Parquet part written to the last;
start-up is printed apart), and end to end. The same local Ray instance serves both Ray runs.

    python benchmarks/scale_ray.py [--n 2000] [--model imagenet:efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import zipfile
from pathlib import Path

os.environ["TLEARN_NUM_THREADS"] = "1"  # the in-process baseline: one engine thread

import psutil  # noqa: E402
import torch  # noqa: E402

from tlearn.inference import predict_to_file  # noqa: E402
from tlearn.scale import ray as scale_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class PeakMemory:
    """Peak PSS of this process and all its descendants (the local Ray instance)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.5)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def in_process(model: str, paths: list[str], out: str) -> tuple[float, float]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    firsts: list[float] = []

    def on_row(_: object) -> None:
        if not firsts:
            firsts.append(time.perf_counter())

    counts = predict_to_file(model, paths, out, overwrite=True, on_row=on_row)
    end = time.perf_counter()
    n = counts["ok"] + counts["failed"]
    # the first 1,024-image chunk is decoded and predicted before its first row comes out
    steady = (n - min(n, 1024)) / max(1e-9, end - firsts[0]) if n > 1024 else n / (end - t0)
    return steady, n / (end - t0)


def on_ray(model: str, paths: list[str], out: str, workers: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    counts = scale_ray.predict(model, paths, out, overwrite=True, workers=workers, threads=1)
    seconds = time.perf_counter() - t0
    return float(counts["images_per_second"] or 0.0), len(paths) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default=str(ROOT.parent / "shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="imagenet:efficientnet_lite0")
    args = ap.parse_args()
    with zipfile.ZipFile(args.zip) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("test/") and n.endswith(".jpg"))
    step = max(1, len(names) // args.n)
    paths = [f"{args.zip}/{n}" for n in names[::step][: args.n]]
    print(f"{len(paths)} CIFAR-10 test JPEGs, {args.model}, {os.cpu_count()} cores")
    tmp = tempfile.mkdtemp(prefix="tlearn-bench-ray-")
    local_steady, local_e2e = in_process(args.model, paths, f"{tmp}/local.parquet")
    print(f"in-process, 1 thread:     {local_steady:6.1f} images/s ({local_e2e:.1f} end to end)")
    with PeakMemory() as memory, scale_ray.connect(num_cpus=3):
        t0 = time.perf_counter()
        one = on_ray(args.model, paths, f"{tmp}/one.parquet", 1)
        print(f"Ray, 1 actor x 1 thread:  {one[0]:6.1f} images/s ({one[1]:.1f} end to end, "
              f"{time.perf_counter() - t0:.0f} s)")  # fmt: skip
        t0 = time.perf_counter()
        two = on_ray(args.model, paths, f"{tmp}/two.parquet", 2)
        print(f"Ray, 2 actors x 1 thread: {two[0]:6.1f} images/s ({two[1]:.1f} end to end, "
              f"{time.perf_counter() - t0:.0f} s)")  # fmt: skip
    print(f"2 actors / 1 actor:        {two[0] / one[0]:.2f}x (end to end {two[1] / one[1]:.2f}x)")
    print(f"1 actor / in-process:      {one[0] / local_steady:.2f}x "
          f"(end to end {one[1] / local_e2e:.2f}x)")  # fmt: skip
    print(f"peak memory, driver + local Ray instance: {memory.peak / 2**20:,.0f} MB")


if __name__ == "__main__":
    main()

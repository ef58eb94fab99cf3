"""``tlearn bench``: images per second for each available engine, end to end (files on
disk to features) and model-only, beside the naive loop (open, resize and run one image at a
time in eager PyTorch), with the ratios, the achieved GFLOP/s and the process's peak memory,
all in one run so the ratios hold on a shared, noisy machine."""

from __future__ import annotations

import io
import resource
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image

from tlearn.backbones import load_backbone
from tlearn.backbones.policy import DEFAULT_BACKBONE
from tlearn.data.images import read_bytes
from tlearn.features import PretrainedFeatures
from tlearn.runtime import resolve_device
from tlearn.runtime.engines import EngineError, available_engines

__all__ = ["count_gflops", "run_bench"]


def count_gflops(model: torch.nn.Module, size: int) -> float:
    """Forward GFLOPs of one image (multiply-adds counted as 2), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model_only(engine: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> float:
    """Images/s of ``engine`` on ``batch``, run again and again for at least 2 s (a few
    passes alone are too short to measure on a shared machine)."""
    t0, n = time.perf_counter(), 0
    while n < 3 * len(batch) or time.perf_counter() - t0 < 2.0:
        engine(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def _timed(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def naive_loop(
    backbone: str, paths: Sequence[str], weights: str | None = "pretrained"
) -> np.ndarray:
    """What hand-written scripts do: one image at a time through timm's eval transform,
    eager PyTorch. Returns the features ``(n, n_features)``."""
    from timm.data import create_transform

    bb = load_backbone(backbone, weights)
    pre = bb.preprocessing
    transform = create_transform(
        input_size=pre.input_size,
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
        crop_pct=pre.crop_pct,
    )
    out = []
    with torch.no_grad():
        for p in paths:
            img = Image.open(io.BytesIO(read_bytes(p))).convert("RGB")
            out.append(bb.model(transform(img)[None])[0].numpy())
    return np.stack(out)


def run_bench(
    paths: Sequence[str],
    backbone: str = DEFAULT_BACKBONE,
    engines: Sequence[str] | None = None,
    batch_size: int = 32,
    image_size: int | None = None,
    device: str = "auto",
    report: Callable[[str], None] = print,
    weights: str | None = "pretrained",
) -> list[dict[str, Any]]:
    """Measure and print; returns one dict per row. ``weights=None``: random weights, for
    speed alone (no download needed)."""
    dev = resolve_device(device)
    bb = load_backbone(backbone, weights)
    pre = bb.preprocessing.with_size(image_size)
    gflops = count_gflops(bb.model, pre.input_size)
    names = list(engines or ["auto", *available_engines(dev)])
    report(
        f"{len(paths)} images, backbone {backbone} at {pre.input_size} px "
        f"({gflops:.2f} GFLOP/image), device {dev}, {torch.get_num_threads()} threads"
    )
    rows: list[dict[str, Any]] = []
    naive = _timed(lambda: naive_loop(backbone, paths, weights), len(paths))
    rows.append({"engine": "naive loop", "end_to_end": naive, "model_only": float("nan")})
    report(
        f"{'engine':<22}{'end to end':>12}{'vs naive':>10}{'model only':>12}"
        f"{'GFLOP/s':>9}{'peak MiB':>10}"
    )
    report(
        f"{'naive loop':<22}{naive:>10.1f}/s{1.0:>9.1f}x{'':>12}{naive * gflops:>9.1f}"
        f"{_peak_mib():>10.0f}"
    )
    batch = np.random.default_rng(0).integers(
        0, 256, (batch_size, pre.input_size, pre.input_size, 3), dtype=np.uint8
    )
    for name in names:
        row = _engine_row(name, paths, batch, naive, gflops, report,
                          backbone=backbone, weights=weights, image_size=image_size,
                          batch_size=batch_size, device=device)  # fmt: skip
        if row is not None:
            rows.append(row)
    return rows


def _engine_row(
    name: str,
    paths: Sequence[str],
    batch: np.ndarray,
    naive: float,
    gflops: float,
    report: Callable[[str], None],
    **settings: Any,
) -> dict[str, Any] | None:
    """Time one engine end to end and model-only, print its row; None if it cannot run."""
    est = PretrainedFeatures(settings.pop("backbone"), engine=name, **settings)
    try:
        est.fit(list(paths))  # int8 (and auto) calibrate on these images
        est.transform(list(paths[: len(batch)]))  # warm-up: kernels, first allocations
    except EngineError as e:
        report(f"{name:<22}cannot run: {e}")
        return None
    model_only = _model_only(est.runner_, batch)
    e2e = _timed(partial(est.transform, list(paths)), len(paths))
    label = name if name != "auto" else f"auto={est.engine_}"
    report(
        f"{label:<22}{e2e:>10.1f}/s{e2e / naive:>9.1f}x{model_only:>10.1f}/s"
        f"{model_only * gflops:>9.1f}{_peak_mib():>10.0f}"
    )
    if name == "auto":
        report(f"  auto chose {est.engine_reason_}")
    return {"engine": label, "choice": est.engine_reason_, "end_to_end": e2e,
            "model_only": model_only, "ratio": e2e / naive,
            "gflops": model_only * gflops}  # fmt: skip


# -- training: images per second of each route, against fp32 eager ---------------------------
#: The routes `tlearn fit` trains: (name, backbone, input side, batch size).
TRAINING_ROUTES = (
    ("scratch compact_s", "compact_s", 32, 256),
    ("scratch compact_m", "compact_m", 32, 256),
    ("lp-ft efficientnet_lite0", "efficientnet_lite0", 128, 32),
)


def run_training_bench(
    report: Callable[[str], None] = print,
    routes: Sequence[tuple[str, str, int, int]] = TRAINING_ROUTES,
) -> list[dict[str, Any]]:
    """Each route's training images/s as tlearn trains it (channels-last; bf16 autocast
    where the CPU computes bf16 natively, as ``--method scratch`` does) beside fp32 eager
    in the default layout, in one run."""
    from tlearn.backbones.compact import is_compact
    from tlearn.finetune.loop import training_rate
    from tlearn.finetune.scratch import _autocast

    bf16 = _autocast("auto", torch.device("cpu"))
    how = "channels-last, bf16" if bf16 is not None else "channels-last, fp32 (no native bf16)"
    report(f"training images/s ({torch.get_num_threads()} threads): fp32 eager vs tlearn ({how})")
    report(f"{'route':<28}{'fp32 eager':>12}{'tlearn':>10}{'ratio':>8}")
    rows = []
    for name, backbone, size, batch in routes:
        # fine-tuning trains fp32 on a CPU (bf16 was slower for EfficientNet: estimator.py)
        autocast = bf16 if is_compact(backbone) else None
        eager = training_rate(backbone, size, batch, channels_last=False, autocast=None)
        ours = training_rate(backbone, size, batch, channels_last=True, autocast=autocast)
        report(f"{name:<28}{eager:>10.0f}/s{ours:>8.0f}/s{ours / eager:>7.2f}x")
        rows.append({"route": name, "fp32_eager": eager, "tlearn": ours, "ratio": ours / eager})
    return rows

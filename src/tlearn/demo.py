"""The embedded default job (``tlearn demo`` / ``make demo``): EfficientNet-Lite0 features +
a tuned linear probe on a Fashion-MNIST subset, beside a raw-pixel logistic regression on
the same split; then the model is saved, loaded back, and predicts a few test images."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tlearn.backbones.policy import DEFAULT_BACKBONE
from tlearn.data import fetch_fashion_mnist, subsample_per_class
from tlearn.inference import iter_predictions
from tlearn.persistence import load, save
from tlearn.probe import LinearProbe

__all__ = ["run_demo"]


def run_demo(
    out: Path,
    *,
    per_class: int = 100,
    test_per_class: int = 50,
    seed: int = 0,
    console: Console | None = None,
) -> dict[str, float]:
    """Run the demo; returns the two accuracies."""
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = fetch_fashion_mnist("train"), fetch_fashion_mnist("test")
    names = np.asarray(train.target_names, dtype=object)
    tr = subsample_per_class(train.target, per_class, seed)
    te = subsample_per_class(test.target, test_per_class, seed)
    X_train, y_train = train.images[tr], names[train.target[tr]]
    X_test, y_test = test.images[te], names[test.target[te]]
    console.print(
        f"Fashion-MNIST subset: {len(tr)} training and {len(te)} test images "
        f"(28x28 grey), {len(names)} classes"
    )

    t0 = time.perf_counter()
    raw = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    raw.fit(X_train.reshape(len(tr), -1).astype(np.float32), y_train)
    raw_acc = float(raw.score(X_test.reshape(len(te), -1).astype(np.float32), y_test))
    console.print(
        f"raw-pixel logistic regression: accuracy {raw_acc:.4f} ({time.perf_counter() - t0:.1f} s)"
    )

    t0 = time.perf_counter()
    probe = LinearProbe(DEFAULT_BACKBONE, random_state=seed, verbose=1)
    probe.fit(X_train, y_train)
    probe_acc = float(probe.score(X_test, y_test))
    console.print(
        f"EfficientNet-Lite0 linear probe (C={probe.C_:g}): accuracy "
        f"{probe_acc:.4f} ({time.perf_counter() - t0:.1f} s)"
    )
    model_path = out / "fashion-mnist-probe.safetensors"
    save(probe, model_path)
    samples = _write_samples(
        out / "samples", X_test[::test_per_class][:8], y_test[::test_per_class]
    )
    _show_predictions(console, model_path, samples)
    console.print(
        f"[bold]accuracy: probe {probe_acc:.4f} vs raw pixels {raw_acc:.4f}[/]; "
        f"model saved to {model_path}"
    )
    console.print(f"try: tlearn predict {model_path} {samples[0].parent}")
    return {"probe_accuracy": probe_acc, "raw_pixel_accuracy": raw_acc}


def _write_samples(folder: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    """A few test images as PNGs, named by their true class, for ``tlearn predict``."""
    folder.mkdir(exist_ok=True)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=False)):
        path = folder / f"test{i:02d}-{str(label).replace('/', '-')}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _show_predictions(console: Console, model_path: Path, paths: list[Path]) -> None:
    """Load the saved model as a user would, and predict the sample files with it."""
    table = Table("image", "predicted", "probability", title=f"predictions of {model_path}")
    for row in iter_predictions(load(model_path), [str(p) for p in paths]):
        table.add_row(Path(row["path"]).name, str(row["label"]), f"{row['probability']:.3f}")
    console.print(table)

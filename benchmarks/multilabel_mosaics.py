"""Multi-label on real photos (issue 28): mosaics of 1-4 CIFAR-10 photos, each mosaic
labelled with the classes it shows: ``tlearn fit`` with its defaults on a CSV of them (what
``tlearn.train`` does: the multi-label probe) against a hand-written scikit-learn
one-vs-rest baseline on the same features, and the held-out figures fit reports against
the fresh test mosaics.

Each mosaic is a 2x2 grid of 64 px, each photo at its own 32 px; the cells not filled are
grey. The train mosaics
are made from CIFAR-10's training JPEGs, the test mosaics from its test JPEGs.

    python benchmarks/multilabel_mosaics.py                 # 1,000 train, 500 test mosaics
    python benchmarks/multilabel_mosaics.py --train 300 --test 200 --out mosaics.json
    python benchmarks/multilabel_mosaics.py --finetune     # and tlearn fit --method lp-ft

Prints mAP, macro and micro F1, subset accuracy and hamming loss of both, and the seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"
ZIP = Path(os.environ.get("TLEARN_CIFAR_ZIP", SHARED_ZIP))
CELL = 32


def make_mosaics(
    zip_path: Path, split: str, n: int, out: Path, seed: int = 0
) -> tuple[list[str], list[list[str]]]:
    """``n`` mosaics written as JPEGs under ``out``: ``(paths, labels per mosaic)``. Each
    has 1 to 4 photos of distinct classes at random cells of a 2x2 grid."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(zip_path) as zf:
        names = [m for m in zf.namelist() if m.startswith(f"{split}/") and m.endswith(".jpg")]
        by_class: dict[str, list[str]] = {}
        for m in names:
            by_class.setdefault(m.split("/")[1], []).append(m)
        classes = sorted(by_class)
        out.mkdir(parents=True, exist_ok=True)
        paths, labels = [], []
        for i in range(n):
            k = int(rng.integers(1, 5))
            chosen = list(rng.choice(len(classes), size=k, replace=False))
            cells = rng.choice(4, size=k, replace=False)
            canvas = Image.new("RGB", (2 * CELL, 2 * CELL), (128, 128, 128))
            for c, cell in zip(chosen, cells, strict=True):
                member = by_class[classes[c]][int(rng.integers(len(by_class[classes[c]])))]
                photo = Image.open(io.BytesIO(zf.read(member))).convert("RGB")
                canvas.paste(photo.resize((CELL, CELL)), ((cell % 2) * CELL, (cell // 2) * CELL))
            path = out / f"{i:05d}.jpg"
            canvas.save(path, quality=95)
            paths.append(str(path))
            labels.append(sorted(classes[c] for c in chosen))
    return paths, labels


def multilabel_metrics(Y: np.ndarray, P: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, f1_score, hamming_loss

    present = Y.sum(axis=0) > 0
    return {
        "mAP": float(average_precision_score(Y[:, present], P[:, present], average="macro")),
        "macro_f1": float(f1_score(Y, pred, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(Y, pred, average="micro", zero_division=0)),
        "subset_accuracy": float((pred == Y).all(axis=1).mean()),
        "hamming_loss": float(hamming_loss(Y, pred)),
    }


def baseline(F: np.ndarray, Y: np.ndarray, F_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The careful hand-written script: StandardScaler + OneVsRest(LogisticRegression) with
    C by GridSearchCV on the same features, 0.5 thresholds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=1000)))
    grid = {"onevsrestclassifier__estimator__C": list(np.logspace(-4, 1, 6))}
    search = GridSearchCV(pipe, grid, cv=5, scoring="average_precision").fit(F, Y)
    P = search.predict_proba(F_test)
    return P, (P >= 0.5).astype(np.int8)


def _finetune(
    csv_path: Path, folder: Path, X_test: list[str], Y_test: np.ndarray, settings: dict
) -> dict:
    """``tlearn fit --method lp-ft`` with its defaults: the test mosaics' figures, the
    held-out ones it reported, and its seconds."""
    from tlearn import train

    t0 = time.perf_counter()
    fitted = train(csv_path, method="lp-ft", out=folder / "finetuned.safetensors", **settings)
    seconds = time.perf_counter() - t0
    model = fitted.model
    P = model.predict_proba(X_test)
    keys = ("mean_average_precision", "macro_f1", "micro_f1")
    return {"test": multilabel_metrics(Y_test, P, (model.thresholds_ <= P).astype(np.int8)),
            "reported_held_out": {k: fitted.evaluation[k] for k in keys},
            "how": fitted.evaluation["method"], "seconds": seconds,
            "epochs": model.epochs, "image_size": model.image_size_}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--folder", default="/tmp/tlearn-mosaics")
    ap.add_argument("--out")
    ap.add_argument("--ft-epochs", type=int, help="fine-tuning's epochs (default: its own)")
    ap.add_argument("--ft-image-size", type=int, help="fine-tuning's input size (default: its own)")
    ap.add_argument(
        "--finetune",
        action="store_true",
        help="also fine-tune (tlearn fit --method lp-ft, its defaults) on the mosaics",
    )
    args = ap.parse_args()

    from tlearn import train
    from tlearn.multilabel import check_multilabel

    folder = Path(args.folder)
    X, labels = make_mosaics(ZIP, "train", args.train, folder / "train", seed=0)
    X_test, labels_test = make_mosaics(ZIP, "test", args.test, folder / "test", seed=1)
    classes, Y = check_multilabel(labels, len(X))
    index = {c: j for j, c in enumerate(classes)}
    Y_test = np.zeros((len(X_test), len(classes)), np.int8)
    for i, ls in enumerate(labels_test):
        Y_test[i, [index[c] for c in ls]] = 1

    csv_path = folder / "train.csv"
    with open(csv_path, "w", encoding="utf-8") as f:
        rows = zip(X, labels, strict=True)
        f.write("path,labels\n" + "".join(f"{p},{'|'.join(ls)}\n" for p, ls in rows))
    t0 = time.perf_counter()
    fitted = train(csv_path, out=folder / "model.safetensors")  # tlearn fit's defaults
    fit_s = time.perf_counter() - t0
    probe = fitted.model
    P = probe.predict_proba(X_test)
    ours = multilabel_metrics(Y_test, P, (probe.thresholds_ <= P).astype(np.int8))
    F, _ = probe.features_.extract(X)
    F_test, _ = probe.features_.extract(X_test)
    t0 = time.perf_counter()
    P_b, pred_b = baseline(F, Y, F_test)
    base_s = time.perf_counter() - t0
    theirs = multilabel_metrics(Y_test, P_b, pred_b)
    reported = {k: fitted.evaluation[k] for k in ("mean_average_precision", "macro_f1", "micro_f1")}
    result = {"train": len(X), "test": len(X_test), "tlearn": ours, "baseline": theirs,
              "tlearn_reported_held_out": reported, "how": fitted.evaluation["method"],
              "tlearn_fit_seconds": fit_s, "baseline_head_seconds": base_s,
              "C": probe.C_, "thresholds": probe.thresholds_.round(3).tolist()}  # fmt: skip
    if args.finetune:
        settings = {"epochs": args.ft_epochs, "image_size": args.ft_image_size}
        settings = {k: v for k, v in settings.items() if v is not None}
        result["finetune"] = _finetune(csv_path, folder, X_test, Y_test, settings)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

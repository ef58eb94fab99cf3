"""The ``tlearn`` command: fit, evaluate, predict, models, demo.

Each command calls the same functions a Python user calls; errors print one clear line
(``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import csv
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from tlearn.exceptions import TlearnError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Transfer learning for image classification."
)
console = Console()
err_console = Console(stderr=True)

DataArg = Annotated[
    str,
    typer.Argument(
        help="A folder of class sub-folders, a zip of one "
        "(or 'data.zip/train'), or a CSV of path,label."
    ),
]


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _labelled(source: str, max_per_class: int | None, seed: int) -> tuple[Any, np.ndarray]:
    from tlearn.data import load_dataset

    data = load_dataset(source, max_per_class=max_per_class, random_state=seed)
    if data.target is None:
        _fail(f"{source!r} has no labels: a CSV for fitting or evaluating needs a label column")
    names = np.asarray(data.target_names, dtype=object)
    return data, names[data.target]


EngineOpt = Annotated[
    str | None,
    typer.Option(
        help="Inference engine: torch, torch-bf16, torch-fp16 (CUDA), onnxruntime, openvino, "
        "openvino-bf16, openvino-int8 (calibrated on the training images) or auto (default: "
        "the model's own, torch)."
    ),
]


def _use_engine(model: Any, engine: str | None) -> None:
    """Run a loaded model's feature extractor on another engine."""
    if engine is None:
        return
    from tlearn.models import split_model
    from tlearn.runtime.engines import ENGINES

    if engine not in ENGINES:
        _fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    features = split_model(model).features
    current = getattr(features, "_engine", None)
    if engine == "openvino-int8":
        if current is not None and current.name == engine:
            return  # the model file carries its calibrated engine
        _fail(
            "--engine openvino-int8 calibrates on training images, so it is chosen at fit "
            "time: tlearn fit ... --engine openvino-int8 (or auto) keeps the calibrated "
            "engine in the model file"
        )
    features.set_params(engine=engine, verbose=1)
    features._engine = None


def _write_skipped(skipped: list[tuple[int, str, str]], beside: str) -> str | None:
    if not skipped:
        return None
    path = str(beside) + ".skipped.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows((p, r) for _, p, r in skipped)
    err_console.print(f"[yellow]{len(skipped)} unreadable image(s) skipped[/], listed in {path}:")
    for _, p, r in skipped[:10]:
        err_console.print(f"  {p}: {r}", highlight=False)
    return path


_FINETUNE_FLAGS = (
    "strategy",
    "unfreeze_stages",
    "head_epochs",
    "optimizer",
    "lr",
    "backbone_lr_ratio",
    "momentum",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "class_weight",
    "augmentation",
    "epochs",
    "precision",
    "validation_size",
    "patience",
)


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        _fail(f"no such config file: {str(path)!r}")
    except tomllib.TOMLDecodeError as e:
        _fail(f"the config file {str(path)!r} is not valid TOML ({e})")
    table = data.get("fit", data)
    return {k.replace("-", "_"): v for k, v in table.items()}


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


@app.command()
def fit(
    ctx: typer.Context,
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write.")] = Path(
        "model.safetensors"
    ),
    backbone: Annotated[
        str, typer.Option(help="Backbone name (see `tlearn models`).")
    ] = "efficientnet_lite0",
    method: Annotated[
        str, typer.Option(help="probe (frozen features + logistic regression), finetune, or lp-ft.")
    ] = "probe",
    test: Annotated[str | None, typer.Option(help="Separate labelled test data.")] = None,
    test_size: Annotated[
        float, typer.Option(help="Fraction held out for testing when --test is not given.")
    ] = 0.2,
    max_per_class: Annotated[
        int | None, typer.Option(help="Use at most N training images per class (random).")
    ] = None,
    test_max_per_class: Annotated[
        int | None, typer.Option(help="Use at most N test images per class.")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Input size in pixels (default: the backbone's).")
    ] = None,
    weights: Annotated[
        str, typer.Option(help="'pretrained' or a local weights file.")
    ] = "pretrained",
    batch_size: Annotated[
        int | None,
        typer.Option(help="Images per batch (default 64 for probe, 32 for fine-tuning)."),
    ] = None,
    device: str = "auto",
    cache_dir: Annotated[str | None, typer.Option(help="Cache features here (probe).")] = None,
    skip_bad_images: Annotated[
        bool,
        typer.Option(help="Skip unreadable images (listed beside the output) instead of stopping."),
    ] = False,
    seed: int = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write test metrics as JSON.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file of settings (a [fit] table or top-level keys, named like the flags)."
        ),
    ] = None,
    strategy: Annotated[str, typer.Option(help="finetune: full, head, partial.")] = "full",
    unfreeze_stages: Annotated[int, typer.Option(help="partial: last N stages.")] = 2,
    head_epochs: Annotated[int, typer.Option(help="lp-ft: epochs of head-only training.")] = 1,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd.")] = "adamw",
    lr: Annotated[float, typer.Option(help="Head learning rate.")] = 1e-3,
    backbone_lr_ratio: Annotated[float, typer.Option(help="Backbone lr = lr x this.")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: float = 0.01,
    schedule: Annotated[str, typer.Option(help="cosine or constant.")] = "cosine",
    warmup_epochs: float = 0.5,
    label_smoothing: float = 0.1,
    class_weight: Annotated[str | None, typer.Option(help="balanced, or unset.")] = None,
    augmentation: Annotated[
        str, typer.Option(help="flip_crop, flip, none, trivialaugment, randaugment.")
    ] = "flip_crop",
    epochs: int = 10,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16, fp16.")] = "auto",
    validation_size: float = 0.1,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs.")] = 3,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Checkpoints, history.csv and curves.png (default: OUT.run/)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the checkpoint in --checkpoint-dir.")
    ] = False,
    engine: EngineOpt = None,
) -> None:
    """Train a classifier on DATA, report test loss and accuracy, and save the model.

    --method probe fits a tuned linear probe on frozen features; --method finetune trains a
    new linear head and the backbone (--strategy full/head/partial); --method lp-ft trains the
    head first, then everything. Under `torchrun --nproc_per_node N -m tlearn fit ...` the
    fine-tuning runs with DistributedDataParallel.
    """
    import json

    from sklearn.model_selection import train_test_split

    from tlearn.evaluation import evaluate
    from tlearn.finetune import FineTuneClassifier
    from tlearn.persistence import save
    from tlearn.probe import LinearProbe

    settings = {name: ctx.params[name] for name in ctx.params if name != "config"}
    from_file = _read_config(config)
    unknown = sorted(set(from_file) - set(settings))
    if unknown:
        _fail(
            f"unknown settings in {str(config)!r}: {unknown}; use the flag names "
            "(e.g. lr, epochs, optimizer)"
        )
    for key, value in from_file.items():  # the file fills what the command line left unset
        source = ctx.get_parameter_source(key)
        if source is None or source.name == "DEFAULT":
            settings[key] = value
    s = settings
    if s["method"] not in ("probe", "finetune", "lp-ft"):
        _fail(f"--method must be probe, finetune or lp-ft, got {s['method']!r}")
    out = Path(s["out"])
    if not out.parent.exists():
        _fail(f"the output folder {str(out.parent)!r} does not exist; create it first")
    main_process = _is_main_process()
    say = console.print if main_process else (lambda *a, **k: None)
    t0 = time.perf_counter()
    train, y = _labelled(s["data"], s["max_per_class"], s["seed"])
    X = train.filenames
    if s["test"] is not None:
        test_data, y_test = _labelled(s["test"], s["test_max_per_class"], s["seed"])
        X_test = test_data.filenames
        unseen = sorted(set(y_test) - set(y))
        if unseen:
            _fail(
                f"the test data {s['test']!r} has classes the training data lacks: {unseen}; "
                f"the training classes are {sorted(set(y))}. Use test data with the same "
                "class folders"
            )
    else:
        if not 0 < s["test_size"] < 1:
            _fail(f"--test-size must be between 0 and 1, got {s['test_size']}")
        X, X_test, y, y_test = train_test_split(
            X, y, test_size=s["test_size"], stratify=y, random_state=s["seed"]
        )
    say(
        f"training on {len(X)} images in {len(set(y))} classes, testing on {len(X_test)}; "
        f"backbone {s['backbone']}, method {s['method']}"
    )
    on_error = "skip" if s["skip_bad_images"] else "raise"
    if s["method"] == "probe":
        model: Any = LinearProbe(
            s["backbone"],
            weights=s["weights"],
            image_size=s["image_size"],
            batch_size=s["batch_size"] or 64,
            device=s["device"],
            cache_dir=s["cache_dir"],
            on_error=on_error,
            engine=s["engine"] or "torch",
            random_state=s["seed"],
            verbose=1,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # bad files are listed just below
            model.fit(X, y)
        best = model.cv_results_["C"].index(model.C_)
        val = model.cv_results_["val_accuracy"][best]
        say(
            f"chose C={model.C_:g}"
            + (f" (validation accuracy {val:.4f})" if val is not None else "")
        )
    else:
        run_dir = Path(s["checkpoint_dir"] or str(out.with_suffix("")) + ".run")
        overrides: dict[str, Any] = {k: s[k] for k in _FINETUNE_FLAGS}
        if s["method"] == "lp-ft":
            overrides["strategy"] = "lp-ft"
        model = FineTuneClassifier(
            s["backbone"],
            weights=s["weights"],
            **overrides,
            image_size=s["image_size"],
            batch_size=s["batch_size"] or 32,
            device=s["device"],
            checkpoint_dir=run_dir,
            on_error=on_error,
            random_state=s["seed"],
            verbose=1,
        )
        model.fit(X, y, resume=s["resume"])
        say(
            f"best epoch {model.best_epoch_} of {len(model.history_)}; history and curves in "
            f"{run_dir}"
        )
    if not main_process:
        return
    _write_skipped(model.skipped_, str(out))
    report = evaluate(model, X_test, y_test, unknown="skip")
    _write_skipped([(0, f["path"], f["reason"]) for f in report.failed], str(out) + ".test")
    console.print(report)
    save(model, out)
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in s.items()}
    with open(str(out) + ".settings.json", "w", encoding="utf-8") as f:
        json.dump(resolved, f, indent=2)
    if s["json_path"] is not None:
        report.to_json(s["json_path"])
    console.print(
        f"[bold]test loss: {report.log_loss:.4f}  test accuracy: "
        f"{report.accuracy:.4f}[/] ({report.n_images} images)  model saved to {out} "
        f"({time.perf_counter() - t0:.0f} s)"
    )


@app.command(name="evaluate")
def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help="A model file from `tlearn fit`.")],
    data: DataArg,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write metrics as JSON.")] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option("--report", help="Write metrics.json, plots and report.html here."),
    ] = None,
    max_per_class: int | None = None,
    skip_bad_images: bool = False,
    skip_unknown_classes: Annotated[
        bool, typer.Option(help="Evaluate only images whose class the model knows.")
    ] = False,
    seed: int = 0,
    engine: EngineOpt = None,
) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of MODEL on DATA;
    --report DIR adds plots and a self-contained report.html."""
    from tlearn.evaluation import evaluate
    from tlearn.models import split_model
    from tlearn.persistence import load

    clf = load(model)
    _use_engine(clf, engine)
    split_model(clf).features.on_error = "skip" if skip_bad_images else "raise"
    ds, y = _labelled(data, max_per_class, seed)
    report = evaluate(clf, ds.filenames, y, unknown="skip" if skip_unknown_classes else "raise")
    console.print(report)
    classes = [str(c) for c in report.classes]
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for c in classes:
        cm.add_column(c[:8], justify="right")
    for c, row in zip(classes, report.confusion_matrix, strict=True):
        cm.add_row(c, *[str(v) for v in row])
    console.print(cm)
    if report.unknown:
        err_console.print(
            f"[yellow]{len(report.unknown)} image(s) with unknown classes left out[/]"
        )
    if report.failed:
        _write_skipped(
            [(0, f["path"], f["reason"]) for f in report.failed], str(json_path or model)
        )
    if json_path is not None:
        report.to_json(json_path)
        console.print(f"metrics written to {json_path}")
    if report_dir is not None:
        paths = report.save(report_dir, title=f"{model.name} on {data}")
        console.print(f"report written to {paths['html']}")
    console.print(f"[bold]accuracy: {report.accuracy:.4f}[/] ({report.n_images} images)")


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Argument(
            help="A model file from `tlearn fit`, or imagenet:BACKBONE for the backbone's "
            "ImageNet head."
        ),
    ],
    inputs: Annotated[list[str], typer.Argument(help="Images, folders, zips, CSVs or globs.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="CSV, JSONL or Parquet file (default: a table)."),
    ] = None,
    top_k: Annotated[int, typer.Option(help="How many labels per image.")] = 1,
    tta: Annotated[bool, typer.Option(help="Average over a horizontal flip.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an interrupted run into OUTPUT, skipping the images it already has."
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    engine: EngineOpt = None,
) -> None:
    """Predict the class of every image in INPUTS; unreadable files get a row with the error.

    Streams: memory stays flat however many images, rows are written as they come."""
    from tlearn.inference import iter_predictions, predict_to_file
    from tlearn.models import IMAGENET_PREFIX, imagenet_model
    from tlearn.persistence import load

    if model.startswith(IMAGENET_PREFIX):
        clf: Any = imagenet_model(model)
    elif model.lower().endswith((".onnx", ".xml")):
        from tlearn.export import load_exported

        clf = load_exported(model)
    else:
        clf = load(model)
    _use_engine(clf, engine)
    if output is not None:
        with _row_progress() as on_row:
            counts = predict_to_file(
                clf,
                inputs,
                output,
                top_k=top_k,
                tta=tta,
                resume=resume,
                overwrite=overwrite,
                on_row=on_row,
            )
        done = f"; {counts['skipped']} were already done" if counts["skipped"] else ""
        console.print(
            f"{counts['ok']} images predicted, {counts['failed']} failed{done}; written to {output}"
        )
    else:
        table = Table("path", "label", "probability", "error")
        counts = {"ok": 0, "failed": 0}
        for row in iter_predictions(clf, inputs, top_k=top_k, tta=tta):
            counts["failed" if row["error"] else "ok"] += 1
            prob = "" if row["probability"] is None else f"{row['probability']:.3f}"
            label = ", ".join(map(str, row["top_labels"])) if top_k > 1 else str(row["label"] or "")
            table.add_row(row["path"], label, prob, row["error"])
        console.print(table)
        console.print(f"{counts['ok']} images predicted, {counts['failed']} failed")
    if counts["ok"] == 0 and counts["failed"] > 0:
        raise typer.Exit(1)


class _row_progress:
    """A progress line (images done, images per second) on a terminal; silent otherwise."""

    def __enter__(self) -> Any:
        if not err_console.is_terminal:
            self.bar = None
            return None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from tlearn.features import _RateColumn

        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.completed} images"),
            _RateColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.bar.start()
        task = self.bar.add_task("predict", total=None)
        return lambda row: self.bar.advance(task) if self.bar else None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command()
def models(
    pattern: Annotated[
        str | None, typer.Argument(help="Search timm and torchvision names containing this text.")
    ] = None,
    offline: Annotated[bool, typer.Option(help="Only those usable offline.")] = False,
) -> None:
    """List backbone names; marks those whose weights are on this machine."""
    from tlearn.backbones import list_backbones

    rows = list_backbones(pattern)
    table = Table("name", "weights on this machine")
    for name, ok in rows:
        if ok or not offline:
            table.add_row(name, "[green]yes[/]" if ok else "no (downloads when online)")
    console.print(table)
    if pattern is None:
        console.print(
            "Any timm or torchvision name works too: `tlearn models resnet` searches them."
        )


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="A model file from `tlearn fit`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write (.onnx or .xml).")],
    format: Annotated[str, typer.Option(help="onnx or openvino.")] = "onnx",
) -> None:
    """Write the whole classifier (backbone + head, probabilities out) as ONNX or OpenVINO IR,
    with a JSON sidecar of classes and preprocessing; `tlearn predict` runs it directly."""
    from tlearn.export import FORMATS, export_model
    from tlearn.persistence import load

    if format not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    path = export_model(load(model), out, format)
    console.print(f"exported to {path} (classes and preprocessing in {path}.json)")


@app.command()
def bench(
    data: Annotated[str, typer.Argument(help="Images to read: a folder, zip, CSV or glob.")],
    backbone: str = "efficientnet_lite0",
    engine: Annotated[
        list[str] | None,
        typer.Option(
            help="Engines to measure (repeat the flag); default: auto, then each available."
        ),
    ] = None,
    n: Annotated[int, typer.Option(help="How many images.")] = 1000,
    batch_size: int = 32,
    image_size: int | None = None,
    device: str = "auto",
    weights: Annotated[
        str,
        typer.Option(help="'pretrained', a local weights file, or 'none' (random, speed only)."),
    ] = "pretrained",
) -> None:
    """Images per second end to end and model-only for each engine, beside the naive loop."""
    from itertools import islice

    from tlearn.bench import run_bench
    from tlearn.data import iter_image_paths

    paths = list(islice(iter_image_paths([data]), n))
    if not paths:
        _fail(f"no images found in {data!r}")
    run_bench(
        paths,
        backbone,
        engine,
        batch_size,
        image_size,
        device,
        report=console.print,
        weights=None if weights == "none" else weights,
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the model and sample images.")] = Path(
        "demo-output"
    ),
    per_class: Annotated[int, typer.Option(help="Training images per class.")] = 100,
    test_per_class: Annotated[int, typer.Option(help="Test images per class.")] = 50,
    seed: int = 0,
) -> None:
    """Fit the EfficientNet-Lite0 probe on a Fashion-MNIST subset, compare with raw pixels,
    save the model and predict a few test images."""
    from tlearn.demo import run_demo

    run_demo(out, per_class=per_class, test_per_class=test_per_class, seed=seed, console=console)


def main() -> None:
    """Entry point: run the app, turning tlearn's errors into one readable line."""
    try:
        app()
    except TlearnError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()

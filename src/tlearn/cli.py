"""The ``tlearn`` command: fit, evaluate, predict, export, bench, models, demo.

Each command calls the library functions a Python user calls (:func:`tlearn.training.train`,
:class:`tlearn.predictor.Predictor`, :func:`tlearn.evaluation.evaluate`); every user error
prints one line (``error: ...``) and exits with status 2, never a traceback or a box, and
warnings that matter print one ``warning: ...`` line (:func:`tlearn._log.cli_warnings`).

What the input alone shows to be wrong is refused before anything heavy loads: each numeric
flag against one table (:data:`tlearn._cli_options.FLAG_CONSTRAINTS`) and ``fit``'s
estimator flags against the estimators' own constraints, both read without importing
PyTorch; paths, model files, outputs and backbone names are checked next, then the model
loads. ``fit``'s estimator flags are derived from the estimators' signatures
(:mod:`tlearn._cli_options`).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tlearn._cli_options import (
    FLAG_CONSTRAINTS,
    check_address,
    check_backbone,
    check_flags,
    check_inputs,
    check_model_file,
    check_output,
    check_source,
    flag,
    make_folder_for,
    read_constant,
)
from tlearn._validation import Options
from tlearn.exceptions import DataError, ImageReadError, InvalidParameterError, TlearnError
from tlearn.runtime.table import engine_help

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Transfer learning for image classification."
)
console = Console()
err_console = Console(stderr=True)


def command(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``app.command``, with every numeric flag checked against its constraints first."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            check_flags(kwargs, FLAG_CONSTRAINTS)
            return fn(*args, **kwargs)

        app.command(name=name)(checked)
        return fn

    return register


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"tlearn {version('tlearn')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Transfer learning for image classification."""


DataArg = Annotated[
    str,
    typer.Argument(
        help="A folder of class sub-folders, a zip of one (or 'data.zip/train'), or a CSV/TSV "
        "of path,label."
    ),
]


EngineOpt = Annotated[
    str | None, typer.Option(help=engine_help() + " Default: the one the model was fitted with.")
]


ResumeOpt = Annotated[
    bool,
    typer.Option(
        help="Continue an interrupted run into OUTPUT, skipping the images it already has."
    ),
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")]
_SCALE = "Scale-out"
ClusterOpt = Annotated[
    str,
    typer.Option(
        help="local: this process. ray: a Ray cluster (tlearn[ray]); the output is a Parquet "
        "folder written by the workers.",
        rich_help_panel=_SCALE,
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="The Ray cluster to join (default: $RAY_ADDRESS, else a local instance).",
        rich_help_panel=_SCALE,
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        help="Ray workers (default: one per --threads CPUs, less one CPU for decoding).",
        rich_help_panel=_SCALE,
    ),
]
ThreadsOpt = Annotated[
    int, typer.Option(help="CPUs (engine threads) per Ray worker.", rich_help_panel=_SCALE)
]
PartRowsOpt = Annotated[
    int | None,
    typer.Option(
        help="Rows per Ray task and per Parquet part it writes (default: "
        f"{read_constant('tlearn.scale.ray', 'SHARD_ROWS')}): a killed worker's task is retried, "
        "and a killed run resumed, a part at a time, so smaller parts redo less; larger ones "
        "hold more decoded images in memory.",
        rich_help_panel=_SCALE,
    ),
]


def _error_line(message: str) -> None:
    """``error: message`` on stderr, on one line whatever the message holds."""
    text = " ".join(str(message).split())
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def _fail(message: str) -> NoReturn:
    _error_line(message)
    raise typer.Exit(2)


@contextlib.contextmanager
def _suggest_skip_bad_images() -> Iterator[None]:
    """An unreadable image stops fit and evaluate; say how to go on without it."""
    try:
        yield
    except ImageReadError as e:
        raise DataError(
            f"{e}. Fix or remove the file, or pass --skip-bad-images to leave unreadable "
            "images out (they are listed in a .skipped.csv beside the output)"
        ) from e


def _write_skipped(skipped: list[tuple[int, str, str]], beside: str) -> str | None:
    if not skipped:
        return None
    path = str(beside) + ".skipped.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows((p, r) for _, p, r in skipped)
    err_console.print(
        f"[yellow]{len(skipped)} unreadable image(s) skipped[/], listed in {escape(str(path))}:"
    )
    for _, p, r in skipped[:10]:
        err_console.print(f"  {escape(p)}: {escape(r)}", highlight=False)
    return path


# -- fit ------------------------------------------------------------------------------------
_FIT_GENERAL: list[tuple[str, Any, Any]] = [
    ("out", Annotated[Path, typer.Option("--out", "-o", help="Model file to write.")],
     Path("model.safetensors")),
    ("method", Annotated[str, typer.Option(help="auto (the best of several candidates within "
     "--time-budget, on held-out accuracy), probe (frozen features + tuned logistic "
     "regression), finetune, or lp-ft (finetune with the head first).")], "auto"),
    ("time_budget", Annotated[str | None, typer.Option(help="auto: the most time to spend, "
     "e.g. 10m, 90s, 1h (default 8m).")], None),
    ("test", Annotated[str | None, typer.Option(help="Separate labelled test data. Without "
     "it the held-out estimate is reported (cross-validated for the probe) and the model "
     "is fitted on every image.")], None),
    ("test_size", Annotated[float | None, typer.Option(help="Hold out this fraction as a "
     "test split (then refit on all).")], None),
    ("refit", Annotated[bool, typer.Option(help="Without --test: refit on every image "
     "before saving (fine-tuning runs again for the best number of epochs).")], True),
    ("max_per_class", Annotated[int | None, typer.Option(help="Use at most N training images "
     "per class (random).")], None),
    ("test_max_per_class", Annotated[int | None, typer.Option(help="Use at most N test "
     "images per class.")], None),
    ("skip_bad_images", Annotated[bool, typer.Option(help="Skip unreadable images (listed "
     "beside the output) instead of stopping.")], False),
    ("seed", Annotated[int, typer.Option(help="Random seed (splits, subsets, training).")], 0),
    ("json_path", Annotated[Path | None, typer.Option("--json", help="Write test metrics as "
     "JSON.")], None),
    ("config", Annotated[Path | None, typer.Option(help="TOML file of settings (a [fit] table "
     "or top-level keys, named like the flags).")], None),
    ("resume", Annotated[bool, typer.Option(help="finetune: continue from the checkpoint in "
     "--checkpoint-dir (default OUT.run/).")], False),
    ("cluster", ClusterOpt, "local"),
    ("address", AddressOpt, None),
    ("workers", Annotated[int, typer.Option(help="Ray Train workers.",
     rich_help_panel=_SCALE)], 2),
    ("threads", ThreadsOpt, 1),
]  # fmt: skip
_PANELS = {"both": "Features", "probe": "Probe", "finetune": "Fine-tuning",
           "multilabel": "Multi-label (a CSV of several labels per image)",
           "scratch": "Training from scratch (small images)"}  # fmt: skip


#: The estimators whose parameters are fit's flags; "multilabel" is the probe of data with
#: several labels per image (--method probe or auto on such data).
_ESTIMATORS = {
    "probe": ("tlearn.probe", "LinearProbe"),
    "finetune": ("tlearn.finetune.estimator", "FineTuneClassifier"),
    "multilabel": ("tlearn.multilabel", "MultiLabelProbe"),
    "scratch": ("tlearn.finetune.scratch", "ScratchClassifier"),
}


def _estimator_options() -> list[Any]:
    from tlearn._cli_options import estimator_options

    exclude = {"verbose", "random_state", "on_error", "n_workers"}
    return estimator_options(_ESTIMATORS, exclude, _PANELS, {"engine": engine_help()})


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


#: Flags whose value "none" turns off what fit would choose from the data.
_NONE_TURNS_OFF = {"class_weight"}


def _fit_settings(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The command line's values, with a --config file filling what was left unset, each
    checked against its constraints; flags that the chosen method does not take are
    refused. Estimator flags left at their defaults are dropped: the estimator's own
    defaults apply, and ``--method auto`` knows what the user chose (a named
    ``--backbone`` is used alone)."""
    settings = dict(values)
    from_file = _read_config(settings.pop("config"))
    unknown = sorted(set(from_file) - set(settings))
    if unknown:
        _fail(f"unknown settings in the config file: {unknown}; use the flag names (e.g. lr)")
    for key, value in from_file.items():
        source = ctx.get_parameter_source(key)
        if source is None or source.name == "DEFAULT":
            settings[key] = value
    methods = read_constant("tlearn.methods", "METHODS")
    check_flags(settings, {**FLAG_CONSTRAINTS, "method": [Options(methods)]})
    method = "finetune" if settings["method"] == "lp-ft" else settings["method"]
    for option in _estimator_options():
        source = ctx.get_parameter_source(option.name)
        explicit = (source is not None and source.name != "DEFAULT") or option.name in from_file
        takes = {"probe" if m == "multilabel" else m for m in option.methods}
        if explicit and method in ("probe", "finetune", "scratch") and method not in takes:
            _fail(f"{flag(option.name)} applies to --method {' or '.join(sorted(takes))}, "
                  f"not {method}")  # fmt: skip
        value = settings.get(option.name)
        if explicit and option.name in _NONE_TURNS_OFF and str(value).lower() == "none":
            settings[option.name] = None  # turns off what the data would choose
        elif explicit:
            _check_estimator_flag(option, value, method)
        else:  # the method's own default, and auto sees what the user set
            settings.pop(option.name, None)
    return settings


def _check_estimator_flag(option: Any, value: Any, method: str) -> None:
    """The value against the constraints of each estimator that will take it (both, under
    --method auto), read from their source: a bad value fails before PyTorch loads."""
    from tlearn._cli_options import read_constraints

    takers = {method, "multilabel"} if method == "probe" else {method}
    # auto hands its network trained from scratch only the flags they share (automl._scratch)
    shared = read_constant("tlearn.automl", "SCRATCH_TAKES") or ()
    under_auto = [m for m in option.methods if m != "scratch" or option.name in shared]
    for m in [m for m in option.methods if m in takers] if method != "auto" else under_auto:
        allowed = read_constraints(*_ESTIMATORS[m]).get(option.name)
        check_flags({option.name: value}, {option.name: allowed} if allowed else {})


def _check_fit(data: str, s: dict[str, Any], out: Path, json_path: Path | None) -> None:
    """What fit's input alone shows to be wrong, refused before anything loads: the flags,
    then the data's listing (a folder without class folders, a CSV without labels), which
    train() repeats after building the estimator (a listing is cheap; PyTorch is not)."""
    s["time_budget"] = _seconds(s["time_budget"])
    if s["test"] is not None and s["test_size"] is not None:
        _fail("--test gives the test data and --test-size holds out a split: pass one")
    if s["resume"] and s["method"] not in ("finetune", "lp-ft"):
        _fail("--resume continues an interrupted fine-tuning run: use it with --method "
              f"finetune or lp-ft, not {s['method']}")  # fmt: skip
    check_backbone(s.get("backbone"))
    check_source(data, "DATA")
    if s["test"] is not None:
        check_source(s["test"], "--test")
    make_folder_for(out, "--out")
    make_folder_for(json_path, "--json")
    from tlearn.training import load_labelled

    load_labelled(data, s["max_per_class"], s["seed"])
    if s["test"] is not None:
        load_labelled(s["test"], s["test_max_per_class"], s["seed"])


def fit(ctx: typer.Context, data: str, **values: Any) -> None:
    """Train a classifier on DATA, report test loss and accuracy, and save the model.

    By default (--method auto) it fits the linear probe, then tries what else fits the
    time budget and keeps the best. --method probe fits a tuned linear probe on frozen
    features; --method finetune trains a new linear head and the backbone (--strategy
    lp-ft/full/head/partial); --method lp-ft trains the head first, then everything.
    Under `torchrun --nproc_per_node N -m tlearn fit ...` the fine-tuning runs with
    DistributedDataParallel.
    """
    s = _fit_settings(ctx, values)
    out, json_path = Path(s.pop("out")), s.pop("json_path")
    _check_fit(data, s, out, json_path)
    scale = {k: s.pop(k) for k in ("cluster", "address", "workers", "threads")}
    if _on_ray(scale.pop("cluster"), out):
        _fit_on_ray(data, out, json_path, scale, s)
        return
    if s["method"] in ("finetune", "lp-ft") and s.get("checkpoint_dir") is None:
        s["checkpoint_dir"] = str(out.with_suffix("")) + ".run"
    from tlearn.training import train

    with _suggest_skip_bad_images():
        result = train(data, out=out, say=console.print, **s)
    if result.report is None:
        return  # a torchrun worker process
    _write_skipped(result.skipped, str(out))
    _write_skipped([(0, f["path"], f["reason"]) for f in result.report.failed], f"{out}.test")
    console.print(result.report)
    if result.leaderboard:
        console.print(_leaderboard_table(result.leaderboard))
    if json_path is not None:
        result.report.to_json(json_path)
    how = result.evaluation["method"]
    which = "test" if "test" in how else "held-out"
    console.print(
        f"[bold]{result.report.headline(which)}[/] ({result.report.n_images} images, "
        f"{escape(how)}); model saved to {escape(str(out))} ({result.seconds:.0f} s)"
    )


def _fit_on_ray(
    data: str, out: Path, json_path: Path | None, scale: dict[str, Any], s: dict[str, Any]
) -> None:
    from tlearn.scale.ray_train import fit as fit_ray

    s = {k: v for k, v in s.items() if v is not None and k != "time_budget"}
    done = fit_ray(data, out, **scale, **s)
    if json_path is not None:
        json_path.write_text(json.dumps(done["report"], indent=2) + "\n")
    which = "test" if "test" in done["method"] else "held-out"
    console.print(
        f"[bold]{which} loss: {done['log_loss']:.4f}  {which} accuracy: "
        f"{done['accuracy']:.4f}[/] ({done['n_images']} images, {done['method']}); model "
        f"saved to {out} ({done['seconds']:.0f} s, {scale['workers']} Ray Train workers)"
    )


def _seconds(text: str | None) -> float | None:
    """'10m', '90s', '1h', '1.5h' or plain seconds -> seconds (more than 0)."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    try:
        seconds = float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value)
    except (ValueError, IndexError):
        seconds = float("nan")
    if not 0 < seconds < float("inf"):  # NaN fails too
        _fail(f"--time-budget must be a time above 0 like 10m, 90s or 1h. Got {text!r} instead.")
    return seconds


def _leaderboard_table(rows: list[dict[str, Any]]) -> Table:
    figure = (
        "mean_average_precision"
        if any("mean_average_precision" in r for r in rows)
        else ("accuracy")
    )
    what = "held-out mAP" if figure != "accuracy" else "held-out accuracy"
    table = Table(title=f"candidates (the best on {what} is kept)")
    for col in ("candidate", what, "fit time", "predict images/s", "note"):
        table.add_column(col, justify="left" if col in ("candidate", "note") else "right")
    for r in rows:
        acc = "" if r.get(figure) is None else f"{r[figure]:.4f}"
        table.add_row(r["candidate"], acc, f"{r.get('seconds', 0):.0f} s",
                      f"{r.get('images_per_second', 0):.0f}", r.get("note", ""))  # fmt: skip
    return table


def _fit_signature() -> inspect.Signature:
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=DataArg),
    ]
    params += [inspect.Parameter(n, kw, annotation=a, default=d) for n, a, d in _FIT_GENERAL]
    params += [
        inspect.Parameter(o.name, kw, annotation=o.annotation, default=o.default)
        for o in _estimator_options()
    ]
    return inspect.Signature(params)


fit.__signature__ = _fit_signature()  # type: ignore[attr-defined]
command()(fit)


# -- evaluate, predict, export --------------------------------------------------------------
@command(name="evaluate")
def evaluate_cmd(
    model: Annotated[str, typer.Argument(help="A model file from `tlearn fit`, or an export.")],
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
    check_model_file(model)
    check_source(data, "DATA")
    make_folder_for(json_path, "--json")
    from tlearn.training import load_labelled

    X, y = load_labelled(data, max_per_class, seed)  # a listing: before PyTorch loads
    from tlearn.evaluation import evaluate
    from tlearn.predictor import Predictor

    predictor = Predictor.load(model, engine=engine)
    with _suggest_skip_bad_images():
        report = evaluate(predictor, X, y, unknown="skip" if skip_unknown_classes else "raise",
                          on_error="skip" if skip_bad_images else "raise")  # fmt: skip
    console.print(report)
    if report.to_dict().get("confusion_matrix"):  # one label per image
        console.print(_confusion_table(report))
    if report.unknown:
        left = sum(1 for r in report.unknown if r.get("left_out", True))
        kept = len(report.unknown) - left
        err_console.print(
            f"[yellow]{left} image(s) with unknown classes left out"
            + (f"; {kept} scored on their known labels only" if kept else "")
        )
    if report.failed:
        rows = [(0, f["path"], f["reason"]) for f in report.failed]
        _write_skipped(rows, str(json_path or model))
    if json_path is not None:
        report.to_json(json_path)
        console.print(f"metrics written to {escape(str(json_path))}")
    if report_dir is not None:
        paths = report.save(report_dir, title=f"{Path(model).name} on {data}")
        console.print(f"report written to {escape(str(paths['html']))}")
    console.print(f"[bold]{report.headline()}[/] ({report.n_images} images)")


def _confusion_table(report: Any) -> Table:
    classes = [str(c) for c in report.classes]
    table = Table(title="confusion matrix (rows: true, columns: predicted)")
    table.add_column("")
    for c in classes:
        table.add_column(c[:8], justify="right")
    for c, row in zip(classes, report.confusion_matrix, strict=True):
        table.add_row(c, *[str(v) for v in row])
    return table


def _label_backbones(names: list[str] | None) -> list[str] | str:
    if not names:
        return "auto"
    return [] if [n.lower() for n in names] == ["none"] else names


@command()
def doctor(
    data: DataArg,
    test: Annotated[str | None, typer.Option(help="Test data, checked for leakage too.")] = None,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for issues.csv, summary.json and report.html."),
    ] = Path("doctor"),
    backbone: str = "efficientnet_lite0",
    label_backbone: Annotated[
        list[str] | None,
        typer.Option(
            help="Another backbone for the label check (repeatable): the check uses the mean "
            "of each backbone's out-of-fold probabilities. Ranks label errors better, for the "
            "time of featurising every image again. Default: efficientnet_lite2 (else lite1) "
            "where installed, when --backbone is the default; 'none': the main backbone alone "
            "(faster)."
        ),
    ] = None,
    max_per_class: int | None = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            help="Featurise at this size (pixels) instead of each backbone's own: smaller is "
            "faster, and ranks label errors less well."
        ),
    ] = None,
    engine: Annotated[str | None, typer.Option(help=engine_help() + " Default: auto.")] = None,
    cache_dir: Annotated[str | None, typer.Option(help="Feature cache folder.")] = None,
    near_threshold: Annotated[
        float | None,
        typer.Option(
            help="Pixel-detail correlation a near duplicate needs at the best alignment of "
            "the two images (default 0.8; lower finds more, and more merely similar photos)."
        ),
    ] = None,
    write_clean: Annotated[
        Path | None,
        typer.Option(
            help="Write a CSV of path,label without the flagged training images (for tlearn fit)."
        ),
    ] = None,
    relabel: Annotated[
        bool,
        typer.Option(
            help="--write-clean: relabel label issues to the "
            "suggested class instead of leaving them out."
        ),
    ] = False,
    seed: int = 0,
) -> None:
    """Find unreadable files, exact and near duplicates, train/test leakage, likely label
    errors, outliers, class imbalance and image-quality problems in DATA. Writes a report;
    nothing on disk is moved or deleted."""  # fmt: skip
    check_source(data, "DATA")
    if test is not None:
        check_source(test, "--test")
    check_backbone(backbone)
    for name in _label_backbones(label_backbone) if label_backbone else []:
        check_backbone(name, "--label-backbone")
    if out.exists() and not out.is_dir():
        _fail(f"--out {str(out)!r} is a file; the doctor writes a folder of reports there")
    make_folder_for(write_clean, "--write-clean")
    from tlearn.doctor import inspect, write_report
    from tlearn.doctor import write_clean as clean_csv

    X, y, X_test, y_test = _doctor_inputs(data, test, max_per_class, seed)
    given: dict[str, Any] = {"image_size": image_size, "engine": engine}
    findings = inspect(X, y, X_test, y_test, near_threshold=near_threshold,
                       label_backbones=_label_backbones(label_backbone), backbone=backbone,
                       cache_dir=cache_dir, say=console.print,
                       **{k: v for k, v in given.items() if v is not None})  # fmt: skip
    paths = write_report(findings, out, title=f"tlearn doctor: {data}")
    _doctor_said(findings, paths)
    if write_clean is not None:
        counts = clean_csv(findings, list(X), list(y), str(write_clean), relabel)
        clean = escape(str(write_clean))
        console.print(f"clean CSV: {counts['kept']} images kept, {counts['left_out']} left out, "
                      f"{counts['relabelled']} relabelled -> {clean}")  # fmt: skip


def _doctor_inputs(data: str, test: str | None, max_per_class: int | None, seed: int) -> Any:
    """The images and labels the doctor checks (refusing several labels per image before
    minutes of features): ``X, y, X_test, y_test``."""
    from tlearn.data.targets import refuse_label_sets
    from tlearn.training import load_labelled

    X, y = load_labelled(data, max_per_class, seed)
    X_test, y_test = load_labelled(test, None, seed) if test else (None, None)
    for labels in (y, y_test):
        refuse_label_sets(labels, "the doctor")
    return X, y, X_test, y_test


def _doctor_said(findings: Any, paths: dict[str, str]) -> None:
    """The doctor's table of issues and where its reports are."""
    table = Table("issue", "images", title=f"{findings.summary['images']} images checked")
    for issue, n in findings.counts().items():
        table.add_row(issue, str(n))
    console.print(table)
    console.print(f"report written to {escape(paths['report.html'])}, issues to "
                  f"{escape(paths['issues.csv'])}")  # fmt: skip


@command()
def predict(
    model: Annotated[
        str,
        typer.Argument(
            help="A model file from `tlearn fit`, an export (.onnx/.xml), or imagenet:BACKBONE "
            "for the backbone's ImageNet head."
        ),
    ],
    inputs: Annotated[list[str], typer.Argument(help="Images, folders, zips, CSVs or globs.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="A CSV or JSONL file, a Parquet folder (*.parquet), or - for JSON Lines on "
            "stdout; default: a table.",
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            help="How many labels (and scores) per image; default 1, or every label of a "
            "multi-label model."
        ),
    ] = None,
    tta: Annotated[bool, typer.Option(help="Average over a horizontal flip.")] = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    engine: EngineOpt = None,
    cluster: ClusterOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = 1,
    part_rows: PartRowsOpt = None,
) -> None:
    """Predict the class of every image in INPUTS; unreadable files get a row with the error.

    Streams: memory stays flat however many images, rows are written as they come; with
    --output - they go to stdout as JSON Lines (messages and progress stay on stderr). With
    --cluster ray the images are decoded and predicted by Ray workers. Every format has the
    columns row_id, path, label, probability, top_labels, top_probabilities, error (and a
    multi-label model's above_threshold: every label that applies, before error). Exit
    status: 0 every image predicted, 1 some failed (their rows hold the error), 2 a user
    error."""
    check_model_file(model)
    check_inputs(inputs)
    if _on_ray(cluster, output, part_rows):
        from tlearn.scale import ray as scale_ray

        counts = scale_ray.predict(model, inputs, str(output), top_k=top_k, tta=tta,
                                   resume=resume, overwrite=overwrite, engine=engine,
                                   address=address, workers=workers, threads=threads,
                                   shard_rows=part_rows or scale_ray.SHARD_ROWS)  # fmt: skip
        _say_written(counts, "predicted", output)
        _exit_on_failures(counts)
        return
    if output is not None and str(output) != "-":
        check_output(output, "predictions", resume, overwrite)
    total = _images_to_do(inputs, output if resume else None)
    from tlearn.predictor import Predictor

    predictor = Predictor.load(model, engine=engine)
    counts = _predict_rows(predictor, inputs, output, total, top_k=top_k, tta=tta,
                           resume=resume, overwrite=overwrite)  # fmt: skip
    _exit_on_failures(counts)


def _predict_rows(
    predictor: Any, inputs: list[str], output: Path | None, total: int, **options: Any
) -> dict[str, int]:
    """Predict to OUTPUT, to stdout (``-``) or to a table, with a progress display."""
    from tlearn._progress import progress

    top_k, tta = options["top_k"], options["tta"]
    with progress(total, 1, "predicting") as advance:
        if output is None:  # a multi-label table shows each label that applies, with its score
            k = top_k if predictor.rows.shows_top_k else None
            rows = list(_advancing(predictor.iter_predict(inputs, top_k=k, tta=tta), advance))
        elif str(output) == "-":
            rows = predictor.iter_predict(inputs, top_k=top_k, tta=tta)
            counts = _write_jsonl(rows, advance, predictor.rows)
        else:
            from tlearn.inference import predict_to_file

            counts = predict_to_file(predictor, inputs, output, **options,
                                     on_row=lambda row: advance(1))  # fmt: skip
    if output is None:
        return _print_predictions(rows, top_k)
    _say_written(counts, "predicted", output)
    return counts


def _advancing(rows: Any, advance: Callable[[int], None]) -> Iterator[dict[str, Any]]:
    for row in rows:
        advance(1)
        yield row


def _write_jsonl(rows: Any, advance: Callable[[int], None], kind: Any) -> dict[str, int]:
    """Rows of ``kind`` (:mod:`tlearn.rows`) to stdout as JSON Lines (what a .jsonl output
    holds), for a pipe."""
    counts = {"ok": 0, "failed": 0}
    for row in rows:
        sys.stdout.write(json.dumps(kind.plain(row)) + "\n")
        counts["failed" if row["error"] else "ok"] += 1
        advance(1)
    sys.stdout.flush()
    return counts


def _images_to_do(inputs: list[str], resumed: Path | None) -> int:
    """How many images the run will read: the progress total. A resumed run's finished
    images are not counted, so the rate and time left are those of real work."""
    from tlearn.data import iter_image_paths
    from tlearn.outputs import read_done_paths

    done = read_done_paths(resumed) if resumed is not None and resumed.exists() else ()
    return max(sum(1 for _ in iter_image_paths(inputs)) - len(done), 0)


@command()
def featurize(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders, zips, CSVs or globs.")],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="A Parquet folder (*.parquet) or a JSONL file."),
    ],
    model: Annotated[
        str,
        typer.Option(
            help="imagenet:BACKBONE (any timm or torchvision name), or a model file from "
            "`tlearn fit` for the features its backbone computes."
        ),
    ] = "imagenet:efficientnet_lite0",
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    engine: EngineOpt = None,
    cluster: ClusterOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = 1,
    part_rows: PartRowsOpt = None,
) -> None:
    """Write the backbone's feature vector of every image in INPUTS to OUTPUT, one row each
    (row_id, path, features, error): embeddings for your own search, clustering or models.

    Streams with flat memory; --resume continues an interrupted run."""
    check_model_file(model)
    check_inputs(inputs)
    if _on_ray(cluster, output, part_rows):
        from tlearn.scale import ray as scale_ray

        counts = scale_ray.featurize(model, inputs, str(output), resume=resume,
                                     overwrite=overwrite, engine=engine, address=address,
                                     workers=workers, threads=threads,
                                     shard_rows=part_rows or scale_ray.SHARD_ROWS)  # fmt: skip
    else:
        check_output(output, "features", resume, overwrite)
        total = _images_to_do(inputs, output if resume else None)
        from tlearn._progress import progress
        from tlearn.inference import featurize_to_file
        from tlearn.predictor import Predictor

        predictor = Predictor.load(model, engine=engine)
        with progress(total, 1, "featurizing") as advance:
            counts = featurize_to_file(
                predictor, inputs, output, resume=resume, overwrite=overwrite,
                on_row=lambda _: advance(1),
            )  # fmt: skip
    _say_written(counts, "featurized", output)
    _exit_on_failures(counts)


def _on_ray(cluster: str, output: Path | None, part_rows: int | None = None) -> bool:
    if cluster not in ("local", "ray"):
        _fail(f"--cluster must be 'local' or 'ray', got {cluster!r}")
    if cluster == "ray" and output is None:
        _fail("--cluster ray writes its rows to a Parquet folder: pass --output NAME.parquet")
    if cluster != "ray" and part_rows is not None:
        _fail("--part-rows sizes the parts of Ray's tasks: it needs --cluster ray")
    return cluster == "ray"


def _exit_on_failures(counts: dict[str, int]) -> None:
    """Exit status 1 when any image failed (its row, with the error, is written like the
    others): 0 means every image was done, 2 a user error before any work."""
    if counts["failed"]:
        raise typer.Exit(1)


def _say_written(counts: dict[str, int], verb: str, output: Path | None) -> None:
    done = f"; {counts['skipped']} were already done" if counts.get("skipped") else ""
    where = "stdout" if str(output) == "-" else output
    (err_console if where == "stdout" else console).print(
        f"{counts['ok']} images {verb}, {counts['failed']} failed{done}; written to {where}"
    )


def _print_predictions(rows: list[dict[str, Any]], top_k: int | None) -> dict[str, int]:
    """The predictions as a table on the terminal (a multi-label model's: the labels that
    apply, with their probabilities); returns how many worked and failed (paths and labels
    shown as text: a file name is neither markup nor always UTF-8)."""
    from tlearn.data.sources import path_text

    several = bool(rows) and "above_threshold" in rows[0]
    table = Table("path", "labels" if several else "label", "probability", "error")
    counts = {"ok": 0, "failed": 0}
    for row in rows:
        counts["failed" if row["error"] else "ok"] += 1
        label, prob = _shown_prediction(row, several, top_k)
        table.add_row(escape(path_text(row["path"])), escape(label), prob, escape(row["error"]))
    console.print(table)
    console.print(f"{counts['ok']} images predicted, {counts['failed']} failed")
    return counts


def _shown_prediction(row: dict[str, Any], several: bool, top_k: int | None) -> tuple[str, str]:
    """A row's labels and probabilities as the table shows them."""
    if row["error"]:
        return "", ""
    if several:  # multi-label: the labels that apply, or "(none)"
        scores = dict(zip(row["top_labels"], row["top_probabilities"], strict=True))
        above = row["above_threshold"]
        shown = ", ".join(f"{scores[c]:.3f}" if c in scores else "" for c in above)
        return (", ".join(map(str, above)) or "(none)"), shown
    if top_k is not None and top_k > 1:
        return ", ".join(map(str, row["top_labels"])), f"{row['probability']:.3f}"
    return str(row["label"]), f"{row['probability']:.3f}"  # a class 0 is a label too


_SERVE = "Server limits"


@command()
def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="A model file from `tlearn fit`, an export (.onnx/.xml), or imagenet:BACKBONE."
        ),
    ],
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    engine: EngineOpt = None,
    max_batch_size: Annotated[
        int, typer.Option(help="Most images per engine call.", rich_help_panel=_SERVE)
    ] = 8,
    max_queue: Annotated[
        int | None,
        typer.Option(
            help="Most images admitted at once; more get 503 + Retry-After. "
            "Default: what the server answers in 100 ms, measured at start and under load.",
            rich_help_panel=_SERVE,
        ),
    ] = None,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest request body.", rich_help_panel=_SERVE)
    ] = 20.0,
    max_pixels: Annotated[
        int, typer.Option(help="Largest image (width x height).", rich_help_panel=_SERVE)
    ] = 40_000_000,
    timeout_s: Annotated[
        float, typer.Option(help="Each request's deadline (504 after).", rich_help_panel=_SERVE)
    ] = 10.0,
    body_timeout_s: Annotated[
        float,
        typer.Option(
            help="The upload's own deadline from the first byte (408 after; at most --timeout-s).",
            rich_help_panel=_SERVE,
        ),
    ] = 5.0,
    upload_buffer_mb: Annotated[
        float | None,
        typer.Option(
            help="Most MB of request bodies held at once, over all requests (503 past it); "
            "default 8 bodies of --max-body-mb.",
            rich_help_panel=_SERVE,
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="Name of an environment variable holding the API key; without it, no key "
            "is asked for.",
        ),
    ] = None,
    top_k: Annotated[int, typer.Option(help="Predictions per image by default.")] = 5,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    r"""Serve MODEL over HTTP: POST /v1/predict, a web page at /, /docs, /metrics, probes.

    Needs the extra: pip install 'tlearn\[serve]'. Stops cleanly on SIGTERM or Ctrl+C:
    readiness turns 503, admitted requests finish, then the process exits 0."""
    from tlearn.serve import run

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            _fail(f"--api-key-env {api_key_env}: that environment variable is not set or empty")
    settings: dict[str, Any] = dict(
        max_batch_size=max_batch_size, max_queue=max_queue, max_body_mb=max_body_mb,
        max_pixels=max_pixels, timeout_s=timeout_s, body_timeout_s=body_timeout_s,
        upload_buffer_mb=upload_buffer_mb, top_k=top_k,
    )  # fmt: skip
    config = _server_config(settings, api_key)
    check_model_file(model)
    check_address(host, port)
    raise typer.Exit(run(model, config, host=host, port=port, engine=engine, log_level=log_level))


def _server_config(settings: dict[str, Any], api_key: str | None) -> Any:
    """The ServeConfig of the flags; its refusal worded in the flags' names."""
    from tlearn.serve import ServeConfig

    try:
        return ServeConfig(**settings, api_key=api_key)
    except InvalidParameterError as e:
        message = str(e).replace("The '", "'").replace("' parameter of ServeConfig", "'")
        for name in settings:
            message = re.sub(rf"'?\b{name}\b'?", flag(name), message)
        _fail(message.replace(" or None.", "."))


@command()
def export(
    model: Annotated[Path, typer.Argument(help="A model file from `tlearn fit`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write (.onnx or .xml).")],
    format: Annotated[str, typer.Option(help="onnx or openvino.")] = "onnx",
) -> None:
    """Write the whole classifier (backbone + head, probabilities out) as ONNX or OpenVINO IR,
    with a JSON sidecar of classes and preprocessing; `tlearn predict` runs it directly."""
    # export_model's own check, named as the flag, made before the model loads
    formats = read_constant("tlearn.export", "FORMATS")
    check_flags({"format": format}, {"format": [Options(formats)]})
    check_model_file(str(model))
    make_folder_for(out, "--out")
    from tlearn.export import export_model
    from tlearn.persistence import load

    path = export_model(load(model), out, format)
    console.print(f"exported to {escape(str(path))} (classes and preprocessing in "
                  f"{escape(str(path))}.json)")  # fmt: skip


# -- models, bench, demo --------------------------------------------------------------------
@command()
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


@command()
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
    training: Annotated[
        bool,
        typer.Option(
            help="Also training images/s of each route `tlearn fit` trains, beside fp32 eager."
        ),  # fmt: skip
    ] = True,
) -> None:
    """Images per second end to end and model-only for each engine, beside the naive loop;
    then training images per second of each route (--method scratch, lp-ft)."""
    check_inputs([data])
    check_backbone(backbone)
    from itertools import islice

    from tlearn.bench import run_bench
    from tlearn.data import iter_image_paths

    paths = list(islice(iter_image_paths([data]), n))
    if not paths:
        _fail(f"no images found in {data!r}")
    run_bench(paths, backbone, engine, batch_size, image_size, device, report=console.print,
              weights=None if weights == "none" else weights)  # fmt: skip
    if training:
        from tlearn.bench import run_training_bench

        run_training_bench(report=console.print)


@command()
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


def main(args: list[str] | None = None) -> None:
    """Entry point: run the app; every user error is one ``error:`` line and status 2."""
    from tlearn._io import torch_cache_in_tlearns
    from tlearn._log import cli_warnings, configure_cli

    configure_cli()
    torch_cache_in_tlearns()
    with cli_warnings():
        code = _run(args)
    sys.exit(code)


def _click_exceptions() -> Any:
    import importlib

    try:  # typer 0.2x carries its own copy of click
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def _run(args: list[str] | None) -> int:
    """The exit status of the command; the parser's errors and tlearn's on one line."""
    click = _click_exceptions()
    try:
        return int(app(args=args, prog_name="tlearn", standalone_mode=False) or 0)
    except getattr(click, "NoArgsIsHelpError", ()) as e:  # bare `tlearn fit`: the help
        e.show()
        return 2
    except click.UsageError as e:
        _error_line(_usage_message(e))
        return 2
    except click.ClickException as e:
        _error_line(e.format_message())
        return e.exit_code
    except typer.Abort:
        return 1
    except BrokenPipeError:  # `tlearn predict ... -o - | head`: the reader has enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 1
    except (TlearnError, OSError) as e:
        _error_line(str(e))
        return 2


def _usage_message(e: Any) -> str:
    """click's message for a mistake on the command line, as one sentence that points to
    the help (typo'd options get click's "did you mean")."""
    click = _click_exceptions()
    message = e.message if isinstance(e, click.NoSuchOption) else e.format_message()
    possible = getattr(e, "possibilities", None)
    if possible:
        message += f". Did you mean {' or '.join(sorted(possible))}?"
    where = e.ctx.command_path if e.ctx is not None else "tlearn"
    end = "" if message.endswith((".", "?")) else "."
    return f"{message}{end} See `{where} --help`."


if __name__ == "__main__":  # pragma: no cover
    main()

"""The real `tlearn` command, run as a user would, on real images."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import run_tlearn

TLEARN = [sys.executable, "-m", "tlearn"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``tlearn ARGS`` in this process (tests/cli_runner.py); one test below runs
    ``python -m tlearn`` in a process of its own."""
    return run_tlearn(*args, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_zip):
    """`tlearn fit` with its defaults (--method auto) but for the size, the budget and the
    engine: no claim here is about an engine, and auto's check converted each candidate's
    backbones (Lite1 + Lite2, Lite0) to OpenVINO before fitting on 36 images."""
    out = tmp_path_factory.mktemp("cli") / "model.safetensors"
    r = run(
        "fit",
        f"{shapes_zip}/train",
        "--max-per-class",
        "12",
        "--test",
        f"{shapes_zip}/test",
        "--test-max-per-class",
        "5",
        "--image-size",
        "64",
        "--time-budget",
        "3m",
        "--engine",
        "torch",
        "--out",
        str(out),
        "--json",
        str(out.with_suffix(".json")),
    )
    assert r.returncode == 0, r.stderr
    return out, r


def test_fit_by_default_tries_candidates_and_prints_accuracy_and_saves(trained):
    out, r = trained
    assert "test accuracy:" in r.stdout and out.is_file()
    assert "candidates (the best on held-out accuracy is kept)" in r.stdout  # --method auto
    board = json.loads(Path(f"{out}.leaderboard.json").read_text())
    assert board[0]["candidate"].startswith("probe efficientnet_lite1+efficientnet_lite2")
    assert sum(row["chosen"] for row in board) >= 1
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["n_images"] == 15 and len(metrics["classes"]) == 3
    assert f"{metrics['accuracy']:.4f}" in r.stdout


def test_evaluate_and_predict(trained, shapes_zip, tmp_path):
    model, _ = trained
    r = run(
        "evaluate",
        str(model),
        f"{shapes_zip}/test",
        "--max-per-class",
        "3",
        "--json",
        str(tmp_path / "m.json"),
        "--report",
        str(tmp_path / "report"),
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_images"] == 9 and len(metrics["confusion_matrix"]) == 3
    assert "confusion matrix" in r.stdout and "precision" in r.stdout
    assert (tmp_path / "report" / "report.html").is_file()
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["n_images"] == 9
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff")
    r = run(
        "predict",
        str(model),
        f"{shapes_zip}/test/coffee/00001.jpg",
        str(broken),
        "--output",
        str(tmp_path / "preds.csv"),
        "--top-k",
        "3",
    )
    assert r.returncode == 1, r.stderr  # issue 27.14: 1 when some image failed
    with (tmp_path / "preds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]["label"] and not rows[0]["error"]
    assert len(json.loads(rows[0]["top_labels"])) == 3
    assert rows[1]["error"] and "1 images predicted, 1 failed" in r.stdout


def test_predict_to_stdout_and_into_a_new_folder(trained, shapes_zip, tmp_path):
    """-o - streams JSON Lines to stdout (messages on stderr); -o into a folder that does
    not exist makes it, parents too."""
    model, _ = trained
    image = f"{shapes_zip}/test/coffee/00001.jpg"
    r = run("predict", str(model), image, f"{shapes_zip}/test/rocket/00001.jpg", "-o", "-")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["row_id"] for row in rows] == [0, 1] and rows[0]["label"] == "coffee"
    assert "2 images predicted, 0 failed; written to stdout" in r.stderr
    out = tmp_path / "new" / "deeper" / "preds.csv"
    r = run("predict", str(model), image, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text().count("\n") == 2
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    r = run("predict", str(model), image, str(tmp_path / "broken.jpg"), "-o", "-")
    assert r.returncode == 1 and "1 images predicted, 1 failed" in r.stderr
    assert [json.loads(line)["error"] == "" for line in r.stdout.splitlines()] == [True, False]


def test_skip_bad_images_lists_them(image_folder, tmp_path):
    (image_folder / "coffee" / "zero.jpg").write_bytes(b"")
    out = tmp_path / "m.safetensors"
    r = run("fit", str(image_folder), "--method", "probe", "--image-size", "64", "--test-size",
            "0.2", "--out", str(out))  # fmt: skip
    assert r.returncode == 2 and "zero.jpg" in r.stderr and "empty" in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pass --skip-bad-images" in errors[0], r.stderr
    assert "Traceback" not in r.stderr and "warning" not in r.stderr.lower()
    assert not out.exists()
    r = run(
        "fit",
        str(image_folder),
        "--method",
        "probe",
        "--image-size",
        "64",
        "--test-size",
        "0.2",
        "--out",
        str(out),
        "--skip-bad-images",
    )
    assert r.returncode == 0, r.stderr
    skipped = (tmp_path / "m.safetensors.skipped.csv").read_text()
    skipped += (
        (tmp_path / "m.safetensors.test.skipped.csv").read_text()
        if (tmp_path / "m.safetensors.test.skipped.csv").exists()
        else ""
    )
    assert "zero.jpg" in skipped and out.is_file()


def test_clear_errors(tmp_path):
    r = run("fit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.safetensors"))
    assert r.returncode == 2 and "error:" in r.stderr and "nowhere" in r.stderr
    (tmp_path / "a").mkdir()
    r = run("fit", str(tmp_path), "--backbone", "resnet05")
    assert r.returncode == 2 and "error:" in r.stderr
    r = run("evaluate", str(tmp_path / "nothing.safetensors"), str(tmp_path))
    assert r.returncode == 2 and "no such model file" in r.stderr


def test_test_classes_unknown_to_training_are_refused_before_training(image_folder, tmp_path):
    other = tmp_path / "other"
    (other / "bird").mkdir(parents=True)
    (other / "bird" / "b.jpg").write_bytes(
        (image_folder / "coffee").glob("*.jpg").__next__().read_bytes()
    )
    r = run("fit", str(image_folder), "--test", str(other), "--out", str(tmp_path / "m.st"))
    assert r.returncode == 2 and "['bird']" in r.stderr and "lacks" in r.stderr


def test_models_lists_offline_backbones():
    """Through the installed entry point, in a new process: what the other tests call."""
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([*TLEARN, "models"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "efficientnet_lite0" in r.stdout and "yes" in r.stdout
    assert run("models").stdout == r.stdout


def test_demo_runs_end_to_end_on_a_small_subset(tmp_path):
    from tlearn.demo import run_demo

    result = run_demo(tmp_path, per_class=6, test_per_class=2)
    assert 0.0 <= result["raw_pixel_accuracy"] <= 1.0
    assert result["probe_accuracy"] > 0.3  # 10 Fashion-MNIST classes; chance is 0.1
    assert (tmp_path / "fashion-mnist-probe.safetensors").is_file()
    assert len(list((tmp_path / "samples").glob("*.png"))) == 8


def test_predict_with_the_backbones_own_imagenet_head(tmp_path):
    import skimage.data as skimage_data
    from PIL import Image

    photo = tmp_path / "coffee.jpg"
    Image.fromarray(skimage_data.coffee()).save(photo)
    out = tmp_path / "imagenet.jsonl"
    r = run(
        "predict", "imagenet:efficientnet_lite0", str(photo), "--top-k", "3", "--output", str(out)
    )
    assert r.returncode == 0, r.stderr
    row = json.loads(out.read_text())
    assert row["label"] == "espresso" and row["probability"] > 0.5
    assert len(row["top_labels"]) == 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--method", "finetune", "--optimizer", "adam"], "Did you mean 'adamw'"),
        (["--optimizer", "adam"], "Did you mean 'adamw'"),  # --method auto checks it at once
        (["--device", "cuda"], "sees no CUDA GPU"),
        (["--engine", "nope"], "--engine must be one of 'auto'"),
        (
            ["--method", "probe", "--epochs", "3"],
            "--epochs applies to --method finetune or scratch, not probe",
        ),
        (["--method", "nearest"], "--method must be one of 'auto', 'probe', 'finetune'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(image_folder, tmp_path, flags, message):
    r = run("fit", str(image_folder), "--out", str(tmp_path / "m.safetensors"), *flags)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "m.safetensors").exists()


def test_table_and_stdout_rows_of_integer_classes(capsys):
    """A model fitted on the classes 0, 1, ... : the table printed class 0 as an empty
    label (``row["label"] or ""``), and -o - wrote labels as numbers where a .jsonl file
    (and CSV, Parquet) holds strings."""
    from tlearn.cli import _print_predictions, _write_jsonl
    from tlearn.rows import ROW_KINDS

    row = {"row_id": 0, "path": "a.jpg", "label": 0, "probability": 0.9,
           "top_labels": [0, 1], "top_probabilities": [0.9, 0.1], "error": ""}  # fmt: skip
    _print_predictions([row], top_k=1)
    assert "a.jpg │ 0 " in capsys.readouterr().out
    assert _write_jsonl([row], lambda n: None, ROW_KINDS["predictions"]) == {"ok": 1, "failed": 0}
    line = json.loads(capsys.readouterr().out)
    assert line["label"] == "0" and line["top_labels"] == ["0", "1"]


def test_the_table_shows_odd_file_names_as_they_are(tmp_path):
    """A path with rich markup ([/y], [red]) raised MarkupError or lost its brackets, and
    a name that is not UTF-8 ended the table with a UnicodeEncodeError (adversarial
    review of 28.1)."""
    from PIL import Image

    folder = tmp_path / "x["
    folder.mkdir()
    for name in ("y].jpg", "[red]z.jpg", "caf\udce9.jpg"):
        Image.new("RGB", (40, 40), (200, 30, 30)).save(
            os.fsencode(folder) + b"/" + os.fsencode(name), "JPEG"
        )
    r = run("predict", "imagenet:efficientnet_lite0", str(folder))
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())
    assert "y].jpg" in said and "[red]z.jpg" in said and "caf\\xe9.jpg" in said
    assert "3 images predicted, 0 failed" in said


def test_a_command_writes_nothing_to_the_temporary_folder(tmp_path):
    """torch makes /tmp/torchinductor_$USER as soon as torchvision is imported (every
    backbone build does): the command line keeps it in tlearn's cache instead, so that
    `tlearn serve` converting its engine on a first run leaves nothing in TMPDIR."""
    from tests.synthetic import make_folder

    photos = make_folder(tmp_path / "photos", 2, size=32)
    tmp, home = tmp_path / "tmp", tmp_path / "home"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "TLEARN_HOME": str(home), "TLEARN_OFFLINE": "1"}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    r = subprocess.run([*TLEARN, "featurize", str(photos), "-o", str(tmp_path / "f.jsonl"),
                        "--engine", "torch"], capture_output=True, text=True, env=env,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(tmp.iterdir()), "the command wrote temporary files"
    assert (home / "torch").is_dir()  # torch's cache, in tlearn's


def test_a_server_app_keeps_torchs_cache_out_of_the_temporary_folder(tmp_path):
    """tlearn.serve's app, built in Python (tests/served.py starts servers so), sets torch's
    cache before the model loads: torchvision imported afterwards writes nothing to TMPDIR."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "TLEARN_HOME": str(tmp_path / "home")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    code = ("from tlearn.serve import create_app; create_app('model.safetensors'); "
            "import torchvision.models")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(tmp.iterdir()) and (tmp_path / "home" / "torch").is_dir()

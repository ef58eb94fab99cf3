"""Fine-tuning through the real command: kill -9 and --resume, torchrun with 2 processes,
a TOML config, and a checkpoint from another run refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.cli_runner import run_tlearn

TLEARN = [sys.executable, "-m", "tlearn"]


def fit_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit",
        str(data),
        "--method",
        "finetune",
        "--image-size",
        "48",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--validation-size",
        "0.2",
        "--patience",
        "10",
        "--no-refit",
        "--out",
        str(out),
        *extra,
    ]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``tlearn ARGS`` in this process (tests/cli_runner.py); the killed run and torchrun
    start processes of their own."""
    return run_tlearn(*args)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tests.synthetic import make_folder

    return make_folder(tmp_path_factory.mktemp("ftdata") / "train", 20, size=48, seed=5)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "model.safetensors"
    r = run(fit_args(data, out, "--checkpoint-dir", str(out.parent / "run")))
    assert r.returncode == 0, r.stderr
    assert "held-out loss:" in r.stdout and "held-out accuracy:" in r.stdout
    assert "20% validation split" in r.stdout
    return out


def test_killed_run_resumes_to_the_same_model(data, uninterrupted, tmp_path):
    out, run_dir = tmp_path / "model.safetensors", tmp_path / "run"
    args = fit_args(data, out, "--checkpoint-dir", str(run_dir))
    proc = subprocess.Popen([*TLEARN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = run_dir / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if history.exists() and history.read_text().count("\n") >= 2:  # epoch 1 is done
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training ended before it could be killed"
    assert not out.exists()  # no model file from a run that did not finish
    epochs_done = history.read_text().count("\n") - 1
    assert 1 <= epochs_done < 4
    r = run([*args, "--resume"])
    assert r.returncode == 0, r.stderr
    assert f"resuming after epoch {epochs_done}" in r.stderr
    a, b = load_file(uninterrupted), load_file(out)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from an unbroken run"


def test_resume_refuses_a_checkpoint_from_another_run(data, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted.parent / "run", run_dir)
    r = run(
        fit_args(
            data,
            tmp_path / "m.safetensors",
            "--checkpoint-dir",
            str(run_dir),
            "--resume",
            "--lr",
            "0.01",
        )
    )
    assert r.returncode == 2 and "different run" in r.stderr and "params" in r.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_config_file_and_saved_settings(data, tmp_path):
    cfg = tmp_path / "ft.toml"
    cfg.write_text(
        '[fit]\noptimizer = "sgd"\nlr = 0.001\nmomentum = 0.9\nepochs = 1\nstrategy = "head"\n'
    )
    out = tmp_path / "m.safetensors"
    r = run(fit_args(data, out, "--config", str(cfg), "--epochs", "2"))
    assert r.returncode == 0, r.stderr
    settings = json.loads(Path(str(out) + ".settings.json").read_text())
    assert settings["optimizer"] == "sgd" and settings["lr"] == 0.001
    assert settings["epochs"] == 2  # the command line wins over the file
    assert (tmp_path / "m.run" / "history.csv").read_text().count("\n") == 3
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = 1\n")
    r = run(fit_args(data, out, "--config", str(bad)))
    assert r.returncode == 2 and "learning_rate" in r.stderr


def test_torchrun_two_processes_match_one(data, tmp_path):
    common = ["--strategy", "head", "--augmentation", "none", "--epochs", "2", "--lr", "0.01"]
    one = tmp_path / "one.safetensors"
    r = run([*fit_args(data, one), *common])
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "tlearn",
        *fit_args(data, two),
        *common,
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("model saved to") == 1  # only rank 0 writes and reports
    a, b = load_file(one), load_file(two)
    assert (a["head.weight"] - b["head.weight"]).abs().max() < 1e-4

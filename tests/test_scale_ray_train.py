"""Fine-tuning on Ray Train through the real command, against `torchrun --nproc_per_node 2`:
the same weights, even when a training worker is SIGKILLed after the first epoch's
checkpoint (Ray Train restarts the group, which resumes from that checkpoint).

The job joins the test run's one Ray head (conftest's ``ray_head``) with --address, as on a
cluster, rather than starting an instance of its own (8-20 s on 2 cores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytest.importorskip("ray.train", reason="the Ray tests need the extra: pip install 'tlearn[ray]'")

pytestmark = pytest.mark.slow

TLEARN = [sys.executable, "-m", "tlearn"]


def fit_args(data: Path, out: Path) -> list[str]:
    return ["fit", str(data), "--method", "finetune", "--strategy", "full",
            "--augmentation", "none", "--image-size", "48", "--epochs", "3", "--batch-size", "8",
            "--lr", "0.001", "--validation-size", "0.2", "--patience", "10", "--no-refit",
            "--out", str(out)]  # fmt: skip


@pytest.fixture(scope="module")
def env(ray_head) -> dict[str, str]:
    """The head's environment (its token), one thread per process, a wide terminal."""
    return {**ray_head.env, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tests.synthetic import make_folder

    # 10 per class: 24 training images, 12 for each of the two workers
    return make_folder(tmp_path_factory.mktemp("raytrain") / "train", 10, size=48, seed=5)


def test_ray_train_matches_torchrun_and_survives_a_killed_worker(data, env, ray_head, tmp_path):
    ref = tmp_path / "torchrun.safetensors"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29518", "-m", "tlearn", *fit_args(data, ref)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "ray.safetensors"
    proc = subprocess.Popen(
        [*TLEARN, *fit_args(data, out), "--cluster", "ray", "--address", ray_head.address,
         "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    run = tmp_path / "ray.run"
    pid_file = run / "ray-workers" / "rank-1.pid"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if pid_file.exists() and list((run / "ray" / "train").glob("checkpoint_*")):
            break  # epoch 1 is reported, with its checkpoint
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before a worker could be killed"
    killed = int(pid_file.read_text())
    os.kill(killed, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    said = " ".join(stdout.split())
    assert "2 Ray Train workers" in said and "held-out accuracy" in said
    assert int(pid_file.read_text()) != killed, "the killed worker was not replaced"
    history = (run / "worker-0" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]

    a, b = load_file(ref), load_file(out)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, f"Ray Train's weights differ from torchrun's by {worst}"

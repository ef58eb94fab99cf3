"""Batch prediction at scale, through the real command: 10,000 small JPEGs from a zip,
flat peak memory from 1,000 to 10,000 of them, and a run killed with SIGKILL that resumes
without redoing or losing rows (on 6,000 of them: a kill after a thousand rows proves as
much as one after ten)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cli_runner import run_tlearn
from tlearn import LinearProbe, save

pytestmark = pytest.mark.slow  # 11,000 images predicted, 6,000 again: a minute on 2 cores

# Runs the CLI and reports the process's own peak RSS (KiB on Linux) on stderr at exit.
WRAPPER = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF)"
    ".ru_maxrss, file=sys.stderr))\n"
    "sys.argv = ['tlearn', *sys.argv[1:]]\n"
    "from tlearn.cli import main\nmain()\n"
)


@pytest.fixture(scope="module")
def model(shapes3, tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "p32.safetensors"
    save(LinearProbe(image_size=32, Cs=[1.0]).fit(shapes3[0], shapes3[1]), path)
    return path


@pytest.fixture(scope="module")
def big_zip(tmp_path_factory):
    """10,000 JPEGs of 32 px in ten folders of 1,000 (four shapes, 250 each)."""
    from tests.synthetic import GEOMETRY, make_zip

    path = tmp_path_factory.mktemp("big") / "big.zip"
    return make_zip(path, {f"part{i}": 250 for i in range(10)}, classes=GEOMETRY, size=32)


def predict(model, args: list[str]) -> tuple[subprocess.CompletedProcess[str], int]:
    r = subprocess.run(
        [sys.executable, "-c", WRAPPER, "predict", str(model), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "200"},
    )
    rss = int(r.stderr.rsplit("MAXRSS", 1)[1].split()[0])
    return r, rss


def test_memory_stays_flat_from_1000_to_10000_images(model, big_zip, tmp_path):
    small, rss_small = predict(
        model, [f"{big_zip}/part0", "--output", str(tmp_path / "small.jsonl")]
    )
    assert small.returncode == 0, small.stderr
    assert "1000 images predicted, 0 failed" in small.stdout
    big, rss_big = predict(
        model, [str(big_zip), "--output", str(tmp_path / "big.csv"), "--top-k", "2"]
    )
    assert big.returncode == 0, big.stderr
    assert "10000 images predicted, 0 failed" in big.stdout
    with open(tmp_path / "big.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10_000 and len({r["path"] for r in rows}) == 10_000
    assert all(r["label"] and len(json.loads(r["top_labels"])) == 2 for r in rows)
    print(
        f"peak RSS: {rss_small / 1024:.0f} MiB for 1,000 images, "
        f"{rss_big / 1024:.0f} MiB for 10,000"
    )
    assert rss_big < rss_small * 1.15 + 64 * 1024  # KiB: ten times the images, ~same memory


def test_killed_prediction_resumes_without_redoing(model, big_zip, tmp_path):
    out = tmp_path / "preds.jsonl"
    args = [f"{big_zip}/part{i}" for i in range(6)] + ["--output", str(out)]  # 6,000
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlearn", "predict", str(model), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.stat().st_size > 300_000:  # over a thousand rows written
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "prediction ended before it could be killed"
    refused = run_tlearn("predict", str(model), *args)  # in this process: no RSS to measure
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = run_tlearn("predict", str(model), *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    done_before = int(resumed.stdout.split("; ")[1].split()[0])
    assert done_before > 1000
    lines = out.read_text().splitlines()
    paths = [json.loads(line)["path"] for line in lines]
    assert len(paths) == 6_000 and len(set(paths)) == 6_000

"""Prediction and featurisation on Ray, against single-process `tlearn predict` and
`tlearn featurize` on real CIFAR-10 photos: the same rows with a bad-file mix while a
predictor actor is SIGKILLed mid-job, a driver SIGKILLed then resumed, and a local
instance started while a separate head runs.

The jobs join the test run's one Ray head (conftest's ``ray_head``: `ray start --head` on
127.0.0.1, usage statistics off) and run through the real command, as a user runs them.
Each `tlearn --cluster ray` run costs 15-25 s before its first image on 2 cores (Ray
Data's start, actors importing torch), so the tests share runs where their claims allow."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="the Ray tests need the extra: pip install 'tlearn[ray]'")
pd = pytest.importorskip("pandas")

pytestmark = [pytest.mark.needs_data, pytest.mark.slow]

TLEARN = [sys.executable, "-m", "tlearn"]
MODEL = "imagenet:efficientnet_lite0"
# 1,202 rows: five parts of SHARD_ROWS (256), so a driver killed after two parts still has
# three to resume, and each of the two actors has a second part to retry when one is killed
N_PER_CLASS = 120
N_ROWS = 10 * N_PER_CLASS + 2
N_PARTS = -(-N_ROWS // 256)


@pytest.fixture(scope="module")
def photos(cifar_zip, tmp_path_factory) -> Path:
    """1,200 CIFAR-10 test JPEGs in class folders, plus two files that are not images."""
    root = tmp_path_factory.mktemp("ray-photos") / "photos"
    with zipfile.ZipFile(cifar_zip) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("test/") and n.endswith(".jpg"))
        taken: dict[str, int] = {}
        for name in names:
            cls = name.split("/")[1]
            if taken.get(cls, 0) < N_PER_CLASS:
                taken[cls] = taken.get(cls, 0) + 1
                target = root / cls / Path(name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    good = (root / "cat" / "0000.jpg").read_bytes()
    (root / "cat" / "0000-truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "dog" / "notes.jpg").write_text("not a picture")
    return root


@pytest.fixture(scope="module")
def env(ray_head, tmp_path_factory) -> dict[str, str]:
    """The head's environment (its token), a home of this module's, a wide terminal."""
    home = tmp_path_factory.mktemp("ray-home")
    return {**ray_head.env, "TLEARN_HOME": str(home), "TLEARN_OFFLINE": "1", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def head(ray_head) -> str:
    return ray_head.address


def tlearn(
    *args: str, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TLEARN, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def single(photos, env, tmp_path_factory) -> pd.DataFrame:
    """Single-process `tlearn predict` on the photos: the reference."""
    out = tmp_path_factory.mktemp("single") / "preds.parquet"
    r = tlearn("predict", MODEL, str(photos), "-o", str(out), "--top-k", "3", env=env)
    assert r.returncode == 1, r.stderr  # the two bad files failed; every row is written
    return pd.read_parquet(out)


def assert_status(r: subprocess.CompletedProcess[str]) -> None:
    """Exit status 1 exactly when an image of this run failed (issue 27.14)."""
    failed = int(re.search(r"(\d+) failed", " ".join(r.stdout.split())).group(1))
    assert r.returncode == (1 if failed else 0), r.stderr[-3000:]


def assert_same_predictions(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.sort_values("row_id").reset_index(drop=True)
    assert got["row_id"].is_unique and len(got) == len(want)
    assert (got["row_id"].to_numpy() == want["row_id"].to_numpy()).all()
    assert (got["path"] == want["path"]).all()
    assert (got["error"] == want["error"]).all()
    assert (got["label"].fillna("") == want["label"].fillna("")).all()
    ok = want["error"] == ""
    for a, b in zip(got["top_labels"][ok], want["top_labels"][ok], strict=True):
        assert list(a) == list(b)
    gp = np.stack(got["top_probabilities"][ok].to_numpy())
    wp = np.stack(want["top_probabilities"][ok].to_numpy())
    assert np.abs(gp - wp).max() < 1e-5


def test_ray_featurize_equals_single_process(photos, head, env, tmp_path):
    cat = photos / "cat"
    local, ray_out = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    r = tlearn("featurize", str(cat), "-o", str(local), env=env)
    assert r.returncode == 1, r.stderr  # the truncated photo
    r = tlearn("featurize", str(cat), "-o", str(ray_out), "--cluster", "ray",
               "--address", head, env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr[-3000:]
    a, b = pd.read_parquet(local), pd.read_parquet(ray_out)
    assert len(a) == len(b) == N_PER_CLASS + 1
    assert (a["row_id"] == b["row_id"]).all() and (a["error"] == b["error"]).all()
    ok = a["error"] == ""
    fa, fb = np.stack(a["features"][ok].to_numpy()), np.stack(b["features"][ok].to_numpy())
    assert fa.shape == (N_PER_CLASS, 1280) and np.abs(fa - fb).max() < 1e-5
    assert b["features"][~ok].isna().all()


def _wait_for(what, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_ray_predict_equals_single_process_when_an_actor_is_killed(
    photos, single, head, env, tmp_path
):
    """One run for two claims: the rows of single-process `tlearn predict`, bad files
    included, and a predictor actor SIGKILLed after its first part is restarted by Ray and
    its shard retried, with no row lost or written twice."""
    out = tmp_path / "ray.parquet"
    proc = subprocess.Popen(
        [*TLEARN, "predict", MODEL, str(photos), "-o", str(out), "--top-k", "3",
         "--cluster", "ray", "--address", head, "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    workers = out / ".tlearn-workers"

    def busy_worker() -> int | None:  # a worker that has written at least one part
        for f in workers.glob("*.pid") if workers.is_dir() else []:
            if f.read_text().strip() not in ("", "0"):
                return int(f.stem)
        return None

    pid = _wait_for(busy_worker)
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 1, stderr[-3000:]  # 1: some images failed
    assert f"{N_ROWS - 2} images predicted, 2 failed" in stdout
    got = pd.read_parquet(out)
    assert_same_predictions(got, single)
    errors = dict(zip(got["path"], got["error"], strict=True))
    assert "truncated" in errors[str(photos / "cat" / "0000-truncated.jpg")].lower()
    assert "not a recognised image" in errors[str(photos / "dog" / "notes.jpg")]
    parts = sorted(p.name for p in out.iterdir())
    assert parts[0] == "part-000000000.parquet" and len(parts) == N_PARTS


def test_killed_driver_then_resume_predicts_only_the_rest(photos, single, head, env, tmp_path):
    out = tmp_path / "ray.parquet"
    args = ["predict", MODEL, str(photos), "-o", str(out), "--top-k", "3",
            "--cluster", "ray", "--address", head, "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(
        [*TLEARN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    _wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts_before = len(list(out.glob("part-*.parquet")))
    assert 2 <= parts_before < N_PARTS
    r = tlearn(*args, env=env)
    assert r.returncode == 2 and "--resume" in r.stderr  # never silently overwritten
    r = tlearn(*args, "--resume", env=env)
    assert_status(r)
    assert "were already done" in r.stdout
    skipped = int(r.stdout.split("; ")[1].split()[0])
    assert 0 < skipped < N_ROWS
    assert_same_predictions(pd.read_parquet(out), single)
    r = tlearn(*args, "--resume", env=env)  # nothing left to do: nothing changes
    assert r.returncode == 0, r.stderr[-3000:]
    said = " ".join(r.stdout.split())
    assert f"0 images predicted, 0 failed; {N_ROWS} were already done" in said
    assert_same_predictions(pd.read_parquet(out), single)


def test_without_an_address_a_local_instance_predicts_the_same_rows(
    photos, single, head, env, tmp_path
):
    """Without --address a local instance is started (not the running head), and it
    predicts what single-process `tlearn predict` does (one class and a bad file: its
    start is what costs here, not the images)."""
    local = tmp_path / "local.parquet"
    r = tlearn("predict", MODEL, str(photos / "dog"), "-o", str(local), "--top-k", "3",
               "--cluster", "ray", env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr[-3000:]  # notes.jpg
    got = pd.read_parquet(local).sort_values("row_id").reset_index(drop=True)
    want = single[single["path"].str.startswith(f"{photos / 'dog'}{os.sep}")]
    assert len(got) == len(want) == N_PER_CLASS + 1
    assert (got["path"].to_numpy() == want["path"].to_numpy()).all()
    got["row_id"] = want["row_id"].to_numpy()  # the same images, numbered in another input
    assert_same_predictions(got, want.reset_index(drop=True))
    shutil.rmtree(local)


def test_resume_with_an_image_listed_twice_completes(photos, head, env, tmp_path):
    """Resume took the done rows as a set of paths and checked completeness in rows: with
    an image listed twice, every --resume failed ("rerun with --resume")."""
    cat = sorted(str(p) for p in (photos / "cat").glob("00*.jpg"))[:3]
    inputs = [cat[0], cat[1], cat[0], cat[2]]
    out = tmp_path / "twice.parquet"
    r = tlearn("predict", MODEL, *inputs[:3], "-o", str(out), env=env)  # rows 0-2 done
    assert r.returncode == 1, r.stderr[-3000:]  # cat[0] is the truncated photo, twice
    r = tlearn("predict", MODEL, *inputs, "-o", str(out), "--resume", "--cluster", "ray",
               "--address", head, "--workers", "1", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 images predicted, 0 failed; 3 were already done" in " ".join(r.stdout.split())
    got = pd.read_parquet(out).sort_values("row_id")
    assert got["row_id"].tolist() == [0, 1, 2, 3] and got["path"].tolist() == inputs


def test_any_failure_to_read_one_image_becomes_its_error_row(tmp_path, monkeypatch):
    """The decode task caught ImageReadError only: any other exception (an encrypted zip
    member's RuntimeError, an OSError from a failing disk) failed the block, and the job."""
    import tlearn.data.loader
    from tests.synthetic import make_folder
    from tlearn.data.images import Preprocessing
    from tlearn.scale.ray import _decode

    paths = sorted(str(p) for p in make_folder(tmp_path, 1).rglob("*.jpg"))[:3]
    real = tlearn.data.loader.load_preprocessed
    failures = {1: RuntimeError("File is encrypted"), 2: OSError(5, "Input/output error")}

    def flaky(X, i, pre):
        if i in failures:
            raise failures[i]
        return real(X, i, pre)

    monkeypatch.setattr(tlearn.data.loader, "load_preprocessed", flaky)
    pre = Preprocessing(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    batch = {"row_id": np.arange(3), "path": np.asarray(paths, dtype=object)}
    decoded = _decode(batch, pre)
    assert decoded["error"][0] == "" and decoded["pixels"][0].any()
    assert "RuntimeError: File is encrypted" in decoded["error"][1]
    assert "Input/output error" in decoded["error"][2] and not decoded["pixels"][2].any()

"""Prediction and featurisation on Ray, against single-process `tlearn predict` and
`tlearn featurize` on real CIFAR-10 photos: the same rows with a bad-file mix through a
driver SIGKILLed then resumed while a predictor actor is SIGKILLed (with images listed
twice), and the same features from a local instance started while a separate head runs.

The jobs run through the real command, as a user runs them, and join the test run's one
Ray head (conftest's ``ray_head``: `ray start --head` on 127.0.0.1, usage statistics off)
but for the local instance's. Each `tlearn --cluster ray` run costs 15-25 s before its
first image on 2 cores (Ray Data's start, actors importing torch), so the tests share runs
where their claims allow, and cut the photos into parts of ``--part-rows 32``: eleven
parts from 332 rows, where parts of the default 256 took 1,202 rows for five. The
single-process references run in this process (tests/cli_runner.py); a Ray driver, or a
run to be killed, never does."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli_runner import run_tlearn

pytest.importorskip("ray", reason="the Ray tests need the extra: pip install 'tlearn[ray]'")
pd = pytest.importorskip("pandas")

pytestmark = [pytest.mark.needs_data, pytest.mark.slow]

TLEARN = [sys.executable, "-m", "tlearn"]
MODEL = "imagenet:efficientnet_lite0"
PART_ROWS = 32
# 322 photo rows (two of them bad files), then one image of each of the first ten parts
# listed again: 332 rows, eleven parts of PART_ROWS, the last holding the ten repeats. A
# driver killed after two parts leaves six or more to resume, parts for both actors when
# one is killed; and whichever parts the killed run finished, some image has one of its
# two rows done and the other not
N_PER_CLASS = 32
N_PHOTO_ROWS = 10 * N_PER_CLASS + 2
N_TWICE = N_PHOTO_ROWS // PART_ROWS
N_ROWS = N_PHOTO_ROWS + N_TWICE
N_PARTS = -(-N_ROWS // PART_ROWS)
assert N_PARTS == N_TWICE + 1 == 11


@pytest.fixture(scope="module")
def photos(cifar_zip, tmp_path_factory) -> Path:
    """320 CIFAR-10 test JPEGs in class folders, plus two files that are not images."""
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
def twice(photos) -> dict[int, str]:
    """The images listed twice, by their first row: the first photo of each of the first
    N_TWICE parts."""
    from tlearn.data import iter_image_paths

    rows = list(iter_image_paths([str(photos)]))
    assert len(rows) == N_PHOTO_ROWS
    photo_rows = [i for i, p in enumerate(rows) if not p.endswith(("truncated.jpg", "notes.jpg"))]
    firsts = [min(i for i in photo_rows if i >= k * PART_ROWS) for k in range(N_TWICE)]
    assert all(i // PART_ROWS == k for k, i in enumerate(firsts))
    return {i: rows[i] for i in firsts}


@pytest.fixture(scope="module")
def inputs(photos, twice) -> list[str]:
    """The photo folder, then the images of ``twice`` again."""
    return [str(photos), *twice.values()]


@pytest.fixture(scope="module")
def single(inputs, env, tmp_path_factory) -> pd.DataFrame:
    """Single-process `tlearn predict` on the inputs, in this process: the reference."""
    out = tmp_path_factory.mktemp("single") / "preds.parquet"
    r = run_tlearn("predict", MODEL, *inputs, "-o", str(out), "--top-k", "3", env=env)
    assert r.returncode == 1, r.stderr  # the two bad files failed; every row is written
    got = pd.read_parquet(out)
    assert len(got) == N_ROWS and got["path"].tolist()[N_PHOTO_ROWS:] == inputs[1:]
    return got


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


def test_without_an_address_a_local_instance_featurizes_as_a_single_process(
    photos, head, env, tmp_path
):
    """One run for two claims: Ray's feature rows are single-process `tlearn featurize`'s
    (in parts of --part-rows), and without --address a local Ray instance is started for
    the job (not the head that runs beside it) and gives them. One class and a bad file:
    the instance's start is what costs here, not the images; and one predictor actor
    (--workers 1), not one for each core, each importing torch on the 2 cores the test
    run has."""
    cat = photos / "cat"
    local, ray_out = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    r = run_tlearn("featurize", str(cat), "-o", str(local), env=env)
    assert r.returncode == 1, r.stderr  # the truncated photo
    r = tlearn("featurize", str(cat), "-o", str(ray_out), "--cluster", "ray",
               "--part-rows", "16", "--workers", "1", env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr[-3000:]
    assert sorted(p.name for p in ray_out.glob("part-*")) == [
        f"part-{i:09d}.parquet" for i in (0, 16, 32)
    ]
    a, b = pd.read_parquet(local), pd.read_parquet(ray_out)
    assert len(a) == len(b) == N_PER_CLASS + 1
    assert (a["row_id"] == b["row_id"]).all() and (a["error"] == b["error"]).all()
    ok = a["error"] == ""
    fa, fb = np.stack(a["features"][ok].to_numpy()), np.stack(b["features"][ok].to_numpy())
    assert fa.shape == (N_PER_CLASS, 1280) and np.abs(fa - fb).max() < 1e-5
    assert b["features"][~ok].isna().all()


@pytest.mark.parametrize("value", ["0", "-1", "ten"])
def test_a_bad_part_rows_is_one_error_line(value, tmp_path):
    r = run_tlearn("predict", MODEL, str(tmp_path), "-o", str(tmp_path / "p.parquet"),
                   "--cluster", "ray", "--part-rows", value)  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "--part-rows" in r.stderr and not (tmp_path / "p.parquet").exists()


def test_part_rows_without_cluster_ray_is_refused(tmp_path):
    """--part-rows sizes Ray's tasks: in a single process it would be silently ignored."""
    r = run_tlearn("featurize", str(tmp_path), "-o", str(tmp_path / "f.parquet"),
                   "--part-rows", "64")  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("error: --part-rows") and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "--cluster ray" in r.stderr


def _wait_for(what, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _done_rows(out: Path) -> set[int]:
    return set(pd.read_parquet(out, columns=["row_id"])["row_id"].tolist())


def _actors(out: Path) -> dict[int, int]:
    """The predictor actors of the runs into ``out`` (by their PID files), with how many
    parts each wrote."""
    folder = out / ".tlearn-workers"
    found = {}
    for f in folder.glob("*.pid") if folder.is_dir() else []:
        text = f.read_text().strip()
        if text:
            found[int(f.stem)] = int(text)
    return found


def test_killed_driver_and_actor_then_resume_give_the_single_process_rows(
    photos, twice, inputs, single, head, env, tmp_path
):
    """Ray's rows are single-process `tlearn predict`'s, bad files included, through two
    kills. A driver SIGKILLed after two parts leaves complete parts: the same command is
    then refused without --resume, and --resume predicts only the rows they lack, even
    with one of its predictor actors SIGKILLed after its first part (Ray restarts the actor
    and retries its shard, with no row lost or written twice); a --resume with nothing
    left changes nothing.

    And a resume with an image listed twice completes: resume took the done rows as a set
    of paths and checked completeness in rows, so with an image listed twice every
    --resume failed ("rerun with --resume"). Ten images are listed twice here, so that
    when the driver dies one of them has one row done and the other not, and the last
    --resume finds both rows of each done."""
    out = tmp_path / "ray.parquet"
    args = ["predict", MODEL, *inputs, "-o", str(out), "--top-k", "3", "--cluster", "ray",
            "--address", head, "--part-rows", str(PART_ROWS)]  # fmt: skip
    # one worker: at most its part and one queued can still land after the kill
    first = [*TLEARN, *args, "--workers", "1"]
    proc = subprocess.Popen(first, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        _wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 2 or proc.poll() is not None)
    finally:
        proc.send_signal(signal.SIGKILL)
        stderr = proc.communicate()[1]
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself: {stderr[-3000:]}"
    # the driver's actors die with it (Ray's fate sharing): no part lands after this
    dead = set(_actors(out))
    _wait_for(lambda: not any(_running(pid) for pid in dead), timeout=120)
    parts_before = len(list(out.glob("part-*.parquet")))
    assert 2 <= parts_before <= 5  # two seen, and the one in hand and one queued at most
    done = _done_rows(out)
    pairs = [(i, N_PHOTO_ROWS + k) for k, i in enumerate(twice)]  # an image's two rows
    assert any((a in done) != (b in done) for a, b in pairs)

    from tlearn.scale import ray as scale_ray

    def no_driver_here(*args, **kwargs):
        raise AssertionError("the refused run went on to start a Ray driver")

    with pytest.MonkeyPatch.context() as mp:  # refused before Ray: run in this process
        mp.setattr(scale_ray, "connect", no_driver_here)
        r = run_tlearn(*first[len(TLEARN) :], env=env)
    assert r.returncode == 2 and "--resume" in r.stderr  # never silently overwritten
    assert _done_rows(out) == done

    # two workers, one SIGKILLed once it has written a part: with six parts or more left,
    # it has a shard in hand, and each worker more to do
    proc = subprocess.Popen(
        [*TLEARN, *args, "--workers", "2", "--resume"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip

    def busy_worker() -> int | None:  # a worker of this run that has written a part
        for pid, parts in _actors(out).items():
            if pid not in dead and parts and _running(pid):
                return pid
        return None

    try:
        pid = _wait_for(lambda: busy_worker() or proc.poll() is not None)
        assert proc.poll() is None, f"the run ended first: {proc.communicate()[1][-3000:]}"
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    said = " ".join(stdout.split())
    counts = re.search(r"(\d+) images predicted, (\d+) failed; (\d+) were already done", said)
    assert counts, stderr[-3000:]
    predicted, failed, skipped = (int(n) for n in counts.groups())
    bad = set(single["row_id"][single["error"] != ""])
    assert len(bad) == 2 and failed == len(bad - done)
    assert skipped == len(done) and predicted + failed == N_ROWS - len(done)
    # exit status 1 exactly when an image of this run failed (issue 27.14)
    assert proc.returncode == (1 if failed else 0), stderr[-3000:]
    got = pd.read_parquet(out)
    assert_same_predictions(got, single)
    errors = dict(zip(got["path"], got["error"], strict=True))
    assert "truncated" in errors[str(photos / "cat" / "0000-truncated.jpg")].lower()
    assert "not a recognised image" in errors[str(photos / "dog" / "notes.jpg")]
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    left = N_ROWS - len(done)  # the resumed run's parts: those rows, PART_ROWS at a time
    assert parts[0] == "part-000000000.parquet"
    assert len(parts) == parts_before + -(-left // PART_ROWS)

    r = tlearn(*args, "--workers", "1", "--resume", env=env)  # nothing left: nothing changes
    assert r.returncode == 0, r.stderr[-3000:]
    said = " ".join(r.stdout.split())
    assert f"0 images predicted, 0 failed; {N_ROWS} were already done" in said
    assert_same_predictions(pd.read_parquet(out), single)


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


def test_a_multi_label_model_gives_the_rows_of_tlearn_predict(photos, head, env, tmp_path):
    """A multi-label model through Ray: the same rows as `tlearn predict` in one process,
    ``above_threshold`` included (each photo labelled with its class and animal or
    vehicle; two classes, so one actor start is what costs: one actor, --workers 1)."""
    from tlearn import MultiLabelProbe, save

    X = [str(p) for cls in ("cat", "ship") for p in sorted((photos / cls).glob("[0-9]*.jpg"))]
    X = [p for p in X if "truncated" not in p]
    labels = [[Path(p).parent.name, "animal" if "/cat/" in p else "vehicle"] for p in X]
    probe = MultiLabelProbe(image_size=32, engine="torch", flip_average=False).fit(X, labels)
    model = save(probe, tmp_path / "multi.safetensors")
    inputs = [str(photos / "cat"), str(photos / "ship")]
    local, ray_out = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    r = run_tlearn("predict", str(model), *inputs, "-o", str(local), env=env)
    assert r.returncode == 1, r.stderr  # the truncated photo
    r = tlearn("predict", str(model), *inputs, "-o", str(ray_out), "--cluster", "ray",
               "--address", head, "--part-rows", "16", "--workers", "1", env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr[-3000:]
    want, got = pd.read_parquet(local), pd.read_parquet(ray_out).sort_values("row_id")
    assert list(got.columns) == list(want.columns) and "above_threshold" in got.columns
    assert_same_predictions(got.reset_index(drop=True), want)
    ok = want["error"] == ""
    for a, b in zip(got["above_threshold"][ok], want["above_threshold"][ok], strict=True):
        assert list(a) == list(b)
    assert {frozenset(a) for a in want["above_threshold"][ok]} >= {frozenset({"cat", "animal"})}

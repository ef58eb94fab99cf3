"""Shared fixtures. Unit and contract tests are hermetic: they write small real image files
(coloured shapes, :mod:`tests.synthetic`) into temporary folders and zips. Only the accuracy
tests marked ``needs_data`` read the CIFAR-10 JPEG zip from ../shared/data, and they skip,
saying why, when it is absent.

The suite keeps one warm backbone per session (load_backbone caches the build), small input
sizes, and one Ray head for the whole run (``ray_head``), started only when a test asks.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import SHAPES, make_folder, make_zip

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ZIP = Path(os.environ.get("TLEARN_CIFAR_ZIP", ROOT.parent / "shared/data/cifar10-jpeg.zip"))
CLASSES3 = list(SHAPES)


#: Slow tests in files of other owners, marked ``slow`` here rather than in each file (the
#: Ray and scale files mark themselves): `make check` leaves them out, `make test` and CI
#: run them. The figure is each file's or test's CPU seconds (the process and the commands
#: it waits for), measured on 2 shared cores: about its wall time on 2 idle ones, or more
#: where torch used both. A test joins a list from about 2 s.
SLOW_FILES: dict[str, str] = {
    "test_cli.py": "272 s: fit with its defaults (auto), the demo, predict on several models",
    "test_common.py": "176 s: the contract over every estimator on every engine",
    "test_predictor.py": "216 s: 100 rounds of 8 threads on each engine",
    "test_training.py": "78 s: auto's candidates, fine-tuning refits",
    "test_finetune_cli.py": "torchrun, killed and resumed runs",
    "test_serve.py": "servers started and stopped under load",
    "test_serve_limits.py": "a server flooded with uploads",
    "test_serve_page.py": "the page in Chromium",
    "test_doctor_edges.py": "16 s: a doctor run for each edge case",
    "test_engines.py": "80 s: conversions to ONNX and OpenVINO, their caches, the bench command",
    "test_ensemble.py": "89 s: Lite1 and Lite2 loaded, an ensemble fitted and exported",
    "test_export.py": "103 s: ONNX and OpenVINO exports, int8 calibration, the CLI",
    "test_export_metadata.py": "25 s: ONNX and OpenVINO exports",
    "test_serve_docs.py": "15 s: the API pages rendered offline",
}
#: Single slow tests in files that are otherwise fast (every parameter of each).
SLOW_TESTS: dict[str, dict[str, str]] = {
    "test_architecture.py": {
        "test_cluster_ray_without_the_extra_names_it": "5.7 s",
        "test_import_tlearn_imports_neither_torch_nor_sklearn": "5.0 s",
    },
    "test_backbones.py": {
        "test_embedded_lite0_says_espresso": "6.1 s",
        "test_torchvision_weights_from_torch_hub_cache": "2.5 s",
        "test_lite1_and_lite2_load_from_their_packages": "3.1 s",
    },
    "test_cli_errors.py": {
        "test_an_unreadable_training_image_suggests_skip_bad_images": "2.3 s",
        "test_fit_makes_the_folder_of_its_output": "2.5 s",
    },
    "test_doctor_duplicates.py": {
        "test_leakage_pairs_test_images_with_their_training_originals": "9.7 s",
        "test_near_duplicates_find_every_planted_copy": "7.1 s",
        "test_every_doctor_stage_reports_progress": "6.8 s",
    },
    "test_doctor_labels.py": {
        "test_same_issues_and_ranking_as_cleanlab_on_many_random_problems": "5.1 s",
        "test_second_pass_without_the_flagged_images_ranks_the_flips_better": "16 s",
    },
    "test_evaluation_inference.py": {
        "test_resume_after_a_tear_at_every_byte_of_the_last_rows": "4.5 s",
    },
    "test_features.py": {
        "test_estimator_contract": "14 s",
        "test_pipeline_and_grid_search_over_paths": "7.3 s",
    },
    "test_finetune.py": {
        "test_data_errors_come_before_training": "16 s",
        "test_fine_tuned_model_file_round_trip": "12 s",
        "test_head_only_training_learns_and_writes_history": "26 s",
        "test_lp_ft_trains_head_then_backbone": "34 s",
        "test_head_strategy_leaves_the_backbone_untouched": "15 s (the fitted model it shares)",
    },
    "test_fuzz_model_files.py": {
        "test_mutated_metadata_loads_or_is_refused": "5.5 s",
    },
    "test_heldout.py": {
        "test_fine_tuning_held_out_rows_are_the_validation_images_with_a_bad_image": "3.8 s",
        "test_resuming_a_finished_run_still_gives_a_held_out_estimate": "10 s",
    },
    "test_persistence.py": {
        "test_loading_stays_within_the_documented_budget": "10 s",
        "test_pipeline_round_trip": "4.5 s",
        "test_probe_round_trip_is_exact": "28 s",
    },
    "test_probe.py": {
        "test_calibration_lowers_the_calibration_error_on_held_out_images": "4.4 s",
        "test_probe_contract": "4.1 s",
        "test_probe_learns_the_classes": "5.8 s",
        "test_C_is_chosen_by_cross_validation_then_refit_on_everything": "5.7 s",
        "test_unreadable_training_images_are_left_out": "3.7 s",
    },
    "test_report.py": {
        "test_array_inputs_get_thumbnails_too": "4.3 s",
        "test_fine_tuned_report_has_training_curves": "8.2 s",
    },
}


#: Test files that share one worker under pytest-xdist (``make test`` runs two): the Ray
#: tests join one Ray head, started once per worker that needs it.
_GROUPS = {"test_scale_ray.py": "ray", "test_scale_ray_train.py": "ray"}

#: Each file's seconds in one process on 2 idle cores (``pytest --durations=0``, summed),
#: from 5 s. Under xdist the files are handed out dearest first (the longest-processing-
#: time rule), so that no long file starts last while the other worker sits idle: by
#: default xdist orders them by their number of tests, which put the Ray files (4 tests,
#: 200 s) at the end. Keep the figures roughly true when a file's cost changes a lot.
_SECONDS = {
    "test_scale_ray.py": 140, "test_common.py": 79, "test_engines.py": 77,
    "test_predictor.py": 64, "test_scale_ray_train.py": 62, "test_doctor.py": 55,
    "test_cli.py": 49, "test_training.py": 48, "test_multilabel.py": 48,
    "test_predict_scale.py": 45, "test_finetune_cli.py": 45, "test_cli_errors.py": 41,
    "test_serve.py": 33, "test_accuracy.py": 33, "test_export.py": 29, "test_docs.py": 22,
    "test_ensemble.py": 21, "test_doctor_duplicates.py": 20, "test_persistence.py": 19,
    "test_export_metadata.py": 19, "test_doctor_labels.py": 19, "test_probe.py": 16,
    "test_features.py": 15, "test_finetune.py": 14, "test_weights.py": 12,
    "test_architecture.py": 11, "test_serve_limits.py": 10, "test_multilabel_finetune.py": 10,
    "test_serve_page.py": 9, "test_doctor_edges.py": 8, "test_report.py": 7,
    "test_evaluation_inference.py": 7, "test_doctor_quality.py": 6,
}  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        test = getattr(item, "originalname", item.name)  # without its parameters
        if name in SLOW_FILES or test in SLOW_TESTS.get(name, {}):
            item.add_marker(pytest.mark.slow)
        # under `-n 2 --dist loadgroup`, a file's tests run on one worker: its module
        # fixtures (fitted models, servers) are made once
        item.add_marker(pytest.mark.xdist_group(_GROUPS.get(name, name)))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # with --no-loadscope-reorder: dearest first
        group_seconds: dict[str, int] = {}
        for name, seconds in _SECONDS.items():
            group = _GROUPS.get(name, name)
            group_seconds[group] = group_seconds.get(group, 0) + seconds
        order = {id(item): i for i, item in enumerate(items)}

        def dearest_first(item: pytest.Item) -> tuple[int, str, int]:
            group = _GROUPS.get(item.path.name, item.path.name)
            return -group_seconds.get(group, 0), group, order[id(item)]

        items.sort(key=dearest_first)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep caches out of the user's home, and never wait on a network that is not there.
    The workers of one run (pytest-xdist) share one home: an engine converted or
    calibrated by one is loaded by the other (each file written atomically)."""
    base = tmp_path_factory.getbasetemp()
    home = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tlearn-home"
    monkeypatch.setenv("TLEARN_HOME", str(home))
    monkeypatch.setenv("TLEARN_OFFLINE", "1")


def _forget_engines() -> None:
    import sys

    engines = sys.modules.get("tlearn.runtime.engines")  # not imported yet: nothing kept
    if engines is not None:
        engines.forget_engines()


@pytest.fixture(autouse=True)
def _fresh_engine_choices(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that patches something (``monkeypatch`` among its own arguments: what
    ``auto`` may choose, a threshold, a runtime made to fail) sees ``auto`` check its
    engines anew, and leaves no engine or verdict behind. Other tests share them, as the
    calls of one process do: a verdict costs 3-5 s (each candidate engine built and run),
    which every test that fits a model paid again (issue 26)."""
    patches = "monkeypatch" in inspect.signature(request.function).parameters
    if patches:
        _forget_engines()
    yield
    if patches:
        _forget_engines()


@pytest.fixture(scope="session")
def cifar_zip() -> Path:
    """The real CIFAR-10 JPEG zip, for the tests on real photos (marked ``needs_data``)."""
    if not CIFAR_ZIP.is_file():
        pytest.skip(
            f"needs real photos: the CIFAR-10 JPEG zip is not at {CIFAR_ZIP} "
            "(tests read ../shared/data/cifar10-jpeg.zip, or set TLEARN_CIFAR_ZIP)"
        )
    return CIFAR_ZIP


@pytest.fixture(scope="session")
def shapes_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip laid out like the CIFAR-10 one: train/<class>/ (40 each), test/<class>/ (10),
    64 px crops of three photos."""
    root = tmp_path_factory.mktemp("shapes")
    return make_zip(root / "shapes.zip", {"train": 40, "test": 10}, seed=0, size=64)


def _split(zip_path: Path, split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(m for m in zf.namelist() if m.startswith(f"{split}/"))
    by_class: dict[str, list[str]] = {}
    for m in names:
        by_class.setdefault(m.split("/")[1], []).append(m)
    members = [m for c in sorted(by_class) for m in by_class[c][:n]]
    order = np.random.default_rng(0).permutation(len(members))  # mixed, like load_files
    members = [members[i] for i in order]
    paths = np.array([f"{zip_path}/{m}" for m in members], dtype=object)
    return paths, np.array([m.split("/")[1] for m in members], dtype=object)


@pytest.fixture(scope="session")
def shapes3(shapes_zip: Path):
    """20 train and 10 test images of 3 classes, as paths inside the zip (like CIFAR's)."""
    X, y = _split(shapes_zip, "train", 20)
    X_test, y_test = _split(shapes_zip, "test", 10)
    return X, y, X_test, y_test


@pytest.fixture(scope="session")
def calibration_set(shapes_zip: Path):
    """120 training images of 3 classes: enough to calibrate int8."""
    return _split(shapes_zip, "train", 40)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A real folder of class sub-folders: 6 JPEGs for each of 3 classes."""
    return make_folder(tmp_path / "train", 6, seed=3)


@pytest.fixture(scope="session")
def features64():
    """A fitted PretrainedFeatures at 64 px (the real lite0 weights), shared by tests."""
    from tlearn import PretrainedFeatures

    return PretrainedFeatures("efficientnet_lite0", image_size=64, batch_size=16).fit()


@dataclass(frozen=True)
class RayHead:
    """A running ``ray start --head``: its ``address``, and the environment (token, usage
    statistics off) every process that joins it runs with."""

    address: str
    env: dict[str, str]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on loopback now (held together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """One Ray head for the whole run, on loopback, started on first use (8-20 s) and
    stopped at the end; the Ray tests join it with ``--address``.

    Every port it opens is a free one (two test runs on one machine, or another user's
    Ray, would otherwise meet on 6379 or 52365), it has a token of its own whatever
    ~/.ray holds, and it is stopped by its own process group: ``ray stop`` would stop
    every Ray instance of the machine."""
    pytest.importorskip("ray", reason="the Ray tests need the extra: pip install 'tlearn[ray]'")
    # a short folder: Ray's Unix sockets live under it, and their paths may not pass 107
    # bytes (pytest's own temporary folders are longer under xdist or a deep TMPDIR)
    temp = Path(tempfile.mkdtemp(prefix="tlearn-ray-"))
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback stays loopback
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # nothing to drain: stop at once
    }
    gcs, agent, agent_grpc, runtime_env, metrics = _free_ports(5)
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=3",
           "--object-store-memory=1500000000", "--node-ip-address=127.0.0.1",
           f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
           f"--metrics-export-port={metrics}", "--include-dashboard=false",
           "--disable-usage-stats", f"--temp-dir={temp}"]  # fmt: skip
    log = temp / "ray-start.log"
    with open(log, "wb") as out:
        # its own process group: the head and everything it starts, stopped together
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        _wait_for_head(proc, temp / "ray_current_cluster", log)
        yield RayHead(f"127.0.0.1:{gcs}", env)
    finally:
        _stop_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_head(proc: subprocess.Popen[bytes], address_file: Path, log: Path) -> None:
    """``ray start --block`` writes the address file once the head is up, then waits."""
    deadline = time.monotonic() + 180
    while not address_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start --head failed; its output:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group, as ``ray stop`` does to every Ray process; SIGKILL then takes
    whatever of the group is left. Ray's workers, in groups of their own, exit with their
    raylet (checked: nothing of the head's temp dir runs after the session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

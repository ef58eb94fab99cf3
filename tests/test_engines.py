"""Inference engines: bf16 autocast, ONNX Runtime with a cached export, and auto's choice.

The int8 tests calibrate at 32 px on ``calibration_set``, as tests/test_common.py,
test_export.py and test_predictor.py do: the session's engine cache ($TLEARN_HOME, shared by
the whole run) then holds one calibration of those images that every one of them loads, where
each NNCF calibration costs 10-20 s on 2 cores (issue 26). What they claim does not depend on
the size: int8 agreed more closely with fp32 at 32 px (min cosine 0.979, mean 0.988 on these
crops) than at 64 (0.967, 0.974).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.cli_runner import run_tlearn
from tlearn import PretrainedFeatures
from tlearn.data.loader import check_images
from tlearn.features import calibration_images
from tlearn.runtime import engines, onnx_engine, openvino_engine


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.fixture(scope="module")
def reference(shapes3):
    paths = list(shapes3[2][:12])
    return paths, PretrainedFeatures(image_size=64, engine="torch").fit().transform(paths)


@pytest.fixture(scope="module")
def reference32(shapes3):
    """The same images' fp32 torch features at 32 px, the size the int8 tests calibrate at."""
    paths = list(shapes3[2][:12])
    return paths, PretrainedFeatures(image_size=32, engine="torch").fit().transform(paths)


def _calls(monkeypatch, module, name: str) -> list[tuple]:
    """The arguments of each call to ``module.name`` from now on (it still runs)."""
    calls: list[tuple] = []
    function = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.fixture
def calibrations(monkeypatch) -> list[tuple]:
    """Each int8 calibration (NNCF's quantisation) this test runs: (model, images)."""
    return _calls(monkeypatch, openvino_engine, "quantize_int8")


def _a_copied_cache(engine: str, suffixes: list[str], tmp_path, monkeypatch):
    """``engine``'s conversion at 64 px in the session's engine cache (made by this fit or an
    earlier test's), and then $TLEARN_HOME moved to an empty folder holding a copy of its
    files, as another machine's cache would; returns the copy of the first file."""
    est = PretrainedFeatures(image_size=64, engine=engine).fit()
    files = [est.runner_.path.with_suffix(suffix) for suffix in suffixes]
    assert all(f.parent == engines.engine_cache_dir() and f.is_file() for f in files)
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path))
    (tmp_path / "engines").mkdir()
    for f in files:
        shutil.copyfile(f, tmp_path / "engines" / f.name)
    engines.forget_engines()  # a new process: the network is not compiled in memory
    return tmp_path / "engines" / files[0].name


@pytest.mark.parametrize(
    ("engine", "min_cos"),
    [("torch-bf16", 0.99), ("onnxruntime", 0.99999), ("openvino", 0.9999), ("openvino-bf16", 0.95)],
)
def test_engines_agree_with_fp32_torch(engine, min_cos, reference):
    """Each engine agrees with fp32 torch where it runs; where the CPU lacks native bf16
    (AVX512-BF16 or AMX; emulated bf16 is slower than fp32), a bf16 engine is refused with
    the reason, and auto never offers it."""
    paths, expected = reference
    cpu = torch.device("cpu")
    if engines.ENGINE_TABLE[engine].precision == "bf16" and not engines._bf16_native(cpu):
        assert engine not in engines.available_engines(cpu)
        with pytest.raises(engines.EngineError, match="needs native bf16"):
            PretrainedFeatures(image_size=64, engine=engine, device="cpu").fit()
        return
    est = PretrainedFeatures(image_size=64, engine=engine).fit()
    got = est.transform(paths)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert cosine(got, expected) >= min_cos
    assert est.engine_ == engine and est.engine_reason_ == f"engine {engine}"


def test_openvino_runs_fixed_chunks_then_the_rest_in_order(reference):
    """Bulk batches run in chunks compiled for a fixed batch, several requests in turn;
    the rest (and small batches) on the dynamic latency compilation: rows stay in order."""
    from tlearn.runtime.openvino_engine import STATIC_BATCH

    paths, expected = reference
    est = PretrainedFeatures(image_size=64, engine="openvino").fit()
    assert est.runner_._run.chunk == STATIC_BATCH
    many, want = paths * 3, np.concatenate([expected] * 3)  # 36: 4 chunks of 8 + 4 left
    for batch_size in (1, 5, STATIC_BATCH, 12, 2 * STATIC_BATCH, 20, 36):
        got = est.set_params(batch_size=batch_size).transform(many)
        assert cosine(got, want) >= 0.9999, batch_size


def test_onnx_export_is_cached_and_a_corrupt_cache_rebuilt(reference, tmp_path, monkeypatch):
    """The cache is a copy of the session's (one export here rather than two, issue 26),
    and its use is followed by the exports that run rather than by its files alone."""
    exports = _calls(monkeypatch, onnx_engine, "export_onnx")
    paths, expected = reference
    onnx = _a_copied_cache("onnxruntime", [".onnx"], tmp_path, monkeypatch)
    done = len(exports)
    est = PretrainedFeatures(image_size=64, engine="onnxruntime").fit()  # loaded, not exported
    assert len(exports) == done and est.runner_.path == onnx
    onnx.write_bytes(b"not an onnx model")
    engines.forget_engines()
    with pytest.warns(UserWarning, match="unreadable and is rebuilt"):
        est = PretrainedFeatures(image_size=64, engine="onnxruntime").fit()
    assert len(exports) == done + 1
    got = est.transform(paths)
    assert cosine(got, expected) >= 0.99999
    assert onnx.stat().st_size > 1_000_000
    engines.forget_engines()  # the rebuilt file is what the next process loads
    PretrainedFeatures(image_size=64, engine="onnxruntime").fit()
    assert len(exports) == done + 1


def test_auto_takes_the_first_engine_that_agrees(reference, monkeypatch):
    paths, expected = reference
    est = PretrainedFeatures(image_size=64, engine="auto").fit()  # no X: no int8
    got = est.transform(paths)
    first = [e for e in engines.available_engines(torch.device("cpu")) if e != "openvino-int8"]
    assert est.engine_ == first[0] and est.engine_reason_.startswith(f"engine {first[0]} (")
    assert cosine(got, expected) >= engines.MIN_COSINE
    # when no faster engine agrees closely enough, auto says so and keeps fp32 torch
    monkeypatch.setattr(engines, "MIN_COSINE", 1.5)
    monkeypatch.setattr(engines, "MIN_MEAN_COSINE_REDUCED", 1.5)
    strict = PretrainedFeatures(image_size=64, engine="auto").fit()
    assert np.allclose(strict.transform(paths), expected, atol=1e-5)
    assert strict.engine_ == "torch" and "disagrees" in strict.engine_reason_


def test_auto_without_onnxruntime_and_unknown_engines(reference, monkeypatch):
    monkeypatch.setattr(engines, "_installed", lambda module: module != "onnxruntime")
    assert "onnxruntime" not in engines.available_engines(torch.device("cpu"))
    with pytest.raises(engines.EngineError, match=r"pip install 'tlearn\[onnx\]'"):
        PretrainedFeatures(image_size=32, engine="onnxruntime").fit()
    with pytest.raises(ValueError, match="engine' parameter of PretrainedFeatures must be one"):
        PretrainedFeatures(engine="tensorrt").fit()
    # fp16 autocast is for CUDA; on CPU it is never offered and, asked for, says what to use
    assert "torch-fp16" not in engines.available_engines(torch.device("cpu"))
    with pytest.raises(engines.EngineError, match="runs on cuda, not cpu; on cpu use one of"):
        PretrainedFeatures(image_size=32, device="cpu", engine="torch-fp16").fit()


def test_bench_command_prints_every_engine_beside_the_naive_loop(shapes_zip):
    # in this process (tests/cli_runner.py, 200 columns): the command's output is the claim
    r = run_tlearn(
        "bench", f"{shapes_zip}/train/coffee", "--n", "24", "--image-size", "32",
        "--batch-size", "8", "--engine", "torch", "--engine", "onnxruntime", "--no-training",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("naive loop") for line in lines)
    for engine in ("torch", "onnxruntime"):
        row = next(line for line in lines if line.startswith(engine + " "))
        assert row.count("/s") == 2 and "x" in row
    assert "GFLOP/image" in r.stdout
    assert "training images/s" not in r.stdout  # --no-training


def test_bench_prints_each_training_route_beside_fp32_eager():
    """Issue 29: each route as tlearn trains it (channels-last, bf16 where native) beside
    fp32 eager, in one run (smaller batches than the command's: the rows are the claim)."""
    from tlearn.bench import TRAINING_ROUTES, run_training_bench

    lines: list[str] = []
    small = [(name, backbone, min(size, 64), 8) for name, backbone, size, _ in TRAINING_ROUTES]
    rows = run_training_bench(lines.append, small)
    assert [r["route"] for r in rows] == [r[0] for r in TRAINING_ROUTES]
    for row in rows:
        assert row["fp32_eager"] > 0 and row["tlearn"] > 0
        assert row["ratio"] == pytest.approx(row["tlearn"] / row["fp32_eager"])
        assert any(line.startswith(row["route"]) and line.endswith("x") for line in lines)


def test_openvino_engine_is_cached_and_a_corrupt_cache_rebuilt(reference, tmp_path, monkeypatch):
    """As the ONNX test: a copied cache, one conversion here rather than two (issue 26)."""
    conversions = _calls(monkeypatch, openvino_engine, "convert_openvino")
    paths, expected = reference
    xml = _a_copied_cache("openvino", [".xml", ".bin"], tmp_path, monkeypatch)
    done = len(conversions)
    est = PretrainedFeatures(image_size=64, engine="openvino").fit()  # loaded, not converted
    assert len(conversions) == done and est.runner_.path == xml
    assert cosine(est.transform(paths), expected) >= 0.9999
    xml.write_text("<broken")
    engines.forget_engines()
    with pytest.warns(UserWarning, match="unreadable and is rebuilt"):
        again = PretrainedFeatures(image_size=64, engine="openvino").fit()
    assert len(conversions) == done + 1 and xml.with_suffix(".bin").is_file()
    assert cosine(again.transform(paths), expected) >= 0.9999
    engines.forget_engines()  # the rebuilt files are what the next process loads
    PretrainedFeatures(image_size=64, engine="openvino").fit()
    assert len(conversions) == done + 1


def test_openvino_int8_calibrates_on_fit_images_and_keeps_the_features(
    calibration_set, reference32, calibrations, tmp_path, monkeypatch
):
    """In the session's engine cache: the calibration of ``X`` may come from an earlier
    test (then none runs here), so the cache is followed by its files and the calibrations
    by NNCF's calls rather than by counting the files of an empty folder."""
    X, _ = calibration_set
    paths, expected = reference32
    est = PretrainedFeatures(image_size=32, engine="openvino-int8").fit(X)
    got = est.transform(paths)
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    # int8 is not bit-faithful: every image still points the same way, and on average closely
    # (on these small photo crops; real data is checked in test_accuracy.py)
    assert cos.min() > 0.9 and cos.mean() >= 0.97
    assert est.engine_ == "openvino-int8" and est.runner_.precision == "int8"
    # the quantised model is cached, keyed by the calibration images: the same images again
    # load the file, without a calibration
    first = est.runner_.path
    assert first.is_file() and first.with_suffix(".bin").is_file()
    done = len(calibrations)
    again = PretrainedFeatures(image_size=32, engine="openvino-int8").fit(X)
    assert len(calibrations) == done and again.runner_.path == first
    # other images are calibrated on, exactly those, into a file of another name. NNCF's
    # quantisation is stood in for by the model as converted (a real one cost 10-20 s here
    # and says nothing more about the key), in an empty cache: what it writes is no int8
    # model, and stays out of the session's cache
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path))
    monkeypatch.setattr(
        openvino_engine,
        "quantize_int8",
        lambda model, images: calibrations.append((model, images)) or model,
    )
    other = PretrainedFeatures(image_size=32, engine="openvino-int8").fit(X[::-1])
    assert len(calibrations) == done + 1
    fit_images = calibration_images(check_images(X), est.preprocessing_, len(X))
    np.testing.assert_array_equal(calibrations[-1][1], fit_images[::-1])
    assert other.runner_.path.name != first.name and other.runner_.path.is_file()


def test_int8_with_too_few_images_says_how_many_are_needed(calibration_set):
    X, _ = calibration_set
    with pytest.raises(engines.EngineError, match="at least 100 readable images.*got 50"):
        PretrainedFeatures(image_size=64, engine="openvino-int8").fit(X[:50])
    with pytest.raises(engines.EngineError, match="call fit\\(X\\) with at least 100"):
        PretrainedFeatures(image_size=64, engine="openvino-int8").fit()
    # auto passes over int8 then, and takes the next engine that agrees
    est = PretrainedFeatures(image_size=64, engine="auto").fit(X[:50])
    assert est.engine_ == "openvino"
    assert est.engine_reason_.startswith("engine openvino (agrees with fp32 torch: cosine ")


def test_auto_never_picks_reduced_precision_which_is_asked_for_by_name(
    calibration_set, calibrations, monkeypatch
):
    X, _ = calibration_set
    built = []
    build = engines.build_engine
    monkeypatch.setattr(
        engines, "build_engine", lambda name, *a, **k: built.append(name) or build(name, *a, **k)
    )
    est = PretrainedFeatures(image_size=32, engine="auto").fit(X)
    assert engines.ENGINE_TABLE[est.engine_].precision == "fp32"
    assert est.engine_reason_.startswith(f"engine {est.engine_} (agrees with fp32 torch: cosine")
    # no int8 engine was built, nor any calibration run (the cache's file names do not say
    # int8: the check on them that was here could not fail)
    assert built and "openvino-int8" not in built and not calibrations
    int8 = PretrainedFeatures(image_size=32, engine="openvino-int8").fit(X)
    assert int8.engine_ == "openvino-int8"


def test_a_saved_int8_model_carries_its_calibrated_engine(calibration_set, tmp_path, monkeypatch):
    import tlearn
    from tlearn import LinearProbe

    X, y = calibration_set
    probe = LinearProbe(image_size=32, engine="openvino-int8", Cs=[0.1]).fit(X, y)
    # its engine from a private copy of the session's cache: a file is moved away below,
    # and the session's cache is shared with the other test worker (pytest-xdist)
    cached = probe.features_.runner_.path
    (tmp_path / "home" / "engines").mkdir(parents=True)
    for f in (cached, cached.with_suffix(".bin")):
        shutil.copyfile(f, tmp_path / "home" / "engines" / f.name)
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path / "home"))
    engines.forget_engines()
    probe = LinearProbe(image_size=32, engine="openvino-int8", Cs=[0.1]).fit(X, y)
    assert probe.features_.runner_.path == tmp_path / "home" / "engines" / cached.name
    expected = probe.predict_proba(X[:16])
    tlearn.save(probe, tmp_path / "m.safetensors")
    # a fresh cache, as on another machine: the calibration images are not needed again
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path / "elsewhere"))
    loaded = tlearn.load(tmp_path / "m.safetensors")
    assert loaded.features_.engine_ == "openvino-int8"
    assert loaded.features_.engine_reason_ == "engine openvino-int8 (from the model file)"
    np.testing.assert_array_equal(loaded.predict_proba(X[:16]), expected)
    # the engine keeps its own bytes: a cache without the file does not stop a save
    weights = probe.features_.runner_.path.with_suffix(".bin")
    shutil.move(weights, tmp_path / "away.bin")
    try:
        tlearn.save(probe, tmp_path / "again.safetensors")
    finally:
        shutil.move(tmp_path / "away.bin", weights)
    again = tlearn.load(tmp_path / "again.safetensors")
    np.testing.assert_array_equal(again.predict_proba(X[:16]), expected)

    # where OpenVINO cannot run it, the model still predicts, with fp32 torch, and says so
    def cannot(*args):
        raise tlearn.EngineError("OpenVINO is not installed")

    monkeypatch.setattr(openvino_engine, "_compile", cannot)
    with pytest.warns(UserWarning, match="predicting with fp32 torch instead"):
        fallback = tlearn.load(tmp_path / "m.safetensors")
    assert fallback.features_.engine == "torch"
    assert (fallback.predict(X[:16]) == probe.predict(X[:16])).mean() >= 0.8


def test_auto_warns_and_falls_back_when_an_engine_cannot_run_the_backbone(reference, monkeypatch):
    paths, expected = reference

    def cannot(*args, **kwargs):
        raise engines.EngineError("OpenVINO cannot convert this backbone (unsupported op)")

    monkeypatch.setattr(engines, "OpenVinoEngine", cannot)
    with pytest.warns(UserWarning, match="openvino cannot run this backbone.*unsupported op"):
        est = PretrainedFeatures(image_size=64, engine="auto").fit()  # built at fit, not later
    got = est.transform(paths)
    assert est.engine_ == "onnxruntime"
    assert cosine(got, expected) >= engines.MIN_COSINE
    # asked for explicitly, the same failure is an error, not a fallback
    with pytest.raises(engines.EngineError, match="unsupported op"):
        PretrainedFeatures(image_size=64, engine="openvino").fit()


def test_clones_with_the_same_settings_reuse_the_engine_and_auto_verdict(shapes3, monkeypatch):
    """Issue 27.17: each fit of a GridSearchCV (clones with one setting) ran auto's
    agreement check and compiled the network again."""
    from sklearn.base import clone

    from tlearn import PretrainedFeatures
    from tlearn.runtime import engines

    checks = []
    choose = engines._choose_engine
    monkeypatch.setattr(engines, "_choose_engine", lambda *a: checks.append(1) or choose(*a))
    X = shapes3[0]
    first = PretrainedFeatures(image_size=32).fit(X[:40])
    second = clone(first).fit(X[40:])  # another fold's images
    assert len(checks) == 1 and first.engine_ == second.engine_
    if first.engine_ != "torch":  # a compiled copy of the weights: shared
        assert first.runner_ is second.runner_
    np.testing.assert_allclose(first.transform(X[:4]), second.transform(X[:4]), atol=1e-5)
    # another network: checked (64 px, whose OpenVINO conversion this module's other tests
    # leave in the session's engine cache; any other size proves the same)
    other = PretrainedFeatures(image_size=64).fit(X[:40])
    assert len(checks) == 2 and other.runner_ is not first.runner_


def test_threads_fitting_at_once_convert_each_network_once(tmp_path, monkeypatch):
    """Issue 27.17 under threads: each thread missed the memo and converted the network
    again, and the conversions collided (torch's ONNX exporter and tracer keep global
    state: EngineError "GLOBALS.in_onnx_export must be True"), even for two networks."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("TLEARN_HOME", str(tmp_path))  # no cached conversion to load
    builds = []
    build = engines._BUILDERS["onnxruntime"]

    def counted(spec, model, pre, device, key, calibration):
        builds.append(pre.input_size)
        return build(spec, model, pre, device, key, calibration)

    monkeypatch.setitem(engines._BUILDERS, "onnxruntime", counted)
    sizes = [32, 40, 32, 40, 32, 40]
    with ThreadPoolExecutor(len(sizes)) as pool:
        fitted = list(
            pool.map(lambda s: PretrainedFeatures(image_size=s, engine="onnxruntime").fit(), sizes)
        )
    assert sorted(builds) == [32, 40]
    assert (
        len({id(f.runner_) for f in fitted[0::2]})
        == len({id(f.runner_) for f in fitted[1::2]})
        == 1
    )


def test_threads_asking_auto_at_once_get_one_verdict(monkeypatch):
    """Threads fitting with engine='auto' each ran the agreement check, and got different
    engines (onnxruntime, openvino, torch) as their conversions failed one another.

    At 64 px, whose conversions this module's other tests leave in the session's engine
    cache: a thread that ran a check of its own is counted whether or not it converted
    (the threads' conversions themselves are test_threads_fitting_at_once_...'s claim)."""
    from concurrent.futures import ThreadPoolExecutor

    checks = []
    choose = engines._choose_engine
    monkeypatch.setattr(engines, "_choose_engine", lambda *a: checks.append(1) or choose(*a))
    with ThreadPoolExecutor(4) as pool:
        fitted = list(pool.map(lambda _: PretrainedFeatures(image_size=64).fit(), range(4)))
    assert len(checks) == 1 and len({f.engine_ for f in fitted}) == 1

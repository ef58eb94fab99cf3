"""Inference engines: bf16 autocast, ONNX Runtime with a cached export, and auto's choice."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tlearn import PretrainedFeatures
from tlearn.runtime import engines


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.fixture(scope="module")
def reference(shapes3):
    paths = list(shapes3[2][:12])
    return paths, PretrainedFeatures(image_size=64, engine="torch").fit().transform(paths)


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
    assert est._engine._run.chunk == STATIC_BATCH
    many, want = paths * 3, np.concatenate([expected] * 3)  # 36: 4 chunks of 8 + 4 left
    for batch_size in (1, 5, STATIC_BATCH, 12, 2 * STATIC_BATCH, 20, 36):
        got = est.set_params(batch_size=batch_size).transform(many)
        assert cosine(got, want) >= 0.9999, batch_size


def test_onnx_export_is_cached_and_a_corrupt_cache_rebuilt(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path))
    paths, expected = reference
    PretrainedFeatures(image_size=64, engine="onnxruntime").fit().transform(paths[:2])
    exports = list((tmp_path / "engines").glob("*.onnx"))
    assert len(exports) == 1
    exports[0].write_bytes(b"not an onnx model")
    engines.forget_engines()  # a new process: the network is not compiled in memory
    with pytest.warns(UserWarning, match="unreadable and is rebuilt"):
        est = PretrainedFeatures(image_size=64, engine="onnxruntime").fit()
    got = est.transform(paths)
    assert cosine(got, expected) >= 0.99999
    assert exports[0].stat().st_size > 1_000_000


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
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlearn",
            "bench",
            f"{shapes_zip}/train/coffee",
            "--n",
            "24",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--engine",
            "torch",
            "--engine",
            "onnxruntime",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("naive loop") for line in lines)
    for engine in ("torch", "onnxruntime"):
        row = next(line for line in lines if line.startswith(engine + " "))
        assert row.count("/s") == 2 and "x" in row
    assert "GFLOP/image" in r.stdout


def test_openvino_engine_is_cached_and_a_corrupt_cache_rebuilt(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path))
    paths, expected = reference
    est = PretrainedFeatures(image_size=64, engine="openvino").fit()
    assert cosine(est.transform(paths), expected) >= 0.9999
    xml = list((tmp_path / "engines").glob("*.xml"))
    assert len(xml) == 1 and xml[0].with_suffix(".bin").is_file()
    xml[0].write_text("<broken")
    engines.forget_engines()  # a new process: the network is not compiled in memory
    with pytest.warns(UserWarning, match="unreadable and is rebuilt"):
        again = PretrainedFeatures(image_size=64, engine="openvino").fit()
    assert cosine(again.transform(paths), expected) >= 0.9999


def test_openvino_int8_calibrates_on_fit_images_and_keeps_the_features(
    calibration_set, reference, tmp_path, monkeypatch
):
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path))
    X, _ = calibration_set
    paths, expected = reference
    est = PretrainedFeatures(image_size=64, engine="openvino-int8").fit(X)
    got = est.transform(paths)
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    # int8 is not bit-faithful: every image still points the same way, and on average closely
    # (on these small photo crops; real data is checked in test_accuracy.py)
    assert cos.min() > 0.9 and cos.mean() >= 0.97
    assert est.engine_ == "openvino-int8" and est._engine.precision == "int8"
    # the quantised model is cached, keyed by the calibration images: other images, new file
    assert len(list((tmp_path / "engines").glob("*.xml"))) == 1
    PretrainedFeatures(image_size=64, engine="openvino-int8").fit(X[::-1])
    assert len(list((tmp_path / "engines").glob("*.xml"))) == 2
    PretrainedFeatures(image_size=64, engine="openvino-int8").fit(X)
    assert len(list((tmp_path / "engines").glob("*.xml"))) == 2


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
    calibration_set, reference, monkeypatch
):
    X, _ = calibration_set
    paths, expected = reference
    est = PretrainedFeatures(image_size=64, engine="auto").fit(X)
    assert engines.ENGINE_TABLE[est.engine_].precision == "fp32"
    assert est.engine_reason_.startswith(f"engine {est.engine_} (agrees with fp32 torch: cosine")
    # no calibration happened: no int8 model was written to the engine cache
    assert not list(engines.engine_cache_dir().glob("*int8*"))
    int8 = PretrainedFeatures(image_size=64, engine="openvino-int8").fit(X)
    assert int8.engine_ == "openvino-int8"


def test_a_saved_int8_model_carries_its_calibrated_engine(calibration_set, tmp_path, monkeypatch):
    import tlearn
    from tlearn import LinearProbe

    X, y = calibration_set
    probe = LinearProbe(image_size=64, engine="openvino-int8", Cs=[0.1]).fit(X, y)
    expected = probe.predict_proba(X[:16])
    tlearn.save(probe, tmp_path / "m.safetensors")
    # a fresh cache, as on another machine: the calibration images are not needed again
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path / "elsewhere"))
    loaded = tlearn.load(tmp_path / "m.safetensors")
    assert loaded.features_.engine_ == "openvino-int8"
    assert loaded.features_.engine_reason_ == "engine openvino-int8 (from the model file)"
    np.testing.assert_array_equal(loaded.predict_proba(X[:16]), expected)
    # the engine keeps its own bytes: deleting the cache does not stop a save
    probe.features_._engine.path.with_suffix(".bin").unlink()
    tlearn.save(probe, tmp_path / "again.safetensors")
    again = tlearn.load(tmp_path / "again.safetensors")
    np.testing.assert_array_equal(again.predict_proba(X[:16]), expected)
    # where OpenVINO cannot run it, the model still predicts, with fp32 torch, and says so
    from tlearn.runtime import openvino_engine

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
        assert first._engine is second._engine
    np.testing.assert_allclose(first.transform(X[:4]), second.transform(X[:4]), atol=1e-5)
    other = PretrainedFeatures(image_size=48).fit(X[:40])  # another network: checked
    assert len(checks) == 2 and other._engine is not first._engine


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
        len({id(f._engine) for f in fitted[0::2]})
        == len({id(f._engine) for f in fitted[1::2]})
        == 1
    )


def test_threads_asking_auto_at_once_get_one_verdict(tmp_path, monkeypatch):
    """Threads fitting with engine='auto' each ran the agreement check, and got different
    engines (onnxruntime, openvino, torch) as their conversions failed one another."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("TLEARN_HOME", str(tmp_path))
    checks = []
    choose = engines._choose_engine
    monkeypatch.setattr(engines, "_choose_engine", lambda *a: checks.append(1) or choose(*a))
    with ThreadPoolExecutor(4) as pool:
        fitted = list(pool.map(lambda _: PretrainedFeatures(image_size=48).fit(), range(4)))
    assert len(checks) == 1 and len({f.engine_ for f in fitted}) == 1

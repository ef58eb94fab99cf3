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
def reference(cifar3):
    paths = list(cifar3[2][:12])
    return paths, PretrainedFeatures(image_size=64).fit().transform(paths)


@pytest.mark.parametrize(
    ("engine", "min_cos"), [("torch-bf16", 0.99), ("onnxruntime", 0.99999), ("openvino", 0.9999)]
)
def test_engines_agree_with_fp32_torch(engine, min_cos, reference):
    paths, expected = reference
    est = PretrainedFeatures(image_size=64, engine=engine).fit()
    got = est.transform(paths)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert cosine(got, expected) >= min_cos
    assert est.engine_ == f"engine {engine}"


def test_onnx_export_is_cached_and_a_corrupt_cache_rebuilt(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path))
    paths, expected = reference
    PretrainedFeatures(image_size=64, engine="onnxruntime").fit().transform(paths[:2])
    exports = list((tmp_path / "engines").glob("*.onnx"))
    assert len(exports) == 1
    exports[0].write_bytes(b"not an onnx model")
    est = PretrainedFeatures(image_size=64, engine="onnxruntime").fit()
    with pytest.warns(UserWarning, match="unreadable and is rebuilt"):
        got = est.transform(paths)
    assert cosine(got, expected) >= 0.99999
    assert exports[0].stat().st_size > 1_000_000


def test_auto_takes_the_first_engine_that_agrees(reference, monkeypatch):
    paths, expected = reference
    est = PretrainedFeatures(image_size=64, engine="auto").fit()
    got = est.transform(paths)
    first = engines.available_engines(
        est._engine.device if hasattr(est._engine, "device") else __import__("torch").device("cpu")
    )[0]
    assert est.engine_.startswith(f"engine {first}")
    assert cosine(got, expected) >= engines.MIN_COSINE
    # when no faster engine agrees closely enough, auto says so and keeps fp32 torch
    monkeypatch.setattr(engines, "MIN_COSINE", 1.5)
    strict = PretrainedFeatures(image_size=64, engine="auto").fit()
    assert np.allclose(strict.transform(paths), expected, atol=1e-5)
    assert strict.engine_.startswith("engine torch (") and "disagrees" in strict.engine_


def test_auto_without_onnxruntime_and_unknown_engines(reference, monkeypatch):
    monkeypatch.setattr(engines, "_has_onnxruntime", lambda: False)
    assert "onnxruntime" not in engines.available_engines(torch.device("cpu"))
    with pytest.raises(ValueError, match="engine must be one of"):
        PretrainedFeatures(engine="tensorrt").fit()


def test_bench_command_prints_every_engine_beside_the_naive_loop(cifar_zip):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlearn",
            "bench",
            f"{cifar_zip}/test/cat",
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
    again = PretrainedFeatures(image_size=64, engine="openvino").fit()
    with pytest.warns(UserWarning, match="unreadable and is rebuilt"):
        assert cosine(again.transform(paths), expected) >= 0.9999

"""tlearn export: the classifier as ONNX / OpenVINO IR, predicting what the model predicts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from tests.cli_runner import run_tlearn
from tlearn import LinearProbe, save
from tlearn.export import export_model, load_exported
from tlearn.inference import iter_predictions
from tlearn.models import model_kind


@pytest.fixture(scope="module")
def probe(shapes3):
    return LinearProbe(image_size=64, Cs=[1.0]).fit(shapes3[0], shapes3[1])


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_classifier_matches_the_model(fmt, probe, shapes3, tmp_path):
    old = os.umask(0o027)
    try:
        path = export_model(probe, tmp_path / "clf", fmt)
    finally:
        os.umask(old)
    # written atomically, with the permissions any program's new files get (issue 27)
    written = [path, path + ".json"]
    written += [str(Path(path).with_suffix(".bin"))] if fmt == "openvino" else []
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in written} == {0o640}
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in written)
    meta = json.loads(Path(path + ".json").read_text())
    assert meta["classes"] == ["astronaut", "coffee", "rocket"]
    assert meta["preprocessing"]["input_size"] == 64
    paths = list(shapes3[2])
    rows = list(iter_predictions(load_exported(path), paths, top_k=3))
    expected = probe.predict_proba(paths)
    got = np.array(
        [
            [
                dict(zip(r["top_labels"], r["top_probabilities"], strict=True))[c]
                for c in probe.classes_
            ]
            for r in rows
        ]
    )
    # ONNX Runtime agrees to ~1e-6; OpenVINO's CPU kernels differed by up to ~4e-3 here
    assert np.abs(got - expected).max() < (1e-4 if fmt == "onnx" else 1e-2)
    assert [r["label"] for r in rows] == list(probe.predict(paths))


def test_two_class_logistic_head_folds_into_two_logits(shapes3):
    X, y = shapes3[0][:30], shapes3[1][:30]
    keep = y != "rocket"
    binary = LinearProbe(image_size=32, Cs=[1.0]).fit(X[keep], y[keep])
    W, b = model_kind(binary).linear_head(binary)
    F = binary.features_.transform(list(X[keep]))
    logits = F @ W.T + b
    proba = np.exp(logits - logits.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)
    assert np.allclose(proba, binary.predict_proba_features(F), atol=1e-5)


def test_cli_export_then_predict(probe, shapes3, tmp_path):
    model = tmp_path / "m.safetensors"
    save(probe, model)
    r = run_tlearn("export", str(model), "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "p.csv"
    r = run_tlearn("predict", str(tmp_path / "m.onnx"), shapes3[2][0], "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "1 images predicted, 0 failed" in r.stdout
    r = run_tlearn("export", str(model), "--out", str(tmp_path / "m.x"), "--format", "tflite")
    assert r.returncode == 2 and "--format must be one of 'onnx', 'openvino'" in r.stderr


def test_an_int8_model_exports_its_calibrated_engine(calibration_set, tmp_path):
    """At 32 px, the size of the other int8 tests on these images: their one calibration,
    kept in the session's engine cache, serves this one too (the export's claims are the
    same at any size)."""
    X, y = calibration_set
    probe = LinearProbe(image_size=32, engine="openvino-int8", Cs=[0.1]).fit(X, y)
    path = export_model(probe, tmp_path / "clf", "openvino")
    meta = json.loads(Path(path + ".json").read_text())
    assert meta["precision"] == "int8" and meta["inputs"].startswith("uint8 NHWC")
    paths = X[:20]
    rows = list(iter_predictions(load_exported(path), paths, top_k=len(probe.classes_)))
    got = np.array(
        [
            [
                dict(zip(r["top_labels"], r["top_probabilities"], strict=True))[c]
                for c in probe.classes_
            ]
            for r in rows
        ]
    )
    # the export runs the same int8 backbone: only the head's arithmetic differs
    assert np.abs(got - probe.predict_proba(paths)).max() < 1e-4
    # an ONNX export of the same model is the fp32 classifier, and says so
    onnx = export_model(probe, tmp_path / "clf", "onnx")
    assert json.loads(Path(onnx + ".json").read_text())["precision"] == "fp32"

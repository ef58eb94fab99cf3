"""Model files: safetensors + JSON, exact round trips, never unpickling, clear errors."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tlearn import LinearProbe, ModelFileError, PretrainedFeatures, load, save
from tlearn.persistence import FORMAT_VERSION, read_metadata


@pytest.fixture(scope="module")
def fitted_probe(shapes3):
    return LinearProbe(image_size=64, Cs=[0.1, 1.0]).fit(shapes3[0], shapes3[1])


def _forbid_pickle(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("loading a model file must never unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_probe_round_trip_is_exact(fitted_probe, shapes3, tmp_path, monkeypatch):
    path = tmp_path / "probe.safetensors"
    save(fitted_probe, path)
    _forbid_pickle(monkeypatch)
    loaded = load(path)
    X_test = shapes3[2]
    assert np.array_equal(loaded.predict_proba(X_test), fitted_probe.predict_proba(X_test))
    assert list(loaded.classes_) == list(fitted_probe.classes_)
    assert loaded.C_ == fitted_probe.C_ and loaded.get_params()["image_size"] == 64
    meta = read_metadata(path)
    assert meta["backbone"]["architecture"] == "timm:tf_efficientnet_lite0"
    assert meta["backbone"]["weights_sha256"] == fitted_probe.features_.backbone_.weights_sha256
    assert meta["backbone"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["classes"] == ["astronaut", "coffee", "rocket"]
    assert {"torch", "timm", "scikit-learn"} <= set(meta["versions"])


def test_pipeline_round_trip(shapes3, tmp_path):
    pipe = Pipeline(
        [
            ("features", PretrainedFeatures(image_size=64)),
            ("scaler", StandardScaler()),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    ).fit(shapes3[0], shapes3[1])
    save(pipe, tmp_path / "pipe.safetensors")
    loaded = load(tmp_path / "pipe.safetensors")
    assert [n for n, _ in loaded.steps] == ["features", "scaler", "clf"]
    assert np.array_equal(loaded.predict(shapes3[2]), pipe.predict(shapes3[2]))


def test_file_is_safetensors_with_json_header(fitted_probe, tmp_path):
    path = tmp_path / "m.safetensors"
    save(fitted_probe, path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert json.loads(header["__metadata__"]["tlearn"])["format"] == "tlearn"
    assert "head.coef" in header and any(k.startswith("backbone.") for k in header)


def test_damaged_foreign_and_future_files(fitted_probe, tmp_path):
    import torch
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save(fitted_probe, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a tlearn model file|damaged"):
        load(truncated)
    not_model = tmp_path / "notes.safetensors"
    not_model.write_text("hello")
    with pytest.raises(ModelFileError, match="not a tlearn model file"):
        load(not_model)
    plain = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ModelFileError, match="no tlearn metadata"):
        load(plain)
    meta = read_metadata(good)
    meta["format_version"] = FORMAT_VERSION + 1
    future = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(2)}, future, metadata={"tlearn": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="newer than this tlearn"):
        load(future)
    with pytest.raises(ModelFileError, match="no such model file"):
        load(tmp_path / "missing.safetensors")


def test_unsupported_or_unfitted_models_and_bad_destinations(fitted_probe, tmp_path):
    with pytest.raises(TypeError, match="LinearProbe, FineTuneClassifier, Pipeline"):
        save(LogisticRegression(), tmp_path / "x.safetensors")
    with pytest.raises(ModelFileError, match="not fitted"):
        save(LinearProbe(), tmp_path / "x.safetensors")
    with pytest.raises(ModelFileError, match="does not exist"):
        save(fitted_probe, tmp_path / "no" / "such" / "x.safetensors")
    assert not list(tmp_path.glob("**/.tlearn-*"))  # no half-written files left behind

"""Model files: safetensors + JSON, exact round trips, never unpickling, clear errors."""

from __future__ import annotations

import json
import os
import pickle
import stat
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


# -- model files are data from anywhere: bounded, checked before building, paths dropped ----
def _rewrite(src, dst, edit, tensors_edit=None):
    """Copy the model file ``src`` to ``dst`` with ``edit(meta)`` applied to its metadata
    (and ``tensors_edit(tensors)`` to its tensors)."""
    from safetensors.torch import load_file, save_file

    meta = read_metadata(src)
    edit(meta)
    tensors = load_file(src)
    if tensors_edit is not None:
        tensors_edit(tensors)
    save_file(tensors, dst, metadata={"tlearn": json.dumps(meta)})
    return dst


def _no_size(meta):
    meta["backbone"]["params"]["image_size"] = None
    meta["params"]["image_size"] = None


BAD_FILES = {
    # field named in the message: (edit of the metadata)
    "input_size": lambda m: (
        _no_size(m),
        m["backbone"]["preprocessing"].update(input_size=30_000),
    ),
    "image_size": lambda m: m["backbone"]["params"].update(image_size=30_000),
    "crop_pct": lambda m: m["backbone"]["preprocessing"].update(crop_pct=1e-9),
    "std": lambda m: m["backbone"]["preprocessing"].update(std=[0.0, 0.0, 0.0]),
    "mean": lambda m: m["backbone"]["preprocessing"].update(mean=[0.5, float("nan"), 0.5]),
    "temperature": lambda m: m["head"].update(temperature=float("nan")),
    "head.coef": lambda m: m.update(classes=["astronaut", "coffee"]),
    "classes": lambda m: m.update(classes=["coffee", "coffee", "rocket"]),
    "engine_": lambda m: m["backbone"].update(engine_="auto"),
    "params.cv": lambda m: m["params"].update(cv=1),
    "params.batch_size": lambda m: m["params"].update(batch_size=10**12),
    "nests deeper": lambda m: m.update(evaluation=json.loads("[" * 100 + "]" * 100)),
    "vit_giant_patch14_224": lambda m: m["backbone"].update(
        architecture="timm:vit_giant_patch14_224"
    ),
}


@pytest.mark.parametrize("field", BAD_FILES)
def test_a_file_outside_the_bounds_is_refused_before_anything_is_built(
    field, fitted_probe, tmp_path, monkeypatch
):
    """Finding 11: a model file asked for a 30,000 px warm-up (10 s, then out of memory), or
    a network 300 times larger than the weights it carried; every number is now bounded
    and checked against the tensors before a network is built."""
    import tlearn.persistence

    good = save(fitted_probe, tmp_path / "good.safetensors")
    bad = _rewrite(good, tmp_path / "bad.safetensors", BAD_FILES[field])

    def built(*a, **k):
        raise AssertionError("a network was built for a file that should be refused")

    monkeypatch.setattr(tlearn.persistence, "_load_backbone", built)
    with pytest.raises(ModelFileError, match=field) as info:
        load(bad)
    assert "bad.safetensors" in str(info.value)


def _as_finetune(fitted_probe):
    """A fine-tuned model's file made from the probe's (same backbone, a linear head)."""
    import torch

    def edit(meta):
        meta["kind"] = "finetune"
        meta["head"] = {"type": "linear", "history": [], "best_epoch": -1, "temperature": 1.0}
        meta["params"] = {"image_size": 64, "checkpoint_dir": "/srv/runs/7", "weights": "/w.pt"}

    def tensors_edit(tensors):
        for name in [k for k in tensors if k.startswith("head.")]:
            del tensors[name]
        tensors["head.weight"] = torch.zeros(3, fitted_probe.n_features_in_)
        tensors["head.bias"] = torch.zeros(3)

    return edit, tensors_edit


def test_paths_in_a_file_are_not_used_on_this_machine(fitted_probe, tmp_path):
    """Finding 11: a file's cache_dir, weights file and checkpoint folder named places on
    the machine that saved it; the loaded model has the defaults."""
    good = save(fitted_probe, tmp_path / "good.safetensors")
    elsewhere = tmp_path / "elsewhere"

    def edit(meta):
        meta["params"].update(cache_dir=str(elsewhere), weights=str(elsewhere / "w.pt"))
        meta["backbone"]["params"]["cache_dir"] = str(elsewhere)

    probe = load(_rewrite(good, tmp_path / "probe.safetensors", edit))
    assert probe.get_params()["cache_dir"] is None and probe.features_.cache_dir is None
    assert probe.get_params()["weights"] == "pretrained"
    probe.predict(np.zeros((1, 8, 8, 3), np.uint8))
    assert not elsewhere.exists()
    finetuned = load(_rewrite(good, tmp_path / "ft.safetensors", *_as_finetune(fitted_probe)))
    assert finetuned.checkpoint_dir is None and finetuned.weights == "pretrained"
    assert finetuned.predict_proba(np.zeros((1, 8, 8, 3), np.uint8)).shape == (1, 3)


def test_list_parameters_round_trip_as_lists(fitted_probe, tmp_path):
    """Cs=[0.1, 1.0] was stored as the text "[0.1, 1.0]", which the loaded probe then
    refused to fit with; files written that way still load, with the list."""
    from sklearn.base import clone

    path = save(fitted_probe, tmp_path / "m.safetensors")
    assert read_metadata(path)["params"]["Cs"] == [0.1, 1.0]
    assert load(path).get_params()["Cs"] == [0.1, 1.0]
    old = _rewrite(
        path, tmp_path / "old.safetensors", lambda m: m["params"].update(Cs="[0.1, 1.0]")
    )
    loaded = load(old)
    assert loaded.get_params()["Cs"] == [0.1, 1.0]
    clone(loaded)._validate_params()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_a_device_this_machine_lacks_falls_back_to_auto(fitted_probe, tmp_path):
    path = save(fitted_probe, tmp_path / "m.safetensors")
    gpu = _rewrite(path, tmp_path / "gpu.safetensors",
                   lambda m: m["backbone"]["params"].update(device="cuda:0"))  # fmt: skip
    with pytest.warns(UserWarning, match="device 'cuda:0', which this machine does not have"):
        loaded = load(gpu)
    assert loaded.features_.device == "auto"


def test_written_files_get_the_permissions_of_any_new_file(fitted_probe, shapes3, tmp_path):
    """Issue 27: model files and report PNGs were 0600 (mkstemp's mode survived the
    rename); they now get 0666 less the umask, like any other program's files."""
    from tlearn.evaluation import evaluate

    report = evaluate(fitted_probe, shapes3[2], shapes3[3])
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        folder = tmp_path / f"umask{umask:o}"
        folder.mkdir()
        old = os.umask(umask)
        try:
            written = [save(fitted_probe, folder / "m.safetensors")]
            written += report.save(folder / "report").values()
        finally:
            os.umask(old)
        assert any(str(p).endswith(".png") for p in written)
        for p in written:
            assert stat.S_IMODE(os.stat(p).st_mode) == mode, p


BUDGET = """
import json, os, resource, sys, time
import sklearn.linear_model, sklearn.preprocessing, timm, torch
from tlearn.persistence import load, ModelFileError

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

out = {}
for name in ("refused", "good"):
    before, start, refused = peak(), time.perf_counter(), False
    try:
        load(sys.argv[1 if name == "good" else 2])
    except ModelFileError:
        refused = True
    out[name] = (peak() - before, time.perf_counter() - start, refused)
print(json.dumps(out))
"""


def test_loading_stays_within_the_documented_budget(fitted_probe, tmp_path):
    """The resource budget in persistence's docstring: about 3 F of memory plus a warm-up
    (here at 64 px, small); a file refused by the checks costs its header and a meta-device
    build, even when it names a network of a billion parameters."""
    import subprocess
    import sys

    def on_torch(meta):  # an engine recorded at fit would be converted into the cache
        meta["backbone"]["engine_"] = meta["backbone"]["params"]["engine"] = "torch"

    saved = save(fitted_probe, tmp_path / "saved.safetensors")
    good = _rewrite(saved, tmp_path / "good.safetensors", on_torch)
    giant = _rewrite(good, tmp_path / "giant.safetensors", BAD_FILES["vit_giant_patch14_224"])
    home = tmp_path / "home"
    env = {**os.environ, "TLEARN_HOME": str(home), "TLEARN_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", BUDGET, str(good), str(giant)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cost = json.loads(r.stdout)
    size = os.path.getsize(good)
    assert cost["refused"][2] and not cost["good"][2], cost  # each file met its fate
    assert cost["refused"][0] < 64 << 20 and cost["refused"][1] < 10
    assert cost["good"][0] < 3 * size + (96 << 20), (cost, size)
    assert not home.exists() or not any(home.rglob("*"))  # nothing written


def _ir(folder, n_features, size, hostile):
    """An OpenVINO IR taking uint8 images to ``n_features``, as a carried int8 engine is;
    ``hostile``: it also computes a tensor of 10^10 elements."""
    import openvino as ov
    import openvino.opset13 as ops

    images = ops.parameter([-1, size, size, 3], ov.Type.u8, name="images")
    pooled = ops.reduce_mean(ops.convert(images, ov.Type.f32), ops.constant(np.array([1, 2])))
    if hostile:
        big = ops.broadcast(ops.constant(np.float32(0)), ops.constant(np.array([1, 10**5, 10**5])))
        pooled = ops.add(pooled, ops.reduce_mean(big, ops.constant(np.array([1, 2])), False))
    weights = np.ones((3, n_features), np.float32)
    model = ov.Model([ops.matmul(pooled, ops.constant(weights), False, False)], [images])
    ov.save_model(model, folder / "ir.xml", compress_to_fp16=False)
    return (folder / "ir.xml").read_bytes(), (folder / "ir.bin").read_bytes()


@pytest.mark.parametrize("hostile", [False, True])
def test_a_carried_engine_is_checked_before_it_is_compiled(
    hostile, fitted_probe, tmp_path, monkeypatch
):
    """A calibrated engine carried by a file is a graph from the file: one that would
    compute a 40 GB tensor for one image is refused before OpenVINO compiles it."""
    pytest.importorskip("openvino")
    import torch

    from tlearn.runtime.openvino_engine import OpenVinoEngine

    xml, weights = _ir(tmp_path, fitted_probe.n_features_in_, 64, hostile)

    def carry(tensors):
        tensors["engine.xml"] = torch.frombuffer(bytearray(xml), dtype=torch.uint8)
        tensors["engine.bin"] = torch.frombuffer(bytearray(weights), dtype=torch.uint8)

    good = save(fitted_probe, tmp_path / "good.safetensors")
    int8 = lambda m: m.update(engine="openvino-int8")  # noqa: E731
    path = _rewrite(good, tmp_path / "int8.safetensors", int8, carry)
    compiled = []
    original = OpenVinoEngine.from_ir
    monkeypatch.setattr(OpenVinoEngine, "from_ir", lambda *a: compiled.append(1) or original(*a))
    if hostile:
        with pytest.raises(ModelFileError, match="Broadcast operation makes a tensor"):
            load(path)
        assert not compiled
    else:
        assert load(path).features_.engine_ == "openvino-int8" and compiled

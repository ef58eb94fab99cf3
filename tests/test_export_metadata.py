"""An exported file alone is enough (issue 27.10): its output is named for what it holds,
and its classes and preprocessing are in its own metadata, not only in a sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlearn import LinearProbe
from tlearn.export import export_model, load_exported
from tlearn.inference import iter_predictions


@pytest.fixture(scope="module")
def probe(shapes3):
    return LinearProbe(image_size=32, Cs=[1.0]).fit(shapes3[0], shapes3[1])


def _names_and_metadata(path: str) -> tuple[list[str], dict[str, str]]:
    if path.endswith(".onnx"):
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = dict(session.get_modelmeta().custom_metadata_map)
        return [o.name for o in session.get_outputs()], meta
    import openvino as ov

    model = ov.Core().read_model(path)
    keys = model.get_rt_info(["tlearn"]).astype(dict)
    meta = {k: model.get_rt_info(["tlearn", k]).astype(str) for k in keys}
    return sorted(model.outputs[0].get_names()), meta


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_the_exported_file_alone_says_its_classes_and_preprocessing(fmt, probe, shapes3, tmp_path):
    path = export_model(probe, tmp_path / "clf", fmt)
    outputs, meta = _names_and_metadata(path)
    assert outputs == ["probabilities"]  # was "features", though it held probabilities
    assert json.loads(meta["classes"]) == ["astronaut", "coffee", "rocket"]
    assert json.loads(meta["preprocessing"])["input_size"] == 32
    assert meta["precision"] == "fp32" and "normalised" in meta["inputs"]
    paths = list(shapes3[2][:6])
    with_sidecar = [r["label"] for r in iter_predictions(load_exported(path), paths)]
    Path(path + ".json").unlink()  # the file alone: the same predictions
    alone = [r["label"] for r in iter_predictions(load_exported(path), paths)]
    assert alone == with_sidecar == list(probe.predict(paths))


def test_a_file_without_metadata_or_sidecar_is_refused_saying_why(tmp_path):
    import torch

    from tlearn.data.images import Preprocessing
    from tlearn.exceptions import ModelFileError
    from tlearn.runtime.onnx_engine import export_onnx

    pre = Preprocessing(16, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    export_onnx(net, pre, tmp_path / "other.onnx")
    with pytest.raises(ModelFileError, match="no tlearn metadata .* no sidecar"):
        load_exported(tmp_path / "other.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.onnx"]

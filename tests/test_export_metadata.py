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


@pytest.fixture(scope="module")
def onnx_alone(probe, tmp_path_factory) -> str:
    """The probe exported to ONNX, without its sidecar."""
    path = export_model(probe, tmp_path_factory.mktemp("export") / "clf", "onnx")
    Path(path + ".json").unlink()
    return path


def _with_metadata(path: str, out: Path, **changes: str) -> Path:
    import onnx

    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props} | changes
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    return out


def _preprocessing(path: str, **changes: object) -> str:
    import onnx

    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    return json.dumps(json.loads(meta["preprocessing"]) | changes)


@pytest.mark.parametrize(
    "case, match",
    [
        ("nested", "damaged"),  # RecursionError before
        ("classes_number", "non-empty list"),  # TypeError: len() of unsized object
        ("classes_lists", "not names"),  # predicted lists as labels
        ("two_classes", "names 2 classes but its network gives 3"),  # wrong labels
        ("no_classes", "non-empty list"),  # IndexError
        ("huge_input", "10000000 pixels square"),  # MemoryError on the first prediction
        ("other_input", "64 pixels square"),  # ONNX Runtime's InvalidArgument
        ("short_mean", "mean must be 3"),  # IndexError
        ("zero_std", "std must be 3"),  # predicted from inf pixels
    ],
)
def test_an_export_whose_metadata_does_not_fit_its_network_is_refused(
    case, match, onnx_alone, tmp_path
):
    """The metadata comes with the file, from anyone: it is checked against the network
    before anything runs (these loaded, then crashed or predicted wrong labels)."""
    from tlearn.exceptions import ModelFileError

    path = onnx_alone
    changes = {
        "nested": {"classes": "[" * 100_000 + "]" * 100_000},
        "classes_number": {"classes": "3"},
        "classes_lists": {"classes": '[["a"], ["b"], ["c"]]'},
        "two_classes": {"classes": '["a", "b"]'},
        "no_classes": {"classes": "[]"},
        "huge_input": {"preprocessing": _preprocessing(path, input_size=10_000_000)},
        "other_input": {"preprocessing": _preprocessing(path, input_size=64)},
        "short_mean": {"preprocessing": _preprocessing(path, mean=[0.5])},
        "zero_std": {"preprocessing": _preprocessing(path, std=[0, 0, 0])},
    }[case]
    hostile = _with_metadata(path, tmp_path / "hostile.onnx", **changes)
    with pytest.raises(ModelFileError, match=match):
        load_exported(hostile)


@pytest.mark.parametrize("suffix", [".onnx", ".xml"])
def test_a_damaged_export_is_an_engine_error_not_the_runtimes_own(suffix, tmp_path):
    """Reading the metadata came first and let ONNX Runtime's InvalidProtobuf and
    OpenVINO's RuntimeError out (EngineError, one line in the CLI, before)."""
    from tlearn.exceptions import EngineError, ModelFileError

    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"not a model")
    if suffix == ".xml":
        with pytest.raises(ModelFileError, match="needs its weights broken.bin"):
            load_exported(path)
        path.with_suffix(".bin").write_bytes(b"\0" * 8)
    with pytest.raises(EngineError, match="cannot load this model"):
        load_exported(path)

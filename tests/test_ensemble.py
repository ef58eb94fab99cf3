"""Backbones side by side ("efficientnet_lite0+efficientnet_lite1"): each sees the pixels in
its own normalisation, the probe fits one head per backbone and averages their calibrated
scores, and the result saves, loads, pickles and predicts from threads like any probe."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

from tlearn import LinearProbe, PretrainedFeatures, load_backbone
from tlearn.exceptions import BackboneError, InvalidParameterError, UnknownBackboneError
from tlearn.persistence import load, save
from tlearn.predictor import Predictor

PAIR = "efficientnet_lite0+efficientnet_lite1"
# torch: no claim here is about an engine (auto's check builds and runs each candidate
# engine for every backbone and pair, 30-60 s on 2 cores); the ONNX export is tested below
FAST = {"image_size": 64, "flip_average": False, "batch_size": 16, "engine": "torch"}


def test_each_member_sees_the_pixels_in_its_own_normalisation():
    # Lite0 wants mean = std = 0.5, ResNet-18 ImageNet's mean and std: the ensemble is fed
    # Lite0's normalisation and must hand ResNet-18 exactly what it would get alone
    bb = load_backbone("efficientnet_lite0+torchvision:resnet18", weights=None)
    assert bb.architecture == "ensemble:timm:tf_efficientnet_lite0+torchvision:resnet18"
    assert bb.preprocessing.mean == (0.5, 0.5, 0.5) and bb.n_features == 1280 + 512
    pixels = torch.rand(2, 3, 64, 64)
    first = (pixels - 0.5) / 0.5
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        both = bb.model(first)
        lite0, resnet = (net.backbone for net in bb.model.members)
        torch.testing.assert_close(both[:, :1280], lite0(first))
        torch.testing.assert_close(both[:, 1280:], resnet((pixels - mean) / std))


def test_ensemble_names_are_checked_member_by_member():
    with pytest.raises(UnknownBackboneError, match="efficientnet_lite9"):
        load_backbone("efficientnet_lite0+efficientnet_lite9")
    with pytest.raises(UnknownBackboneError, match="two or more different"):
        load_backbone("efficientnet_lite0+efficientnet_lite0")
    with pytest.raises(UnknownBackboneError, match="two or more different"):
        load_backbone("efficientnet_lite0+")
    with pytest.raises(BackboneError, match="own pretrained weights"):
        load_backbone(PAIR, weights="/tmp/one-file.safetensors")


def test_features_are_the_members_features_side_by_side(shapes3):
    X = shapes3[0][:6]
    pair = PretrainedFeatures(PAIR, **FAST).fit()
    alone = [PretrainedFeatures(n, **FAST).fit() for n in PAIR.split("+")]
    F = pair.transform(X)
    parts = [f.transform(X) for f in alone]
    assert pair.blocks_ == [p.shape[1] for p in parts] and pair.n_features_out_ == F.shape[1]
    np.testing.assert_allclose(F, np.hstack(parts), rtol=1e-4, atol=1e-4)
    last = PretrainedFeatures(PAIR, pooling="last", **FAST).fit()
    assert last.blocks_ == [1280, 1280] and last.transform(X[:2]).shape == (2, 2560)
    assert last._cache_key() != pair._cache_key()  # pooling changes the cached features
    with pytest.raises(InvalidParameterError, match="multistage"):
        PretrainedFeatures("efficientnet_lite0+torchvision:resnet18", weights=None,
                           pooling="multistage", **FAST).fit()  # fmt: skip


@pytest.fixture(scope="module")
def pair_probe(shapes3):
    X, y, _, _ = shapes3
    return LinearProbe(PAIR, Cs=[0.01, 1.0], **FAST).fit(X, y)


def test_the_probe_averages_one_calibrated_head_per_backbone(pair_probe, shapes3):
    X, y, X_test, y_test = shapes3
    singles = [LinearProbe(n, Cs=[0.01, 1.0], **FAST).fit(X, y) for n in PAIR.split("+")]
    assert tuple(p.C_ for p in singles) == pair_probe.C_
    assert [r["C"] for r in pair_probe.cv_results_["blocks"]] == [[0.01, 1.0]] * 2
    expected = np.mean([p.decision_function(X_test) / p.temperature_ for p in singles], axis=0)
    np.testing.assert_allclose(pair_probe.decision_function(X_test), expected, rtol=1e-5)
    # its own temperature, fitted on the mean of the heads' out-of-fold scores
    oof = np.mean([np.log(p.oof_proba_) for p in singles], axis=0)
    shifted = np.log(pair_probe.oof_proba_) * pair_probe.temperature_
    np.testing.assert_allclose(
        shifted - shifted.max(1, keepdims=True), oof - oof.max(1, keepdims=True), atol=1e-6
    )
    assert pair_probe.calibration_["n_oof"] == len(y)
    assert pair_probe.score(X_test, y_test) >= 0.8


def test_an_ensemble_probe_saves_pickles_and_predicts_from_threads(pair_probe, shapes3, tmp_path):
    X_test = shapes3[2]
    proba = pair_probe.predict_proba(X_test)
    path = tmp_path / "pair.safetensors"
    save(pair_probe, path)
    loaded = load(path)
    assert loaded.C_ == pair_probe.C_ and loaded.features_.blocks_ == pair_probe.features_.blocks_
    np.testing.assert_allclose(loaded.predict_proba(X_test), proba, atol=1e-6)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(loaded)).predict_proba(X_test), proba,
                               atol=1e-6)  # fmt: skip
    predictor = Predictor.load(path)
    assert predictor.describe()["backbone"] == PAIR
    serial = [r["probability"] for r in predictor.iter_predict(list(X_test))]
    results: dict[int, list[float]] = {}

    def work(i: int) -> None:
        results[i] = [r["probability"] for r in predictor.iter_predict(list(X_test))]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.allclose(results[i], serial) for i in range(4))
    np.testing.assert_allclose(serial, proba.max(1), atol=1e-5)


def test_an_ensemble_probe_exports_as_one_onnx_classifier(pair_probe, shapes3, tmp_path):
    from tlearn.export import export_model, load_exported
    from tlearn.inference import iter_predictions

    paths = list(shapes3[2])
    path = export_model(pair_probe, tmp_path / "pair", "onnx")
    rows = list(iter_predictions(load_exported(path), paths, top_k=3))
    got = np.array([[dict(zip(r["top_labels"], r["top_probabilities"], strict=True))[c]
                     for c in pair_probe.classes_] for r in rows])  # fmt: skip
    assert np.abs(got - pair_probe.predict_proba(paths)).max() < 1e-4

"""One contract for the three estimators (scikit-learn's ``check_estimator`` runs nothing
for estimators that take image paths, so the rules are written out here): clone and
get/set_params, ``fit`` returns self, NotFittedError before fit, pickling (on every engine,
int8 and exports included), ``__dict__`` unchanged by predicting, GridSearchCV and
``cross_val_predict(method="predict_proba")`` over paths, and 8 threads predicting exactly
what serial calls predict."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline

from tlearn import FineTuneClassifier, LinearProbe, PretrainedFeatures

FACTORIES = {
    "PretrainedFeatures": lambda **kw: PretrainedFeatures(image_size=32, **kw),
    "LinearProbe": lambda **kw: LinearProbe(image_size=32, Cs=[0.1, 1.0], **kw),
    "FineTuneClassifier": lambda **kw: FineTuneClassifier(
        strategy="head", image_size=32, epochs=1, validation_size=0, verbose=0, **kw
    ),
}
ENGINES = ["torch", "onnxruntime", "openvino", "openvino-int8"]


def _output(est, X):
    """What the estimator computes: features for the transformer, probabilities else."""
    return est.transform(X) if isinstance(est, PretrainedFeatures) else est.predict_proba(X)


@pytest.fixture(scope="module")
def fitted(calibration_set):
    X, y = calibration_set
    return {name: make().fit(X, y) for name, make in FACTORIES.items()}


def _state(est) -> dict:
    """Everything on the estimator and its feature extractor, by identity."""
    state = {("self", k): id(v) for k, v in vars(est).items()}
    features = getattr(est, "features_", None)
    if features is not None:
        state.update({("features_", k): id(v) for k, v in vars(features).items()})
    return state


@pytest.mark.parametrize("name", list(FACTORIES))
def test_clone_params_fit_returns_self_and_not_fitted(name, shapes3):
    est = FACTORIES[name]()
    params = est.get_params()
    assert clone(est).get_params() == params
    assert est.set_params(batch_size=8) is est and est.get_params()["batch_size"] == 8
    with pytest.raises(NotFittedError):
        _output(est, shapes3[0][:2])
    assert est.fit(shapes3[0], shapes3[1]) is est
    cloned = clone(est)
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(cloned))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_predicting_changes_nothing_on_the_estimator(name, fitted, shapes3):
    est = fitted[name]
    before = _state(est)
    _output(est, shapes3[2])
    if not isinstance(est, PretrainedFeatures):
        est.predict(shapes3[2])
    assert _state(est) == before


@pytest.mark.parametrize("name", list(FACTORIES))
def test_eight_threads_predict_what_serial_calls_predict(name, fitted, shapes3):
    est = fitted[name]
    X = shapes3[2]
    subsets = [X[i : i + 4] for i in range(0, 24, 4)] + [X, X[::-1]]
    serial = [_output(est, s) for s in subsets]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            got = list(pool.map(lambda s: _output(est, s), subsets))
            for a, b in zip(got, serial, strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(FACTORIES))
def test_pickle_round_trip_on_every_engine(name, engine, calibration_set, shapes3):
    X, y = calibration_set
    est = FACTORIES[name](engine=engine).fit(X, y)
    expected = _output(est, shapes3[2])
    restored = pickle.loads(pickle.dumps(est))
    assert restored.get_params() == est.get_params()
    features = restored if isinstance(restored, PretrainedFeatures) else restored.features_
    assert features.engine_ == engine
    np.testing.assert_array_equal(_output(restored, shapes3[2]), expected)
    if engine == "openvino-int8":  # the calibrated engine travelled with it: the same
        # bytes, not a new calibration (an unpickled int8 model needs no calibration images)
        fitted = est if isinstance(est, PretrainedFeatures) else est.features_
        carried = fitted.runner_.carried()
        assert carried and features.runner_.carried() == carried


def test_grid_search_over_paths(shapes3):
    X, y, X_test, y_test = shapes3
    probe = GridSearchCV(FACTORIES["LinearProbe"](), {"max_iter": [200, 500]}, cv=2).fit(X, y)
    assert probe.score(X_test, y_test) >= 0.7
    pipe = Pipeline([("features", FACTORIES["PretrainedFeatures"]()),
                     ("clf", LogisticRegression(max_iter=500))])  # fmt: skip
    search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0]}, cv=2).fit(X, y)
    assert search.best_params_["clf__C"] in (0.1, 1.0)
    ft = GridSearchCV(FACTORIES["FineTuneClassifier"](), {"lr": [1e-3, 3e-3]}, cv=2).fit(X, y)
    assert ft.best_params_["lr"] in (1e-3, 3e-3)


@pytest.mark.parametrize("name", ["LinearProbe", "FineTuneClassifier"])
def test_cross_val_predict_proba_over_paths(name, shapes3):
    X, y = shapes3[0], shapes3[1]
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    est = FACTORIES[name]()
    if name == "FineTuneClassifier":
        est.set_params(epochs=4, lr=3e-3)
    proba = cross_val_predict(est, X, y, cv=cv, method="predict_proba")
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(1), 1)
    assert (np.unique(y)[proba.argmax(1)] == y).mean() >= 0.6  # out of fold, 3 classes


def test_set_params_stores_and_the_engine_is_chosen_when_loading(
    fitted, shapes3, tmp_path, monkeypatch
):
    """Issue 28: ``set_params`` only stores values, as in scikit-learn (it rebuilt the
    engine on a fitted model); a parameter read each time images are still reaches the
    fitted extractor; another engine comes from loading (built once: an ``--engine``
    override built the recorded engine first, then a second) or from a predictor, which
    leaves the model as it was."""
    import tlearn
    from tlearn import load_predictor
    from tlearn.data.loader import load_preprocessed
    from tlearn.runtime import engines

    probe = clone(fitted["LinearProbe"]).fit(shapes3[0], shapes3[1])
    expected = probe.predict_proba(shapes3[2])
    runner, fitted_on = probe.features_.runner_, probe.features_.engine_
    probe.set_params(engine="onnxruntime", device="cuda", batch_size=3)  # no GPU: stored only
    assert probe.features_.runner_ is runner and probe.features_.engine_ == fitted_on
    assert probe.features_.batch_size == 3 and probe.features_.engine == "auto"
    probe.set_params(engine="auto", device="auto")
    path = tlearn.save(probe, tmp_path / "probe.safetensors")
    built = []
    real = engines.build_engine
    monkeypatch.setattr(engines, "build_engine", lambda name, *a, **k: built.append(name)
                        or real(name, *a, **k))  # fmt: skip
    loaded = tlearn.load(path, engine="onnxruntime")
    assert built == ["onnxruntime"] and loaded.features_.engine_ == "onnxruntime"
    assert loaded.features_.engine == "onnxruntime"  # recorded: a save keeps it
    assert np.abs(loaded.predict_proba(shapes3[2]) - expected).max() < 1e-3
    predictor = load_predictor(probe, engine="torch")
    assert predictor.parts.engine.name == "torch" and probe.features_.runner_ is runner
    pre = probe.features_.preprocessing_
    pixels = np.stack([load_preprocessed(list(shapes3[2]), i, pre) for i in range(4)])
    np.testing.assert_allclose(predictor.predict_pixels(pixels), expected[:4], atol=1e-3)
    with pytest.raises(tlearn.EngineError, match="calibrated for int8"):
        tlearn.load(path, engine="openvino-int8")
    with pytest.raises(tlearn.InvalidParameterError, match="Did you mean 'openvino'"):
        tlearn.load(path, engine="openvno")


def test_a_fine_tuned_model_records_its_own_weights(fitted, tmp_path):
    import tlearn

    ft = fitted["FineTuneClassifier"]
    assert ft.features_.weights == "fine-tuned"
    assert ft.features_.backbone_.weights_source == "fine-tuned"
    tlearn.save(ft, tmp_path / "ft.safetensors")
    loaded = tlearn.load(tmp_path / "ft.safetensors")
    assert loaded.features_.weights == "fine-tuned"
    assert loaded.features_.backbone_.weights_sha256 == ft.features_.backbone_.weights_sha256
    # refitting the extractor keeps the fine-tuned weights rather than loading pretrained ones
    features = loaded.features_.fit()
    assert features.backbone_.weights_sha256 == ft.features_.backbone_.weights_sha256


def test_another_device_gets_its_own_copy_of_the_network(fitted, monkeypatch):
    """Found by the review of issue 28: ``with_engine`` (and so ``Predictor(model,
    device=...)``) built on the estimator's own network, which the torch engine then moved
    to the new device in place: the estimator's weights left its own device. A second
    device is simulated (this machine has none): "cuda" resolves to another device object
    than the model's, and the engines run on the CPU."""
    import torch

    import tlearn.features
    from tlearn.runtime import engines, torch_engine

    probe = fitted["LinearProbe"]
    cpu, other = torch.device("cpu"), torch.device("cpu", 1)
    monkeypatch.setattr(tlearn.features, "resolve_device",
                        lambda d: other if str(d) == "cuda" else cpu)  # fmt: skip
    for module in (torch_engine, engines):
        monkeypatch.setattr(module, "resolve_device", lambda d: cpu)
    ours = list(probe.features_.backbone_.model.parameters())

    def shares(features):
        return any(p is q for p, q in zip(ours, features.backbone_.model.parameters(), strict=True))

    assert not shares(probe.features_.with_engine("torch", device="cuda"))
    assert shares(probe.features_.with_engine("torch"))  # the same device: one network

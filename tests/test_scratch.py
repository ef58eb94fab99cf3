"""Training a compact network from scratch (``--method scratch``, issue 29): it learns real
photos, its model file, pickle and predictor give its predictions, its held-out estimate is
honest, and its guards (bf16 checked against fp32, the time limit, refusals) hold."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import tlearn
from tlearn import ScratchClassifier, load_image_folder
from tlearn.backbones import load_backbone
from tlearn.backbones.compact import CompactNet, Whiten
from tlearn.exceptions import DataError, UnknownBackboneError, WeightsUnavailableError
from tlearn.finetune import scratch

CLASSES = ["airplane", "automobile", "bird", "frog", "ship"]


@pytest.fixture(scope="module")
def cifar5(cifar_zip):
    train = load_image_folder(f"{cifar_zip}/train", categories=CLASSES, max_per_class=150)
    test = load_image_folder(f"{cifar_zip}/test", categories=CLASSES, max_per_class=60)
    names = np.asarray(CLASSES, dtype=object)
    return train.filenames, names[train.target], test.filenames, names[test.target]


@pytest.fixture(scope="module")
def fitted(cifar5):
    X, y, _, _ = cifar5
    return ScratchClassifier("compact_s", epochs=12, verbose=0).fit(X, y)


@pytest.mark.needs_data
def test_learns_real_photos_and_measures_itself_honestly(cifar5, fitted):
    X, y, X_test, y_test = cifar5
    test_accuracy = fitted.score(X_test, y_test)
    assert test_accuracy >= 0.55, test_accuracy  # chance is 0.2
    held = ~np.isnan(fitted.heldout_proba_).any(axis=1)
    assert held.sum() == round(0.1 * len(X))  # the held-out split, and only it
    estimate = (fitted.classes_[fitted.heldout_proba_[held].argmax(1)] == y[held]).mean()
    assert abs(estimate - test_accuracy) < 0.12  # 75 held-out images: a wide interval
    assert "held-out 10%" in fitted.heldout_method_
    assert 0.05 < fitted.temperature_ < 20 and fitted.calibration_["n_val"] == held.sum()
    assert fitted.epochs_ == 12 and len(fitted.history_) == 12
    assert fitted.features_.backbone_.architecture == "tlearn:compact_s"


@pytest.mark.needs_data
def test_model_file_pickle_and_predictor_give_its_predictions(cifar5, fitted, tmp_path):
    from tlearn import load, load_predictor, save
    from tlearn.models import model_kind

    _, _, X_test, _ = cifar5
    expected = fitted.predict_proba(X_test[:40])
    path = save(fitted, tmp_path / "scratch.safetensors")
    loaded = load(path)
    assert type(loaded) is ScratchClassifier and model_kind(loaded).name == "scratch"
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_allclose(loaded.predict_proba(X_test[:40]), expected, atol=1e-5)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(again.predict_proba(X_test[:40]), expected, atol=1e-5)
    rows = list(load_predictor(path).iter_predict(list(X_test[:40])))
    assert [r["label"] for r in rows] == list(fitted.predict(X_test[:40]))


def test_evaluation_averages_mirror_images_and_training_does_not():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    net = CompactNet((8, 16, 16), tta=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x.flip(3)), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(net.features(x), net.features(x.flip(3)), atol=1e-3)
        shifted = CompactNet((8, 16, 16), tta=2).eval()
        shifted.load_state_dict(net.state_dict())
        assert not torch.allclose(shifted(x), net(x), atol=1e-4)  # the shifts count


def test_whitening_makes_patches_uncorrelated_with_unit_variance():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.3], [0.0, 0.5, 0.4], [0.0, 0.0, 0.2]])
    x = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 3, 16, 16))
    white = Whiten()
    white.fit(x, eps=0.0)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, white.weight[:12])  # the + half
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    torch.testing.assert_close(flat @ flat.T / flat.shape[1], torch.eye(12), atol=0.05, rtol=0)


def test_compact_names_resolve_and_have_no_pretrained_weights():
    assert load_backbone("tlearn:compact_m", None).n_features == 256
    with pytest.raises(WeightsUnavailableError, match="--method scratch"):
        load_backbone("compact_m")
    with pytest.raises(UnknownBackboneError, match="compact_m"):
        load_backbone("tlearn:compact_n", None)


def test_refuses_several_labels_and_a_class_of_one(shapes3):
    X, y, _, _ = shapes3
    with pytest.raises(DataError, match="one label per image"):
        ScratchClassifier(epochs=1, verbose=0).fit(X[:6], [["a", "b"]] * 6)
    one = np.array(list(y[:-1]) + ["lonely"], dtype=object)
    with pytest.raises(DataError, match="single image"):
        ScratchClassifier(epochs=1, verbose=0).fit(X, one)


def test_time_limit_shortens_the_run_and_bf16_falls_back_when_it_disagrees(shapes3, monkeypatch):
    X, y, _, _ = shapes3
    model = ScratchClassifier("compact_s", epochs=400, batch_size=4, validation_size=0,
                              time_limit=1.0, precision="bf16", verbose=0)  # fmt: skip
    exact = scratch._loss
    calls = []

    def drifting(net, head, x, y, w, smoothing, autocast):  # bf16 off by 10%
        calls.append(autocast)
        loss = exact(net, head, x, y, w, smoothing, None)
        return loss * 1.1 if autocast is not None else loss

    monkeypatch.setattr(scratch, "_loss", drifting)
    model.fit(X, y)
    assert model.precision_ == "fp32" and calls[1] is not None and set(calls[2:]) == {None}
    assert 1 <= model.epochs_ < 400  # 1 s could not hold 400 epochs
    assert sum(h["seconds"] for h in model.history_) < 10


def _rates(monkeypatch, **rates):
    from tlearn import automl

    monkeypatch.setattr(scratch, "scratch_train_rate", lambda backbone="compact_m": rates[backbone])
    monkeypatch.setattr(automl, "SCRATCH_OVERHEAD", 1.15)  # the figures below assume it


def test_auto_plans_the_widest_network_that_trains_enough_epochs_in_its_share(monkeypatch):
    from tlearn import automl

    _rates(monkeypatch, compact_m=100.0, compact_s=400.0)
    X = np.zeros((2000, 32, 32, 3), np.uint8)
    y = np.repeat(np.arange(10), 200)
    # 1,800 training images: an epoch of compact_m 20.7 s here, of compact_s 5.2 s, and
    # 11.3 s of decoding and predicting; 60% of the budget is the share
    roomy = automl._scratch(X, y, True, {}, {}, 480.0)
    assert roomy.params["backbone"] == "compact_m" and roomy.params["epochs"] == 13
    assert roomy.estimate() == pytest.approx(2000 / 1500 + 10 + 13 * 1800 / 100 * 1.15)
    assert roomy.params["time_limit"] == pytest.approx(roomy.estimate() - 2000 / 1500 - 10)
    tight = automl._scratch(X, y, True, {}, {}, 200.0)  # 5 epochs of compact_m: too few
    assert tight.params["backbone"] == "compact_s" and tight.params["epochs"] == 20
    long = automl._scratch(X, y, True, {}, {}, 100_000.0)  # no more than twice the default
    assert long.params["epochs"] == 2 * scratch.scratch_epochs(1800)
    assert automl._scratch(X, y, True, {}, {}, 30.0) is None  # nothing trains 8 epochs
    assert automl._scratch(X, y, False, {}, {}, 480.0) is None  # large images
    assert automl._scratch(X, y, True, {}, {"backbone": "efficientnet_lite0"}, 480.0) is None
    few = np.repeat(np.arange(10), [200] * 9 + [199])
    assert automl._scratch(X[: len(few)], few, True, {}, {}, 480.0) is None


def test_auto_gives_the_probe_what_training_from_scratch_leaves(monkeypatch):
    from tlearn import automl

    _rates(monkeypatch, compact_m=100.0, compact_s=400.0)
    budgets = []

    def first_probe(X, small, common, params, budget, explicit, say):
        budgets.append(budget)
        if budget < 100:  # as when not even the cheapest probe fits
            raise tlearn.DataError("too little")
        return automl.Candidate("probe", "probe", {}, lambda: budget)

    monkeypatch.setattr(automl, "_first_probe", first_probe)
    monkeypatch.setattr(automl, "_further", lambda *args: [])
    X, y = np.zeros((2000, 32, 32, 3), np.uint8), np.repeat(np.arange(10), 200)
    judge = automl.ByAccuracy(y, None, 0, False)
    names = [c.method for c in judge.candidates(X, {}, {}, 480.0, print)]
    # 13 epochs of compact_m (280.4 s) first, the probe a quarter of the budget (of 199.6 s
    # left): the rest is for measuring, predicting and saving
    assert names == ["probe", "scratch"] and budgets == [120.0]
    budgets.clear()  # at 300 s the probe would get 75 s: the probe alone, with all of it
    assert [c.method for c in judge.candidates(X, {}, {}, 300.0, print)] == ["probe"]
    assert budgets[-1] == 300.0


def test_random_state_alone_sets_the_initial_weights(shapes3):
    X, y, X_test, _ = shapes3

    def fit(seed: int) -> np.ndarray:
        torch.manual_seed(1234 + seed)  # whatever the global state was
        model = ScratchClassifier("compact_s", epochs=1, validation_size=0, random_state=seed,
                                  engine="torch", verbose=0)  # fmt: skip
        return model.fit(X, y).predict_proba(X_test)

    first = fit(0)
    np.testing.assert_array_equal(fit(0), first)
    assert not np.allclose(fit(1), first)


@pytest.mark.parametrize(
    ("param", "value"),
    [("momentum", 0.0), ("time_limit", float("inf")), ("backbone", "compact_x")],
)
def test_values_the_run_could_not_take_are_refused_before_any_image_is_read(param, value):
    from tlearn.exceptions import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=param):
        ScratchClassifier(**{param: value}).fit(["missing.png"] * 4, ["a", "b"] * 2)


def test_class_weight_weighs_each_class_and_auto_takes_only_shared_settings(monkeypatch):
    from tlearn import automl

    y = np.array([0] * 30 + [1] * 10)
    model = ScratchClassifier(class_weight="balanced")
    w = model._weights(None, y, np.arange(40), np.array(["a", "b"])).numpy()
    assert w[0] * 30 == pytest.approx(w[-1] * 10) and w.mean() == pytest.approx(1.0)
    w = ScratchClassifier(class_weight={"b": 3.0})._weights(
        np.full(40, 2.0), y, np.arange(40), np.array(["a", "b"])
    )
    assert w[-1] == pytest.approx(3 * w[0])
    # fine-tuning's settings (other scales) stay out of auto's network from scratch
    _rates(monkeypatch, compact_m=1e4, compact_s=1e4)
    X, y = np.zeros((2000, 32, 32, 3), np.uint8), np.repeat(np.arange(10), 200)
    mine = {"lr": 1e-3, "batch_size": 1, "engine": "torch", "translate": 1}
    chosen = automl._scratch(X, y, True, {"random_state": 3}, mine, 480.0).params
    assert chosen["engine"] == "torch" and chosen["translate"] == 1 and "lr" not in chosen
    assert chosen["random_state"] == 3 and "batch_size" not in chosen
    assert automl._scratch(X, y, True, {}, {"validation_size": 0}, 480.0) is None


def test_the_command_line_trains_it_by_name_and_says_what_it_held_out(tmp_path):
    from tests.cli_runner import run_tlearn
    from tests.synthetic import make_folder

    data = make_folder(tmp_path / "train", 12, seed=5)
    out = tmp_path / "m.safetensors"
    r = run_tlearn("fit", str(data), "--method", "scratch", "--backbone", "compact_s",
                   "--epochs", "2", "--engine", "torch", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())
    assert "trained on 32 of the 36 images; the other 4 stay held out" in said, said
    assert out.is_file()
    help_text = " ".join(run_tlearn("fit", "--help").stdout.split())
    assert "kilostep" not in help_text.split("--lr", 1)[1][:200]  # fine-tuning's words

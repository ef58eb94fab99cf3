"""LinearProbe: C chosen by cross-validation, refit on everything, calibrated probabilities,
out-of-fold probabilities, string labels, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from tlearn import DataError, LinearProbe, make_probe
from tlearn.calibration import expected_calibration_error
from tlearn.probe import tune_linear_head


@pytest.fixture(scope="module")
def probe(shapes3):
    X, y, _, _ = shapes3
    return LinearProbe(image_size=64, Cs=[1e-3, 1e-2, 1e-1, 1.0]).fit(X, y)


def test_probe_learns_the_classes(probe, shapes3):
    _, _, X_test, y_test = shapes3
    assert list(probe.classes_) == ["astronaut", "coffee", "rocket"]
    pred = probe.predict(X_test)
    assert set(pred) <= set(probe.classes_)
    assert probe.score(X_test, y_test) >= 0.75  # chance is 0.33
    proba = probe.predict_proba(X_test)
    assert proba.shape == (30, 3) and np.allclose(proba.sum(1), 1)
    assert np.array_equal(probe.classes_[proba.argmax(1)], pred)


def test_C_is_chosen_by_cross_validation_then_refit_on_everything(probe, shapes3):
    res = probe.cv_results_
    assert res["C"] == [1e-3, 1e-2, 1e-1, 1.0] and probe.C_ in res["C"]
    assert set(res) >= {"mean_log_loss", "std_log_loss", "mean_accuracy", "std_accuracy"}
    assert res["C"][int(np.argmin(res["mean_log_loss"]))] == probe.C_
    assert res["n_images"] == len(shapes3[0])  # 5 folds over every image
    assert probe.classifier_.C == probe.C_
    assert probe.scaler_.n_samples_seen_ == len(shapes3[0])  # refit on all training images


def test_out_of_fold_probabilities_cover_every_training_image(probe, shapes3):
    X, y = shapes3[0], shapes3[1]
    oof = probe.oof_proba_
    assert oof.shape == (len(X), 3) and np.allclose(oof.sum(1), 1)
    oof_acc = (probe.classes_[oof.argmax(1)] == y).mean()
    assert oof_acc == pytest.approx(probe.calibration_["oof_accuracy"])
    assert oof_acc >= 0.6


def test_calibration_lowers_the_calibration_error_on_held_out_images(calibration_set, shapes3):
    # a strong penalty leaves the probe far less confident than it is right
    X, y = calibration_set
    _, _, X_test, y_test = shapes3
    raw = LinearProbe(image_size=32, Cs=[1e-4], calibrate=False).fit(X, y)
    calibrated = LinearProbe(image_size=32, Cs=[1e-4]).fit(X, y)
    assert calibrated.temperature_ < 1.0 and raw.temperature_ == 1.0
    y_idx = np.searchsorted(raw.classes_, y_test)
    before = expected_calibration_error(raw.predict_proba(X_test), y_idx)
    after = expected_calibration_error(calibrated.predict_proba(X_test), y_idx)
    assert after < before / 2, (before, after)
    np.testing.assert_array_equal(raw.predict(X_test), calibrated.predict(X_test))


def test_large_sets_search_C_on_a_sample_and_hold_out_20_percent():
    from tlearn import probe as probe_module

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    F = rng.normal(size=(300, 8)) + y[:, None]
    original = (probe_module.SEARCH_SAMPLES, probe_module.HOLDOUT_ABOVE)
    probe_module.SEARCH_SAMPLES, probe_module.HOLDOUT_ABOVE = 100, 200
    try:
        head = tune_linear_head(F, y, Cs=(0.01, 1.0))
    finally:
        probe_module.SEARCH_SAMPLES, probe_module.HOLDOUT_ABOVE = original
    assert head.cv_results["n_images"] == 100
    assert head.oof_index is not None and len(head.oof_index) == 60  # one 20% hold-out
    assert head.scaler.n_samples_seen_ == 300


def test_the_C_search_and_out_of_fold_fits_run_blas_on_one_thread(monkeypatch):
    """Many small solves: BLAS threads cost more than they give (10x per fit on 2 cores).
    Every fit sees one BLAS thread, and the setting is restored afterwards."""
    from threadpoolctl import threadpool_info

    from tlearn import probe as probe_module

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen = []

    class Spy(probe_module.LogisticRegression):
        def fit(self, X, y, sample_weight=None):
            seen.append(blas_threads())
            return super().fit(X, y, sample_weight)

    before = blas_threads()
    monkeypatch.setattr(probe_module, "LogisticRegression", Spy)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    head = tune_linear_head(rng.normal(size=(90, 8)) + y[:, None], y, Cs=(0.01, 1.0))
    assert head.C in (0.01, 1.0)
    assert len(seen) == 2 * 5 + 5 + 1  # the search, the out-of-fold scores, the refit
    assert all(threads == {1} for threads in seen), seen
    assert blas_threads() == before


def test_probe_contract(shapes3):
    est = make_probe("efficientnet_lite0", image_size=64, Cs=[0.1, 1.0])
    with pytest.raises(NotFittedError):
        est.predict(list(shapes3[0][:2]))
    assert clone(est).get_params() == est.get_params()
    int_labels = np.unique(shapes3[1], return_inverse=True)[1]
    assert est.fit(shapes3[0], int_labels) is est
    assert est.classes_.tolist() == [0, 1, 2]


def test_too_few_classes_or_images(shapes3):
    X, y, _, _ = shapes3
    with pytest.raises(DataError, match="at least 2 classes"):
        LinearProbe(image_size=64).fit(X[:5], ["cat"] * 5)
    with pytest.raises(DataError, match="8 images but y has 7"):
        LinearProbe(image_size=64).fit(X[:8], y[:7])
    with pytest.raises(DataError, match="smallest class has 1 image"):
        LinearProbe(image_size=64).fit(X[:4], ["a", "a", "a", "b"])


def test_unreadable_training_images_are_left_out(shapes3, tmp_path):
    X, y, _, _ = shapes3
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    X2, y2 = np.append(X, str(bad)), np.append(y, "coffee")
    with pytest.warns(UserWarning, match="1 unreadable training image"):
        p = LinearProbe(image_size=64, on_error="skip", Cs=[1.0]).fit(X2, y2)
    assert p.skipped_[0][1] == str(bad) and "empty" in p.skipped_[0][2]
    assert p.scaler_.n_samples_seen_ == len(X)
    assert np.isnan(p.oof_proba_[-1]).all() and not np.isnan(p.oof_proba_[:-1]).any()

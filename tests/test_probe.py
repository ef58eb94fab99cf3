"""LinearProbe: C chosen on held-out data, string labels, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from tlearn import DataError, LinearProbe, make_probe


@pytest.fixture(scope="module")
def probe(shapes3):
    X, y, _, _ = shapes3
    return LinearProbe(image_size=64).fit(X, y)


def test_probe_learns_the_classes(probe, shapes3):
    _, _, X_test, y_test = shapes3
    assert list(probe.classes_) == ["astronaut", "coffee", "rocket"]
    pred = probe.predict(X_test)
    assert set(pred) <= set(probe.classes_)
    assert probe.score(X_test, y_test) >= 0.75  # chance is 0.33
    proba = probe.predict_proba(X_test)
    assert proba.shape == (30, 3) and np.allclose(proba.sum(1), 1)
    assert np.array_equal(probe.classes_[proba.argmax(1)], pred)


def test_C_is_chosen_on_validation_then_refit(probe, shapes3):
    res = probe.cv_results_
    assert len(res["C"]) == 13 and probe.C_ in res["C"]
    best = res["C"].index(probe.C_)
    assert res["val_accuracy"][best] == max(res["val_accuracy"])
    assert probe.classifier_.C == probe.C_
    assert probe.scaler_.n_samples_seen_ == len(shapes3[0])  # refit on all training images


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

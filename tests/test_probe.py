"""LinearProbe: C chosen by cross-validation, refit on everything, calibrated probabilities,
out-of-fold probabilities, string labels, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from tlearn import DataError, LinearProbe, make_probe
from tlearn.calibration import expected_calibration_error
from tlearn.exceptions import InvalidParameterError
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
    from threadpoolctl import threadpool_info, threadpool_limits

    from tlearn import probe as probe_module

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen = []

    class Spy(probe_module.LogisticRegression):
        def fit(self, X, y, sample_weight=None):
            seen.append(blas_threads())
            return super().fit(X, y, sample_weight)

    monkeypatch.setattr(probe_module, "LogisticRegression", Spy)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    # two BLAS threads around it, whatever the test run's environment (make test's
    # workers run with one): the fits must still see one
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        head = tune_linear_head(rng.normal(size=(90, 8)) + y[:, None], y, Cs=(0.01, 1.0))
        assert before == {2} and blas_threads() == before
    assert head.C in (0.01, 1.0)
    # nested: 5 outer folds x (2 Cs x 3 inner folds + the fold's own fit), the refit
    assert len(seen) == 5 * (2 * 3 + 1) + 1
    assert all(threads == {1} for threads in seen), seen


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


def _spy_on_choices(monkeypatch):
    """Record the rows every C search saw and, for every out-of-fold scoring, its held-out
    rows and the C it used. Row ids ride in column 0 of F."""
    from tlearn import probe as probe_module

    searches, scorings = [], []
    search, score = probe_module._search_C, probe_module._scores_at

    def spy_search(pipe, F, y, Cs, cv, random_state, n_jobs, w=None):
        C, results = search(pipe, F, y, Cs, cv, random_state, n_jobs, w)
        searches.append((set(F[:, 0].astype(int)), C))
        return C, results

    def spy_score(pipe, F, y, train, test, C, w=None):
        scorings.append((set(F[test, 0].astype(int)), C, len(searches)))
        return score(pipe, F, y, train, test, C, w)

    monkeypatch.setattr(probe_module, "_search_C", spy_search)
    monkeypatch.setattr(probe_module, "_scores_at", spy_score)
    return searches, scorings


def _row_id_problem(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    F = np.column_stack([np.arange(n), rng.normal(size=(n, 6)) + y[:, None]])
    return F, y


def test_no_held_out_score_comes_from_a_C_its_image_helped_choose(monkeypatch):
    """Issue 26.13: C was chosen on the very folds whose out-of-fold scores made the
    reported accuracy (3.5 points optimistic on a synthetic problem). Now each outer
    fold's C is searched on that fold's training rows alone."""
    searches, scorings = _spy_on_choices(monkeypatch)
    F, y = _row_id_problem(90)
    head = tune_linear_head(F, y, Cs=(0.001, 0.1, 10.0))
    assert len(scorings) == 5 and head.honest is not None and head.honest.all()
    for held_out, C, n_searches in scorings:
        seen, chosen = searches[n_searches - 1]  # the search just before this scoring
        assert chosen == C and not (seen & held_out), "a held-out row chose its C"
    assert sorted(np.concatenate([sorted(h) for h, _, _ in scorings])) == list(range(90))
    assert "nested" in head.estimate


def test_large_sets_are_honest_on_the_images_outside_the_search(monkeypatch):
    from tlearn import probe as probe_module

    searches, scorings = _spy_on_choices(monkeypatch)
    monkeypatch.setattr(probe_module, "SEARCH_SAMPLES", 100)
    monkeypatch.setattr(probe_module, "HOLDOUT_ABOVE", 200)
    for n in (180, 300):  # k-fold, then one 20% hold-out
        searches.clear(), scorings.clear()
        F, y = _row_id_problem(n)
        head = tune_linear_head(F, y, Cs=(0.01, 1.0))
        ((seen, _),) = searches
        honest_rows = set(head.oof_index[head.honest])
        assert honest_rows and not (honest_rows & seen)
        assert honest_rows == set(head.oof_index) - seen
        assert str(len(honest_rows)) in head.estimate
    assert len(honest_rows) == 60  # the hold-out: the search sampled only the other 240


def test_held_out_probabilities_are_honest_and_say_how(probe, shapes3):
    X = shapes3[0]
    proba = probe.heldout_proba_
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(1), 1)
    assert "nested 5-fold cross-validation" in probe.heldout_method_
    # the same out-of-fold scores, calibrated without their own labels: same predictions
    assert (proba.argmax(1) == probe.oof_proba_.argmax(1)).all()


def test_one_image_classes_say_what_works_and_it_does(shapes3):
    """Issue 26.15: the advice (Cs=[1.0]) still failed; above 5,000 images such a class
    gave scikit-learn's raw ValueError."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, int), np.ones(20, int), [2]]
    F = rng.normal(size=(41, 5)) + y[:, None]
    with pytest.raises(DataError, match="calibrate=False"):
        tune_linear_head(F, y, Cs=(0.1, 1.0))
    with pytest.raises(DataError, match="calibrate=False"):
        tune_linear_head(F, y, Cs=(1.0,))
    head = tune_linear_head(F, y, Cs=(1.0,), calibrate=False)
    assert head.classifier.predict(head.scaler.transform(F[:1])).shape == (1,)


@pytest.mark.parametrize("search_samples, holdout_above", [(20, 1000), (20, 30)])
def test_large_sets_with_a_one_image_class_get_the_same_message(
    monkeypatch, search_samples, holdout_above
):
    """Above SEARCH_SAMPLES (k-fold) and HOLDOUT_ABOVE (one hold-out) a one-image class
    gave scikit-learn's raw ValueError from its stratified splitters."""
    from tlearn import probe as probe_module

    monkeypatch.setattr(probe_module, "SEARCH_SAMPLES", search_samples)
    monkeypatch.setattr(probe_module, "HOLDOUT_ABOVE", holdout_above)
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, int), np.ones(20, int), [2]]
    with pytest.raises(DataError, match="smallest class has 1 image"):
        tune_linear_head(rng.normal(size=(41, 5)) + y[:, None], y, Cs=(0.1, 1.0))


def test_targets_of_the_other_convention_are_refused_saying_which(probe, shapes3):
    """Issue 27.5: a model fitted by the CLI (class names) scored with load_image_folder's
    integer targets counted every image wrong (or failed obscurely)."""
    from tlearn.evaluation import evaluate

    _, _, X_test, y_test = shapes3
    indices = np.searchsorted(probe.classes_, y_test)
    with pytest.raises(DataError, match=r"y holds numbers .*data.target_names\[data.target\]"):
        probe.score(X_test, indices)
    with pytest.raises(DataError, match="y holds numbers"):
        evaluate(probe, X_test, indices)
    assert probe.score(X_test, probe.classes_[indices]) == probe.score(X_test, y_test)


def test_just_above_search_samples_half_the_images_are_left_for_the_estimate(monkeypatch):
    """At SEARCH_SAMPLES + 1 images scikit-learn's stratified sample raised ValueError
    (fewer rows left out than classes); a few more and the estimate came from a handful
    of images. Now the sample takes at most half, and a class of 2 keeps both images in
    the search (it was sampled to 1: "the smallest class has 1 image")."""
    from tlearn import probe as probe_module

    searches, _ = _spy_on_choices(monkeypatch)
    monkeypatch.setattr(probe_module, "SEARCH_SAMPLES", 100)
    for n in (101, 102, 160):
        F, y = _row_id_problem(n)
        head = tune_linear_head(F, y, Cs=(0.01, 1.0))
        assert head.honest is not None and head.honest.sum() >= n // 2
        assert not set(head.oof_index[head.honest]) & searches[-1][0]
    F, y = _row_id_problem(160)
    y[:2] = 3  # a class of 2 images
    head = tune_linear_head(F, y, Cs=(0.01, 1.0))
    assert {0, 1} <= searches[-1][0] and "2-fold" in head.estimate


@pytest.mark.parametrize("make_cv", ["predefined", "leave_one_out", "kfold"])
def test_a_splitter_of_the_callers_is_used_for_the_outer_folds(make_cv):
    """Nested CV reused the caller's splitter inside each fold: a PredefinedSplit indexed
    rows the fold did not have (IndexError) and LeaveOneOut could not say its fold count
    (TypeError); both worked before nesting."""
    from sklearn.model_selection import KFold, LeaveOneOut, PredefinedSplit

    F, y = _row_id_problem(15 if make_cv == "leave_one_out" else 60)
    cv = {
        "predefined": PredefinedSplit(np.arange(60) % 4),
        "leave_one_out": LeaveOneOut(),
        "kfold": KFold(3, shuffle=True, random_state=0),
    }[make_cv]
    head = tune_linear_head(F, y, Cs=(0.01, 1.0), cv=cv)
    n_splits = cv.get_n_splits(F)
    assert head.oof_index is not None and sorted(head.oof_index) == list(range(len(y)))
    assert head.estimate.startswith(f"nested cross-validation on the given cv's {n_splits} ")


def test_the_estimate_names_the_folds_made_not_the_folds_asked_for():
    F, y = _row_id_problem(60)
    y[:3] = 3  # a class of 3 images: 3 folds, not 5
    assert "nested 3-fold" in tune_linear_head(F, y, Cs=(0.01, 1.0)).estimate


@pytest.mark.parametrize("random_state", [None, np.random.RandomState(0)])
def test_the_blocks_of_an_ensemble_hold_out_the_same_rows(monkeypatch, random_state):
    """With random_state=None (or a RandomState) each block drew its own hold-out, and
    combining them raised RuntimeError("the blocks' out-of-fold rows differ")."""
    from tlearn import probe as probe_module
    from tlearn.probe import tune_block_heads

    monkeypatch.setattr(probe_module, "HOLDOUT_ABOVE", 100)
    F, y = _row_id_problem(150)
    head = tune_block_heads(F[:, 1:], y, [3, 3], Cs=(0.01, 1.0), random_state=random_state)
    assert head.oof_index is not None and len(head.oof_index) == 30


def test_a_class_of_two_images_still_gets_a_held_out_figure_saying_it_is_optimistic(shapes3):
    """Nesting needs 3 images of every class; with 2, heldout_proba_ was all NaN and
    tlearn.train refused the whole run ("this model has no held-out estimate")."""
    X, y = np.asarray(shapes3[0]), np.asarray(shapes3[1])
    keep = np.r_[np.flatnonzero(y == "astronaut")[:2], np.flatnonzero(y != "astronaut")]
    model = LinearProbe(image_size=32, Cs=[0.1, 1.0], engine="torch").fit(X[keep], y[keep])
    assert not np.isnan(model.heldout_proba_).any()
    assert "optimistic" in model.heldout_method_ and "2-fold" in model.heldout_method_


def test_boolean_classes_and_0_1_targets_are_one_convention():
    """Booleans were taken for names: a model of True/False classes scored with 0/1
    targets (or one of 0/1 with booleans) was refused, though scikit-learn counts them
    right (accuracy 1.0 for [0, 1] against [False, True])."""
    from sklearn.metrics import accuracy_score

    from tlearn.data.targets import check_target_kind

    assert accuracy_score([0, 1, 1], [False, True, True]) == 1.0
    for classes, y in [([False, True], [0, 1]), ([0, 1], [True, False]),
                       ([False, True], np.array([1, 0], dtype=object))]:  # fmt: skip
        check_target_kind(np.asarray(classes), np.asarray(y))
    with pytest.raises(DataError, match="y holds numbers"):
        check_target_kind(np.array(["no", "yes"]), np.array([True, False]))


def test_class_weight_balanced_or_by_label_raises_the_small_class_recall(shapes3, tmp_path):
    """Issue 28: class_weight as scikit-learn's, with a dict keyed by the labels the user
    gave (the classifier is trained on class indices, so it is translated)."""
    rng = np.random.default_rng(0)
    F = np.r_[rng.normal(0, 1, (300, 8)), rng.normal(0.8, 1, (15, 8))]
    y = np.r_[np.zeros(300, int), np.ones(15, int)]
    F_test = np.r_[rng.normal(0, 1, (500, 8)), rng.normal(0.8, 1, (500, 8))]
    recall = {}
    for weight in (None, "balanced"):
        head = tune_linear_head(F, y, Cs=(1.0,), class_weight=weight)
        pred = head.classifier.predict(head.scaler.transform(F_test))
        recall[weight] = (pred[500:] == 1).mean()
    assert recall["balanced"] > recall[None] + 0.2
    X, labels = shapes3[0], np.asarray(shapes3[1])
    probe = LinearProbe(image_size=32, Cs=[1.0], class_weight={"rocket": 3.0}).fit(X, labels)
    index = list(probe.classes_).index("rocket")
    assert probe.classifier_.class_weight == {index: 3.0}
    from tlearn import load, save

    loaded = load(save(probe, tmp_path / "weighted.safetensors"))
    assert loaded.get_params()["class_weight"] == {"rocket": 3.0}
    assert np.array_equal(loaded.predict_proba(X[:4]), probe.predict_proba(X[:4]))
    with pytest.raises(DataError, match=r"class_weight names \['rockett'\]"):
        LinearProbe(image_size=32, Cs=[1.0], class_weight={"rockett": 3.0}).fit(X, labels)
    with pytest.raises(InvalidParameterError, match="class_weight"):
        LinearProbe(class_weight="balance").fit(X, labels)


def test_the_C_search_scores_a_fold_that_holds_no_image_of_a_class():
    """Folds of the caller's (a splitter of theirs, or the outer folds) can leave a small
    class out of one: scikit-learn's ``neg_log_loss`` scored that fold NaN, and every C
    with it (the smallest C won by default, with a warning). Every fold is scored over
    every class, as scikit-learn scores it when given the labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, make_scorer
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from tlearn.probe import _search_C

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 12 + [2] * 2)  # the 2s: rows 24 and 25, in folds 0 and 1 only
    F = rng.normal(size=(len(y), 8))
    F[:, 0] += 3 * y
    rows = np.arange(len(y))
    folds = [(rows[rows % 3 != k], rows[rows % 3 == k]) for k in range(3)]
    pipe = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    Cs = (0.001, 1.0, 100.0)
    C, results = _search_C(pipe, F, y, Cs, folds, 0, None)
    scorer = make_scorer(log_loss, greater_is_better=False, response_method="predict_proba",
                         labels=[0, 1, 2])  # fmt: skip
    want = [-cross_val_score(pipe.set_params(clf__C=c), F, y, cv=folds, scoring=scorer).mean()
            for c in Cs]  # fmt: skip
    np.testing.assert_allclose(results["mean_log_loss"], want, rtol=1e-9)
    assert np.isfinite(results["mean_accuracy"]).all() and Cs[int(np.argmin(want))] == C


def test_sample_weight_counts_an_image_as_often_as_its_weight():
    """Issue 28: sample weights. An integer weight is the image repeated, in the refit;
    the C search weights each fold's fit and its held-out loss, as a hand-written loop
    over the same folds does with ``clf__sample_weight`` and a weighted log loss."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from tlearn.probe import _search_C

    rng = np.random.default_rng(1)
    y = np.arange(60) % 3
    F = rng.normal(size=(60, 6)) + y[:, None] * 0.7
    w = rng.integers(1, 4, size=60).astype(float)
    head = tune_linear_head(F, y, Cs=(0.5,), calibrate=False, sample_weight=w)
    rep = np.repeat(np.arange(60), w.astype(int))
    plain = tune_linear_head(F[rep], y[rep], Cs=(0.5,), calibrate=False)
    np.testing.assert_allclose(head.classifier.coef_, plain.classifier.coef_, atol=1e-3)

    fold = (np.arange(60) // 3) % 3  # every class in every fold
    folds = [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(3)]
    pipe = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    Cs = (0.01, 1.0)
    _, results = _search_C(pipe, F, y, Cs, folds, 0, None, w)
    want = []
    for C in Cs:
        losses = []
        for tr, te in folds:
            fitted = clone(pipe).set_params(clf__C=C)
            fitted.fit(F[tr], y[tr], scaler__sample_weight=w[tr], clf__sample_weight=w[tr])
            losses.append(log_loss(y[te], fitted.predict_proba(F[te]), sample_weight=w[te]))
        want.append(np.mean(losses))
    np.testing.assert_allclose(results["mean_log_loss"], want, rtol=1e-9)


@pytest.mark.parametrize(
    "weights, said",
    [
        ([1.0] * 5, "shape \\(5,\\) for"),
        ("negative", "from 0 to"),
        ("nan", "not finite"),
        ("zeros", "not all 0"),
    ],
)
def test_bad_sample_weights_are_one_clear_error(weights, said, shapes3):
    X, y = shapes3[0], shapes3[1]
    w = {"negative": -np.ones(len(y)), "nan": np.full(len(y), np.nan), "zeros": np.zeros(len(y))}
    given = w[weights] if isinstance(weights, str) else weights
    with pytest.raises(DataError, match=said):
        LinearProbe(image_size=32, Cs=[1.0]).fit(X, y, sample_weight=given)


def test_a_heavier_class_is_predicted_more_often(shapes3):
    X, y, X_test, _ = shapes3
    probe = LinearProbe(image_size=32, Cs=[0.01], engine="torch")
    same = clone(probe).fit(X, y, sample_weight=np.ones(len(y)))
    np.testing.assert_allclose(
        same.predict_proba(X_test), clone(probe).fit(X, y).predict_proba(X_test)
    )
    heavy = np.where(np.asarray(y) == y[0], 20.0, 1.0)
    weighted = clone(probe).fit(X, y, sample_weight=heavy)
    share = lambda m: (m.predict(X_test) == y[0]).mean()  # noqa: E731
    assert weighted.predict_proba(X_test)[:, list(weighted.classes_).index(y[0])].mean() > (
        same.predict_proba(X_test)[:, list(same.classes_).index(y[0])].mean()
    ) and share(weighted) >= share(same)


def _weighted_problem(n=30):
    rng = np.random.default_rng(3)
    y = np.arange(n) % 3
    return rng.normal(size=(n, 5)) + y[:, None], y


@pytest.mark.parametrize(
    "case, said",
    [("two", "all weigh 0: too few images carry weight"), ("huge", "from 0 to 1e\\+12"),
     ("shape", "shape \\(15, 2\\) for 30 images"), ("text", "must hold numbers")],
)  # fmt: skip
def test_weights_that_cannot_be_fitted_are_one_clear_error(case, said):
    """Found by the review of issue 28's weights: weight on two images only (a training fold
    of the search weighed nothing), huge weights (the weighted scaler overflowed into "X
    contains NaN") and a matrix of weights passed, or crashed inside scikit-learn."""
    F, y = _weighted_problem()
    w = {"two": np.r_[1.0, 1.0, np.zeros(28)], "huge": np.full(30, 1e200),
         "shape": np.ones((15, 2)), "text": ["heavy"] * 30}[case]  # fmt: skip
    with pytest.raises(DataError, match=said):
        tune_linear_head(F, y, sample_weight=w)


def test_images_of_weight_0_have_no_say_in_the_choice_of_C():
    """A held-out fold whose images all weigh 0 was scored as if unweighted: changing their
    labels changed C. And a caller's folds whose training side lacks a class is a clear
    error (it was scikit-learn's "y_true contains values not belonging to the labels")."""
    from sklearn.model_selection import KFold, PredefinedSplit

    F, y = _weighted_problem()
    fold = np.arange(30) % 5
    w = np.where(fold == 0, 0.0, 1.0)
    relabelled = y.copy()
    relabelled[fold == 0] = (y[fold == 0] + 1) % 3
    cv = PredefinedSplit(fold)
    a = tune_linear_head(F, y, cv=cv, calibrate=False, sample_weight=w)
    b = tune_linear_head(F, relabelled, cv=cv, calibrate=False, sample_weight=w)
    assert a.C == b.C and a.cv_results["mean_log_loss"] == b.cv_results["mean_log_loss"]
    with pytest.raises(DataError, match="no training images of class"):
        tune_linear_head(F, np.sort(y), cv=KFold(3), calibrate=False)

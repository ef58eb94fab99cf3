"""Sample weights beyond the linear probe (issue 28): fine-tuning, the multi-label probe,
and a CSV's ``weight`` column through ``tlearn fit``. The probe's own weights are tested
in test_probe.py."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone

from tests.synthetic import make_folder
from tlearn import DataError, FineTuneClassifier, LinearProbe
from tlearn.data import load_image_csv
from tlearn.data.multilabel_sources import is_multilabel_csv, load_multilabel_csv
from tlearn.finetune.estimator import _training_weights
from tlearn.finetune.heldout import crossfit_epochs
from tlearn.finetune.loop import LoopConfig, train_step
from tlearn.multilabel import MultiLabelProbe, choose_thresholds
from tlearn.training import load_weighted, train


# -- fine-tuning ---------------------------------------------------------------------------
def _step(sample_weight, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = (
        torch.randn(6, 4, generator=torch.Generator().manual_seed(1)),
        torch.tensor([0, 1, 2, 0, 1, 2]),
    )
    cfg = LoopConfig(label_smoothing=0.1)
    loss = train_step(net, opt, x, y, cfg, None, sample_weight)
    return loss, net.weight.detach().clone()


def test_a_training_step_weighs_each_images_loss():
    plain, w_plain = _step(None)
    ones, w_ones = _step(torch.ones(6))
    assert ones == pytest.approx(plain, rel=1e-6)
    torch.testing.assert_close(w_ones, w_plain)
    # weight 2 on the first image: its loss counts twice in the batch's mean
    w = torch.tensor([2.0, 1, 1, 1, 1, 1])
    loss, _ = _step(w)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    each = F.cross_entropy(net(x), torch.tensor([0, 1, 2, 0, 1, 2]), reduction="none",
                           label_smoothing=0.1)  # fmt: skip
    assert loss == pytest.approx(float((each * w).mean().detach()), rel=1e-5)


def test_training_weights_fold_in_the_class_weights_and_average_one():
    y = np.array([0, 0, 1, 2])
    w = _training_weights(np.array([1.0, 3.0, 1.0, 1.0]), y, [1.0, 2.0, 4.0])
    assert w is not None and w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w / w[0], [1, 3, 2, 4])
    alone = _training_weights(None, y, [1.0, 2.0, 4.0])  # class weights alone: the same way
    assert alone is not None and alone.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(alone / alone[0], [1, 1, 2, 4])
    assert _training_weights(None, y, None) is None


def test_the_epoch_is_chosen_by_the_weighted_validation_images():
    """Epoch 1 gets the light images right, epoch 2 the heavy ones: weights move the choice."""
    y = np.array([0, 1] * 4)
    e1 = np.where(np.arange(8)[:, None] < 4, np.eye(2)[y] * 5, np.eye(2)[1 - y] * 5)
    e2 = np.where(np.arange(8)[:, None] < 4, np.eye(2)[1 - y] * 5, np.eye(2)[y] * 5)
    _, unweighted = crossfit_epochs([e1, e2], y)
    heavy_last = np.r_[np.full(4, 0.1), np.full(4, 10.0)]
    _, weighted = crossfit_epochs([e1, e2], y, sample_weight=heavy_last)
    assert set(unweighted) == {1} and set(weighted) == {2}


@pytest.fixture(scope="module")
def head_runs(shapes3):
    X, y, _, _ = shapes3
    est = FineTuneClassifier(strategy="head", image_size=32, epochs=2, batch_size=16,
                             augmentation="none", validation_size=0.25, verbose=0)  # fmt: skip
    y = np.asarray(y)
    heavy = np.where(y == y[0], 30.0, 1.0)
    return {
        "plain": clone(est).fit(X, y),
        "ones": clone(est).fit(X, y, sample_weight=np.ones(len(y))),
        "heavy": clone(est).fit(X, y, sample_weight=heavy),
    }


def test_fine_tuning_with_equal_weights_is_fine_tuning_without(head_runs, shapes3):
    X_test = shapes3[2]
    np.testing.assert_allclose(
        head_runs["ones"].predict_proba(X_test), head_runs["plain"].predict_proba(X_test),
        atol=1e-4,
    )  # fmt: skip


def test_a_heavier_class_is_predicted_more_by_fine_tuning(head_runs, shapes3):
    X_test, y = shapes3[2], np.asarray(shapes3[1])
    k = list(head_runs["plain"].classes_).index(y[0])
    p_heavy = head_runs["heavy"].predict_proba(X_test)[:, k].mean()
    assert p_heavy > head_runs["plain"].predict_proba(X_test)[:, k].mean() + 0.05


def test_fine_tuning_leaves_out_images_of_weight_zero(shapes3):
    X, y = shapes3[0], np.asarray(shapes3[1])
    est = FineTuneClassifier(strategy="head", image_size=32, epochs=1, batch_size=16,
                             augmentation="none", validation_size=0.25, verbose=0)  # fmt: skip
    w = np.ones(len(y))
    w[::3] = 0
    model = est.fit(X, y, sample_weight=w)
    held = ~np.isnan(model.heldout_proba_).any(axis=1)
    assert held.any() and not held[w == 0].any()  # no left-out image is in the validation
    with pytest.raises(DataError, match="sample_weight 0"):
        clone(est).fit(X, y, sample_weight=np.where(y == y[0], 0.0, 1.0))
    with pytest.raises(DataError, match="not all 0"):
        clone(est).fit(X, y, sample_weight=np.zeros(len(y)))


def test_fine_tuning_takes_class_weights_as_a_mapping(shapes3):
    X, y = shapes3[0], np.asarray(shapes3[1])
    est = FineTuneClassifier(strategy="head", image_size=32, epochs=1, batch_size=16,
                             augmentation="none", validation_size=0, verbose=0)  # fmt: skip
    est.multilabel_ = False  # what fit sets from y before it configures the loop
    cfg = est.set_params(class_weight={y[0]: 3.0})._loop_config(
        torch.device("cpu"), np.array([0, 1, 2]), np.unique(y), {}
    )
    index = list(np.unique(y)).index(y[0])
    assert cfg.class_weights == [3.0 if i == index else 1.0 for i in range(3)]
    with pytest.raises(DataError, match="not classes"):
        est.set_params(class_weight={"no such class": 2.0}).fit(X, y)


# -- the multi-label probe -----------------------------------------------------------------
def test_a_threshold_counts_an_image_as_often_as_its_weight():
    rng = np.random.default_rng(0)
    P, Y = rng.random((40, 3)), (rng.random((40, 3)) > 0.6).astype(int)
    w = rng.integers(0, 4, 40).astype(float)
    repeated = np.repeat(np.arange(40), w.astype(int))
    for target in ("f1", "precision=0.7", "recall=0.5"):
        np.testing.assert_allclose(
            choose_thresholds(P, Y, target, w), choose_thresholds(P[repeated], Y[repeated], target)
        )


# -- a CSV's weight column -----------------------------------------------------------------
def _csv(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def test_a_csv_weight_column_is_read_and_checked_line_by_line(image_folder, tmp_path):
    files = sorted(p for p in image_folder.rglob("*.jpg"))
    rows = [["path", "label", "weight"]] + [[str(p), p.parent.name, 1 + i % 3]
                                            for i, p in enumerate(files)]  # fmt: skip
    data = load_image_csv(_csv(tmp_path / "w.csv", rows), read_weights=True)
    np.testing.assert_array_equal(data.sample_weight, [1 + i % 3 for i in range(len(files))])
    unweighted = _csv(tmp_path / "no.csv", [r[:2] for r in rows])
    assert load_image_csv(unweighted, read_weights=True).sample_weight is None
    for bad, said in (("-1", "line 3"), ("heavy", "line 3"), ("nan", "line 3"), ("", "line 3")):
        broken = [r[:] for r in rows]
        broken[2][2] = bad
        with pytest.raises(DataError, match=said):
            load_image_csv(_csv(tmp_path / "bad.csv", broken), read_weights=True)
    only_weights = _csv(tmp_path / "pw.csv", [["path", "weight"], [str(files[0]), 2]])
    assert load_image_csv(only_weights).target is None  # path,weight: no label column


def test_a_weight_column_of_zeros_and_ones_is_no_label(image_folder, tmp_path):
    files = sorted(p for p in image_folder.rglob("*.jpg"))
    rows = [["path", "cat", "dog", "weight"]] + [
        [str(p), i % 2, (i + 1) % 2, i % 2] for i, p in enumerate(files)
    ]
    path = _csv(tmp_path / "ml.csv", rows)
    assert is_multilabel_csv(path)
    data = load_multilabel_csv(path, read_weights=True)
    assert data.target_names == ["cat", "dog"]
    np.testing.assert_array_equal(data.sample_weight, [i % 2 for i in range(len(files))])
    one_flag = _csv(tmp_path / "one.csv", [["path", "y", "weight"]] + [
        [str(p), i % 2, 1] for i, p in enumerate(files)])  # fmt: skip
    assert not is_multilabel_csv(one_flag)  # one 0/1 column beside a weight: one label


def test_tlearn_fit_on_a_weighted_csv_fits_what_the_weights_say(tmp_path):
    folder = make_folder(tmp_path / "imgs", 8, seed=5)
    files = sorted(folder.rglob("*.jpg"))
    weights = [0.0 if i % 4 == 0 else float(1 + i % 3) for i in range(len(files))]
    listed = zip(files, weights, strict=True)
    rows = [["path", "label", "weight"]] + [[str(p), p.parent.name, w] for p, w in listed]
    data = _csv(tmp_path / "train.csv", rows)
    X, y, w = load_weighted(data)
    np.testing.assert_array_equal(w, [v for v in weights if v > 0])  # weight 0: left out
    said: list[str] = []
    params = {"image_size": 32, "Cs": [0.1, 1.0], "engine": "torch"}
    result = train(data, method="probe", say=said.append, **params)
    zero = weights.count(0.0)
    assert any(f"weight column: 1 to 3; {zero} image(s) of weight 0 left out" in line
               for line in said), said  # fmt: skip
    assert "sample_weight" in result.evaluation
    alone = LinearProbe(**params, verbose=0).fit(X, y, sample_weight=w)
    assert result.model.C_ == alone.C_
    np.testing.assert_allclose(result.model.predict_proba(X), alone.predict_proba(X), atol=1e-6)
    unweighted = LinearProbe(**params, verbose=0).fit(X, y)
    assert not np.allclose(unweighted.classifier_.coef_, alone.classifier_.coef_, atol=1e-3)


def test_the_multi_label_probe_weighs_images(shapes3):
    X, y = shapes3[0], np.asarray(shapes3[1])
    Y = [[c] if i % 3 else [c, "rocket"] for i, c in enumerate(y)]  # some images two labels
    est = MultiLabelProbe(image_size=32, Cs=[0.1, 1.0], cv=3, engine="torch", verbose=0)
    plain = clone(est).fit(X, Y)
    ones = clone(est).fit(X, Y, sample_weight=np.ones(len(y)))
    np.testing.assert_allclose(ones.predict_proba(X), plain.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(ones.thresholds_, plain.thresholds_)
    w = np.where(np.arange(len(y)) % 4 == 0, 0.0, np.where(y == y[0], 5.0, 1.0))
    weighted = clone(est).fit(X, Y, sample_weight=w)
    assert np.isnan(weighted.heldout_proba_[w == 0]).all()  # weight 0: left out
    assert not np.allclose(weighted.predict_proba(X), plain.predict_proba(X), atol=1e-3)
    # score weighs too: an image of weight 0 does not count
    drop = w > 0
    kept = [X[i] for i in np.flatnonzero(drop)]
    assert weighted.score(X, Y, sample_weight=w) == pytest.approx(
        weighted.score(kept, [Y[i] for i in np.flatnonzero(drop)], sample_weight=w[drop])
    )


class _Candidate:
    """A fitted model as auto sees it: its held-out probabilities."""

    classes_ = np.array([0, 1])
    heldout_method_ = "out-of-fold"

    def __init__(self, right: np.ndarray, y: np.ndarray) -> None:
        self.heldout_proba_ = np.eye(2)[np.where(right, y, 1 - y)] * 0.8 + 0.1


def test_auto_judges_its_candidates_by_the_weighted_images():
    from tlearn.automl import _choose, _held_out

    y = np.array([0, 1] * 50)
    first_half = np.arange(100) < 50
    a, b = _Candidate(first_half, y), _Candidate(~first_half, y)
    equal = _choose([(a, {}), (b, {})], y, np.ones(100), 0)
    heavy_second = np.where(first_half, 0.1, 10.0)
    weighted = _choose([(a, {}), (b, {})], y, heavy_second, 0)
    assert equal is a and weighted is b  # a tie keeps the first; the weights pick b
    assert _held_out(a, y, np.where(first_half, 0.0, 1.0)) == (0.0, 100)
    assert _held_out(a, y, np.zeros(100)) == (None, 100)  # nothing weighs: no figure


# -- what an adversarial review found (issue 28's weights) ---------------------------------
def test_weights_are_relative_for_the_thresholds():
    rng = np.random.default_rng(2)
    P, Y = rng.random((60, 2)), (rng.random((60, 2)) > 0.5).astype(int)
    w = rng.integers(1, 4, 60).astype(float)
    for target in ("f1", "precision=0.6", "recall=0.5"):
        np.testing.assert_allclose(
            choose_thresholds(P, Y, target, w * 1e9), choose_thresholds(P, Y, target, w)
        )


def test_class_weights_are_finite_positive_numbers():
    from tlearn._validation import encode_class_weight

    classes = np.array(["a", "b"])
    for bad in (float("inf"), float("nan"), True, 1e13, 0, -1):
        with pytest.raises(DataError, match="positive number"):
            encode_class_weight({"a": bad}, classes)
    assert encode_class_weight({"a": 2}, classes) == {0: 2.0}


def test_a_resumed_runs_fingerprint_keeps_class_weight_keys_and_relative_weights():
    import json
    from types import SimpleNamespace

    bb = SimpleNamespace(architecture="a", weights_sha256="s")
    pre = SimpleNamespace(input_size=32)
    classes = np.array([0, 1])

    def printed(class_weight, weights=None):
        est = FineTuneClassifier(class_weight=class_weight)
        est.multilabel_ = False  # what fit sets from y before it configures the loop
        return json.dumps(est._fingerprint(bb, classes, pre, 4, weights), sort_keys=True)

    assert printed({np.int64(0): 2.0}) == printed({0: 2}) == printed({"0": 2.0})
    w = np.array([1.0, 2.0, 3.0, 4.0])
    assert printed(None, w) == printed(None, 2 * w) != printed(None, w[::-1])


def test_class_weights_alone_and_with_equal_sample_weights_train_the_same(shapes3):
    X, y = shapes3[0], np.asarray(shapes3[1])
    est = FineTuneClassifier(strategy="head", image_size=32, epochs=1, batch_size=16,
                             augmentation="none", validation_size=0, verbose=0,
                             class_weight={y[0]: 3.0})  # fmt: skip
    alone = clone(est).fit(X, y)
    ones = clone(est).fit(X, y, sample_weight=np.ones(len(y)))
    np.testing.assert_allclose(alone.head_weight_, ones.head_weight_, atol=1e-6)


def test_weight_zero_images_are_left_out_before_max_per_class(image_folder, tmp_path):
    files = sorted(p for p in image_folder.rglob("*.jpg"))  # 6 per class
    rows = [["path", "label", "weight"]] + [[str(p), p.parent.name, 0 if i % 2 else 1]
                                            for i, p in enumerate(files)]  # fmt: skip
    X, y, w = load_weighted(_csv(tmp_path / "w.csv", rows), max_per_class=3)
    assert len(X) == 9 and (w > 0).all()  # the three of weight 1 in each class
    assert sorted(np.unique(y, return_counts=True)[1]) == [3, 3, 3]


def test_only_a_fit_reads_the_weight_column(image_folder, tmp_path):
    files = sorted(p for p in image_folder.rglob("*.jpg"))
    rows = [["path", "label", "weight"]] + [[str(p), p.parent.name, "1.2kg"] for p in files]
    path = _csv(tmp_path / "kg.csv", rows)
    data = load_image_csv(path)  # what predict and evaluate read: no weights asked for
    assert data.sample_weight is None and len(data.filenames) == len(files)
    from tlearn.training import load_labelled

    assert len(load_labelled(path)[0]) == len(files)
    with pytest.raises(DataError, match="line 2"):
        load_weighted(path)


@pytest.mark.parametrize("second", ["sample_weight", "Weight"])
def test_two_weight_columns_are_refused(second, image_folder, tmp_path):
    files = sorted(p for p in image_folder.rglob("*.jpg"))
    rows = [["path", "label", "weight", second]] + [[str(p), p.parent.name, 1, 2] for p in files]
    with pytest.raises(DataError, match="2 weight columns"):
        load_weighted(_csv(tmp_path / "two.csv", rows))


def test_hugging_face_metadata_jsonl_gives_weights(image_folder):
    import json

    files = sorted(p.relative_to(image_folder) for p in image_folder.rglob("*.jpg"))
    lines = [json.dumps({"file_name": str(f), "labels": [f.parent.name], "weight": 1 + i % 2})
             for i, f in enumerate(files)]  # fmt: skip
    (image_folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    _, _, w = load_weighted(image_folder)
    np.testing.assert_array_equal(w, [1 + i % 2 for i in range(len(files))])


def test_balanced_judging_weighs_each_class_to_one_with_sample_weights():
    from tlearn.automl import class_balancing_weights

    y = np.array(["a"] * 5 + ["b"] * 5)
    sw = np.where(y == "b", 9.0, 1.0)
    judged = class_balancing_weights(y, sw)
    always_b = (y == "b").astype(float)
    assert np.average(always_b, weights=judged) == pytest.approx(0.5)
    np.testing.assert_allclose(class_balancing_weights(y), np.full(10, 0.2))


def test_only_a_fit_reads_hugging_face_metadata_weights(image_folder):
    import json

    from tlearn.training import load_labelled

    files = sorted(p.relative_to(image_folder) for p in image_folder.rglob("*.jpg"))
    lines = [json.dumps({"file_name": str(f), "labels": [f.parent.name], "weight": "heavy"})
             for f in files]  # fmt: skip
    (image_folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    assert len(load_labelled(image_folder)[0]) == len(files)  # what evaluate reads
    with pytest.raises(DataError, match="weight"):
        load_weighted(image_folder)

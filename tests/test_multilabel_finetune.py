"""Fine-tuning with several labels per image (issue 28): a sigmoid per label and binary
cross-entropy, the epoch chosen by validation mAP, each label calibrated and thresholded
on the validation images; through Python, `tlearn fit`, the model file, `tlearn predict`
and an ONNX export. Small synthetic photos at 32 px: the claims are about the plumbing;
the accuracy on real photos is measured in benchmarks/mosaics.py."""

from __future__ import annotations

import csv
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone

from tests.cli_runner import run_tlearn
from tests.synthetic import make_folder
from tlearn import DataError, FineTuneClassifier, load, save
from tlearn.exceptions import CheckpointError
from tlearn.finetune.multilabel import bce_per_image, crossfit_label_epochs
from tlearn.models import model_kind

SMALL = {"strategy": "head", "image_size": 32, "epochs": 3, "batch_size": 8,
         "augmentation": "none", "validation_size": 0.3, "engine": "torch",
         "verbose": 0}  # fmt: skip


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """36 photos of 3 shapes; a third of them also tagged "framed" (no two tags alike)."""
    root = make_folder(tmp_path_factory.mktemp("ml-ft") / "photos", 12, seed=11)
    X = sorted(str(p) for p in root.rglob("*.jpg"))
    Y = [(Path(p).parent.name, "framed") if i % 3 == 0 else (Path(p).parent.name,)
         for i, p in enumerate(X)]  # fmt: skip
    return root, X, Y


@pytest.fixture(scope="module")
def fitted(tagged):
    _, X, Y = tagged
    return FineTuneClassifier(**SMALL).fit(X, Y)


def test_the_loss_is_each_labels_binary_cross_entropy():
    z = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([[1, 0, 1]], dtype=torch.int8)
    plain = F.binary_cross_entropy_with_logits(z, y.float(), reduction="none").mean(1)
    torch.testing.assert_close(bce_per_image(z, y, 0.0), plain)
    smoothed = F.binary_cross_entropy_with_logits(z, torch.tensor([[0.95, 0.05, 0.95]]),
                                                  reduction="none").mean(1)  # fmt: skip
    torch.testing.assert_close(bce_per_image(z, y, 0.1), smoothed)


def test_labels_as_lists_give_a_sigmoid_per_label_and_thresholds(fitted, tagged):
    _, X, Y = tagged
    assert fitted.multilabel_ and list(fitted.classes_) == ["astronaut", "coffee", "framed",
                                                            "rocket"]  # fmt: skip
    P = fitted.predict_proba(X)
    assert P.shape == (36, 4) and ((P >= 0) & (P <= 1)).all()
    assert not np.allclose(P.sum(axis=1), 1.0)  # each label on its own
    np.testing.assert_array_equal(fitted.predict(X), (fitted.thresholds_ <= P).astype(np.int8))
    assert fitted.thresholds_.shape == (4,) and fitted.calibration_slope_.shape == (4,)
    assert fitted.score(X, Y) > 0.5  # macro F1 on images it was trained on
    rows = ~np.isnan(fitted.heldout_proba_).any(axis=1)
    assert rows.sum() == 11  # the 30% validation split, judged cross-fitted
    assert (fitted.heldout_labels_[rows] >= 0).all() and (fitted.heldout_labels_[~rows] == -1).all()
    assert "calibration and thresholds the other half chose" in fitted.heldout_method_
    assert all(0 <= h["val_accuracy"] <= 1 for h in fitted.history_)  # the validation mAP


def test_an_indicator_matrix_and_lists_train_the_same(fitted, tagged):
    _, X, Y = tagged
    names = list(fitted.classes_)
    M = np.array([[int(c in labels) for c in names] for labels in Y])
    again = clone(fitted).fit(X, M)
    assert list(again.classes_) == [0, 1, 2, 3]
    np.testing.assert_allclose(again.predict_proba(X), fitted.predict_proba(X), atol=1e-6)


def test_the_model_file_and_a_pickle_predict_the_same(fitted, tagged, tmp_path):
    _, X, _ = tagged
    path = save(fitted, tmp_path / "ml.safetensors")
    loaded = load(path)
    assert model_kind(loaded).name == "multilabel_finetune" and loaded.multilabel_
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(loaded.thresholds_, fitted.thresholds_)
    from safetensors.numpy import load_file

    again = save(loaded, tmp_path / "again.safetensors")  # every tensor bit for bit
    first, second = load_file(path), load_file(again)
    assert first.keys() == second.keys() and {"head.thresholds", "head.slope"} <= first.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    unpickled = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(unpickled.predict(X), fitted.predict(X))


def test_what_one_label_takes_and_several_do_not(tagged):
    _, X, Y = tagged
    with pytest.raises(DataError, match="class_weight"):
        FineTuneClassifier(**SMALL, class_weight="balanced").fit(X, Y)
    val = np.arange(36) % 3 == 2  # every shape on both sides
    X_tr, Y_tr = (
        [x for x, v in zip(X, val, strict=True) if not v],
        [y for y, v in zip(Y, val, strict=True) if not v],
    )
    X_v, Y_v = (
        [x for x, v in zip(X, val, strict=True) if v],
        [y for y, v in zip(Y, val, strict=True) if v],
    )
    with pytest.warns(UserWarning, match="framed"):  # no validation image is framed
        given = FineTuneClassifier(**{**SMALL, "epochs": 1}).fit(X_tr, Y_tr, X_val=X_v, y_val=Y_v)
    assert given.calibration_["n_val"] == 12
    with pytest.raises(DataError, match="not fitted on"):
        FineTuneClassifier(**SMALL).fit(X_tr, Y_tr, X_val=X_v, y_val=[["nope"]] * 12)


def test_each_half_takes_the_epoch_the_other_half_chose():
    """Epoch 1 ranks the first four images right, epoch 2 the last four: each half (even,
    odd rows) holds two of each, so the halves tie and keep the earlier epoch; weighing the
    last four makes epoch 2 the choice."""
    Y = np.array([[1, 0], [0, 1]] * 4)
    good, bad = (Y * 2 - 1) * 3.0, (1 - Y * 2) * 3.0
    first = np.arange(8)[:, None] < 4
    e1, e2 = np.where(first, good, bad), np.where(first, bad, good)
    _, _, epoch = crossfit_label_epochs([e1, e2], Y, "f1")
    _, _, weighted = crossfit_label_epochs(
        [e1, e2], Y, "f1", sample_weight=np.r_[np.full(4, 0.1), np.full(4, 10.0)]
    )
    assert set(epoch) == {1} and set(weighted) == {2}


def _write(path: Path, X: list[str], Y: list[tuple[str, ...]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        w.writerows([p, "|".join(labels)] for p, labels in zip(X, Y, strict=True))
    return path


def test_tlearn_fit_finetunes_a_csv_of_several_labels_and_predict_gives_its_labels(
    tagged, tmp_path
):
    _, X, Y = tagged
    data = _write(tmp_path / "tags.csv", X, Y)
    model = tmp_path / "ft.safetensors"
    r = run_tlearn("fit", str(data), "--method", "finetune", "--strategy", "head", "--epochs",
                   "2", "--image-size", "32", "--batch-size", "8", "--augmentation", "none",
                   "--validation-size", "0.3", "--engine", "torch", "-o", str(model))  # fmt: skip
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())  # rich wraps lines at the terminal's width
    assert "a sigmoid per label" in said and "held-out mAP:" in said
    fitted = load(model)
    assert model_kind(fitted).name == "multilabel_finetune"
    assert fitted.validation_size == 0  # refit on every image for the best epochs
    out = tmp_path / "preds.jsonl"
    r = run_tlearn("predict", str(model), *X[:12], "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = [sorted(c for c, on in zip(fitted.classes_, row, strict=True) if on)
            for row in fitted.predict(X[:12])]  # fmt: skip
    assert [sorted(row["above_threshold"]) for row in rows] == want


def test_an_onnx_export_gives_the_calibrated_sigmoids(fitted, tagged, tmp_path):
    from tlearn.export import export_model, load_exported
    from tlearn.inference import iter_predictions

    _, X, _ = tagged
    path = export_model(fitted, tmp_path / "ml", "onnx")
    meta = json.loads(Path(path + ".json").read_text())
    assert meta["activation"] == "sigmoid"
    np.testing.assert_allclose(meta["thresholds"], fitted.thresholds_)
    rows = list(iter_predictions(load_exported(path), X[:8], top_k=4))
    got = np.array([[dict(zip(r["top_labels"], r["top_probabilities"], strict=True))[c]
                     for c in fitted.classes_] for r in rows])  # fmt: skip
    np.testing.assert_allclose(got, fitted.predict_proba(X[:8]), atol=1e-4)


def test_auto_tries_the_probe_and_fine_tuning_and_keeps_the_better_map(tagged, tmp_path):
    import tlearn

    _, X, Y = tagged
    data = _write(tmp_path / "tags.csv", X, Y)
    said: list[str] = []
    with warnings.catch_warnings():  # LP-FT's 4 validation images may lack a label
        warnings.simplefilter("ignore", UserWarning)
        result = tlearn.train(data, image_size=32, epochs=2, batch_size=8, Cs=[0.1, 1.0],
                              engine="torch", say=said.append)  # fmt: skip
    rows = result.leaderboard
    assert [r["candidate"].split()[0] for r in rows] == ["multi-label", "lp-ft"]
    assert all(0 <= r["mean_average_precision"] <= 1 for r in rows)
    assert sum(r["chosen"] for r in rows) == 1
    assert "cross-fitted between two halves" in result.evaluation["method"]
    assert "mean_average_precision" in result.evaluation
    assert any("the better held-out mAP kept" in line for line in said)


def test_a_later_candidate_must_win_by_more_than_its_noise():
    from tlearn.automl import _select_map

    rng = np.random.default_rng(0)
    M = (rng.random((200, 3)) < 0.4).astype(np.int8)
    noise = rng.random((200, 3))
    good, coin = 0.7 * M + 0.3 * noise, noise
    rows, w = np.ones(200, bool), np.ones(200)
    assert _select_map([coin, good], M, rows, w, 0) == 1
    assert _select_map([good, coin], M, rows, w, 0) == 0
    tiny = good + 1e-3 * rng.random((200, 3))  # as good but for noise: the first stays
    assert _select_map([good, tiny], M, rows, w, 0) == 0
    half = good.copy()
    half[::2] = np.nan  # judged only where both predicted
    assert _select_map([coin, half], M, rows, w, 0) == 1


def test_average_precision_is_scikit_learns():
    from sklearn.metrics import average_precision_score

    from tlearn.finetune.multilabel import average_precision

    rng = np.random.default_rng(1)
    for n in (5, 40, 300):
        y = (rng.random(n) < 0.3).astype(int)
        y[0] = 1
        scores = np.round(rng.random(n), 1)  # ties among the scores
        w = rng.integers(0, 3, n).astype(float)
        w[0] = 1.0
        assert average_precision(scores, y) == pytest.approx(average_precision_score(y, scores))
        assert average_precision(scores, y, w) == pytest.approx(
            average_precision_score(y, scores, sample_weight=w)
        )


# -- what an adversarial review found --------------------------------------------------------
def test_a_label_the_validation_images_show_one_side_of_keeps_one_half(tagged):
    """A random split can leave a label with no positive (or no negative) validation image:
    its threshold must not become 1.0 (never predicted) or 0 (always)."""
    from tlearn.finetune.multilabel import calibrate_labels

    Y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])  # label 1 never, 2 always
    logits = np.array([[2.0, -1, 3], [-2, -2, 1], [1, 0, 2], [-1, 1, 4]])
    with pytest.warns(UserWarning, match=r"\['b', 'c'\] have no image with them"):
        slope, offset, thresholds, measured = calibrate_labels(logits, Y, None, "f1", list("abc"))
    assert thresholds[1:].tolist() == [0.5, 0.5] and slope[1:].tolist() == [1.0, 1.0]
    assert measured["uncalibrated_labels"] == ["b", "c"] and 0 < thresholds[0] < 1


def test_platt_scaling_takes_relative_weights():
    from tlearn.multilabel import platt_scaling

    rng = np.random.default_rng(4)
    y = (rng.random(50) < 0.5).astype(int)
    scores = (2 * y - 1) + rng.normal(size=50)
    w = rng.integers(1, 4, 50).astype(float)
    a, c = platt_scaling(scores, y, w)
    for scale in (1e-6, 1e6):
        assert platt_scaling(scores, y, w * scale) == pytest.approx((a, c), rel=1e-3)


def test_a_checkpoint_of_the_other_task_is_not_resumed(tagged, tmp_path):
    _, X, Y = tagged
    # one label each, of the same class names: only the task tells the two runs apart
    single = ["framed" if "framed" in labels else labels[0] for labels in Y]
    names = sorted(set().union(*map(set, Y)))
    assert sorted(set(single)) == names
    run = {**SMALL, "epochs": 1, "validation_size": 0.25, "checkpoint_dir": tmp_path / "ck"}
    FineTuneClassifier(**run).fit(X, single)
    with pytest.raises(CheckpointError, match="differs in \\['multilabel'\\]"):
        FineTuneClassifier(**run).fit(X, Y, resume=True)


def test_labels_of_a_filtered_pandas_series_and_a_failed_fit(fitted, tagged):
    pd = pytest.importorskip("pandas")
    from tlearn.multilabel import is_multilabel_target

    _, X, Y = tagged
    assert is_multilabel_target(pd.Series(Y, index=range(100, 136)))
    assert not is_multilabel_target(pd.Series([y[0] for y in Y], index=range(5, 41)))
    assert is_multilabel_target([np.array(y) for y in Y])
    model = pickle.loads(pickle.dumps(fitted))
    before = model.predict_proba(X[:4])
    with pytest.raises(DataError):
        model.fit(X, [() for _ in X])  # no image has a label
    np.testing.assert_array_equal(model.predict_proba(X[:4]), before)  # the model stands


def test_a_model_pickled_before_tasks_existed_keeps_its_task(fitted, tagged):
    """A pickle of the last release has ``multilabel_`` and no ``task_``: it still gives
    each label's sigmoid and the indicator matrix (not a softmax and class names)."""
    _, X, _ = tagged
    old = pickle.loads(pickle.dumps(fitted))
    del old.task_
    np.testing.assert_array_equal(old.predict_proba(X[:5]), fitted.predict_proba(X[:5]))
    np.testing.assert_array_equal(old.predict(X[:5]), fitted.predict(X[:5]))


def test_a_failed_fit_keeps_the_task_and_says_what_is_wrong(fitted, tagged):
    """A fit of one label per image that fails before training (a validation split that
    cannot hold each class, X_val without y_val) leaves the multi-label model as it was,
    with a one-line DataError rather than scikit-learn's ValueError."""
    _, X, Y = tagged
    model = pickle.loads(pickle.dumps(fitted))
    before = model.predict(X[:4])
    one_label = [labels[0] for labels in Y]
    with pytest.raises(DataError, match="validation split of .* cannot hold each"):
        model.set_params(validation_size=0.95).fit(X, one_label)
    with pytest.raises(DataError, match="X_val needs y_val"):
        model.set_params(validation_size=0.3).fit(X, one_label, X_val=X[:3])
    assert model.multilabel_ and model.task_.multilabel
    np.testing.assert_array_equal(model.predict(X[:4]), before)

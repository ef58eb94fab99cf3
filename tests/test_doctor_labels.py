"""Confident learning (tlearn.doctor.labels) against cleanlab, the reference implementation
(AGPL-3.0: a test-only dependency), and on labels flipped on purpose."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.doctor.labels import (
    confident_joint,
    confident_thresholds,
    find_label_issues,
    label_quality,
)
from tlearn.exceptions import DataError, InvalidParameterError


def noisy_problem(n=600, k=4, flip=0.1, seed=0, signal=2.5):
    """Probabilities of a decent classifier on true labels, and given labels with a
    fraction flipped to another class."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += signal
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    flipped = rng.choice(n, int(flip * n), replace=False)
    given[flipped] = (true[flipped] + rng.integers(1, k, len(flipped))) % k
    return given, proba, set(flipped.tolist())


def random_problem(seed):
    """One random labelled problem of the many shapes the doctor meets: 2 to 12 classes,
    balanced or skewed priors, classes of one or two images, classes no image is labelled
    with, weak or strong models, and exact ties between classes (integer logits)."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 13))
    n = int(rng.choice([k + 1, 3 * k, 40, 300, 2000]))
    prior = rng.dirichlet(np.full(k, rng.choice([0.3, 1.0, 30.0])))
    true = rng.choice(k, n, p=prior)
    tiny = rng.choice(k, int(rng.integers(0, k)), replace=False)  # classes of 1 or 2 images
    for c in tiny:
        true[true == c] = (c + 1) % k
        true[rng.choice(n, int(rng.integers(1, 3)), replace=False)] = c
    logits = rng.normal(0, rng.choice([0.5, 1.0, 2.0]), (n, k))
    logits[np.arange(n), true] += rng.uniform(0, 5)
    if seed % 4 == 0:  # exact ties: the tolerances decide
        logits = np.round(logits)
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    flipped = rng.random(n) < rng.uniform(0, 0.3)
    given[flipped] = rng.integers(0, k, int(flipped.sum()))
    given[:2] = [given[0], (given[0] + 1) % k]  # two classes at least, as the doctor needs
    return given, proba


@pytest.mark.parametrize("rank_by", ["self_confidence", "normalized_margin"])
def test_same_issues_and_ranking_as_cleanlab_on_many_random_problems(rank_by):
    cleanlab = pytest.importorskip("cleanlab", reason="cleanlab (test-only) cross-check")
    from cleanlab.count import compute_confident_joint, get_confident_thresholds
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    assert cleanlab.__version__
    differ = []
    for seed in range(300):
        labels, proba = random_problem(seed)
        ours = find_label_issues(labels, proba, rank_by=rank_by)
        theirs = cl_find(labels, proba, filter_by="confident_learning",
                         return_indices_ranked_by=rank_by)  # fmt: skip
        quality = label_quality(labels, proba, rank_by)
        # the same set, in the same order up to ties of the score (cleanlab's sort is
        # not stable)
        if set(ours.indices.tolist()) != set(theirs.tolist()) or not np.array_equal(
            quality[ours.indices], quality[theirs]
        ):
            differ.append(seed)
            continue
        np.testing.assert_array_equal(ours.scores, quality[theirs])
        np.testing.assert_allclose(confident_thresholds(labels, proba),
                                   get_confident_thresholds(labels, proba))  # fmt: skip
        joint = compute_confident_joint(labels, proba, calibrate=False)
        np.testing.assert_array_equal(confident_joint(labels, proba), joint)
        np.testing.assert_allclose(quality, get_label_quality_scores(
            labels, proba, method=rank_by, adjust_pred_probs=False))  # fmt: skip
    assert not differ, f"flagged sets differ from cleanlab's for seeds {differ}"


def test_an_image_whose_label_is_its_most_probable_class_is_not_flagged():
    # image 1 (label 0) is under class 0's mean (0.7) but above class 2's (0.18): it is
    # confidently of class 2, yet class 0 is still its most probable class
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    proba = np.array([[0.9, 0.05, 0.05], [0.5, 0.2, 0.3], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1],
                      [0.1, 0.6, 0.3], [0.1, 0.7, 0.2], [0.05, 0.9, 0.05]])  # fmt: skip
    assert confident_joint(labels, proba)[0, 2] == 1  # counted off the diagonal...
    issues = find_label_issues(labels, proba)
    assert issues.indices.tolist() == [6]  # ...but not flagged; image 6 is (class 1)
    assert issues.suggested.tolist() == [1]


def test_flipped_labels_are_found_and_suggested_back():
    labels, proba, flipped = noisy_problem(n=1000, flip=0.08, seed=3, signal=4.0)
    true = proba.argmax(1)  # the classifier is right on most images
    issues = find_label_issues(labels, proba)
    found = set(issues.indices.tolist())
    # confident learning is precise first: an image above no class's threshold is not
    # flagged (measured here: recall 0.71, precision 1.0)
    assert len(found & flipped) / len(flipped) >= 0.6  # recall
    assert len(found & flipped) / len(found) >= 0.9  # precision
    assert np.all(np.diff(issues.scores) >= 0)  # most likely first
    right = [s == true[i] for i, s in zip(issues.indices, issues.suggested, strict=True)
             if i in flipped]  # fmt: skip
    assert np.mean(right) >= 0.9
    # the score separates flipped from clean images (AUROC)
    score = 1 - label_quality(labels, proba)
    is_flipped = np.isin(np.arange(len(labels)), list(flipped))
    ranks = score.argsort().argsort()
    auroc = (ranks[is_flipped].mean() - (is_flipped.sum() - 1) / 2) / (~is_flipped).sum()
    assert auroc >= 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_second_pass_without_the_flagged_images_ranks_the_flips_better(seed):
    from sklearn.metrics import roc_auc_score

    from tlearn.doctor.labels import out_of_fold_proba

    # three Gaussian classes; 30% of class 0 labelled 1: systematic noise that pulls a model
    # trained on it toward the wrong labels (random flips barely move a linear model)
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 150)
    F = rng.normal(size=(len(y), 16)) + 2.0 * np.eye(3, 16)[y]
    flipped = rng.choice(np.flatnonzero(y == 0), 45, replace=False)
    noisy = y.copy()
    noisy[flipped] = 1
    positive = np.isin(np.arange(len(y)), flipped)
    rows = np.arange(len(y))
    one_pass = out_of_fold_proba(F, noisy, prune=False)
    proba = out_of_fold_proba(F, noisy)
    assert proba.shape == (len(y), 3) and np.allclose(proba.sum(axis=1), 1)
    # measured: 0.785 -> 0.842, 0.827 -> 0.893, 0.858 -> 0.924
    # low label quality should mean flipped: AUROC of the negated score
    two = roc_auc_score(positive, -proba[rows, noisy])
    assert two >= roc_auc_score(positive, -one_pass[rows, noisy]) + 0.04


def test_two_classes_and_tiny_classes_get_probabilities():
    from tlearn.doctor.labels import out_of_fold_proba

    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 3)
    F = rng.normal(size=(len(y), 8)) + 3.0 * y[:, None]
    y[[0, 21]] = [1, 0]  # one flip each way: the small class is never pruned to nothing
    proba = out_of_fold_proba(F, y)
    assert proba.shape == (23, 2) and np.isfinite(proba).all()
    assert np.allclose(proba.sum(axis=1), 1)
    with pytest.raises(DataError, match="at least twice"):
        out_of_fold_proba(F[:20], y[:20])  # one image of class 1 left


def test_bad_inputs_say_what_is_wrong():
    labels, proba, _ = noisy_problem(n=20)
    with pytest.raises(DataError, match="one row of class probabilities per label"):
        find_label_issues(labels[:5], proba)
    with pytest.raises(DataError, match="class indices"):
        find_label_issues(labels + 10, proba)
    proba[0] = np.nan
    with pytest.raises(DataError, match="NaN rows"):
        find_label_issues(labels, proba)
    with pytest.raises(InvalidParameterError, match="rank_by"):
        find_label_issues(labels, proba[1:].repeat(1, 0)[:20], rank_by="loss")


def test_the_second_pass_never_trains_without_a_class():
    from tlearn.doctor.labels import out_of_fold_proba

    # found by a random search: classes of 13, 2 and 3 images; one of the 3 is flagged and
    # its 2 others fall in one fold's test part, so that fold's training part held no
    # image of the class (the second pass raised ValueError)
    rng = np.random.default_rng(40)
    k, counts = int(rng.integers(2, 5)), rng.integers(2, 5, 3)
    counts[0] = rng.integers(6, 20)
    y = np.repeat(np.arange(k), counts)
    F = rng.normal(size=(len(y), 8)) + rng.uniform(1, 4) * np.eye(k, 8)[y]
    for i in rng.choice(len(y), 2, replace=False):
        y[i] = rng.integers(0, k)
    assert np.bincount(y).tolist() == [13, 2, 3]
    proba = out_of_fold_proba(F, y)
    assert proba.shape == (len(y), 3) and np.isfinite(proba).all()
    from tlearn.doctor.labels import _pruned

    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    keep = np.array([1, 1, 1, 0, 1, 1, 0, 1], dtype=bool)
    # class 1 keeps its flagged row 3 (its kept rows are all held out), class 2 loses row 6
    assert _pruned(np.array([0, 1, 3, 6, 7]), keep, labels).tolist() == [0, 1, 3, 7]


@pytest.mark.parametrize("counts", [[2, 2], [3, 3], [4, 4], [3, 4, 6]])
def test_classes_of_a_few_images_get_probabilities(counts):
    """The probe chooses C inside each fold: its inner folds must fit each fold's training
    images (given the doctor's splitter, classes of 3 to 5 raised ValueError)."""
    from tlearn.doctor.labels import out_of_fold_proba

    rng = np.random.default_rng(sum(counts))
    y = np.repeat(np.arange(len(counts)), counts)
    F = rng.normal(size=(len(y), 8)) + 2.0 * np.eye(len(counts), 8)[y]
    proba = out_of_fold_proba(F, y)
    assert proba.shape == (len(y), len(counts)) and np.isfinite(proba).all()
    assert np.allclose(proba.sum(axis=1), 1)

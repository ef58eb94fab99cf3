"""``inspect``: every check of the doctor over a labelled set (and its test set), from one
decode of each image and one featurisation, as one table of findings."""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlearn._log import logger
from tlearn._progress import progress
from tlearn.data.targets import refuse_label_sets
from tlearn.doctor.duplicates import (
    NEAR_THRESHOLD,
    check_thresholds,
    exact_duplicates,
    iter_decoded,
    near_duplicates,
    pixel_hash,
    thumbnail,
)
from tlearn.doctor.issues import IMBALANCE, ISSUE_TYPES, OUTLIER_IQR
from tlearn.doctor.labels import find_label_issues, label_quality, out_of_fold_proba
from tlearn.doctor.quality import THRESHOLDS, image_properties, quality_scores
from tlearn.exceptions import DataError

__all__ = ["ISSUE_TYPES", "Findings", "inspect"]

COLUMNS = ("path", "split", "issue", "score", "partner", "given_label", "suggested_label")


@dataclass
class Findings:
    """One row per flagged image and issue (a table: filter it, or ``to_pandas()``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    #: Every labelled image's label quality (out-of-fold probability of its given label;
    #: lower is more likely wrong), for ranking and ROC curves beyond the flagged rows.
    label_quality: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Any:
        return iter(self.rows)

    def of(self, issue: str) -> list[dict[str, Any]]:
        """The rows of one issue type, most severe first."""
        return [r for r in self.rows if r["issue"] == issue]

    def counts(self) -> dict[str, int]:
        return {t: n for t in ISSUE_TYPES if (n := len(self.of(t)))}

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        # a file name that is not UTF-8: its bytes, as the predictions' CSV writes it
        with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)


@dataclass
class _Set:
    """The images of both splits, decoded once: names, labels, hashes, quality."""

    paths: list[str]
    split: list[str]
    labels: np.ndarray | None
    hashes: list[str | None] = field(default_factory=list)
    thumbs: list[np.ndarray] = field(default_factory=list)  # readable images only
    props: list[dict[str, Any]] = field(default_factory=list)
    readable: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)

    def row(self, i: int, issue: str, score: float, **extra: Any) -> dict[str, Any]:
        given = "" if self.labels is None else self.labels[i]
        return {"path": self.paths[i], "split": self.split[i], "issue": issue,
                "score": round(float(score), 4), "partner": extra.get("partner", ""),
                "given_label": given, "suggested_label": extra.get("suggested", "")}  # fmt: skip


class _Clock:
    """Seconds per stage: ``with clock("stage"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - t0, 2)


def _names(X: Any, prefix: str) -> list[str]:
    if isinstance(X, np.ndarray) and X.dtype != object:
        return [f"{prefix}[{i}]" for i in range(len(X))]
    return [str(p) for p in X]


def _scan(X: Any, X_test: Any, y: Any, y_test: Any, say: Callable[[str], None],
          verbose: int) -> _Set:  # fmt: skip
    n_test = 0 if X_test is None else len(X_test)
    labels = None
    if y is not None:
        labels = np.concatenate([np.asarray(y, dtype=object),
                                 np.asarray(y_test if y_test is not None else [None] * n_test,
                                            dtype=object)])  # fmt: skip
    data = _Set(_names(X, "train") + ([] if X_test is None else _names(X_test, "test")),
                ["train"] * len(X) + ["test"] * n_test, labels)  # fmt: skip
    say(f"doctor: reading {len(data.paths)} images")
    sources = [X] if X_test is None else [X, X_test]
    offset = 0
    with progress(len(data.paths), verbose, "reading images") as advance:
        for source in sources:
            offset = _scan_one(data, source, offset, advance)
    return data


def _scan_one(data: _Set, source: Any, offset: int, advance: Callable[[int], None]) -> int:
    """Hash, quality and thumbnail of each image of one split; the next split's offset."""
    for index, measured, error in iter_decoded(source, then=_examine):
        advance(1)
        i = offset + index
        if measured is None:
            data.hashes.append(None)
            data.errors[i] = error
            continue
        digest, props, thumb = measured
        data.hashes.append(digest)
        data.props.append(props)
        data.thumbs.append(thumb)
        data.readable.append(i)
    return offset + len(source)


def _examine(arr: np.ndarray) -> tuple[str, dict[str, Any], np.ndarray]:
    """What the scan keeps of one decoded image (run in the decoding threads)."""
    from PIL import Image

    return pixel_hash(arr), image_properties(Image.fromarray(arr)), thumbnail(arr)


def _features(data: _Set, X: Any, X_test: Any, params: dict[str, Any]) -> np.ndarray:
    """Features of the readable images, in ``data.readable`` order."""
    from tlearn.features import PretrainedFeatures

    def take(source: Any, idx: list[int]) -> Any:
        return source[idx] if isinstance(source, np.ndarray) else [source[i] for i in idx]

    n = len(X)
    parts = [take(X, [i for i in data.readable if i < n])]
    if X_test is not None:
        parts.append(take(X_test, [i - n for i in data.readable if i >= n]))
    est = PretrainedFeatures(**params).fit(parts[0] if len(parts[0]) else None)
    return np.concatenate([est.transform(p) for p in parts if len(p)])


def _checked_inputs(X: Any, y: Any, y_test: Any, near_threshold: float | None) -> float:
    """Refuse what the arguments alone show to be wrong (labels that do not match the
    images, several labels per image, a bad threshold); returns the near threshold."""
    if y is not None and len(y) != len(X):
        raise DataError(f"{len(X)} training images but {len(y)} labels")
    for labels in (y, y_test):
        refuse_label_sets(labels, "the doctor")
    threshold = NEAR_THRESHOLD if near_threshold is None else near_threshold
    check_thresholds(threshold)
    return threshold


def inspect(
    X: Any,
    y: Any = None,
    X_test: Any = None,
    y_test: Any = None,
    *,
    near_threshold: float | None = None,
    label_backbones: Sequence[str] | str = "auto",
    say: Callable[[str], None] = logger.info,
    verbose: int = 1,
    **feature_params: Any,
) -> Findings:
    """Find unreadable files, exact and near duplicates, train/test leakage, likely label
    errors, outliers, class imbalance and image-quality problems.

    Parameters
    ----------
    X, X_test : image paths or uint8 array
        The training images and, optionally, the test images.
    y, y_test : array-like, optional
        Their labels (without ``y`` the label checks are left out).
    near_threshold : float, optional
        The pixel-detail correlation a near duplicate needs, at the best alignment of the
        two images (default :data:`tlearn.doctor.duplicates.NEAR_THRESHOLD`; lower finds
        more, and more merely similar photos).
    label_backbones : "auto" or sequence of str, default="auto"
        More backbones for the label check: each gives its own out-of-fold probabilities
        (:func:`tlearn.doctor.labels.out_of_fold_proba` on its features), and the label
        check uses their mean with the main backbone's. An ensemble ranks label errors
        better (50,000 CIFAR-10 training images, 5% of the labels flipped to look-alike
        classes: AUROC 0.943 with Lite0, 0.950 with ``tf_efficientnet_lite2``, 0.955 with
        the mean of the two), for the time of featurising every image again with each
        (Lite2: about 2.5x Lite0). ``"auto"``: EfficientNet-Lite2 (else Lite1) where
        installed, when the main backbone is the default Lite0 with its pretrained
        weights; ``()`` for the main backbone alone (faster).
    say : callable, default=logger.info
        Receives one line as each stage starts.
    verbose : int, default=1
        A progress bar per stage on a terminal (0: none).
    **feature_params
        :class:`tlearn.PretrainedFeatures` parameters (``backbone``, ``cache_dir``...).

    Returns
    -------
    Findings
        ``rows`` (path, split, issue, score, partner, given_label, suggested_label) and a
        ``summary`` (with labels, ``label_check`` says which classes the label check
        covered: those of 2 or more readable images, when there are two such classes).
    """
    near_threshold = _checked_inputs(X, y, y_test, near_threshold)  # before minutes of reading
    label_backbones = _label_backbones(label_backbones, feature_params) if y is not None else []
    _load_backbones(feature_params, label_backbones)
    clock = _Clock()
    with clock("read, hash and quality"):
        data = _scan(X, X_test, y, y_test, say, verbose)
        quality: dict[str, float] = {}
        rows = [data.row(i, "unreadable", 0.0, partner=r) for i, r in data.errors.items()]
        rows += _duplicates_by_pixels(data)
        rows += _quality(data) if data.props else []
    checked = _label_check_classes(data, say) if data.labels is not None else None
    rows += _imbalance(data) if data.labels is not None else []
    if len(data.readable) >= 2:
        params = {"verbose": verbose, **feature_params}
        say(f"doctor: features of {len(data.readable)} images")
        with clock("features"):
            F = _features(data, X, X_test, params)
        with clock("near duplicates"):
            rows += _near(data, F, near_threshold, verbose)
        if checked is not None and checked["classes"]:
            views = [F, *_label_views(data, X, X_test, label_backbones, params, clock, say)]
            with clock("labels and outliers"), progress(None, verbose, "labels"):
                rows += _label_checks(data, views, checked["classes"], say, quality)
    findings = Findings(rows, label_quality=quality)
    findings.summary = {**_summary(data, findings), "seconds": clock.seconds,
                        "label_backbones": list(label_backbones)}  # fmt: skip
    if checked is not None:
        findings.summary["label_check"] = checked["note"]
    return findings


def _label_views(
    data: _Set,
    X: Any,
    X_test: Any,
    names: Sequence[str],
    params: dict[str, Any],
    clock: _Clock,
    say: Callable[[str], None],
) -> list[np.ndarray]:
    """Features of the readable images with each label backbone, each stage timed."""
    views = []
    for name in names:
        say(f"doctor: features of {len(data.readable)} images with {name} (labels)")
        with clock(f"features ({name})"):
            views.append(_features(data, X, X_test, {**params, "backbone": name}))
    return views


def _label_backbones(names: Sequence[str] | str, feature_params: dict[str, Any]) -> list[str]:
    """``names``, with ``"auto"`` resolved (see :func:`inspect`)."""
    from tlearn.backbones.policy import DEFAULT_BACKBONE, second_backbone
    from tlearn.backbones.registry import resolve_name

    if isinstance(names, str) and names != "auto":
        names = [names]  # one name, not its letters
    if names != "auto":
        return list(names)
    main = feature_params.get("backbone", DEFAULT_BACKBONE)
    if feature_params.get("weights", "pretrained") != "pretrained" or (
        resolve_name(main) != resolve_name(DEFAULT_BACKBONE)
    ):
        return []
    second = second_backbone()
    return [second] if second is not None else []


def _load_backbones(feature_params: dict[str, Any], label_backbones: Sequence[str]) -> None:
    """Load every backbone the checks will use, so that a misspelt name or missing weights
    fail before minutes of reading rather than after them (loads are cached: no cost later)."""
    from tlearn.backbones import DEFAULT_BACKBONE, load_backbone
    from tlearn.features import FINE_TUNED

    weights = feature_params.get("weights", "pretrained")
    if weights == FINE_TUNED:  # lives in a fitted model: PretrainedFeatures says so
        return
    for name in (feature_params.get("backbone", DEFAULT_BACKBONE), *label_backbones):
        load_backbone(name, weights)


def _duplicates_by_pixels(data: _Set) -> list[dict[str, Any]]:
    rows = []
    for pair in exact_duplicates(data.hashes):
        i, j = pair.i, pair.j
        issue = "leakage" if data.split[i] != data.split[j] else "exact_duplicate"
        if data.split[i] == "test" and data.split[j] == "train":
            i, j = j, i
        rows.append(data.row(j, issue, 1.0, partner=data.paths[i]))
    return rows


def _quality(data: _Set) -> list[dict[str, Any]]:
    rows = []
    for issue, scores in quality_scores(data.props).items():
        for k in np.flatnonzero(scores < THRESHOLDS[issue]):
            rows.append(data.row(data.readable[k], issue, scores[k]))
    return sorted(rows, key=lambda r: (r["issue"], r["score"]))


def _near(data: _Set, F: np.ndarray, threshold: float, verbose: int) -> list[dict[str, Any]]:
    """Near-duplicate and leakage rows, leaving out pairs of equal pixels (reported exact,
    each copy with the first image of its group)."""
    rows = []
    # the search, then the pixel check: one unit per image each
    with progress(2 * len(data.readable), verbose, "near duplicates") as advance:
        pairs = near_duplicates(F, threshold=threshold, thumbnails=np.stack(data.thumbs),
                                advance=advance)  # fmt: skip
    for pair in pairs:
        i, j = data.readable[pair.i], data.readable[pair.j]
        if data.hashes[i] == data.hashes[j]:
            continue
        issue = "leakage" if data.split[i] != data.split[j] else "near_duplicate"
        if data.split[i] == "test" and data.split[j] == "train":
            i, j = j, i
        rows.append(data.row(j, issue, pair.similarity, partner=data.paths[i]))
    return rows


def _label_check_classes(data: _Set, say: Callable[[str], None]) -> dict[str, Any]:
    """The classes the label check covers: those with 2 or more readable images (a class
    of one cannot be both learnt and held out), if two or more; and a line saying so."""
    assert data.labels is not None
    given = [str(data.labels[i]) for i in data.readable if data.labels[i] is not None]
    names, counts = np.unique(np.asarray(given, dtype=str), return_counts=True)
    classes = names[counts >= 2].tolist()
    alone = names[counts < 2].tolist()
    if len(classes) < 2:
        classes = []
        note = "not run: it needs 2 classes of 2 or more readable images"
    else:
        note = f"{len(classes)} classes, {int(counts[counts >= 2].sum())} images"
        if alone:
            shown = ", ".join(alone[:5]) + (f" and {len(alone) - 5} more" if len(alone) > 5 else "")
            note += f"; left out: {len(alone)} class(es) of one image ({shown})"
    say(f"doctor: label check: {note}")
    return {"classes": classes, "note": note}


def _label_checks(
    data: _Set,
    views: list[np.ndarray],
    classes: list[str],
    say: Callable[[str], None],
    quality: dict[str, float],
) -> list[dict[str, Any]]:
    """Label issues from the mean out-of-fold probabilities of a probe on each of ``views``
    (features of the readable images: the main backbone's first), outliers on the first,
    over the images labelled with one of ``classes``."""
    F = views[0]
    labels = data.labels
    assert labels is not None
    covered = set(classes)
    known = [k for k, i in enumerate(data.readable)
             if labels[i] is not None and str(labels[i]) in covered]  # fmt: skip
    names, y = np.unique(labels[[data.readable[k] for k in known]].astype(str), return_inverse=True)
    say("doctor: out-of-fold probabilities (linear probe, k-fold)")
    proba = np.mean([out_of_fold_proba(V[known], y) for V in views], axis=0)
    issues = find_label_issues(y, proba)
    for k, score in enumerate(label_quality(y, proba)):
        quality[data.paths[data.readable[known[k]]]] = float(score)
    rows = []
    for k, suggested, score in zip(issues.indices, issues.suggested, issues.scores, strict=True):
        rows.append(data.row(data.readable[known[k]], "label_issue", score,
                             suggested=names[suggested]))  # fmt: skip
    return rows + _outliers(data, F[known], y, [data.readable[k] for k in known])


def _outliers(data: _Set, F: np.ndarray, y: np.ndarray, index: list[int]) -> list[dict[str, Any]]:
    G = F - F.mean(axis=0)
    G /= np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-12)
    rows = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        centre = G[members].mean(axis=0)
        centre /= max(float(np.linalg.norm(centre)), 1e-12)
        distance = 1 - G[members] @ centre
        q1, q3 = np.percentile(distance, [25, 75])
        for k in np.flatnonzero(distance > q3 + OUTLIER_IQR * (q3 - q1)):
            rows.append(data.row(index[members[k]], "outlier", 1 - distance[k]))
    return rows


def _imbalance(data: _Set) -> list[dict[str, Any]]:
    """Per split, the classes with under :data:`IMBALANCE` times the median count of the
    classes present there (readable, labelled images); a class of the other split that
    this one lacks counts 0 (a class only in test was never learnt)."""
    assert data.labels is not None
    labelled = [i for i in data.readable if data.labels[i] is not None]
    names = np.unique(np.asarray([str(data.labels[i]) for i in labelled], dtype=str))
    rows = []
    for split in ("train", "test"):
        given = [str(data.labels[i]) for i in labelled if data.split[i] == split]
        if not given:
            continue
        counts = np.bincount(np.searchsorted(names, given), minlength=len(names))
        median = float(np.median(counts[counts > 0]))
        rows += [
            {"path": "", "split": split, "issue": "class_imbalance",
             "score": round(n / median, 4), "partner": "", "given_label": name,
             "suggested_label": ""}
            for name, n in zip(names, counts, strict=True) if n < IMBALANCE * median
        ]  # fmt: skip
    return rows


def _summary(data: _Set, findings: Findings) -> dict[str, Any]:
    flagged = {r["path"] for r in findings.rows if r["path"]}
    return {
        "images": len(data.paths),
        "train": data.split.count("train"),
        "test": data.split.count("test"),
        "unreadable": len(data.errors),
        "images_flagged": len(flagged),
        "issues": findings.counts(),
        "thresholds": {**THRESHOLDS, "outlier_iqr": OUTLIER_IQR, "class_imbalance": IMBALANCE},
    }

"""The doctor on the smallest and oddest sets: 1, 2 or 3 images, a class of one image,
classes of a few images, a class only in the test set, every image identical, every image
unreadable. Every stage runs or the summary says why not; none raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlearn.doctor import inspect
from tlearn.doctor.core import _imbalance, _Set

QUICK = {"engine": "torch", "image_size": 64, "verbose": 0, "label_backbones": ()}


def _images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct 32 px images (noise on a random colour, so none is flat)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (n, 1, 1, 3))
    return np.clip(base + rng.integers(-40, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def _inspect(*args, **kwargs):
    said: list[str] = []
    findings = inspect(*args, say=said.append, **QUICK, **kwargs)
    return findings, said


def test_sets_of_one_two_and_three_images_and_all_unreadable():
    for n in (1, 2, 3):
        findings, said = _inspect(_images(n), ["a", "b", "b"][:n])
        assert findings.summary["images"] == n and not findings.of("label_issue")
        assert findings.summary["label_check"].startswith("not run: it needs 2 classes")
        assert any("label check: not run" in line for line in said)
    missing = ["/nowhere/a.jpg", "/nowhere/b.jpg"]
    findings, _ = _inspect(missing, ["a", "b"])
    assert [r["path"] for r in findings.of("unreadable")] == missing
    assert findings.summary["label_check"].startswith("not run")


def test_a_class_of_one_image_is_left_out_of_the_label_check_not_the_others():
    # the check once stopped for the whole set, silently, at one class of one image
    y = ["a"] * 6 + ["b"] * 6 + ["c"]
    findings, said = _inspect(_images(13), y)
    assert len(findings.label_quality) == 12  # every image of a and b has a score
    assert "train[12]" not in findings.label_quality
    note = findings.summary["label_check"]
    assert note == "2 classes, 12 images; left out: 1 class(es) of one image (c)"
    assert f"doctor: label check: {note}" in said


def test_classes_of_a_few_identical_images_get_every_check():
    # classes of 3 and 4 images: the probe's nested search had more inner folds than a
    # class had images in an outer fold's training part (ValueError); and all identical
    images = np.repeat(_images(1), 7, axis=0)
    findings, _ = _inspect(images, ["a"] * 3 + ["b"] * 4)
    assert len(findings.of("exact_duplicate")) == 6  # each copy, with the first as partner
    assert not findings.of("near_duplicate")  # exact pairs are not repeated as near
    assert len(findings.label_quality) == 7
    assert findings.summary["label_check"] == "2 classes, 7 images"


def test_a_class_only_in_the_test_set():
    X, X_test = _images(8), _images(4, seed=1)
    findings, _ = _inspect(X, ["a"] * 4 + ["b"] * 4, X_test, ["a", "c", "c", "c"])
    # never learnt: a training imbalance of 0; and b is missing from the test set
    rows = {(r["split"], r["given_label"], r["score"]) for r in findings.of("class_imbalance")}
    assert rows == {("train", "c", 0.0), ("test", "b", 0.0)}
    assert len(findings.label_quality) == 12
    assert findings.summary["label_check"] == "3 classes, 12 images"


def test_class_imbalance_is_counted_per_split():
    """The rows were all labelled "train" but counted test images too: a class of 1 training
    image with 9 in test was not flagged."""
    y = ["a"] * 10 + ["b"] * 10 + ["c"] + ["c"] * 9 + ["a"] * 2 + [None]
    data = _Set([f"{i}.jpg" for i in range(len(y))], ["train"] * 21 + ["test"] * 12,
                np.asarray(y, dtype=object), readable=list(range(len(y))))  # fmt: skip
    rows = {(r["split"], r["given_label"], r["score"]) for r in _imbalance(data)}
    # train: a 10, b 10, c 1 (median 10); test: a 2, b 0, c 9 (median of those present 5.5)
    assert rows == {("train", "c", 0.1), ("test", "b", 0.0)}


def test_a_file_name_that_is_not_utf8_is_written_as_its_bytes(tmp_path):
    """Found by the adversarial review of 28.1: a training image whose name is not UTF-8
    (Linux gives its bytes as lone surrogates) ended the doctor, after every check, with a
    UnicodeEncodeError from --write-clean's CSV (issues.csv and report.html too when the
    image was flagged). Its name is written as its bytes, as the predictions' CSV writes
    it, so the clean CSV names the file."""
    import os

    from PIL import Image

    from tlearn.doctor import write_clean, write_report
    from tlearn.doctor.core import Findings

    name = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"))
    other = str(tmp_path / "other.png")
    for path in (name, other):
        Image.fromarray(_images(1)[0]).save(path)
    row = {"path": name, "split": "train", "issue": "exact_duplicate", "score": 1.0,
           "partner": other, "given_label": "a", "suggested_label": ""}  # fmt: skip
    findings = Findings(rows=[row], summary={"images": 3, "images_flagged": 1})
    paths = write_report(findings, tmp_path / "out", title="odd names")
    raw = os.fsencode(name)
    assert raw in Path(paths["issues.csv"]).read_bytes()
    assert raw in Path(paths["report.html"]).read_bytes()
    counts = write_clean(findings, [name, other, name + "2"], ["a", "a", "b"],
                         str(tmp_path / "clean.csv"), relabel=False)  # fmt: skip
    assert counts == {"kept": 2, "left_out": 1, "relabelled": 0}
    assert raw + b"2,b" in (tmp_path / "clean.csv").read_bytes()

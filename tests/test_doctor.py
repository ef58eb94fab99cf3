"""`tlearn doctor` on a user-style folder of real photos (CIFAR-10's, from the shared zip)
with planted problems (recorded ground truth):
byte copies across classes, re-encoded and resized copies, a test image copied from train,
truncated and empty files, a black and a blurred image, labels flipped on purpose. Every
planted problem is found, nothing on disk changes, the clean CSV trains, the page renders."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.cli_runner import run_tlearn
from tlearn.doctor import ISSUE_TYPES, inspect
from tlearn.doctor.core import COLUMNS

pytestmark = pytest.mark.needs_data
CLASSES = ("cat", "ship", "truck", "bird")
TLEARN = [sys.executable, "-m", "tlearn"]


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _folder(root: Path, cifar_zip: Path, split: str, n: int, seed: int) -> Path:
    """``root/<class>/<i>.jpg``: real CIFAR-10 photos (their JPEG bytes, as a user's folder
    would hold them)."""
    from tlearn.data import load_image_folder
    from tlearn.data.images import read_bytes

    data = load_image_folder(f"{cifar_zip}/{split}", categories=list(CLASSES),
                             max_per_class=n, random_state=seed)  # fmt: skip
    for path, target in zip(data.filenames, data.target, strict=True):
        folder = root / data.target_names[target]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{len(list(folder.iterdir())):04d}.jpg").write_bytes(read_bytes(path))
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory, cifar_zip):
    root = tmp_path_factory.mktemp("doctor")
    train = _folder(root / "train", cifar_zip, "train", 16, 11)
    test = _folder(root / "test", cifar_zip, "test", 3, 12)
    truth: dict[str, set] = {k: set() for k in ("unreadable", "exact", "near", "leak", "dark",
                                                 "blurry", "flipped")}  # fmt: skip
    src = train / "ship" / "0001.jpg"
    shutil.copy(src, train / "truck" / "copy-of-ship.jpg")  # same bytes, other class
    truth["exact"].add(frozenset((str(src), str(train / "truck" / "copy-of-ship.jpg"))))
    img = Image.open(train / "cat" / "0002.jpg").convert("RGB")
    (train / "cat" / "resized.jpg").write_bytes(_jpeg(img.resize((26, 26)), 70))
    truth["near"].add(frozenset((str(train / "cat" / "0002.jpg"),
                                 str(train / "cat" / "resized.jpg"))))  # fmt: skip
    leaked = Image.open(train / "bird" / "0003.jpg").convert("RGB")
    (test / "bird" / "leaked.jpg").write_bytes(_jpeg(leaked, 60))
    truth["leak"].add(str(test / "bird" / "leaked.jpg"))
    whole = (train / "truck" / "0004.jpg").read_bytes()
    (train / "truck" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (train / "ship" / "empty.jpg").write_bytes(b"")
    truth["unreadable"] |= {str(train / "truck" / "truncated.jpg"),
                            str(train / "ship" / "empty.jpg")}  # fmt: skip
    Image.new("RGB", (64, 64), (3, 3, 3)).save(train / "bird" / "black.png")
    truth["dark"].add(str(train / "bird" / "black.png"))
    blurred = Image.open(train / "cat" / "0005.jpg").resize((128, 128), Image.Resampling.BICUBIC)
    blurred = blurred.filter(ImageFilter.GaussianBlur(3))
    blurred.save(train / "cat" / "blurred.png")
    truth["blurry"].add(str(train / "cat" / "blurred.png"))
    for k, (a, b) in enumerate((("cat", "ship"), ("truck", "bird"), ("ship", "truck"))):
        moved = train / b / f"flipped-from-{a}.jpg"
        shutil.move(train / a / f"{10 + k:04d}.jpg", moved)
        truth["flipped"].add((str(moved), a))
    return train, test, truth


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def findings(planted):
    from tlearn.training import load_labelled

    train, test, _ = planted
    X, y = load_labelled(train)
    X_test, y_test = load_labelled(test)
    return inspect(X, y, X_test, y_test, say=lambda s: None, verbose=0)


def test_every_planted_problem_is_found(planted, findings):
    _, _, truth = planted
    by = {t: {r["path"] for r in findings.of(t)} for t in ISSUE_TYPES}
    assert truth["unreadable"] == by["unreadable"]
    assert all(r["partner"] for r in findings.of("unreadable"))  # the reason
    exact = {frozenset((r["path"], r["partner"])) for r in findings.of("exact_duplicate")}
    assert truth["exact"] <= exact
    near = {frozenset((r["path"], r["partner"])) for r in findings.of("near_duplicate")}
    assert truth["near"] <= near
    assert truth["leak"] <= by["leakage"]
    assert truth["dark"] <= by["dark"] and truth["blurry"] <= by["blurry"]
    # the flipped images (and the coffee copied into rocket) have the lowest label quality
    flipped = {path for path, _ in truth["flipped"]}
    quality = findings.label_quality
    clean = [q for p, q in quality.items() if p not in flipped and "copy-of" not in p]
    auroc = np.mean([q_clean > quality[p] for p in flipped for q_clean in clean])
    assert auroc >= 0.9, auroc  # the flipped images rank among the least likely labels
    # confident learning flags those it is sure of, with their true class as suggestion
    suggested = {r["path"]: r["suggested_label"] for r in findings.of("label_issue")}
    assert suggested and all(suggested[p] == a for p, a in truth["flipped"] if p in suggested)
    assert set(findings.rows[0]) == set(COLUMNS)


def test_clean_images_are_rarely_flagged(planted, findings):
    """Label issues and outliers on unplanted images stay below 10% of the set."""
    train, _, truth = planted
    planted_paths = {p for p, _ in truth["flipped"]} | set().union(*truth["exact"])
    n = sum(1 for _ in train.rglob("*.*"))
    wrong = [r for r in findings.rows if r["issue"] in ("label_issue", "outlier")
             and r["path"] not in planted_paths]  # fmt: skip
    assert len(wrong) <= 0.1 * n, wrong


def test_cli_writes_the_report_changes_nothing_and_its_clean_csv_trains(planted, tmp_path):
    train, test, truth = planted
    before = _snapshot(train.parent)
    out, clean = tmp_path / "report", tmp_path / "clean.csv"
    r = run_tlearn("doctor", str(train), "--test", str(test), "--out", str(out),
                   "--write-clean", str(clean), "--relabel",
                   "--label-backbone", "efficientnet_lite1", "--image-size", "128",
                   "--engine", "torch")  # fmt: skip  # no conversion to OpenVINO for 100 images
    assert r.returncode == 0, r.stderr
    assert _snapshot(train.parent) == before  # nothing moved, deleted or written there
    rows = list(csv.DictReader((out / "issues.csv").read_text().splitlines()))
    assert {row["path"] for row in rows if row["issue"] == "unreadable"} == truth["unreadable"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unreadable"] == 2 and summary["issues"]["leakage"] >= 1
    assert summary["label_backbones"] == ["efficientnet_lite1"]
    assert summary["seconds"]["features (efficientnet_lite1)"] > 0
    cleaned = list(csv.DictReader(clean.read_text().splitlines()))
    kept = {row["path"] for row in cleaned}
    assert not (truth["unreadable"] & kept)
    assert all(len(pair & kept) <= 1 for pair in truth["exact"])  # never both copies
    # --relabel keeps each label issue with its suggested class (whether the suggestions are
    # right, at the backbones' own resolution, is test_every_planted_problem_is_found's)
    relabelled = {row["path"]: row["label"] for row in cleaned}
    suggested = {row["path"]: row["suggested_label"] for row in rows
                 if row["issue"] == "label_issue" and row["split"] == "train"}  # fmt: skip
    assert suggested.keys() & relabelled.keys()
    assert all(relabelled[p] == s for p, s in suggested.items() if p in relabelled)
    fit = run_tlearn("fit", str(clean), "--method", "probe", "--image-size", "96",
                     "--engine", "torch", "--out", str(tmp_path / "m.safetensors"))  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    _renders_in_chromium(out / "report.html", summary["issues"], tmp_path)


def test_label_backbones_average_each_backbones_out_of_fold_probabilities(cifar_zip, tmp_path):
    from tlearn import PretrainedFeatures
    from tlearn.data import load_image_folder
    from tlearn.doctor.labels import out_of_fold_proba

    data = load_image_folder(f"{cifar_zip}/train", categories=list(CLASSES[:3]),
                             max_per_class=10, random_state=3)  # fmt: skip
    X, y = np.asarray(data.filenames), np.asarray(data.target_names)[data.target]
    y[[0, 15]] = y[[15, 0]]  # two labels swapped
    # small and quick; one feature cache: each backbone featurises the images once, however
    # many of the runs below read its features
    params = {"engine": "torch", "image_size": 96, "verbose": 0, "cache_dir": str(tmp_path)}
    both = inspect(X, y, label_backbones=["efficientnet_lite1"], say=lambda s: None, **params)
    codes = np.unique(y, return_inverse=True)[1]
    views = [PretrainedFeatures(backbone=b, **params).fit(X).transform(X)
             for b in ("efficientnet_lite0", "efficientnet_lite1")]  # fmt: skip
    each = [out_of_fold_proba(V, codes)[np.arange(len(y)), codes] for V in views]
    got = np.array([both.label_quality[str(p)] for p in X])
    np.testing.assert_allclose(got, np.mean(each, axis=0), atol=1e-6)
    assert not np.allclose(got, each[0], atol=1e-3)  # not the main backbone's alone


def test_the_label_check_adds_the_larger_embedded_backbone_by_default(findings):
    from tlearn.doctor.core import _label_backbones

    # `make setup` installs tlearn[lite12], so Lite2 is there (the fixture ran the default)
    assert findings.summary["label_backbones"] == ["efficientnet_lite2"]
    assert findings.summary["seconds"]["features (efficientnet_lite2)"] > 0
    assert _label_backbones("auto", {"backbone": "tf_efficientnet_lite0"}) == ["efficientnet_lite2"]
    # a backbone of the user's own choice, or weights that are not the pretrained ones,
    # are used alone; so is an explicit empty list
    assert _label_backbones("auto", {"backbone": "efficientnet_lite1"}) == []
    assert _label_backbones("auto", {"weights": None}) == []
    assert _label_backbones((), {}) == []
    assert _label_backbones("efficientnet_lite1", {}) == ["efficientnet_lite1"]
    from tlearn.cli import _label_backbones as from_flags

    assert from_flags(None) == "auto" and from_flags(["none"]) == []
    assert from_flags(["efficientnet_lite1"]) == ["efficientnet_lite1"]


@pytest.mark.parametrize("where", ["backbone", "label_backbones"])
def test_a_misspelt_backbone_fails_before_any_image_is_read(tmp_path, where):
    from tlearn.exceptions import UnknownBackboneError

    # not even files: without the check up front every image would be reported
    # unreadable and the label backbone never loaded, so no error at all
    X = [str(tmp_path / f"missing{i}.jpg") for i in range(4)]
    kwargs = ({"backbone": "efficientnet_litee0"} if where == "backbone"
              else {"label_backbones": ["efficientnet_lite1", "efficientnet_litee2"]})  # fmt: skip
    with pytest.raises(UnknownBackboneError, match="efficientnet_lite"):
        inspect(X, ["a", "a", "b", "b"], say=lambda s: None, verbose=0, **kwargs)


_LAYOUT_PROBE = """
let bad = 0;
for (const item of document.querySelectorAll('.item')) {
  const box = item.getBoundingClientRect();
  const pics = [...item.querySelectorAll('img, .none')].map(p => p.getBoundingClientRect());
  for (const [n, p] of pics.entries()) {
    if (p.left < box.left - 0.5 || p.right > box.right + 0.5) bad++;
    for (const q of pics.slice(n + 1)) {
      if (p.left < q.right - 0.5 && q.left < p.right - 0.5 &&
          p.top < q.bottom - 0.5 && q.top < p.bottom - 0.5) bad++;
    }
  }
}
document.body.dataset.overlaps = bad;
document.body.dataset.pairs = document.querySelectorAll('.item figure + figure').length;
"""


def _renders_in_chromium(page: Path, issues: dict[str, int], tmp_path: Path) -> None:
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained, offline
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is needed to check the page; `make test` installs Debian's")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    probed = tmp_path / "probed.html"  # the page, with a script that measures its layout
    probed.write_text(html.replace("</body>", f"<script>{_LAYOUT_PROBE}</script></body>"))
    dom = subprocess.run([*flags, "--dump-dom", f"file://{probed}"], capture_output=True,
                         text=True, timeout=120, check=True).stdout  # fmt: skip
    for issue in issues:
        assert f'id="{issue}"' in dom, issue  # a gallery per issue type
    # duplicate pairs side by side: no picture overlaps another or leaves its box
    assert 'data-overlaps="0"' in dom and 'data-pairs="0"' not in dom, dom[:300]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1200,1600", f"--screenshot={shot}", f"file://{page}"],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 40
    assert colourful.sum() > 5000, "no thumbnails rendered"

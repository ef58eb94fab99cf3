"""Exact and near duplicates (tlearn.doctor.duplicates) on copies planted in a folder of
real photo tiles: byte copies, PNG re-saves, JPEG re-encodes, resizes, colour shifts,
crops, zooms, moves with a new border and mirrors, within a set and across train/test."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tests.synthetic import _photo
from tlearn.doctor import inspect
from tlearn.doctor.duplicates import (
    exact_duplicates,
    iter_decoded,
    near_duplicates,
    pixel_hashes,
    thumbnail,
)
from tlearn.exceptions import DataError

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry", "hubble_deep_field")
TILE = 96
COPIES = 4  # of each edit, from distinct tiles


def tiles() -> list[Image.Image]:
    """Non-overlapping 96 px tiles of scikit-image's photos: distinct images."""
    out = []
    for name in PHOTOS:
        photo = _photo(name)
        for top in range(0, photo.shape[0] - 2 * TILE, 2 * TILE):
            for left in range(0, photo.shape[1] - 2 * TILE, 2 * TILE):
                region = photo[top : top + 2 * TILE, left : left + 2 * TILE]
                out.append(Image.fromarray(region).resize((TILE, TILE), Image.Resampling.BICUBIC))
    return out


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


EDITS = {
    "jpeg60": lambda im: Image.open(io.BytesIO(_jpeg(im, 60))).convert("RGB"),
    "resized": lambda im: im.resize((72, 72), Image.Resampling.BICUBIC),
    "recoloured": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.15)).enhance(
        0.8
    ),
    "shifted": lambda im: im.crop((3, 3, TILE, TILE)).resize((TILE, TILE)),
    "mirrored": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "cropped": lambda im: im.crop((10, 0, TILE, TILE - 10)),  # 90%, off-centre, kept small
    "zoomed": lambda im: im.crop((12, 12, TILE - 12, TILE - 12)).resize((TILE, TILE)),  # 75%
    # moved, not zoomed: the uncovered border black, or the edge pixels repeated
    "moved": lambda im: _moved(im, 12, 8, "black"),
    "moved_edge": lambda im: _moved(im, -4, 3, "edge"),
}


def _moved(im: Image.Image, dx: int, dy: int, border: str) -> Image.Image:
    a = np.asarray(im)
    pad = ((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0))
    padded = np.pad(a, pad, mode="edge" if border == "edge" else "constant")
    top, left = max(-dy, 0), max(-dx, 0)
    return Image.fromarray(padded[top : top + a.shape[0], left : left + a.shape[1]])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A folder of distinct JPEG tiles, then a byte copy, a PNG re-save (same pixels) and
    ``COPIES`` edited copies of each edit kind (each of another tile); ``truth`` maps each
    copy to its original."""
    root = tmp_path_factory.mktemp("dups")
    paths, truth, exact = [], {}, set()
    originals = tiles()
    for i, img in enumerate(originals):
        path = root / f"tile{i:03d}.jpg"
        path.write_bytes(_jpeg(img))
        paths.append(str(path))
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(originals), 2 + len(EDITS) * COPIES, replace=False)
    byte_copy = root / "copy.jpg"
    byte_copy.write_bytes((root / f"tile{chosen[0]:03d}.jpg").read_bytes())
    resaved = root / "resaved.png"
    Image.open(paths[chosen[1]]).save(resaved)
    for src, path in ((chosen[0], byte_copy), (chosen[1], resaved)):
        truth[len(paths)] = int(src)
        exact.add(len(paths))
        paths.append(str(path))
    edits = [(f"{name}{n}", edit) for n in range(COPIES) for name, edit in EDITS.items()]
    for (name, edit), src in zip(edits, chosen[2:], strict=True):
        path = root / f"{name}.jpg"
        path.write_bytes(_jpeg(edit(Image.open(paths[src]).convert("RGB"))))
        truth[len(paths)] = int(src)
        paths.append(str(path))
    return paths, truth, exact


@pytest.fixture(scope="module")
def features(planted):
    from tlearn import PretrainedFeatures

    return PretrainedFeatures(batch_size=16).fit().transform(planted[0])  # the defaults


@pytest.fixture(scope="module")
def thumbs(planted):
    return _thumbs(planted[0])


def _thumbs(paths) -> np.ndarray:
    return np.stack([thumbnail(arr) for _, arr, _ in iter_decoded(paths)])


def test_exact_duplicates_are_the_same_pixels_whatever_the_file(planted, tmp_path):
    paths, truth, exact = planted
    (tmp_path / "empty.jpg").write_bytes(b"")
    hashes, errors = pixel_hashes([*paths, str(tmp_path / "empty.jpg")])
    assert list(errors) == [len(paths)] and "empty" in errors[len(paths)]
    found = {(p.i, p.j) for p in exact_duplicates(hashes)}
    assert found == {(truth[c], c) for c in exact}
    # across sets: the copies as a "test set" against the originals
    across = exact_duplicates(hashes[: len(paths) - len(truth)], [hashes[c] for c in truth])
    assert {(p.i, list(truth)[p.j]) for p in across} == {(truth[c], c) for c in exact}


def test_near_duplicates_find_every_planted_copy(planted, features, thumbs):
    paths, truth, _ = planted
    pairs = near_duplicates(features, thumbnails=thumbs)
    found = {(p.i, p.j) for p in pairs}
    planted_pairs = {(truth[c], c) for c in truth}
    assert planted_pairs <= found, sorted(planted_pairs - found)
    assert all(a.similarity >= b.similarity for a, b in zip(pairs, pairs[1:], strict=False))
    # tiles of one photo (a star field, a tissue sample) are alike in features; the pixel
    # check keeps them apart
    by_features = {(p.i, p.j) for p in near_duplicates(features, min_cosine=0.5)}
    assert len(by_features - planted_pairs) > len(found - planted_pairs), found - planted_pairs


@pytest.mark.needs_data
def test_few_false_pairs_among_real_photos(cifar_zip):
    """400 CIFAR-10 test images (distinct photos): at most 1% of them paired."""
    from tlearn import PretrainedFeatures, load_image_folder

    paths = load_image_folder(f"{cifar_zip}/test", max_per_class=40).filenames
    features = PretrainedFeatures(batch_size=32).fit().transform(paths)
    pairs = near_duplicates(features, thumbnails=_thumbs(paths))
    assert len(pairs) <= 0.01 * len(paths), [(paths[p.i], paths[p.j]) for p in pairs]


def test_leakage_pairs_test_images_with_their_training_originals(planted, features, thumbs):
    paths, truth, _ = planted
    n = len(paths) - len(truth)
    test_rows = list(truth)
    pairs = near_duplicates(features[:n], features[test_rows], thumbnails=thumbs[:n],
                            other_thumbnails=thumbs[test_rows])  # fmt: skip
    best: dict[int, int] = {}
    for pair in pairs:  # most similar first
        best.setdefault(test_rows[pair.j], pair.i)
    assert best == truth  # every copy's closest training image is its original
    with pytest.raises(DataError, match="threshold"):
        near_duplicates(features, threshold=1.5)
    with pytest.raises(DataError, match="min_cosine"):
        near_duplicates(features, min_cosine=0.0)
    with pytest.raises(DataError, match=r"thumbnails must have shape \(\d+, 32, 32\)"):
        near_duplicates(features, thumbnails=thumbs[:, :16])
    with pytest.raises(DataError, match="threshold"):  # at once, before reading any image
        inspect(["/nowhere/a.jpg"] * 2, ["a", "b"], near_threshold=0.0)
    with pytest.raises(DataError, match="2-D"):
        near_duplicates(features[0])


def test_every_doctor_stage_reports_progress(monkeypatch):
    """inspect, on an array of images with two classes, drives one progress bar per stage,
    each to its total (the bars show on a terminal only: tests/test_progress.py)."""
    import tlearn.doctor.core as core
    import tlearn.features as features

    calls: dict[str, list] = {}

    class Recorder:
        def __init__(self, total, verbose, label):
            self.label = label
            calls[label] = [total, 0]

        def __enter__(self):
            return lambda k: calls[self.label].__setitem__(1, calls[self.label][1] + k)

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(core, "progress", Recorder)
    monkeypatch.setattr(features, "progress", Recorder)
    images = np.stack([np.asarray(t.resize((48, 48))) for t in tiles()[:12]])
    findings = core.inspect(images, ["a", "b"] * 6, label_backbones=(), say=lambda s: None)
    # array images are read (they were all "unreadable" once), two classes get probabilities
    assert not findings.of("unreadable") and len(findings.label_quality) == 12
    assert calls.pop("reading images") == [12, 12]
    assert calls.pop("near duplicates") == [24, 24]  # the search, then the pixel check
    assert calls.pop("labels") == [None, 0]  # a solver: elapsed time, no count
    ((label, counts),) = calls.items()
    assert label.startswith("features") and counts == [12, 12]


def test_unreadable_rows_are_never_paired():
    """Rows of NaN (unreadable images) pair with nothing, as a query or as a partner."""
    rng = np.random.default_rng(0)
    F = rng.random((6, 8)).astype(np.float32)
    F[3] = F[1] + 0.001
    F[5] = np.nan
    assert [(p.i, p.j) for p in near_duplicates(F, min_cosine=0.9)] == [(1, 3)]
    across = near_duplicates(F[:5], F[[1, 5]], min_cosine=0.9)
    assert {(p.i, p.j) for p in across} == {(1, 0), (3, 0)}
    assert np.isnan(F[5]).all()  # the caller's features are left as they were


def test_a_copy_is_paired_in_a_set_of_two_or_three():
    """Two copies alone centred on their own mean point opposite ways (cosine -1): a small
    set is compared uncentred (tlearn.doctor.duplicates.feature_centre)."""
    from tlearn import PretrainedFeatures

    photos = tiles()
    original, other = photos[0], photos[7]
    copy = Image.open(io.BytesIO(_jpeg(original, 60))).convert("RGB")
    images = np.stack([np.asarray(im) for im in (original, copy, other)])
    params = {"engine": "torch", "image_size": 96, "verbose": 0}  # small and quick
    F = PretrainedFeatures(**params).fit().transform(images)
    T = np.stack([thumbnail(im) for im in images])
    for n in (2, 3):
        assert [(p.i, p.j) for p in near_duplicates(F[:n], thumbnails=T[:n])] == [(0, 1)]
    findings = inspect(images[:2], say=lambda s: None, **params)
    assert [(r["path"], r["partner"]) for r in findings.of("near_duplicate")] == [
        ("train[1]", "train[0]")
    ]
    from tlearn.doctor.duplicates import CENTRED_FROM, feature_centre

    # from CENTRED_FROM images, their mean (NaN rows, unreadable images, left out)
    assert feature_centre(F) == 0.0
    many = np.vstack([F] * (CENTRED_FROM // 3 + 1) + [np.full((1, F.shape[1]), np.nan)])
    np.testing.assert_allclose(feature_centre(many), F.mean(axis=0), atol=1e-6)


def test_flat_images_are_never_near_duplicates():
    """Flat thumbnails (one grey level) have no layout or details: the float rounding of
    resampling them once correlated 1.0 between grey levels 1 and 2."""
    rng = np.random.default_rng(0)
    flat = [np.full((32, 32), level, np.uint8) for level in (0, 1, 2, 3, 60, 200)]
    tile = _thumbs_of(tiles()[0])
    noise = list(rng.integers(0, 256, (32, 32, 32), dtype=np.uint8))
    T = np.stack([*flat, tile, tile, *noise])  # 40 images: centred features
    F = rng.normal(size=(len(T), 16)).astype(np.float32)
    F[: len(flat)] = F[0]  # the flat images are each other's nearest, and candidates
    F[len(flat) + 1] = F[len(flat)]  # so are the tile and its copy
    pairs = near_duplicates(F, thumbnails=T)
    assert [(p.i, p.j) for p in pairs] == [(len(flat), len(flat) + 1)]


def _thumbs_of(img: Image.Image) -> np.ndarray:
    return thumbnail(np.asarray(img.convert("RGB")))


def test_copies_of_one_image_are_each_paired_with_the_first():
    """A group of n copies gives n - 1 pairs, not n (n - 1) / 2 (3,000 copies of one
    placeholder image: 4.5 million rows)."""
    hashes = ["h", "h", None, "g", "h", "g", "h"]
    assert [(p.i, p.j) for p in exact_duplicates(hashes)] == [(0, 1), (0, 4), (3, 5), (0, 6)]
    across = exact_duplicates(hashes, ["g", None, "h", "x"])
    assert [(p.i, p.j) for p in across] == [(3, 0), (0, 2)]

"""Shared fixtures. Unit and contract tests are hermetic: they write small real image files
(coloured shapes, :mod:`tests.synthetic`) into temporary folders and zips. Only the accuracy
tests marked ``needs_data`` read the CIFAR-10 JPEG zip from ../shared/data, and they skip,
saying why, when it is absent.

The suite keeps one warm backbone per session (load_backbone caches the build) and small
input sizes, so it stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import SHAPES, make_folder, make_zip

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ZIP = Path(os.environ.get("TLEARN_CIFAR_ZIP", ROOT.parent / "shared/data/cifar10-jpeg.zip"))
CLASSES3 = list(SHAPES)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep caches out of the user's home, and never wait on a network that is not there."""
    home = tmp_path_factory.getbasetemp() / "tlearn-home"
    monkeypatch.setenv("TLEARN_HOME", str(home))
    monkeypatch.setenv("TLEARN_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _fresh_engine_choices():
    """Each test sees ``auto`` check its engines anew (some change what it may choose)."""
    import sys

    engines = sys.modules.get("tlearn.runtime.engines")  # not imported yet: nothing kept
    if engines is not None:
        engines.forget_engines()


@pytest.fixture(scope="session")
def cifar_zip() -> Path:
    """The real CIFAR-10 JPEG zip, for the tests on real photos (marked ``needs_data``)."""
    if not CIFAR_ZIP.is_file():
        pytest.skip(
            f"needs real photos: the CIFAR-10 JPEG zip is not at {CIFAR_ZIP} "
            "(tests read ../shared/data/cifar10-jpeg.zip, or set TLEARN_CIFAR_ZIP)"
        )
    return CIFAR_ZIP


@pytest.fixture(scope="session")
def shapes_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip laid out like the CIFAR-10 one: train/<class>/ (40 each), test/<class>/ (10),
    64 px crops of three photos."""
    root = tmp_path_factory.mktemp("shapes")
    return make_zip(root / "shapes.zip", {"train": 40, "test": 10}, seed=0, size=64)


def _split(zip_path: Path, split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(m for m in zf.namelist() if m.startswith(f"{split}/"))
    by_class: dict[str, list[str]] = {}
    for m in names:
        by_class.setdefault(m.split("/")[1], []).append(m)
    members = [m for c in sorted(by_class) for m in by_class[c][:n]]
    order = np.random.default_rng(0).permutation(len(members))  # mixed, like load_files
    members = [members[i] for i in order]
    paths = np.array([f"{zip_path}/{m}" for m in members], dtype=object)
    return paths, np.array([m.split("/")[1] for m in members], dtype=object)


@pytest.fixture(scope="session")
def shapes3(shapes_zip: Path):
    """20 train and 10 test images of 3 classes, as paths inside the zip (like CIFAR's)."""
    X, y = _split(shapes_zip, "train", 20)
    X_test, y_test = _split(shapes_zip, "test", 10)
    return X, y, X_test, y_test


@pytest.fixture(scope="session")
def calibration_set(shapes_zip: Path):
    """120 training images of 3 classes: enough to calibrate int8."""
    return _split(shapes_zip, "train", 40)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A real folder of class sub-folders: 6 JPEGs for each of 3 classes."""
    return make_folder(tmp_path / "train", 6, seed=3)


@pytest.fixture(scope="session")
def features64():
    """A fitted PretrainedFeatures at 64 px (the real lite0 weights), shared by tests."""
    from tlearn import PretrainedFeatures

    return PretrainedFeatures("efficientnet_lite0", image_size=64, batch_size=16).fit()

"""Shared fixtures: real CIFAR-10 JPEGs from ../shared/data, small files in tmp_path.

The suite keeps one warm backbone per session (load_backbone caches the build) and small
input sizes, so it stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ZIP = Path(os.environ.get("TLEARN_CIFAR_ZIP", ROOT.parent / "shared/data/cifar10-jpeg.zip"))
CLASSES3 = ["airplane", "frog", "truck"]


def pytest_sessionstart(session: pytest.Session) -> None:
    if not CIFAR_ZIP.is_file():
        raise pytest.UsageError(
            f"the test data {CIFAR_ZIP} is missing: tests read the CIFAR-10 JPEG zip from "
            "../shared/data (or set TLEARN_CIFAR_ZIP)"
        )


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep caches out of the user's home, and never wait on a network that is not there."""
    home = tmp_path_factory.getbasetemp() / "tlearn-home"
    monkeypatch.setenv("TLEARN_HOME", str(home))
    monkeypatch.setenv("TLEARN_OFFLINE", "1")


@pytest.fixture(scope="session")
def cifar_zip() -> Path:
    return CIFAR_ZIP


@pytest.fixture(scope="session")
def cifar3(cifar_zip: Path):
    """20 train and 10 test images of 3 CIFAR classes, as paths inside the zip."""
    from tlearn import load_image_folder

    train = load_image_folder(f"{cifar_zip}/train", categories=CLASSES3, max_per_class=20)
    test = load_image_folder(f"{cifar_zip}/test", categories=CLASSES3, max_per_class=10)
    names = np.asarray(CLASSES3, dtype=object)
    return train.filenames, names[train.target], test.filenames, names[test.target]


@pytest.fixture(scope="session")
def calibration_set(cifar_zip):
    """120 training JPEGs of 3 classes (enough to calibrate int8) and 12 test JPEGs."""
    from tlearn import load_image_folder

    train = load_image_folder(
        f"{cifar_zip}/train", categories=["cat", "ship", "truck"], max_per_class=40
    )
    names = np.asarray(train.target_names, dtype=object)
    return list(train.filenames), names[train.target]


def extract_members(zip_path: Path, members: list[str], dest: Path) -> list[Path]:
    out = []
    with zipfile.ZipFile(zip_path) as zf:
        for m in members:
            target = dest / m
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(m))
            out.append(target)
    return out


@pytest.fixture
def image_folder(tmp_path: Path, cifar_zip: Path) -> Path:
    """A real folder of class sub-folders: 6 CIFAR JPEGs for each of 3 classes."""
    with zipfile.ZipFile(cifar_zip) as zf:
        names = zf.namelist()
    members = []
    for cls in CLASSES3:
        members += sorted(n for n in names if n.startswith(f"train/{cls}/") and n.endswith(".jpg"))[
            :6
        ]
    extract_members(cifar_zip, members, tmp_path)
    return tmp_path / "train"


@pytest.fixture(scope="session")
def features64():
    """A fitted PretrainedFeatures at 64 px (the real lite0 weights), shared by tests."""
    from tlearn import PretrainedFeatures

    return PretrainedFeatures("efficientnet_lite0", image_size=64, batch_size=16).fit()

"""CIFAR-10 and Fashion-MNIST from local files; safe reading of CIFAR's pickled batches."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from tlearn import DataError, DatasetUnavailableError, fetch_cifar10, fetch_fashion_mnist
from tlearn.data.datasets import DEBIAN_FASHION_MNIST


def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
    }


def _archive(path, batches: dict[str, object]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in batches.items():
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cifar10_python_archive(tmp_path):
    batches = {f"data_batch_{i}": _batch(4, i) for i in range(1, 6)}
    batches["test_batch"] = _batch(3, 9)
    archive = tmp_path / "cifar-10-python.tar.gz"
    _archive(archive, batches)
    train = fetch_cifar10("train", path=archive)
    assert train.images.shape == (20, 32, 32, 3) and train.images.dtype == np.uint8
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(train.images[0], first)  # channel-first rows -> HWC
    test = fetch_cifar10("test", path=archive)
    assert test.target.tolist() == batches["test_batch"][b"labels"]
    # the same archive found in the cache, no download needed
    (tmp_path / "home").mkdir()
    os.replace(archive, tmp_path / "home" / "cifar-10-python.tar.gz")
    assert len(fetch_cifar10("test", data_home=tmp_path / "home").target) == 3


def test_cifar10_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    archive = tmp_path / "evil.tar.gz"
    _archive(archive, {"test_batch": {b"data": Evil(), b"labels": []}})
    with pytest.raises(DataError, match="refusing to load"):
        fetch_cifar10("test", path=archive)


def test_cifar10_jpeg_zip_layout(tmp_path):
    from tests.synthetic import make_zip

    classes = ("airplane", "automobile", "bird")
    archive = make_zip(tmp_path / "c.zip", {"train": 3, "test": 2}, classes=classes)
    test = fetch_cifar10("test", path=archive)
    assert len(test.filenames) == 6 and test.target_names == list(classes)
    assert np.bincount(test.target).tolist() == [2, 2, 2]


@pytest.mark.needs_data
def test_the_real_cifar10_jpeg_zip(cifar_zip):
    test = fetch_cifar10("test", path=cifar_zip)
    assert len(test.filenames) == 10_000
    assert np.bincount(test.target).tolist() == [1000] * 10


def test_cifar10_unavailable_offline(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        fetch_cifar10("train", data_home=tmp_path, download=False)
    with pytest.raises(DataError, match="subset"):
        fetch_cifar10("validation")


def test_fashion_mnist_from_debian_package():
    if not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail("Debian's dataset-fashion-mnist is not installed; `make test` installs it")
    test = fetch_fashion_mnist("test")
    assert test.images.shape == (10_000, 28, 28) and test.images.dtype == np.uint8
    assert np.bincount(test.target).tolist() == [1000] * 10
    assert test.target_names[9] == "Ankle boot"

"""Standard datasets from local files first: CIFAR-10 and Fashion-MNIST.

Each ``fetch_*`` looks in the given path, then the cache (``$TLEARN_HOME/datasets``, by
default ``~/.cache/tlearn/datasets``), then downloads with a checksum when online. Offline
and absent, it raises :class:`~tlearn.exceptions.DatasetUnavailableError` saying where it
looked and how to supply the files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.utils import Bunch

from tlearn.data.sources import load_image_folder
from tlearn.exceptions import DataError, DatasetUnavailableError

__all__ = ["fetch_cifar10", "fetch_fashion_mnist", "get_data_home"]

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FMNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def get_data_home(data_home: str | os.PathLike[str] | None = None) -> Path:
    """``data_home``, else ``$TLEARN_HOME/datasets``, else ``~/.cache/tlearn/datasets``."""
    if data_home is not None:
        return Path(data_home)
    home = os.environ.get("TLEARN_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "tlearn") / "datasets"


def _check_subset(subset: str) -> None:
    if subset not in ("train", "test"):
        raise DataError(f"subset must be 'train' or 'test', got {subset!r}")


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, md5: str, dataset: str, looked: list[str]) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetUnavailableError(
            f"{dataset} is not available locally and could not be downloaded from {url} "
            f"({e}). Looked in: {', '.join(looked)}. Put the file there, or pass its path."
        ) from e
    if _md5(tmp) != md5:
        tmp.unlink(missing_ok=True)
        raise DatasetUnavailableError(f"the download of {url} failed its checksum; try again")
    tmp.replace(dest)
    return dest


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's python-format batches without executing arbitrary code: only the
    numpy and builtin types those files hold may be built."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_python(archive: Path, subset: str) -> Bunch:
    names = [f"data_batch_{i}" for i in range(1, 6)] if subset == "train" else ["test_batch"]
    images, labels = [], []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            for name in names:
                if name not in members:
                    raise DataError(f"{archive} has no member {name!r}: not a CIFAR-10 archive")
                raw = tar.extractfile(members[name])
                assert raw is not None  # a regular file member always has contents
                batch = _ArrayUnpickler(io.BytesIO(raw.read()), encoding="bytes").load()
                images.append(np.asarray(batch[b"data"], dtype=np.uint8))
                labels.extend(batch[b"labels"])
    except (tarfile.TarError, pickle.UnpicklingError, EOFError, KeyError) as e:
        raise DataError(f"{archive} is not a readable CIFAR-10 python archive ({e})") from e
    data = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Bunch(
        images=np.ascontiguousarray(data),
        target=np.asarray(labels, dtype=np.int64),
        target_names=list(CIFAR10_CLASSES),
        DESCR=f"CIFAR-10 {subset} from {archive}",
    )


def fetch_cifar10(
    subset: str = "train",
    *,
    path: str | os.PathLike[str] | None = None,
    data_home: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Bunch:
    """Load CIFAR-10 (Krizhevsky, 2009): 50,000 train / 10,000 test 32x32 colour images.

    Parameters
    ----------
    subset : {"train", "test"}
    path : path, optional
        The official ``cifar-10-python.tar.gz``, or a zip/folder of JPEGs laid out as
        ``train/<class>/`` and ``test/<class>/``. A zip/folder gives ``filenames`` (paths);
        the archive gives ``images``, a uint8 array ``(n, 32, 32, 3)``.
    data_home : path, optional
        The cache folder (see :func:`get_data_home`).
    download : bool, default=True
        Download the official archive (checksum-verified) when it is nowhere local.

    Returns
    -------
    Bunch
        ``images`` or ``filenames``, ``target`` (n,) int, ``target_names``.
    """
    _check_subset(subset)
    if path is not None:
        p = Path(path)
        if p.name.endswith((".tar.gz", ".tgz")):
            if not p.is_file():
                raise DatasetUnavailableError(f"no such file: {str(p)!r}")
            return _read_cifar_python(p, subset)
        return load_image_folder(os.path.join(os.fspath(p), subset), shuffle=False)
    cached = get_data_home(data_home) / "cifar-10-python.tar.gz"
    if not cached.is_file():
        if not download:
            raise DatasetUnavailableError(
                f"CIFAR-10 is not in the cache ({cached}) and download=False; pass path= to "
                "the official cifar-10-python.tar.gz or to a zip of train/<class>/ JPEGs"
            )
        _download(_CIFAR10_URL, cached, _CIFAR10_MD5, "CIFAR-10", [str(cached)])
    return _read_cifar_python(cached, subset)


def _read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {shape}, got {arr.size} values")
    return arr.reshape(shape)


def fetch_fashion_mnist(
    subset: str = "train",
    *,
    data_home: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Bunch:
    """Load Fashion-MNIST (Xiao et al., 2017): 60,000 train / 10,000 test 28x28 grey images.

    Looks in Debian's ``dataset-fashion-mnist`` location (``/usr/share/datasets/
    fashion-mnist``), then the cache, then downloads (checksum-verified).

    Returns
    -------
    Bunch
        ``images`` uint8 ``(n, 28, 28)``, ``target`` (n,) int, ``target_names``.
    """
    _check_subset(subset)
    cache = get_data_home(data_home) / "fashion-mnist"
    found = []
    for name in _FMNIST_FILES[subset]:
        for folder in (DEBIAN_FASHION_MNIST, cache):
            if (folder / name).is_file():
                found.append(folder / name)
                break
        else:
            if not download:
                raise DatasetUnavailableError(
                    f"Fashion-MNIST file {name} is in neither {DEBIAN_FASHION_MNIST} nor "
                    f"{cache}; install Debian's dataset-fashion-mnist or allow download"
                )
            looked = [str(DEBIAN_FASHION_MNIST / name), str(cache / name)]
            found.append(
                _download(
                    _FMNIST_URL + name,
                    cache / name,
                    _FMNIST_MD5[name],
                    "Fashion-MNIST (apt-get install dataset-fashion-mnist)",
                    looked,
                )
            )
    images, labels = _read_idx(found[0]), _read_idx(found[1])
    if len(images) != len(labels):
        raise DataError(f"{found[0]} and {found[1]} disagree on the number of images")
    return Bunch(
        images=images,
        target=labels.astype(np.int64),
        target_names=list(FASHION_MNIST_CLASSES),
        DESCR=f"Fashion-MNIST {subset} from {found[0].parent}",
    )

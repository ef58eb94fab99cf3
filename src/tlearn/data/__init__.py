"""Stage 1: where images come from, how they are decoded, and how they are batched.
Names are imported on first use (scikit-learn only when a loader needs it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlearn._lazy import lazy_exports

if TYPE_CHECKING:
    from tlearn.data.datasets import fetch_cifar10, fetch_fashion_mnist, get_data_home
    from tlearn.data.images import Preprocessing, decode_image
    from tlearn.data.loader import check_images, iter_batches
    from tlearn.data.sources import (
        iter_image_paths,
        load_dataset,
        load_image_csv,
        load_image_folder,
        subsample_per_class,
    )

_WHERE = {
    "fetch_cifar10": "tlearn.data.datasets",
    "fetch_fashion_mnist": "tlearn.data.datasets",
    "get_data_home": "tlearn.data.datasets",
    "Preprocessing": "tlearn.data.images",
    "decode_image": "tlearn.data.images",
    "check_images": "tlearn.data.loader",
    "iter_batches": "tlearn.data.loader",
    "iter_image_paths": "tlearn.data.sources",
    "load_dataset": "tlearn.data.sources",
    "load_image_csv": "tlearn.data.sources",
    "load_image_folder": "tlearn.data.sources",
    "subsample_per_class": "tlearn.data.sources",
}
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "Preprocessing",
    "check_images",
    "decode_image",
    "fetch_cifar10",
    "fetch_fashion_mnist",
    "get_data_home",
    "iter_batches",
    "iter_image_paths",
    "load_dataset",
    "load_image_csv",
    "load_image_folder",
    "subsample_per_class",
]

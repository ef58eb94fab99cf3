"""Stage 1: where images come from, how they are decoded, and how they are batched."""

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

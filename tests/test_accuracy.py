"""Accuracy on real photos: the CIFAR-10 JPEG zip from ../shared/data. These are the only
tests that read it; without it they skip and say why (see the ``cifar_zip`` fixture)."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn import LinearProbe, PretrainedFeatures, load_image_folder
from tlearn.runtime import engines

pytestmark = pytest.mark.needs_data
CLASSES = ["airplane", "frog", "truck"]


@pytest.fixture(scope="module")
def cifar3(cifar_zip):
    train = load_image_folder(f"{cifar_zip}/train", categories=CLASSES, max_per_class=40)
    test = load_image_folder(f"{cifar_zip}/test", categories=CLASSES, max_per_class=30)
    names = np.asarray(CLASSES, dtype=object)
    return train.filenames, names[train.target], test.filenames, names[test.target]


def test_probe_on_three_cifar_classes(cifar3):
    X, y, X_test, y_test = cifar3
    probe = LinearProbe(image_size=64).fit(X, y)
    assert probe.score(X_test, y_test) >= 0.75  # chance is 0.33


def test_int8_keeps_the_features_of_real_photos(cifar3):
    X, _, X_test, _ = cifar3
    # the fp32 torch features themselves (the default, auto, would convert and check an
    # engine that only agrees with them)
    expected = PretrainedFeatures(image_size=64, engine="torch").fit().transform(X_test[:32])
    int8 = PretrainedFeatures(image_size=64, engine="openvino-int8").fit(X)
    ok, figure = engines.agreement("openvino-int8", int8.transform(X_test[:32]), expected)
    assert ok, figure

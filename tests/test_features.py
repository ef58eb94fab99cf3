"""PretrainedFeatures: real features, the scikit-learn estimator contract, cache, errors."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tlearn import DataError, ImageReadError, InvalidParameterError, PretrainedFeatures
from tlearn.data.images import decode_image, read_bytes
from tlearn.runtime import TorchEngine


def test_transform_paths_zip_and_arrays_agree(features64, shapes3, tmp_path, shapes_zip):
    X, _, _, _ = shapes3
    paths = list(X[:5])
    F = features64.transform(paths)
    # the pooled last layer (1,280) and three pooled pyramid stages (40 + 112 + 320)
    assert F.shape == (5, 1752) and F.dtype == np.float32 and np.isfinite(F).all()
    assert np.array_equal(F, features64.transform(paths))  # deterministic
    arrays = np.stack([np.asarray(decode_image(read_bytes(p), p)) for p in paths])
    assert np.allclose(features64.transform(arrays), F, atol=1e-4)
    member = paths[0].split(".zip/", 1)[1]
    with zipfile.ZipFile(shapes_zip) as zf:
        (tmp_path / "one.jpg").write_bytes(zf.read(member))
    # same bytes from a plain file; a batch of one may take another kernel: equal to ~1e-6
    assert np.allclose(features64.transform([str(tmp_path / "one.jpg")])[0], F[0], atol=1e-4)
    grey = arrays.mean(axis=3).astype(np.uint8)  # (n, h, w) works too
    assert features64.transform(grey).shape == (5, 1752)
    assert not np.allclose(F[0], F[1])  # different images, different features


def test_estimator_contract(features64, shapes3):
    est = PretrainedFeatures("efficientnet_lite0", image_size=64, batch_size=8)
    assert est.get_params()["image_size"] == 64
    assert est.set_params(batch_size=4) is est and est.batch_size == 4
    with pytest.raises(NotFittedError):
        est.transform(list(shapes3[0][:2]))
    assert est.fit(shapes3[0]) is est  # fit returns self
    cloned = clone(est)
    assert cloned.get_params() == est.get_params() and not hasattr(cloned, "backbone_")
    restored = pickle.loads(pickle.dumps(est))
    assert np.array_equal(
        restored.transform(list(shapes3[0][:3])), est.transform(list(shapes3[0][:3]))
    )
    assert est.get_feature_names_out().shape == (1752,)
    last = PretrainedFeatures(image_size=64, pooling="last").fit()
    assert last.n_features_out_ == 1280
    np.testing.assert_allclose(
        last.transform(list(shapes3[0][:3])),
        est.transform(list(shapes3[0][:3]))[:, :1280],
        atol=1e-4,
    )


def test_pipeline_and_grid_search_over_paths(shapes3):
    X, y, X_test, y_test = shapes3
    pipe = Pipeline(
        [
            ("features", PretrainedFeatures(image_size=64)),
            ("scaler", StandardScaler()),
            ("clf", LogisticRegression(max_iter=1000)),
        ]
    )
    search = GridSearchCV(pipe, {"clf__C": [0.01, 1.0]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["clf__C"] in (0.01, 1.0)
    assert search.score(X_test, y_test) >= 0.7  # 3 CIFAR classes; chance is 0.33


def test_feature_cache_skips_the_network_second_time(shapes3, tmp_path, monkeypatch):
    X = list(shapes3[0][:6])
    est = PretrainedFeatures(image_size=64, cache_dir=tmp_path / "cache", engine="torch").fit()
    first = est.transform(X)
    calls = []
    original = TorchEngine.__call__
    monkeypatch.setattr(
        TorchEngine, "__call__", lambda self, b: calls.append(len(b)) or original(self, b)
    )
    second = est.transform(X)
    assert calls == [] and np.array_equal(first, second)
    # a new image runs the network for that one image only
    est.transform(X + [shapes3[2][0]])
    assert calls == [1]
    other = PretrainedFeatures(image_size=96, cache_dir=tmp_path / "cache", engine="torch").fit()
    other.transform(X[:2])  # another preprocessing is another cache
    assert calls[-1] == 2


def test_bad_images_raise_or_are_skipped_and_listed(features64, shapes3, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    X = [shapes3[0][0], str(bad), shapes3[0][1]]
    with pytest.raises(ImageReadError, match="broken.jpg"):
        features64.transform(X)
    skipper = clone(features64).set_params(on_error="skip").fit()
    with pytest.warns(UserWarning, match="1 of 3 images could not be read"):
        F = skipper.transform(X)
    assert np.isnan(F[1]).all() and np.isfinite(F[[0, 2]]).all()
    F2, errors = skipper.extract(X)
    assert errors[0][:2] == (1, str(bad)) and np.array_equal(F, F2, equal_nan=True)
    # per call, without touching the estimator
    _, errors = features64.extract(X, on_error="skip")
    assert [e[0] for e in errors] == [1] and features64.on_error == "raise"


def test_bad_parameters_and_inputs(features64):
    with pytest.raises(InvalidParameterError, match="'on_error' parameter of Pretrained"):
        PretrainedFeatures(on_error="ignore").fit()
    with pytest.raises(ValueError, match="batch_size"):
        PretrainedFeatures(batch_size=0).fit()
    with pytest.raises(InvalidParameterError, match="Did you mean 'openvino'"):
        PretrainedFeatures(engine="openvno").fit()
    with pytest.raises(InvalidParameterError, match="weights='fine-tuned' names weights"):
        PretrainedFeatures(weights="fine-tuned").fit()
    with pytest.raises(DataError, match="single path"):
        features64.transform("photos/")
    with pytest.raises(DataError, match="uint8"):
        features64.transform(np.zeros((2, 8, 8, 3), dtype=np.float32))

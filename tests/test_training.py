"""tlearn.train (what `tlearn fit` runs): no image thrown away, the held-out estimate
reported and recorded in the model file, refits, and --method auto within its budget."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tlearn
from tests.synthetic import make_folder
from tlearn.data.images import Preprocessing, preprocess_image
from tlearn.persistence import read_metadata

SMALL = {"image_size": 32, "say": lambda s: None}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("train") / "photos", 12, size=48, seed=7)


def test_without_test_data_the_probe_reports_cross_validation_and_keeps_every_image(
    folder, tmp_path
):
    out = tmp_path / "m.safetensors"
    result = tlearn.train(folder, out=out, method="probe", Cs=[0.01, 1.0], **SMALL)
    assert result.model.scaler_.n_samples_seen_ == 36  # every image, none held out
    nested = "nested 5-fold cross-validation (C chosen inside each fold's training images)"
    assert result.evaluation["method"] == nested
    assert result.evaluation["n_images"] == 36
    assert result.report.accuracy == pytest.approx(result.evaluation["accuracy"])
    assert result.report.calibration["temperature"] == result.model.temperature_
    recorded = read_metadata(out)["evaluation"]
    assert recorded["method"] == nested
    assert recorded["accuracy"] == pytest.approx(result.evaluation["accuracy"])
    assert read_metadata(out)["params"]["cache_dir"] is None  # the run's cache is not kept


def test_a_test_split_is_reported_then_refit_on_everything(folder):
    result = tlearn.train(folder, test_size=0.25, method="probe", Cs=[1.0], **SMALL)
    assert result.evaluation["method"] == "held-out 25% test split"
    assert result.report.n_images == 9
    assert result.model.scaler_.n_samples_seen_ == 36


def test_fine_tuning_is_refit_on_all_images_for_its_best_epochs(folder):
    result = tlearn.train(
        folder, method="finetune", strategy="head", epochs=3, validation_size=0.25,
        lr=3e-3, **SMALL,
    )  # fmt: skip
    model = result.model
    assert model.features_.cache_dir is None  # issue 26.12
    assert result.evaluation["method"] == (
        "held-out 25% validation split, each half judged at the epoch the other half chose "
        "(cross-fitted)"
    )
    assert result.report.n_images == 9  # the validation split, before the refit on all
    assert model.validation_size == 0 and len(model.history_) == model.epochs
    assert model.epochs <= 3 and model.temperature_ > 0
    with pytest.raises(tlearn.DataError, match="resume"):
        tlearn.train(folder, method="probe", resume=True, **SMALL)


def test_auto_keeps_the_best_candidate_within_its_budget(folder, tmp_path, monkeypatch):
    from tlearn import automl

    monkeypatch.setattr(automl, "_finetune_seconds", lambda *args: 3600.0)  # cannot fit
    out = tmp_path / "auto.safetensors"
    # engine torch: the claims are about auto's candidates and budget, not an engine (auto's
    # check converted each candidate's backbones, Lite1 + Lite2 and Lite0, to OpenVINO)
    result = tlearn.train(folder, out=out, method="auto", time_budget=60, Cs=[0.1],
                          engine="torch", **SMALL)  # fmt: skip
    rows = result.leaderboard
    # first the ensemble of the two largest embedded backbones, then no second-backbone probe
    assert rows[0]["candidate"].startswith(f"probe {automl.ensemble_backbone()} (")
    assert result.model.features_.blocks_ == [1752, 1800]  # Lite1 and Lite2, 32 px
    # issue 26.12: the run's temporary feature cache is gone, and no model points at it
    assert result.model.cache_dir is None and result.model.features_.cache_dir is None
    assert read_metadata(out)["params"].get("cache_dir") is None
    assert not any(r["candidate"].startswith("probe efficientnet_lite2") for r in rows)
    assert all({"candidate", "accuracy", "seconds", "images_per_second"} <= set(r) for r in rows)
    tried = [r for r in rows if r["accuracy"] is not None]
    chosen = [r for r in rows if r["chosen"]]
    assert chosen and chosen[0]["accuracy"] == max(r["accuracy"] for r in tried)
    assert (
        rows[-1]["candidate"].startswith("lp-ft")
        and "skipped: needs about 60.0 min" in (rows[-1]["note"])
    )
    saved = json.loads((tmp_path / "auto.safetensors.leaderboard.json").read_text())
    assert [r["candidate"] for r in saved] == [r["candidate"] for r in rows]
    with pytest.raises(tlearn.DataError, match="would take about .* --time-budget"):
        tlearn.train(folder, method="auto", time_budget=0.5, **SMALL)


def test_the_default_budget_never_fails_it_fits_the_cheapest_probe(folder, monkeypatch):
    from tlearn import automl

    monkeypatch.setattr(automl, "DEFAULT_TIME_BUDGET", 0.5)  # nothing fits
    said: list[str] = []
    # no budget given; engine torch: no claim here is about an engine
    result = tlearn.train(folder, Cs=[0.1], image_size=32, engine="torch", say=said.append)
    assert result.leaderboard[0]["chosen"] and result.model.C_ == 0.1
    assert any("over the default budget" in line and "fitting it alone" in line for line in said)


def test_small_images_are_enlarged_whole_and_large_ones_cropped():
    pre = Preprocessing(64, (0.5,) * 3, (0.5,) * 3, "bilinear", 0.875, crop_small=False)
    small = np.zeros((32, 32, 3), np.uint8)
    small[0, 0] = small[-1, -1] = 255  # corner pixels survive only without a crop
    from PIL import Image

    out = preprocess_image(Image.fromarray(small), pre)
    assert out.shape == (64, 64, 3) and out[0, 0].max() > 100 and out[-1, -1].max() > 100
    cropped = preprocess_image(Image.fromarray(small), Preprocessing(64, (0.5,) * 3,
                               (0.5,) * 3, "bilinear", 0.875))  # fmt: skip
    assert cropped[0, 0].max() < 50  # timm's centre crop cuts the border off
    large = np.zeros((200, 200, 3), np.uint8)
    large[0, 0] = 255
    # a large image is cropped as the backbone's evaluation transform says, either way
    np.testing.assert_array_equal(
        preprocess_image(Image.fromarray(large), pre),
        preprocess_image(Image.fromarray(large), Preprocessing(64, (0.5,) * 3, (0.5,) * 3,
                                                               "bilinear", 0.875)),
    )  # fmt: skip


def test_fine_tuning_crops_see_a_small_image_at_its_evaluation_scale():
    from PIL import Image

    from tlearn import FineTuneClassifier

    pre_eval = Preprocessing(64, (0.5,) * 3, (0.5,) * 3, "bilinear", 0.875, crop_small=False)
    pre_train = FineTuneClassifier()._train_preprocessing(pre_eval)
    assert (pre_train.input_size, pre_train.pad_small) == (72, 4)
    small = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    evaluated = preprocess_image(Image.fromarray(small), pre_eval)
    trained = preprocess_image(Image.fromarray(small), pre_train)
    assert trained.shape == (72, 72, 3)
    # the centre is the evaluated image itself (a crop at offset 4 sees exactly it), not a
    # zoomed-in copy; the border is the image reflected
    np.testing.assert_array_equal(trained[4:68, 4:68], evaluated)
    np.testing.assert_array_equal(trained[3, 4:68], evaluated[1])
    large = np.random.default_rng(1).integers(0, 256, (200, 160, 3), dtype=np.uint8)
    assert preprocess_image(Image.fromarray(large), pre_train).shape == (72, 72, 3)
    with pytest.raises(ValueError, match="pad_small"):
        Preprocessing(64, (0.5,) * 3, (0.5,) * 3, pad_small=16)


def test_imbalanced_classes_are_weighted_and_the_report_leads_with_balanced_accuracy(
    tmp_path,
):
    """The smallest class under a fifth of the largest: fit weighs the classes ("balanced",
    the better default on long-tailed CIFAR-10, docs/accuracy.md), says so, and the report
    puts balanced accuracy first; a class_weight given (None included) is kept."""
    import shutil

    root = make_folder(tmp_path / "photos", 30, size=48, seed=3)
    classes = sorted(p.name for p in root.iterdir())
    for extra in sorted((root / classes[0]).iterdir())[5:]:  # 5 of the first, 30 of others
        shutil.move(extra, tmp_path / extra.name)
    said: list[str] = []
    result = tlearn.train(root, method="probe", Cs=[1.0], image_size=32, engine="torch",
                          say=said.append)  # fmt: skip
    assert result.model.class_weight == "balanced"
    assert any("classes imbalanced (the smallest has 5 images, the largest 30)" in s
               for s in said)  # fmt: skip
    assert result.report.imbalanced
    assert result.report.headline("held-out").startswith("held-out balanced accuracy: ")
    kept = tlearn.train(root, method="probe", Cs=[1.0], class_weight=None, engine="torch",
                        **SMALL)  # fmt: skip
    assert kept.model.class_weight is None

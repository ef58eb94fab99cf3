"""FineTuneClassifier: strategies, optimiser groups, schedule, validation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from tlearn import (
    DataError,
    FineTuneClassifier,
    ImageReadError,
    InvalidParameterError,
    load,
    load_backbone,
    save,
)
from tlearn.finetune.callbacks import _train_mode
from tlearn.finetune.loop import Classifier, LoopConfig
from tlearn.finetune.optim import lr_factor, make_optimizer, set_trainable, stage_modules


@pytest.fixture(scope="module")
def head_model(shapes3, tmp_path_factory):
    X, y, _, _ = shapes3
    run = tmp_path_factory.mktemp("ft-run")
    model = FineTuneClassifier(
        strategy="head",
        image_size=64,
        epochs=4,
        lr=0.001,
        batch_size=16,
        augmentation="flip",
        validation_size=0.2,
        checkpoint_dir=run,
        verbose=0,
    )
    return model.fit(X, y), run


def test_head_only_training_learns_and_writes_history(head_model, shapes3):
    model, run = head_model
    _, _, X_test, y_test = shapes3
    assert list(model.classes_) == ["astronaut", "coffee", "rocket"]
    assert len(model.history_) == 4 and 1 <= model.best_epoch_ <= 4
    assert model.score(X_test, y_test) >= 0.7  # 3 classes; chance is 0.33
    assert (run / "checkpoint.safetensors").is_file() and (run / "curves.png").is_file()
    assert (run / "history.csv").read_text().count("\n") == 5  # header + 4 epochs
    losses = [h["train_loss"] for h in model.history_]
    assert losses[-1] < losses[0]


def test_head_strategy_leaves_the_backbone_untouched(head_model):
    model, _ = head_model
    original = load_backbone("efficientnet_lite0")
    assert model.features_.backbone_.weights_sha256 == original.weights_sha256


def test_fine_tuned_model_file_round_trip(head_model, shapes3, tmp_path):
    model, _ = head_model
    save(model, tmp_path / "ft.safetensors")
    loaded = load(tmp_path / "ft.safetensors")
    X_test = shapes3[2]
    assert np.array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
    assert loaded.history_ == model.history_ and loaded.get_params()["strategy"] == "head"


def test_contract_and_parameter_errors(shapes3):
    est = FineTuneClassifier(epochs=2, image_size=64)
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        est.predict(list(shapes3[0][:2]))
    X, y = shapes3[0], shapes3[1]
    for params, message in [
        ({"lr": 0.0}, r"'lr' parameter of FineTuneClassifier must be a float in the range \[1e-07"),
        ({"epochs": 0}, r"'epochs' parameter .* must be an int in the range \[1, 10000\]"),
        ({"strategy": "everything"}, "'strategy' parameter .* must be one of"),
        ({"optimizer": "adam"}, "one of 'adamw', 'sgd'. Got 'adam' instead. Did you mean 'adamw'"),
        ({"precision": "fp16", "device": "cpu"}, "needs a CUDA GPU"),
        ({"head_epochs": 5, "epochs": 2}, "must not exceed epochs"),
    ]:
        with pytest.raises(InvalidParameterError, match=message):
            FineTuneClassifier(image_size=64, verbose=0, **params).fit(X, y)


def test_data_errors_come_before_training(shapes3, tmp_path):
    X, y = shapes3[0], shapes3[1]
    with pytest.raises(DataError, match="at least 2 classes"):
        FineTuneClassifier(image_size=64).fit(X[:4], ["a"] * 4)
    with pytest.raises(DataError, match=r"'b' \(2\).*at least 10 images per class"):
        FineTuneClassifier(image_size=64).fit(X[:12], ["a"] * 10 + ["b"] * 2)
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    X2, y2 = np.append(X, str(bad)), np.append(y, "coffee")
    with pytest.raises(ImageReadError, match="cut.jpg"):
        FineTuneClassifier(image_size=64, verbose=0).fit(X2, y2)
    model = FineTuneClassifier(
        strategy="head", image_size=32, epochs=1, on_error="skip", validation_size=0, verbose=0
    ).fit(X2, y2)
    assert [p for _, p, _ in model.skipped_] == [str(bad)]


def test_image_size_the_backbone_cannot_take(shapes3):
    with pytest.raises(DataError, match="image_size=64 does not fit"):
        FineTuneClassifier("timm:vit_tiny_patch16_224", weights=None, image_size=64, verbose=0).fit(
            shapes3[0], shapes3[1]
        )


def test_partial_unfreezing_and_frozen_batchnorm():
    bb = load_backbone("efficientnet_lite0")
    net = Classifier(bb.model, bb.n_features, 3)
    stages = stage_modules(net.backbone)
    assert len(stages) == 7  # EfficientNet's 7 block stages
    set_trainable(net.backbone, net.head, "partial", 2)
    assert not net.backbone.conv_stem.weight.requires_grad
    assert not any(p.requires_grad for p in stages[4].parameters())
    assert all(p.requires_grad for p in stages[5].parameters())
    assert net.backbone.conv_head.weight.requires_grad and net.head.weight.requires_grad
    _train_mode(net)
    assert not stages[0][0].bn1.training and stages[6][0].bn1.training
    set_trainable(net.backbone, net.head, "head")
    _train_mode(net)
    assert not net.backbone.training and net.head.training


def test_optimizer_groups_and_schedule():
    bb = load_backbone("efficientnet_lite0")
    net = Classifier(bb.model, bb.n_features, 3)
    cfg = LoopConfig(optimizer="sgd", lr=0.1, backbone_lr_ratio=0.1, weight_decay=0.05)
    opt = make_optimizer(net, cfg)
    groups = opt.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.01, 0.1, 0.1])
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0, 0.05, 0.0]
    assert all(p.ndim <= 1 for p in groups[1]["params"] + groups[3]["params"])
    assert groups[3]["params"][0] is net.head.bias
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(50, 100, 0, "constant") == 1.0


def test_lp_ft_trains_head_then_backbone(shapes3):
    X, y = shapes3[0], shapes3[1]
    before = load_backbone("efficientnet_lite0").weights_sha256
    model = FineTuneClassifier(
        strategy="lp-ft",
        head_epochs=1,
        image_size=32,
        epochs=2,
        batch_size=16,
        validation_size=0,
        verbose=0,
    ).fit(X, y)
    assert model.features_.backbone_.weights_sha256 != before  # the backbone moved
    assert torch.isfinite(torch.from_numpy(model.head_weight_)).all()


@pytest.mark.parametrize("policy", ["none", "flip", "flip_crop", "trivialaugment", "randaugment"])
def test_augmentation_policies_are_seeded_and_sized(policy):
    from tlearn.finetune.augment import augment_batch

    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    torch.manual_seed(1)
    a = augment_batch(images, policy, 32)
    torch.manual_seed(1)
    b = augment_batch(images, policy, 32)
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.uint8 and torch.equal(a, b)
    if policy == "none":
        assert torch.equal(a, images[:, :, 4:36, 4:36])  # a centre crop, nothing else


def test_out_of_memory_suggests_a_smaller_batch(shapes3, monkeypatch):
    from tlearn import TlearnError
    from tlearn.finetune import loop

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "train_step", oom)
    with pytest.raises(TlearnError, match="batch_size=16.*--batch-size 8"):
        FineTuneClassifier(
            image_size=32, epochs=1, batch_size=16, validation_size=0, verbose=0
        ).fit(shapes3[0], shapes3[1])


# -- a task is one module and one row (issue 28) ------------------------------------------
class _Tagged(list):
    """Targets of a task the table does not hold: one label per image, tagged."""


def test_a_new_task_is_one_class_and_one_row_of_the_table(shapes3, monkeypatch):
    """A task added to TASKS (here: one label per image with its loss doubled and a score
    of its own) is chosen from y, and its loss, validation score, calibration, held-out
    estimate and predictions are the ones the estimator and the loop use: neither knows
    which task they run."""
    from tlearn.finetune import tasks
    from tlearn.finetune.task import OneLabel

    calls: dict[str, int] = {}

    class Doubled(OneLabel):
        name = "doubled"
        score_name = "twice"

        @staticmethod
        def takes(y):
            return isinstance(y, _Tagged)

        def loss_per_image(self, logits, target, smoothing):
            calls["loss"] = calls.get("loss", 0) + 1
            return 2 * super().loss_per_image(logits, target, smoothing)

        def validation_score(self, logits, y, w, correct, n):
            calls["score"] = calls.get("score", 0) + 1
            return super().validation_score(logits, y, w, correct, n)

        def calibrate(self, model, logits, y, w):
            super().calibrate(model, logits, y, w)
            model.calibration_["doubled"] = True

        def predict(self, model, proba):
            return np.char.upper(model.classes_[proba.argmax(axis=1)].astype(str))

        def fingerprint(self):
            return {"task": "doubled"}

    doubled = Doubled()
    monkeypatch.setattr(tasks, "TASKS", {"doubled": doubled, **tasks.TASKS})
    X, y, X_test, _ = shapes3
    model = FineTuneClassifier(strategy="head", image_size=32, epochs=2, batch_size=16,
                               augmentation="none", validation_size=0.25, verbose=0)  # fmt: skip
    model.fit(X, _Tagged(y))
    assert model.task_ is doubled and not model.multilabel_
    assert calls["loss"] >= 2 * (len(y) * 3 // 4) // 16 and calls["score"] == 2
    assert model.calibration_["doubled"]
    assert set(model.predict(X_test)) <= {c.upper() for c in model.classes_}
    assert not np.isnan(model.heldout_proba_).all() and "cross-fitted" in model.heldout_method_
    # the checkpoint's fingerprint names the task: a resumed run of another task is another run
    bb = load_backbone("efficientnet_lite0")
    pre = model.features_.preprocessing_
    assert model._fingerprint(bb, model.classes_, pre, 10)["task"] == "doubled"
    # and plain labels still take the task of one label per image
    assert tasks.task_for(list(y)) is tasks.ONE_LABEL

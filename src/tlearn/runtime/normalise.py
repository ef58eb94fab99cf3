"""Normalisation, written once: uint8 pixels -> ``(pixels - 255 * mean) / (255 * std)``,
with the backbone's own mean and std (they travel with the weights). Three runtimes use the
same constants: numpy for ONNX Runtime and exports, torch for the torch engines and the
training loop, and OpenVINO's preprocessing (fused into the compiled model)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tlearn.data.images import Preprocessing

if TYPE_CHECKING:
    import torch

__all__ = ["normalise_numpy", "normalise_torch", "pixel_mean_std"]


def pixel_mean_std(pre: Preprocessing) -> tuple[list[float], list[float]]:
    """The per-channel mean and std on the 0-255 pixel scale."""
    return [m * 255.0 for m in pre.mean], [s * 255.0 for s in pre.std]


def normalise_numpy(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 -> normalised ``(n, 3, h, w)`` float32.

    One channel at a time: 8x faster than transposing the whole batch at once (0.24 vs
    2.1 ms per 224 px image).
    """
    mean, std = pixel_mean_std(pre)
    out = np.empty((len(images), 3, *images.shape[1:3]), np.float32)
    for c in range(3):
        np.subtract(images[..., c], np.float32(mean[c]), out=out[:, c], dtype=np.float32)
        np.divide(out[:, c], np.float32(std[c]), out=out[:, c])
    return out


def normalise_torch(
    x: torch.Tensor, pre: Preprocessing, channels_last: bool = True
) -> torch.Tensor:
    """``(n, 3, h, w)`` uint8 tensor (any device) -> normalised float, channels-last by
    default (about 1.3-2x faster for convolutional nets on CPU)."""
    import torch

    mean, std = pixel_mean_std(pre)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return ((x.float() - m) / s).contiguous(memory_format=fmt)

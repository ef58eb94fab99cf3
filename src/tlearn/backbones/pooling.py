"""What a frozen backbone hands to a head: the pooled last layer, optionally with the
mean-pooled maps of earlier stages (the backbone's feature pyramid, as timm lists it in
``feature_info``), optionally averaged with the features of the mirrored image.

All of it is one ``nn.Module`` (:class:`FeatureNet`), so every engine (PyTorch, ONNX
Runtime, OpenVINO) and every export computes exactly the same thing.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FeatureNet", "pyramid_stages", "supports_stages"]


def supports_stages(model: nn.Module) -> bool:
    """Whether the backbone can hand out intermediate stages (timm's feature API)."""
    return hasattr(model, "forward_intermediates") and hasattr(model, "feature_info")


def pyramid_stages(model: nn.Module) -> tuple[tuple[int, ...], int]:
    """The stages tapped by ``pooling="multistage"``: the last three of the backbone's
    feature pyramid (strides 8, 16 and 32 for most CNNs), and their total channels."""
    info = list(model.feature_info)  # type: ignore[arg-type]
    if len(info) < 3:
        return (), 0
    stages = tuple(range(len(info) - 3, len(info)))
    return stages, sum(int(info[i]["num_chs"]) for i in stages)


class FeatureNet(nn.Module):
    """``(n, 3, s, s)`` normalised images -> ``(n, n_features)`` features.

    ``stages``: feature-pyramid indices whose maps are mean-pooled and appended to the
    pooled last layer; ``flip``: average with the features of the mirrored images.
    """

    def __init__(self, backbone: nn.Module, stages: tuple[int, ...] = (), flip: bool = False):
        super().__init__()
        self.backbone = backbone
        self.stages = tuple(stages)
        self.flip = flip

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stages:
            return self.backbone(x)
        final, maps = self.backbone.forward_intermediates(  # type: ignore[operator]
            x, indices=list(self.stages)
        )
        pooled = [m.mean(dim=(2, 3)) for m in maps]
        return torch.cat([self.backbone.forward_head(final), *pooled], dim=1)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self._features(x)
        if self.flip:
            features = (features + self._features(torch.flip(x, dims=[3]))) / 2
        return features

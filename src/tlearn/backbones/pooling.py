"""What a frozen backbone hands to a head: the pooled last layer, optionally with the
mean-pooled maps of earlier stages (the backbone's feature pyramid, as timm lists it in
``feature_info``), optionally averaged with the features of the mirrored image.

All of it is one ``nn.Module`` (:class:`FeatureNet`), so every engine (PyTorch, ONNX
Runtime, OpenVINO) and every export computes exactly the same thing. Several backbones
side by side (``"efficientnet_lite0+efficientnet_lite2"``) are one module too
(:class:`EnsembleNet`): each sees the same pixels and their features are concatenated, one
block per backbone.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EnsembleNet", "FeatureNet", "pyramid_stages", "supports_stages"]


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
        self.backbone: nn.Module = backbone
        self.stages: tuple[int, ...] = tuple(stages)
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


class EnsembleNet(nn.Module):
    """Several backbones on the same images: ``(n, 3, s, s)`` images normalised with the
    first backbone's mean and std -> their features side by side, ``widths`` columns each.

    Each member gets the input in its own normalisation (``x * scale + shift``, stored
    buffers), and pools the stages of its own feature pyramid when ``use_stages(True)``
    (what ``pooling="auto"`` asks of a single backbone). Blocks keep the members' order.
    """

    def __init__(
        self,
        members: list[nn.Module],
        n_features: list[int],
        scale: list[tuple[float, ...]],
        shift: list[tuple[float, ...]],
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(FeatureNet(m) for m in members)
        self.n_features = [int(n) for n in n_features]
        for i, (a, b) in enumerate(zip(scale, shift, strict=True)):
            self.register_buffer(f"scale{i}", torch.tensor(a, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer(f"shift{i}", torch.tensor(b, dtype=torch.float32).view(1, 3, 1, 1))

    def _nets(self) -> list[FeatureNet]:
        return [net for net in self.members if isinstance(net, FeatureNet)]

    def use_stages(self, on: bool, *, required: bool = False) -> None:
        """Pool each member's pyramid stages too (those that have them; with ``required``
        every member must)."""
        for i, net in enumerate(self._nets()):
            has = supports_stages(net.backbone)
            if on and required and not has:
                raise ValueError(f"member {i} ({type(net.backbone).__name__}) has no stages")
            net.stages = pyramid_stages(net.backbone)[0] if on and has else ()

    @property
    def stages(self) -> list[list[int]]:
        return [list(net.stages) for net in self._nets()]

    @property
    def widths(self) -> list[int]:
        """Columns of each member's block."""
        out = []
        for n, net in zip(self.n_features, self._nets(), strict=True):
            out.append(n + (pyramid_stages(net.backbone)[1] if net.stages else 0))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = []
        for i, net in enumerate(self.members):
            scale, shift = getattr(self, f"scale{i}"), getattr(self, f"shift{i}")
            blocks.append(net(x * scale + shift))
        return torch.cat(blocks, dim=1)

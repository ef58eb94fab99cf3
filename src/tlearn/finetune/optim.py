"""Optimiser parameter groups, partial unfreezing and the learning-rate schedule.

Weight decay applies to weight matrices and convolution kernels only: decaying norm scales
and biases (1-d tensors) pulls them towards zero for no regularisation benefit. The backbone
gets ``lr * backbone_lr_ratio`` so a pretrained network moves less than the new head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["lr_factor", "make_optimizer", "set_trainable", "stage_modules"]

_STAGE_CONTAINERS = ("blocks", "stages", "layers", "features", "encoder")


def stage_modules(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's stages, input to output: the children of its ``blocks``/``stages``/
    ``layers`` container (timm, torchvision), or ``layer1..layerN`` (ResNets)."""
    children = dict(backbone.named_children())
    for name in _STAGE_CONTAINERS:
        box = children.get(name)
        if isinstance(box, (nn.Sequential, nn.ModuleList)) and len(box) >= 2:
            return list(box)
    layers = [m for n, m in children.items() if n.startswith("layer") and n[5:].isdigit()]
    return layers or [m for m in children.values() if any(True for _ in m.parameters())]


def set_trainable(backbone: nn.Module, head: nn.Module, strategy: str, n_stages: int = 0) -> None:
    """Freeze or unfreeze for ``strategy``: ``head`` (backbone frozen), ``full``, or
    ``partial`` (the last ``n_stages`` stages and everything after them)."""
    for p in head.parameters():
        p.requires_grad_(True)
    if strategy == "full":
        for p in backbone.parameters():
            p.requires_grad_(True)
        return
    for p in backbone.parameters():
        p.requires_grad_(False)
    if strategy == "partial":
        stages = stage_modules(backbone)
        if not stages:
            return
        first = stages[max(0, len(stages) - n_stages)]
        first_param = next(first.parameters(), None)
        # everything from the first unfrozen stage onwards (the head convolutions too)
        unfrozen = False
        for p in backbone.parameters():
            if first_param is not None and p is first_param:
                unfrozen = True
            if unfrozen:
                p.requires_grad_(True)


def make_optimizer(net: Any, cfg: Any) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over four groups: backbone/head x decay/no-decay.

    Every parameter is in a group (frozen ones simply get no gradient), so the optimiser's
    state has the same layout whatever is frozen: a checkpoint can be resumed across the
    head-only and full phases of ``lp-ft``.
    """
    lr, weight_decay = cfg.lr, cfg.weight_decay
    groups = []
    for part, scale in ((net.backbone, cfg.backbone_lr_ratio), (net.head, 1.0)):
        params = list(part.parameters())
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
            groups.append(
                {"params": ps, "weight_decay": wd, "lr": lr * scale, "base_lr": lr * scale}
            )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

"""Training-time augmentation on uint8 batches, in the training thread.

Running it in one thread with the global torch RNG seeded per epoch makes an interrupted
run that resumes draw exactly the same crops and flips as one that never stopped.
"""

from __future__ import annotations

import torch

__all__ = ["AUGMENTATIONS", "augment_batch"]

AUGMENTATIONS = ("none", "flip", "flip_crop", "trivialaugment", "randaugment")


def _crop_flip(x: torch.Tensor, size: int, crop: bool, flip: bool) -> torch.Tensor:
    n, _, h, w = x.shape
    out = torch.empty((n, x.shape[1], size, size), dtype=x.dtype)
    tops = torch.randint(0, h - size + 1, (n,)) if crop else torch.full((n,), (h - size) // 2)
    lefts = torch.randint(0, w - size + 1, (n,)) if crop else torch.full((n,), (w - size) // 2)
    flips = torch.rand(n) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        t, left = int(tops[i]), int(lefts[i])
        patch = x[i, :, t : t + size, left : left + size]
        out[i] = patch.flip(-1) if flips[i] else patch
    return out


def augment_batch(images: torch.Tensor, policy: str, size: int) -> torch.Tensor:
    """``images`` (n, 3, h, w) uint8, h and w >= size -> (n, 3, size, size) uint8.

    ``none`` centre-crops; ``flip`` adds horizontal flips; ``flip_crop`` random crops too;
    ``trivialaugment`` / ``randaugment`` apply torchvision's policies on top of flip_crop.
    """
    if policy not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {policy!r}")
    if policy == "none":
        return _crop_flip(images, size, crop=False, flip=False)
    x = _crop_flip(images, size, crop=policy != "flip", flip=True)
    if policy in ("trivialaugment", "randaugment"):
        from torchvision.transforms import v2

        op = v2.TrivialAugmentWide() if policy == "trivialaugment" else v2.RandAugment()
        x = torch.stack([op(img) for img in x])
    return x

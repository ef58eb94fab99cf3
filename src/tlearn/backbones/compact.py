"""Compact networks for small images, trained from scratch (``--method scratch``): the
``tlearn:`` backbones. Their weights are always a model file's own (there are no
pretrained ones), so a name builds the network at random and a file fills it.

The network is our implementation of the one the published fast CIFAR-10 runs train
(Keller Jordan's airbench, 2024: 94.0% in 9.9 epochs at widths 64/256/256): a frozen 2x2
patch-whitening convolution fitted to the training images, three groups of two 3x3
convolutions with max-pooling, BatchNorm and GELU, and a global max-pool. In evaluation
mode its features are averaged over each image and its mirror image, and over one-pixel
shifts (``tta``): the linear head above sees the average, which is the average of the
head's scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tlearn.data.images import Preprocessing

__all__ = ["COMPACT", "CompactNet", "compact_preprocessing", "is_compact"]

#: name -> widths of the three groups. ``compact_m`` has the published widths.
COMPACT: dict[str, tuple[int, int, int]] = {
    "compact_s": (64, 128, 128),
    "compact_m": (64, 256, 256),
    "compact_l": (128, 384, 384),
}
#: The side the networks take: CIFAR's. Larger images are resized to it.
INPUT_SIZE = 32


def is_compact(name: str) -> bool:
    """Whether ``name`` (``"compact_m"`` or ``"tlearn:compact_m"``) is a compact network."""
    return name.removeprefix("tlearn:") in COMPACT


def compact_preprocessing(size: int = INPUT_SIZE) -> Preprocessing:
    """The shorter side resized to ``size`` and the centre square kept (a square image
    whole, a small one enlarged rather than cropped), normalised by ImageNet's statistics
    (the whitening layer, fitted to the user's images, does the rest)."""
    return Preprocessing(
        size,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        interpolation="bilinear",
        crop_pct=1.0,
        crop_small=False,
    )


class Whiten(nn.Conv2d):
    """2x2 patches projected on the eigenvectors of their covariance, scaled to unit
    variance, each direction twice (+ and -): 24 channels. The weights are fitted to
    images (:meth:`fit`), never trained; the bias trains."""

    def __init__(self) -> None:
        super().__init__(3, 24, 2, padding=0, bias=True)
        self.weight.requires_grad_(False)

    def fit(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the weights from normalised images ``x`` (n, 3, h, w)."""
        patches = x.float().unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12)
        cov = (patches.T @ patches) / len(patches)
        values, vectors = torch.linalg.eigh(cov.double())
        w = (vectors.T / torch.sqrt(values.clamp_min(0) + eps)[:, None]).float()
        with torch.no_grad():
            self.weight.copy_(torch.cat([w, -w]).reshape(24, 3, 2, 2))


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
    norm.weight.requires_grad_(False)  # the scale stays 1; the bias learns
    return norm


def _group(c_in: int, c_out: int) -> nn.Sequential:
    """conv, max-pool, norm, GELU, conv, norm, GELU; each conv starts out passing its
    input on (partly the identity)."""
    convs = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
             nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)]  # fmt: skip
    for conv in convs:
        nn.init.dirac_(conv.weight.data[: conv.in_channels])
    return nn.Sequential(convs[0], nn.MaxPool2d(2), _batch_norm(c_out), nn.GELU(),
                         convs[1], _batch_norm(c_out), nn.GELU())  # fmt: skip


class CompactNet(nn.Module):
    """Input ``(n, 3, 32, 32)`` normalised images, output ``(n, widths[2])`` features.

    Parameters
    ----------
    widths : three ints
        Channels of the three groups.
    tta : {0, 1, 2}
        Evaluation-mode averaging: none, mirror images, mirror images and one-pixel
        shifts (up-left and down-right, half the weight).
    """

    def __init__(self, widths: tuple[int, int, int] = COMPACT["compact_m"], tta: int = 2):
        super().__init__()
        self.widths, self.tta = tuple(widths), tta
        self.num_features = widths[2]
        self.whiten = Whiten()
        self.body = nn.Sequential(
            nn.GELU(),
            _group(24, widths[0]),
            _group(widths[0], widths[1]),
            _group(widths[1], widths[2]),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.whiten(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.tta == 0:
            return self.features(x)
        # stacked along the batch and averaged by unflatten(0, (k, -1)): no batch size is
        # written into an exported graph (ONNX, OpenVINO take any)
        out = self.features(torch.cat([x, x.flip(3)])).unflatten(0, (2, -1)).mean(0)
        if self.tta < 2:
            return out
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        up, down = padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]
        moved = self.features(torch.cat([up, up.flip(3), down, down.flip(3)]))
        return 0.5 * out + 0.5 * moved.unflatten(0, (4, -1)).mean(0)

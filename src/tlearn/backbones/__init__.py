"""Stage 2: backbones by name, with their preprocessing and their weights' provenance
(imported on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlearn._lazy import lazy_exports

if TYPE_CHECKING:
    from tlearn.backbones.policy import DEFAULT_BACKBONE
    from tlearn.backbones.registry import (
        Backbone,
        build_backbone,
        list_backbones,
        load_backbone,
        resolve_name,
    )
    from tlearn.backbones.weights import is_online, state_dict_sha256

_WHERE = {
    "DEFAULT_BACKBONE": "tlearn.backbones.policy",
    "Backbone": "tlearn.backbones.registry",
    "build_backbone": "tlearn.backbones.registry",
    "list_backbones": "tlearn.backbones.registry",
    "load_backbone": "tlearn.backbones.registry",
    "resolve_name": "tlearn.backbones.registry",
    "is_online": "tlearn.backbones.weights",
    "state_dict_sha256": "tlearn.backbones.weights",
}
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "build_backbone",
    "is_online",
    "list_backbones",
    "load_backbone",
    "resolve_name",
    "state_dict_sha256",
]

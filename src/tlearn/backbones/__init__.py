"""Stage 2: backbones by name, with their preprocessing and their weights' provenance."""

from tlearn.backbones.registry import (
    DEFAULT_BACKBONE,
    Backbone,
    build_backbone,
    list_backbones,
    load_backbone,
    resolve_name,
)
from tlearn.backbones.weights import is_online, state_dict_sha256

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

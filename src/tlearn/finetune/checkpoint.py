"""Training checkpoints: safetensors + JSON, written atomically after every epoch.

Holds the network, the best epoch's weights, the optimiser's state and the loop's counters,
so a run killed at any moment (even ``kill -9``) resumes from its last complete epoch and
ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from tlearn._io import read_safetensors, write_safetensors_atomic
from tlearn.exceptions import TlearnError

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.safetensors"


class CheckpointError(TlearnError):
    """A checkpoint that cannot be resumed from."""


def save_checkpoint(
    path: str | os.PathLike[str],
    net_state: dict[str, torch.Tensor],
    best_state: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> None:
    tensors = {f"net.{k}": v for k, v in net_state.items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{idx}.{key}"] = tensor
    meta = {
        **meta,
        "optimizer_groups": [
            {k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]
        ],
    }
    write_safetensors_atomic(path, tensors, meta, key="tlearn_checkpoint")


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(parts, meta)``: parts holds ``net``, ``best`` (or None) and ``optim`` dicts."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"no checkpoint to resume from at {path!r}; run without --resume to start afresh"
        )
    try:
        tensors, meta = read_safetensors(path, key="tlearn_checkpoint")
    except Exception as e:
        raise CheckpointError(
            f"the checkpoint {path!r} is damaged ({e}); delete it and start afresh"
        ) from None
    if meta is None:
        raise CheckpointError(f"{path!r} is not a tlearn training checkpoint")
    parts: dict[str, Any] = {"net": {}, "best": {}, "optim": {}}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "optim":
            idx, _, name = rest.partition(".")
            parts["optim"].setdefault(int(idx), {})[name] = value
        else:
            parts[kind][rest] = value
    parts["best"] = parts["best"] or None
    return parts, meta


def restore_optimizer(
    optimizer: torch.optim.Optimizer, state: dict[int, dict[str, Any]], groups: list[dict[str, Any]]
) -> None:
    current = optimizer.state_dict()
    if len(groups) != len(current["param_groups"]):
        raise CheckpointError(
            "the checkpoint's optimiser has another layout; it was written "
            "by a different optimiser or model"
        )
    merged = [
        {**saved, "params": g["params"]}
        for saved, g in zip(groups, current["param_groups"], strict=True)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": merged})

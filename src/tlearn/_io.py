"""Atomic safetensors writing shared by model files and training checkpoints: the data goes
to a temporary file in the same folder, then ``os.replace`` swaps it in, so a reader (or a
run killed mid-write) never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch

__all__ = ["read_safetensors", "write_atomic", "write_safetensors_atomic"]


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".tlearn-", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_safetensors_atomic(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    key: str = "tlearn",
) -> str:
    from safetensors.torch import save_file

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tlearn-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(contiguous, tmp, metadata={key: json.dumps(meta)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_safetensors(
    path: str | os.PathLike[str], key: str = "tlearn"
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors and the JSON metadata stored under ``key`` (``None`` when absent)."""
    from safetensors import safe_open

    tensors = {}
    with safe_open(os.fspath(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(key)
        for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            tensors[name] = f.get_tensor(name)
    return tensors, (json.loads(raw) if raw is not None else None)

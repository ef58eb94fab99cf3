"""Atomic file writing, for every file tlearn writes in place of an older one (model files,
checkpoints, plots, exports): the data goes to a temporary file in the same folder, then
``os.replace`` swaps it in, so a reader (or a run killed mid-write) never sees a
half-written file.

The temporary file is created the way any program creates a file (mode ``0o666`` less the
umask, and the folder's default ACL), not with :func:`tempfile.mkstemp`'s private
``0o600``, which the rename would carry over: a model file written with umask 022 is
``0o644``, like one written by ``cp``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # python_value is used where torch must not load (the CLI's checks)
    import torch

__all__ = [
    "atomic_path",
    "python_value",
    "read_safetensors",
    "torch_cache_in_tlearns",
    "write_atomic",
    "write_safetensors_atomic",
]


def python_value(v: Any) -> Any:
    """A numpy scalar as the plain Python value (for JSON and CSV output)."""
    return v.item() if hasattr(v, "item") else v


def _new_file(folder: str, suffix: str) -> str:
    """Create an empty file with a fresh name in ``folder``; returns its path."""
    for _ in range(100):
        path = os.path.join(folder, f".tlearn-{secrets.token_hex(8)}{suffix}")
        try:
            # 0o666: the umask (and a default ACL) then apply as for any new file
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"cannot create a temporary file in {folder!r}")


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, suffix: str = ".tmp", companions: tuple[str, ...] = ()
) -> Iterator[str]:
    """A temporary path to write ``path``'s content to; when the block ends without an
    exception the file is flushed to disk and replaces ``path``, otherwise it is removed.

    ``suffix`` ends the temporary name (for writers that choose a format by it).
    ``companions`` are suffixes of files the writer puts beside it (OpenVINO writes the
    ``.bin`` of an ``.xml``): they replace their counterparts first, so the main file,
    moved last, marks a complete set.

    Examples
    --------
    >>> with atomic_path("model.onnx", suffix=".onnx") as tmp:  # doctest: +SKIP
    ...     torch.onnx.export(net, (x,), tmp)
    """
    path = os.fspath(path)
    tmp = _new_file(os.path.dirname(os.path.abspath(path)), suffix)
    stem, target = os.path.splitext(tmp)[0], os.path.splitext(path)[0]
    moves = [(stem + s, target + s) for s in companions] + [(tmp, path)]
    try:
        yield tmp
        for source, _ in moves:
            with open(source, "rb") as f:
                os.fsync(f.fileno())
        for source, destination in moves:
            os.replace(source, destination)
    finally:
        for source, _ in moves:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(source)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_safetensors_atomic(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    key: str = "tlearn",
) -> str:
    """Write ``tensors`` with ``meta`` as JSON under ``key``, atomically; returns the path."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, tmp, metadata={key: json.dumps(meta)})
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


def torch_cache_in_tlearns() -> None:
    """Keep torch's compiler cache in tlearn's (``$TLEARN_HOME/torch`` or
    ``~/.cache/tlearn/torch``): torch makes it, by default ``/tmp/torchinductor_$USER``, as
    soon as torchvision is imported (every backbone build), so a command or a server
    building its engine on a first run left a folder in the temporary directory. Called by
    tlearn's entry points (the command line, the server); a ``TORCHINDUCTOR_CACHE_DIR`` the
    user set is kept."""
    home = os.environ.get("TLEARN_HOME") or os.path.expanduser("~/.cache/tlearn")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(home, "torch"))

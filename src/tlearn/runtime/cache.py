"""The on-disk feature cache: one SQLite file per (backbone, weights, preprocessing), rows
keyed by a hash of each image's content, so renamed or moved files still hit."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.data.images import read_bytes
from tlearn.exceptions import ImageReadError

__all__ = ["FeatureCache", "content_key"]


def content_key(X: Sequence[str] | np.ndarray, i: int) -> str | None:
    """A hash of image ``i``'s bytes (file content or array pixels); ``None`` if unreadable."""
    h = hashlib.blake2b(digest_size=20)
    if isinstance(X, np.ndarray):
        img = np.ascontiguousarray(X[i])
        h.update(str(img.shape).encode())
        h.update(img.tobytes())
    else:
        try:
            h.update(read_bytes(X[i]))
        except ImageReadError:
            return None
    return h.hexdigest()


class FeatureCache:
    """Features of one model configuration, stored in ``cache_dir/features-<key>.sqlite``.

    Parameters
    ----------
    cache_dir : path
        Created if missing.
    model_key : dict
        Everything the features depend on: architecture, weights hash, preprocessing.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], model_key: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(model_key, sort_keys=True).encode()).hexdigest()[:20]
        self.path = Path(cache_dir) / f"features-{digest}.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, vec BLOB)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('model_key', ?)",
            (json.dumps(model_key, sort_keys=True),),
        )
        self._db.commit()

    def get_many(self, keys: Iterable[str | None], n_features: int) -> dict[str, np.ndarray]:
        wanted = sorted({k for k in keys if k is not None})
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(
                f"SELECT key, vec FROM features WHERE key IN ({marks})",
                chunk,  # noqa: S608
            ):
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.size == n_features:  # a damaged row is simply recomputed
                    found[key] = vec
        return found

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO features VALUES (?, ?)",
            ((k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items),
        )
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM features").fetchone()[0])

    def close(self) -> None:
        self._db.close()

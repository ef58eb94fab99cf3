"""ONNX Runtime: the backbone exported to ONNX (cached on disk), run on CPU.

:func:`export_onnx` is the one conversion, shared with ``tlearn export``. An engine built
from a backbone pickles as "rebuild from the backbone" (the cache makes that cheap); one
built from an exported file carries the file's bytes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlearn._io import atomic_path
from tlearn.data.images import Preprocessing
from tlearn.exceptions import EngineError
from tlearn.runtime._compiled import (
    CONVERSION_LOCK,
    cache_path,
    cached,
    engine_threads,
    require_runtime,
)
from tlearn.runtime.normalise import normalise_numpy
from tlearn.runtime.torch_engine import cpu_micro_batch

__all__ = ["OnnxRuntimeEngine", "export_onnx", "onnx_description"]


def export_onnx(
    model: torch.nn.Module,
    pre: Preprocessing,
    path: str | os.PathLike[str],
    output: str = "features",
    metadata: dict[str, str] | None = None,
) -> None:
    """Export ``model`` (normalised ``(n, 3, s, s)`` float input named ``images``) to ONNX
    at ``path``, atomically, with a dynamic batch axis; its output is named ``output``, and
    ``metadata`` goes into the file's ``metadata_props``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 3, pre.input_size, pre.input_size)
    try:
        with CONVERSION_LOCK, atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notices
            torch.onnx.export(
                model.eval(),
                (x,),
                tmp,
                input_names=["images"],
                output_names=[output],
                opset_version=17,
                dynamic_axes={"images": {0: "n"}, output: {0: "n"}},
                dynamo=False,
            )
            if metadata:
                _add_metadata(tmp, metadata)
    except Exception as e:
        raise EngineError(f"cannot export this backbone to ONNX ({str(e)[:200]})") from None


def _add_metadata(path: str | os.PathLike[str], metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(os.fspath(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, os.fspath(path))


def onnx_description(data: bytes) -> tuple[dict[str, str], list[Any], list[Any]]:
    """An ONNX file's ``metadata_props`` and the shapes of its first input and output
    (``None`` for a dynamic dimension), read by ONNX Runtime; :class:`EngineError` when it
    cannot read the file."""
    try:
        session = _session(data)
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        shapes = [list(session.get_inputs()[0].shape), list(session.get_outputs()[0].shape)]
    except EngineError:
        raise
    except Exception as e:
        raise EngineError(f"ONNX Runtime cannot load this model ({str(e)[:200]})") from None
    inputs, outputs = ([d if isinstance(d, int) else None for d in shape] for shape in shapes)
    return metadata, inputs, outputs


def _session(source: str | bytes) -> Any:
    ort = require_runtime("onnxruntime", "onnx", "onnxruntime", "ONNX Runtime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = engine_threads() or os.cpu_count() or 1
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeEngine:
    """Features (or, for an export, probabilities) from ONNX Runtime on CPU.

    Re-entrant: ``InferenceSession.run`` may be called from many threads at once.
    """

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, model: torch.nn.Module, pre: Preprocessing, key: dict[str, Any]) -> None:
        self.pre, self._model, self._key = pre, model, key
        self.onnx_bytes: bytes | None = None
        path = cache_path(key, ".onnx")
        self.path: Path | None = path
        self._session = cached(
            [path],
            build=lambda: export_onnx(model, pre, path),
            load=lambda: _session(str(path)),
            what=f"ONNX model of {key['architecture']}",
        )

    @classmethod
    def from_bytes(cls, data: bytes, pre: Preprocessing) -> OnnxRuntimeEngine:
        """Run an existing ONNX file's bytes (an export) as they are."""
        engine = cls.__new__(cls)
        engine.pre, engine.onnx_bytes, engine.path = pre, bytes(data), None
        try:
            engine._session = _session(engine.onnx_bytes)
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"ONNX Runtime cannot load this model ({str(e)[:200]})") from None
        return engine

    def carried(self) -> dict[str, bytes]:
        """An export's bytes; empty for an engine converted from a network."""
        return {} if self.onnx_bytes is None else {"onnx": self.onnx_bytes}

    def __reduce__(self) -> tuple[Any, ...]:
        if self.onnx_bytes is not None:
            return (OnnxRuntimeEngine.from_bytes, (self.onnx_bytes, self.pre))
        return (OnnxRuntimeEngine, (self._model, self.pre, self._key))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        step = cpu_micro_batch(torch.device("cpu"), images.shape[1], 8) if len(images) else 1
        outs = [
            self._session.run(None, {"images": normalise_numpy(images[i : i + step], self.pre)})[0]
            for i in range(0, len(images), step)
        ]
        if not outs:
            return np.empty((0, 0), np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)

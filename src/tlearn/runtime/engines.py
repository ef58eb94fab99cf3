"""Inference engines behind one parameter: ``torch`` (fp32, channels-last), ``torch-bf16``
(autocast, where the CPU or GPU has native bf16), ``onnxruntime`` and ``openvino`` (optional
extras), and ``auto``, which takes the first available engine in a fixed order of measured
speed whose features agree with fp32 PyTorch (cosine similarity >= 0.999 on a calibration
batch).

The order is fixed rather than timed on the spot so that ``auto`` picks the same engine
every run on a machine: predictions stay reproducible.

Exported ONNX / OpenVINO models are cached on disk, keyed by architecture, weights hash and
input size; a stale or corrupt file is detected and rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from tlearn.data.images import Preprocessing
from tlearn.exceptions import TlearnError
from tlearn.runtime.torch_engine import TorchEngine, cpu_micro_batch

__all__ = ["ENGINES", "Engine", "EngineError", "available_engines", "make_engine"]

ENGINES = ("auto", "torch", "torch-bf16", "onnxruntime", "openvino")
#: ``auto``'s preference on CPU, fastest first. Model-only images/s measured for
#: EfficientNet-Lite0 at 224 px on 2 Zen 4 cores (AVX512-BF16): OpenVINO fp32 (converted
#: from PyTorch, latency hint) 242, ONNX Runtime 141, torch bf16 84, torch fp32 79.
AUTO_ORDER = ("openvino", "onnxruntime", "torch-bf16", "torch")
MIN_COSINE = 0.999
T = TypeVar("T")
E = TypeVar("E", bound="_CompiledEngine")


class EngineError(TlearnError):
    """An engine that is not installed or cannot run this backbone."""


class Engine(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def _bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and bool(torch.cpu._is_avx512_bf16_supported())


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def available_engines(device: torch.device) -> list[str]:
    """The engines that can run here, in ``auto``'s order of preference."""
    out = []
    for name in AUTO_ORDER:
        if name == "onnxruntime" and (device.type != "cpu" or not _has_onnxruntime()):
            continue
        if name == "openvino" and (device.type != "cpu" or not _has_openvino()):
            continue
        if name == "torch-bf16" and not _bf16_native(device):
            continue
        out.append(name)
    return out


def _cache_dir() -> Path:
    home = os.environ.get("TLEARN_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "tlearn") / "engines"


def _cache_path(key: dict[str, Any], suffix: str) -> Path:
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
    return _cache_dir() / f"{key['architecture'].replace(':', '-')}-{digest}{suffix}"


def _cached(paths: list[Path], build: Callable[[], None], load: Callable[[], T], what: str) -> T:
    """Load a compiled model from its cache files, building them first when missing; a
    stale or corrupt cache is detected (loading fails), deleted and rebuilt once."""
    for attempt in (1, 2):
        if not all(p.is_file() for p in paths):
            build()
        try:
            return load()
        except Exception as e:
            for p in paths:
                p.unlink(missing_ok=True)
            if attempt == 2:
                raise EngineError(f"cannot run the {what} ({str(e)[:200]})") from None
            warnings.warn(
                f"the cached {what} ({paths[0]}) was unreadable and is rebuilt",
                UserWarning,
                stacklevel=3,
            )
    raise AssertionError("unreachable")


class _NumpyNormalise:
    """uint8 NHWC batches -> normalised float32 NCHW arrays, for the exported engines."""

    def __init__(self, pre: Preprocessing) -> None:
        self._mean = (np.array(pre.mean, np.float32) * 255).reshape(1, 3, 1, 1)
        self._std = (np.array(pre.std, np.float32) * 255).reshape(1, 3, 1, 1)

    def normalise(self, images: np.ndarray) -> np.ndarray:
        x = images.transpose(0, 3, 1, 2).astype(np.float32)
        return np.ascontiguousarray((x - self._mean) / self._std)


class _CompiledEngine(_NumpyNormalise):
    """An engine that runs a compiled file: ``_open(path)`` gives the runtime's handle."""

    path: Path
    _handle: Any

    @staticmethod
    def _open(path: Path) -> Any:
        raise TypeError("subclasses say how their runtime opens a file")

    @classmethod
    def from_file(cls: type[E], path: Path, pre: Preprocessing) -> E:
        """Run an existing compiled file (an export) as it is, without converting."""
        engine = cls.__new__(cls)
        _NumpyNormalise.__init__(engine, pre)
        engine.path, engine._handle = path, cls._open(path)
        return engine


class OpenVinoEngine(_CompiledEngine):
    """The backbone converted by OpenVINO from PyTorch (cached on disk as IR), fp32, tuned
    for latency: one request at a time uses every core, which suits batched featurising."""

    name = "openvino"

    def __init__(self, model: torch.nn.Module, pre: Preprocessing, key: dict[str, Any]) -> None:
        super().__init__(pre)
        path = _cache_path(key, ".xml")
        self.path = path
        self._handle = _cached(
            [path, path.with_suffix(".bin")],
            build=lambda: self._convert(model, pre, path),
            load=lambda: self._open(path),
            what=f"OpenVINO model of {key['architecture']}",
        )

    @staticmethod
    def _open(path: Path) -> Any:
        try:
            import openvino as ov
        except ImportError:
            raise EngineError(
                "engine='openvino' needs OpenVINO: pip install 'tlearn[openvino]'"
            ) from None
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        return core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()

    @staticmethod
    def _convert(model: torch.nn.Module, pre: Preprocessing, path: Path) -> None:
        import openvino as ov

        path.parent.mkdir(parents=True, exist_ok=True)
        size = pre.input_size
        tmp = path.with_name(f".{os.getpid()}-{path.name}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notices
                converted = ov.convert_model(
                    model.eval(),
                    example_input=torch.zeros(1, 3, size, size),
                    input=[(-1, 3, size, size)],
                )
            ov.save_model(converted, str(tmp))
            os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(tmp, path)  # the .xml last: it marks a complete export
        except Exception as e:
            raise EngineError(f"OpenVINO cannot convert this backbone ({str(e)[:200]})") from None
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_suffix(".bin").unlink(missing_ok=True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if not len(images):
            return np.empty((0, 0), np.float32)
        out = self._handle.infer({0: self.normalise(images)})[0]
        return np.array(out, dtype=np.float32)


class OnnxRuntimeEngine(_CompiledEngine):
    """The backbone exported to ONNX (cached on disk) and run by ONNX Runtime on CPU."""

    name = "onnxruntime"

    def __init__(self, model: torch.nn.Module, pre: Preprocessing, key: dict[str, Any]) -> None:
        super().__init__(pre)
        path = _cache_path(key, ".onnx")
        self.path = path
        self._handle = _cached(
            [path],
            build=lambda: self._export(model, pre, path),
            load=lambda: self._open(path),
            what=f"ONNX model of {key['architecture']}",
        )

    @staticmethod
    def _open(path: Path) -> Any:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineError(
                "engine='onnxruntime' needs ONNX Runtime: pip install 'tlearn[onnx]'"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _export(model: torch.nn.Module, pre: Preprocessing, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        x = torch.zeros(1, 3, pre.input_size, pre.input_size)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's deprecation notices
                torch.onnx.export(
                    model.eval(),
                    (x,),
                    str(tmp),
                    input_names=["images"],
                    output_names=["features"],
                    opset_version=17,
                    dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
                    dynamo=False,
                )
            os.replace(tmp, path)
        except Exception as e:
            raise EngineError(f"cannot export this backbone to ONNX ({str(e)[:200]})") from None
        finally:
            tmp.unlink(missing_ok=True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        step = cpu_micro_batch(torch.device("cpu"), images.shape[1], 8) if len(images) else 1
        outs = []
        for i in range(0, len(images), step):
            batch = self.normalise(images[i : i + step])
            outs.append(self._handle.run(None, {"images": batch})[0])
        return (
            np.concatenate(outs).astype(np.float32, copy=False)
            if outs
            else np.empty((0, 0), np.float32)
        )


def _build(
    name: str, model: torch.nn.Module, pre: Preprocessing, device: torch.device, key: dict[str, Any]
) -> Engine:
    if name == "torch":
        return TorchEngine(model, pre, device)
    if name == "torch-bf16":
        return TorchEngine(model, pre, device, autocast=torch.bfloat16)
    if name == "openvino":
        if device.type != "cpu":
            raise EngineError("engine='openvino' runs on CPU here; use device='cpu'")
        return OpenVinoEngine(model, pre, key)
    if name == "onnxruntime":
        if device.type != "cpu":
            raise EngineError("engine='onnxruntime' runs on CPU here; use device='cpu'")
        return OnnxRuntimeEngine(model, pre, key)
    raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float((num / den).min())


def make_engine(
    name: str,
    model: torch.nn.Module,
    pre: Preprocessing,
    device: torch.device,
    key: dict[str, Any],
    calibration: np.ndarray | None = None,
) -> tuple[Engine, str]:
    """Build engine ``name``; for ``auto`` the first of :func:`available_engines` whose
    features on ``calibration`` (uint8 NHWC) agree with fp32 PyTorch. Returns the engine and
    a sentence saying what was chosen and why."""
    if name != "auto":
        return _build(name, model, pre, device, key), f"engine {name}"
    reference = TorchEngine(model, pre, device)
    if calibration is None or not len(calibration):
        return reference, "engine torch (no calibration images)"
    expected = reference(calibration)
    notes: list[str] = []
    for candidate in available_engines(device):
        if candidate == "torch":
            return reference, "engine torch" + (f" ({'; '.join(notes)})" if notes else "")
        try:
            engine = _build(candidate, model, pre, device, key)
            cos = _cosine(engine(calibration), expected)
        except (EngineError, RuntimeError) as e:
            notes.append(f"{candidate} unusable: {str(e)[:120]}")
            continue
        if cos >= MIN_COSINE:
            return engine, f"engine {candidate} (features agree with fp32 torch: cosine {cos:.5f})"
        notes.append(f"{candidate} disagrees with fp32 (cosine {cos:.5f} < {MIN_COSINE})")
    return reference, "engine torch (" + "; ".join(notes) + ")"

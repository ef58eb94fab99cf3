"""The engine table: every inference engine described once (name, runtime, precision,
devices, extra, calibration), and everything derived from it: parameter validation,
``auto``'s order, the command line's help, the table in docs/engines.md (a test compares them),
and the builder.

Engines in ``auto``'s order, fastest first on CPU (model-only images/s measured for
EfficientNet-Lite0 at 224 px, batch 32, 2 Zen 4 cores with AVX512-BF16 and no AMX):
OpenVINO int8 550-600, OpenVINO fp32 233, ONNX Runtime 141, OpenVINO bf16 160, torch bf16
84, torch fp32 79. On CUDA only the torch engines run: bf16 where the GPU has it, else fp16,
else fp32.

``auto`` (the default) takes the first available fp32 engine whose features agree with
fp32 PyTorch on every calibration image to :data:`MIN_COSINE` (0.999; anything less is a
conversion bug): nothing is calibrated, and results are the same from run to run.
Reduced-precision engines are one word away (``engine="openvino-int8"``, ``"torch-bf16"``):
they cannot reach 0.999 and need not, and :func:`agreement` holds them to a mean cosine of
:data:`MIN_MEAN_COSINE_REDUCED` (0.95). Measured with EfficientNet-Lite0 (OpenVINO 2026.4,
NNCF 3.4, pooled stages, flip averaging): OpenVINO int8 (stem kept in fp32) had mean cosine
0.960-0.977 on CIFAR-10 photos at 64 and 128 px and moved the linear probe by +0.06 points
(100 images a class, 10,000 test images); quantising the stem too gave 0.941, which the
threshold refuses (``benchmarks/speed_cifar10.py --engine openvino-int8``).
The order is fixed rather than timed on the spot, so ``auto`` picks the same engine every
run on a machine and predictions stay reproducible.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from tlearn.data.images import Preprocessing
from tlearn.exceptions import EngineError, InvalidParameterError
from tlearn.runtime._compiled import engine_cache_dir, engine_threads
from tlearn.runtime.onnx_engine import OnnxRuntimeEngine
from tlearn.runtime.openvino_engine import (
    CALIBRATION_IMAGES,
    MIN_CALIBRATION_IMAGES,
    OpenVinoEngine,
    check_calibration,
)
from tlearn.runtime.table import AUTO, ENGINE_TABLE, ENGINES, EngineSpec, engine_help
from tlearn.runtime.torch_engine import TorchEngine, resolve_device

__all__ = [
    "AUTO",
    "CALIBRATION_IMAGES",
    "ENGINES",
    "ENGINE_TABLE",
    "MIN_CALIBRATION_IMAGES",
    "Engine",
    "EngineError",
    "EngineSpec",
    "agreement",
    "available_engines",
    "build_engine",
    "check_calibration",
    "engine_cache_dir",
    "engine_from_carried",
    "engine_help",
    "forget_engines",
    "make_engine",
]

MIN_COSINE = 0.999
MIN_MEAN_COSINE_REDUCED = 0.95
_RUNTIME_MODULES = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}


class Engine(Protocol):
    """uint8 NHWC pixels ``(n, s, s, 3)`` -> float32 ``(n, n_outputs)``; re-entrant."""

    name: str
    precision: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def carried(self) -> dict[str, bytes]:
        """The bytes this engine cannot be rebuilt without, by name (an int8 engine
        calibrated on images that are gone: its graph), which a model file keeps and
        :func:`engine_from_carried` runs again; empty when the network rebuilds it."""
        ...


def engine_from_carried(name: str, carried: dict[str, bytes], pre: Preprocessing) -> Engine:
    """Run again the engine ``name`` from the bytes its :meth:`Engine.carried` gave;
    :class:`EngineError` when its runtime cannot (not installed, or refuses them)."""
    spec = ENGINE_TABLE[check_engine_name(name)]
    if spec.runtime == "openvino" and {"xml", "bin"} <= carried.keys():
        return OpenVinoEngine.from_ir(carried["xml"], carried["bin"], pre, name)
    if spec.runtime == "onnxruntime" and "onnx" in carried:
        return OnnxRuntimeEngine.from_bytes(carried["onnx"], pre)
    raise EngineError(f"engine {name!r} cannot run from the bytes {sorted(carried)}")


@functools.cache
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _missing_modules(spec: EngineSpec) -> list[str]:
    modules = _RUNTIME_MODULES.get(spec.runtime, ())
    if spec.calibrates:
        modules = (*modules, "nncf")
    return [m for m in modules if not _installed(m)]


def _bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and bool(torch.cpu._is_avx512_bf16_supported())


def _why_not(spec: EngineSpec, device: torch.device) -> str | None:
    """Why ``spec`` cannot run on ``device`` here, or None when it can."""
    if device.type not in spec.devices:
        others = [s.name for s in ENGINE_TABLE.values() if device.type in s.devices]
        return (
            f"engine={spec.name!r} runs on {'/'.join(spec.devices)}, not {device.type}; on "
            f"{device.type} use one of {', '.join(others)}"
        )
    missing = _missing_modules(spec)
    if missing:  # worded as tlearn.exceptions.require_extra words it
        verb = "is" if len(missing) == 1 else "are"
        return (
            f"engine={spec.name!r} needs {', '.join(missing)}, which {verb} not installed: "
            f"pip install 'tlearn[{spec.extra}]'"
        )
    if spec.precision == "bf16" and not _bf16_native(device):
        return f"engine={spec.name!r} needs native bf16 (AVX512-BF16/AMX or a recent GPU)"
    return None


def available_engines(device: torch.device) -> list[str]:
    """The engines that can run here, in ``auto``'s order of preference."""
    return [name for name, spec in ENGINE_TABLE.items() if _why_not(spec, device) is None]


def check_engine_name(name: object, owner: str = "engine") -> str:
    if name not in ENGINES:
        import difflib

        close = difflib.get_close_matches(str(name), ENGINES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InvalidParameterError(
            f"The 'engine' parameter of {owner} must be one of {', '.join(ENGINES)}. "
            f"Got {name!r} instead.{hint}"
        )
    return str(name)


_BUILDERS: dict[str, Callable[..., Engine]] = {
    "torch": lambda spec, model, pre, device, key, cal: TorchEngine(
        model,
        pre,
        device,
        {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.precision],
        spec.name,
    ),
    "onnxruntime": lambda spec, model, pre, device, key, cal: OnnxRuntimeEngine(model, pre, key),
    "openvino": lambda spec, model, pre, device, key, cal: OpenVinoEngine(
        model, pre, key, {"fp32": "f32"}.get(spec.precision, spec.precision), cal
    ),
}


def build_engine(
    name: str,
    model: torch.nn.Module,
    pre: Preprocessing,
    device: str | torch.device,
    key: dict[str, Any],
    calibration: np.ndarray | None = None,
) -> Engine:
    """Build engine ``name`` (not ``auto``) for ``model``; :class:`EngineError` says why
    it cannot run here."""
    spec = ENGINE_TABLE[check_engine_name(name)]
    dev = resolve_device(device)
    why = _why_not(spec, dev)
    if why is not None:
        raise EngineError(why)
    if spec.runtime == "torch" or spec.calibrates:  # runs the caller's module / its images
        return _BUILDERS[spec.runtime](spec, model, pre, device, key, calibration)
    memo = _memo_key(name, key, dev)
    with _building(memo):  # one thread builds; the others wait for its engine
        with _MEMO_LOCK:
            engine = _BUILT.get(memo)
        if engine is None:
            engine = _BUILDERS[spec.runtime](spec, model, pre, device, key, calibration)
            with _MEMO_LOCK:
                _BUILT[memo] = engine
                while len(_BUILT) > _BUILT_KEPT:
                    _BUILT.pop(next(iter(_BUILT)))
    return engine


#: Compiled engines (OpenVINO, ONNX Runtime fp32) and auto's choices, kept per process by
#: model key and device, so that the fits of a GridSearchCV or a cross-validation (clones
#: with the same settings) do not convert, compile and check the same network again. A
#: compiled engine is a copy of the weights, re-entrant, and keyed by their hash; torch
#: engines run the caller's module and calibrated ones their images, so neither is kept.
_MEMO_LOCK = threading.Lock()
_BUILT: dict[str, Engine] = {}
_BUILT_KEPT = 4
_CHOSEN: dict[str, tuple[str, str]] = {}
#: One lock per memo key, held while that engine is built or that verdict reached: threads
#: fitting the same network at once (a GridSearchCV with n_jobs, a thread pool) each
#: converted and checked it again, and auto gave them different engines.
_KEY_LOCKS: dict[str, threading.Lock] = {}


def _building(memo: str) -> threading.Lock:
    with _MEMO_LOCK:
        return _KEY_LOCKS.setdefault(memo, threading.Lock())


def _memo_key(name: str, key: dict[str, Any], device: torch.device) -> str:
    """What a built engine depends on: the network (its key), the device, the threads."""
    import json

    return json.dumps([name, str(device), engine_threads(), key], sort_keys=True, default=str)


def forget_engines() -> None:
    """Drop the engines and ``auto`` verdicts kept in this process (tests that change what
    ``auto`` may choose call it first)."""
    with _MEMO_LOCK:
        _BUILT.clear()
        _CHOSEN.clear()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(axis=1)
    return np.asarray(num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))


def agreement(name: str, got: np.ndarray, expected: np.ndarray) -> tuple[bool, str]:
    """Whether engine ``name``'s features agree with fp32 torch's, and the figure."""
    cos = _cosines(got, expected)
    if ENGINE_TABLE[name].reduced:
        value, limit, what = float(cos.mean()), MIN_MEAN_COSINE_REDUCED, "mean cosine"
    else:
        value, limit, what = float(cos.min()), MIN_COSINE, "cosine"
    ok = bool(value >= limit)
    return ok, f"{what} {value:.5f} {'>=' if ok else '<'} {limit}"


def make_engine(
    name: str,
    model: torch.nn.Module,
    pre: Preprocessing,
    device: str | torch.device,
    key: dict[str, Any],
    calibration: np.ndarray | None = None,
) -> tuple[Engine, str]:
    """Build engine ``name``; for ``auto`` the first fp32 engine of
    :func:`available_engines` whose features agree with fp32 PyTorch (:func:`agreement`) on
    the first 32 ``calibration`` images (uint8 NHWC, preprocessed). ``openvino-int8``
    quantises on ``calibration`` (at least :data:`MIN_CALIBRATION_IMAGES`). Returns the
    engine and a sentence saying what was chosen and why."""
    if check_engine_name(name) != AUTO:
        return build_engine(name, model, pre, device, key, calibration), f"engine {name}"
    reference = TorchEngine(model, pre, device)
    if calibration is None or not len(calibration):
        return reference, "engine torch (no calibration images)"
    # the verdict also rests on what may run here and how close it must agree
    rules = [available_engines(reference.device), MIN_COSINE, MIN_MEAN_COSINE_REDUCED]
    memo = _memo_key(AUTO, {**key, "auto": rules}, reference.device)
    with _building(memo):  # one check per network; threads asking at once wait for it
        with _MEMO_LOCK:
            chosen = _CHOSEN.get(memo)
        if chosen is None:
            engine, reason = _choose_engine(reference, model, pre, device, key, calibration)
            with _MEMO_LOCK:
                _CHOSEN[memo] = (engine.name, reason)
            return engine, reason
    name, reason = chosen  # this network was checked in this process: same verdict
    if name == "torch":
        return reference, reason
    return build_engine(name, model, pre, device, key), reason


def _choose_engine(
    reference: TorchEngine,
    model: torch.nn.Module,
    pre: Preprocessing,
    device: str | torch.device,
    key: dict[str, Any],
    calibration: np.ndarray,
) -> tuple[Engine, str]:
    """``auto``'s check: the first fp32 engine that agrees with ``reference``."""
    check = calibration[:32]
    expected = reference(check)
    notes: list[str] = []
    for candidate in available_engines(reference.device):
        if candidate == "torch":
            return reference, "engine torch" + (f" ({'; '.join(notes)})" if notes else "")
        if ENGINE_TABLE[candidate].reduced:
            continue  # reduced precision is asked for by name, never chosen by auto
        try:
            engine = build_engine(candidate, model, pre, device, key, calibration)
            ok, figure = agreement(candidate, engine(check), expected)
        except (EngineError, RuntimeError) as e:
            notes.append(f"{candidate} unusable: {str(e)[:120]}")
            warnings.warn(
                f"engine='auto': {candidate} cannot run this backbone ({str(e)[:200]}); "
                "trying the next engine",
                UserWarning,
                stacklevel=3,
            )
            continue
        if ok:
            return engine, f"engine {candidate} (agrees with fp32 torch: {figure})"
        notes.append(f"{candidate} disagrees with fp32 ({figure})")
    return reference, "engine torch (" + "; ".join(notes) + ")"

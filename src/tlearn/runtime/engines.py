"""Inference engines behind one parameter: ``torch`` (fp32, channels-last), ``torch-bf16``
(autocast, where the CPU or GPU has native bf16), ``torch-fp16`` (autocast, CUDA),
``onnxruntime``, ``openvino`` (fp32),
``openvino-bf16`` and ``openvino-int8`` (quantised by NNCF on the user's own images; the
ONNX Runtime and OpenVINO engines are optional extras), and ``auto``, which takes the first
available engine in a fixed order of measured speed whose features agree with fp32 PyTorch
on the calibration images.

Agreement is a cosine similarity between the engine's features and fp32 torch's:
  - fp32 engines must agree on every image to :data:`MIN_COSINE` (0.999): anything less is
    a conversion bug;
  - reduced-precision engines (bf16, int8) cannot reach that and need not: they must agree
    on average to :data:`MIN_MEAN_COSINE_REDUCED` (0.98). Measured with EfficientNet-Lite0
    on 2 Zen 4 cores: OpenVINO int8 (stem kept in fp32) had mean cosine 0.987 on CIFAR-10
    and 0.986 on Fashion-MNIST, and moved the linear probe by -0.09 and +0.20 points;
    quantising the stem too gave 0.970 and cost 0.30 points, which the threshold refuses.

The order is fixed rather than timed on the spot so that ``auto`` picks the same engine
every run on a machine: predictions stay reproducible.

Compiled models are cached on disk, keyed by architecture, weights hash, input size, engine
and (int8) the calibration images; a stale or corrupt file is detected and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
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

__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "agreement",
    "available_engines",
    "check_calibration",
    "engine_cache_dir",
    "make_engine",
]

ENGINES = (
    "auto",
    "torch",
    "torch-bf16",
    "torch-fp16",
    "onnxruntime",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
)
#: ``auto``'s preference on CPU, fastest first. Model-only images/s measured for
#: EfficientNet-Lite0 at 224 px, batch 32, on 2 Zen 4 cores (AVX512-BF16, no AMX):
#: OpenVINO int8 550-600, OpenVINO fp32 (latency hint) 233, ONNX Runtime 141, OpenVINO
#: bf16 160, torch bf16 84, torch fp32 79.
#: On CUDA only the torch engines run: bf16 where the GPU has it, else fp16, else fp32.
AUTO_ORDER = (
    "openvino-int8",
    "openvino",
    "onnxruntime",
    "openvino-bf16",
    "torch-bf16",
    "torch-fp16",
    "torch",
)
#: Engines that compute in reduced precision, held to the mean-cosine threshold.
REDUCED_PRECISION = frozenset({"torch-bf16", "torch-fp16", "openvino-bf16", "openvino-int8"})
#: The OpenVINO engines and the precision each compiles for.
OPENVINO_PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16", "openvino-int8": "int8"}
MIN_COSINE = 0.999
MIN_MEAN_COSINE_REDUCED = 0.98
#: int8 calibration: NNCF's default subset is 300 images; fewer than 100 gives activation
#: ranges that depend too much on which images happened to be picked.
CALIBRATION_IMAGES = 300
MIN_CALIBRATION_IMAGES = 100
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


def _has_nncf() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def available_engines(device: torch.device) -> list[str]:
    """The engines that can run here, in ``auto``'s order of preference."""
    out = []
    for name in AUTO_ORDER:
        if name == "onnxruntime" and (device.type != "cpu" or not _has_onnxruntime()):
            continue
        if name.startswith("openvino") and (device.type != "cpu" or not _has_openvino()):
            continue
        if name == "openvino-int8" and not _has_nncf():
            continue
        if name.endswith("bf16") and not _bf16_native(device):
            continue
        if name == "torch-fp16" and device.type != "cuda":
            continue
        out.append(name)
    return out


def engine_cache_dir() -> Path:
    """Where compiled models are cached: ``$TLEARN_HOME/engines`` or
    ``~/.cache/tlearn/engines``."""
    home = os.environ.get("TLEARN_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "tlearn") / "engines"


def _cache_path(key: dict[str, Any], suffix: str) -> Path:
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
    return engine_cache_dir() / f"{key['architecture'].replace(':', '-')}-{digest}{suffix}"


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
        # one channel at a time: 8x faster than transposing the whole batch at once
        # (0.24 vs 2.1 ms per 224 px image)
        out = np.empty((len(images), 3, *images.shape[1:3]), np.float32)
        for c in range(3):
            np.subtract(images[..., c], self._mean.flat[c], out=out[:, c], dtype=np.float32)
            np.divide(out[:, c], self._std.flat[c], out=out[:, c])
        return out


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
    """The backbone converted by OpenVINO from PyTorch (cached on disk as IR), each batch
    split over OpenVINO's throughput-mode streams.

    ``precision``: ``"f32"``; ``"bf16"`` (OpenVINO's bf16 inference hint); or ``"int8"``
    (NNCF post-training quantisation on ``calibration``, uint8 NHWC images preprocessed
    like the input; the stem convolution stays fp32, everything else not quantised runs
    in fp32).
    """

    name = "openvino"
    precision = "f32"

    def __init__(
        self,
        model: torch.nn.Module,
        pre: Preprocessing,
        key: dict[str, Any],
        precision: str = "f32",
        calibration: np.ndarray | None = None,
    ) -> None:
        super().__init__(pre)
        self.name = next(n for n, p in OPENVINO_PRECISIONS.items() if p == precision)
        self.precision = precision
        key = {
            **key,
            "engine": "openvino-int8" if precision == "int8" else "openvino",
            "input": "uint8-nhwc",  # normalisation is part of the compiled model
        }
        if precision == "int8":
            calibration = check_calibration(calibration)
            key["calibration_sha256"] = hashlib.sha256(calibration.tobytes()).hexdigest()
        else:
            calibration = None  # only int8 quantises
        path = _cache_path(key, ".xml")
        self.path = path
        self._handle = _cached(
            [path, path.with_suffix(".bin")],
            build=lambda: self._convert(
                model,
                pre,
                path,
                None if calibration is None else lambda m: self._quantize(m, calibration),
                uint8_input=True,
            ),
            load=lambda: self._open(path, precision),
            what=f"OpenVINO {precision} model of {key['architecture']}",
        )

    @staticmethod
    def _open(path: Path, precision: str = "f32") -> Any:
        try:
            import openvino as ov
        except ImportError:
            raise EngineError(
                "engine='openvino' needs OpenVINO: pip install 'tlearn[openvino]'"
            ) from None
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "THROUGHPUT",
        }
        return _OpenVinoRunner(core.compile_model(core.read_model(str(path)), "CPU", config))

    @staticmethod
    def _convert(
        model: torch.nn.Module,
        pre: Preprocessing,
        path: Path,
        transform: Callable[[Any], Any] | None = None,
        uint8_input: bool = False,
    ) -> None:
        """Convert ``model`` to OpenVINO IR at ``path`` (weights kept in fp32), passing the
        converted model through ``transform`` (quantisation) first when given.

        ``uint8_input``: the IR takes uint8 NHWC batches and normalises them itself, fused
        into the first layers: 22% faster than normalising in numpy for EfficientNet-Lite0
        at 224 px (2 cores), where the numpy transpose alone cost 2.6 ms per image.
        """
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
            if uint8_input:
                converted = _with_uint8_input(converted, pre)
            if transform is not None:
                converted = transform(converted)
            ov.save_model(converted, str(tmp), compress_to_fp16=False)
            os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(tmp, path)  # the .xml last: it marks a complete export
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"OpenVINO cannot convert this backbone ({str(e)[:200]})") from None
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_suffix(".bin").unlink(missing_ok=True)

    def _quantize(self, converted: Any, calibration: np.ndarray) -> Any:
        try:
            import nncf
        except ImportError:
            raise EngineError(
                "engine='openvino-int8' needs NNCF: pip install 'tlearn[openvino]'"
            ) from None
        import logging

        convs = [
            op.get_friendly_name()
            for op in converted.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution")
        ]
        # one image per item: statistics are the same, peak memory 1.2 GB instead of 2.7
        batches = [calibration[i : i + 1] for i in range(len(calibration))]
        nncf_log = logging.getLogger("nncf")
        level = nncf_log.level
        nncf_log.setLevel(logging.ERROR)
        try:
            # NNCF's progress bars and notes are not for our users
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                return nncf.quantize(
                    converted,
                    nncf.Dataset(batches),
                    subset_size=len(batches),
                    # the stem sees the raw pixels: quantising it too cost 0.21 points of
                    # CIFAR-10 probe accuracy (72.62% vs 72.83%) for 10% more speed
                    ignored_scope=nncf.IgnoredScope(names=convs[:1]),
                )
        finally:
            nncf_log.setLevel(level)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if not len(images):
            return np.empty((0, 0), np.float32)
        batch = np.ascontiguousarray(images) if self._handle.uint8 else self.normalise(images)
        return self._handle(batch)


class _OpenVinoRunner:
    """A compiled OpenVINO model run as parallel requests, one slice of the batch each
    (OpenVINO's throughput mode: one stream per request). For int8 EfficientNet-Lite0 on 2
    cores, 567 images/s against 510 for one latency-mode request."""

    def __init__(self, compiled: Any) -> None:
        import openvino as ov

        self.n_requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.uint8 = compiled.inputs[0].get_element_type() == ov.Type.u8
        self._queue = ov.AsyncInferQueue(compiled, self.n_requests)
        self._queue.set_callback(self._done)
        self._outputs: dict[int, np.ndarray] = {}

    def _done(self, request: Any, i: int) -> None:
        # a copy: the request's output memory is reused by its next run
        self._outputs[i] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        step = -(-len(batch) // self.n_requests)
        starts = range(0, len(batch), step)
        self._outputs = {}
        for i, start in enumerate(starts):
            self._queue.start_async({0: batch[start : start + step]}, i)
        self._queue.wait_all()
        return np.concatenate([self._outputs[i] for i in range(len(starts))])


def _with_uint8_input(converted: Any, pre: Preprocessing) -> Any:
    """The model taking uint8 NHWC pixels, with the mean/std normalisation inside it."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(converted)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(
        [v * 255 for v in pre.mean]
    ).scale([v * 255 for v in pre.std])
    return ppp.build()


def check_calibration(calibration: np.ndarray | None) -> np.ndarray:
    """The int8 calibration images, or a clear error when there are too few."""
    n = 0 if calibration is None else len(calibration)
    if calibration is None or n < MIN_CALIBRATION_IMAGES:
        raise EngineError(
            f"engine='openvino-int8' calibrates on the images given to fit(X): it needs at "
            f"least {MIN_CALIBRATION_IMAGES} readable images (it uses up to "
            f"{CALIBRATION_IMAGES}), got {n}. Pass more images to fit, or use "
            "engine='openvino' (fp32, no calibration)"
        )
    return np.ascontiguousarray(calibration[:CALIBRATION_IMAGES])


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
    name: str,
    model: torch.nn.Module,
    pre: Preprocessing,
    device: torch.device,
    key: dict[str, Any],
    calibration: np.ndarray | None = None,
) -> Engine:
    if name == "torch":
        return TorchEngine(model, pre, device)
    if name == "torch-bf16":
        return TorchEngine(model, pre, device, autocast=torch.bfloat16)
    if name == "torch-fp16":
        if device.type != "cuda":
            raise EngineError(
                "engine='torch-fp16' runs on CUDA GPUs; on CPU use torch-bf16 or openvino-int8"
            )
        return TorchEngine(model, pre, device, autocast=torch.float16)
    if name.startswith("openvino"):
        if device.type != "cpu":
            raise EngineError(f"engine={name!r} runs on CPU here; use device='cpu'")
        return OpenVinoEngine(model, pre, key, OPENVINO_PRECISIONS[name], calibration)
    if name == "onnxruntime":
        if device.type != "cpu":
            raise EngineError("engine='onnxruntime' runs on CPU here; use device='cpu'")
        return OnnxRuntimeEngine(model, pre, key)
    raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(axis=1)
    return np.asarray(num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))


def agreement(name: str, got: np.ndarray, expected: np.ndarray) -> tuple[bool, str]:
    """Whether engine ``name``'s features agree with fp32 torch's, and the figure."""
    cos = _cosines(got, expected)
    if name in REDUCED_PRECISION:
        value, limit, what = float(cos.mean()), MIN_MEAN_COSINE_REDUCED, "mean cosine"
    else:
        value, limit, what = float(cos.min()), MIN_COSINE, "cosine"
    ok = bool(value >= limit)
    return ok, f"{what} {value:.5f} {'>=' if ok else '<'} {limit}"


def make_engine(
    name: str,
    model: torch.nn.Module,
    pre: Preprocessing,
    device: torch.device,
    key: dict[str, Any],
    calibration: np.ndarray | None = None,
) -> tuple[Engine, str]:
    """Build engine ``name``; for ``auto`` the first of :func:`available_engines` whose
    features agree with fp32 PyTorch (:func:`agreement`) on the first 32 ``calibration``
    images (uint8 NHWC, preprocessed). ``openvino-int8`` also quantises on ``calibration``
    (at least :data:`MIN_CALIBRATION_IMAGES`; ``auto`` passes over it with fewer). Returns
    the engine and a sentence saying what was chosen and why."""
    if name != "auto":
        return _build(name, model, pre, device, key, calibration), f"engine {name}"
    reference = TorchEngine(model, pre, device)
    if calibration is None or not len(calibration):
        return reference, "engine torch (no calibration images)"
    check = calibration[:32]
    expected = reference(check)
    notes: list[str] = []
    for candidate in available_engines(device):
        if candidate == "torch":
            return reference, "engine torch" + (f" ({'; '.join(notes)})" if notes else "")
        if candidate == "openvino-int8" and len(calibration) < MIN_CALIBRATION_IMAGES:
            notes.append(
                f"openvino-int8 needs {MIN_CALIBRATION_IMAGES} calibration images from fit(X),"
                f" had {len(calibration)}"
            )
            continue
        try:
            engine = _build(candidate, model, pre, device, key, calibration)
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

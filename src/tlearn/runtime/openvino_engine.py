"""OpenVINO: the backbone converted from PyTorch (cached on disk as IR) in fp32, with
OpenVINO's bf16 inference hint, or quantised to int8 by NNCF on the user's own images.

The compiled model takes uint8 NHWC pixels and normalises them itself (fused into the first
layers: 22% faster than normalising in numpy for EfficientNet-Lite0 at 224 px on 2 cores).
Each batch is split over OpenVINO's throughput-mode streams (int8 lite0: 567 images/s
against 510 for one latency-mode request).

:func:`convert_openvino` and :func:`quantize_int8` are the conversions, shared with
``tlearn export``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable
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
from tlearn.runtime.normalise import normalise_numpy, pixel_mean_std

__all__ = [
    "CALIBRATION_IMAGES",
    "MIN_CALIBRATION_IMAGES",
    "OpenVinoEngine",
    "check_calibration",
    "convert_openvino",
    "ir_description",
    "label_model",
    "quantize_int8",
]

#: int8 calibration: NNCF's default subset is 300 images; fewer than 100 gives activation
#: ranges that depend too much on which images happened to be picked.
CALIBRATION_IMAGES = 300
MIN_CALIBRATION_IMAGES = 100
#: engine name -> OpenVINO precision
PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16", "openvino-int8": "int8"}


def _ov() -> Any:
    return require_runtime("openvino", "openvino", "openvino", "OpenVINO")


def with_uint8_input(converted: Any, pre: Preprocessing) -> Any:
    """The model taking uint8 NHWC pixels, with the mean/std normalisation inside it."""
    ov = _ov()
    from openvino.preprocess import PrePostProcessor

    mean, std = pixel_mean_std(pre)
    ppp = PrePostProcessor(converted)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(mean).scale(std)
    return ppp.build()


def convert_openvino(
    model: torch.nn.Module,
    pre: Preprocessing,
    path: str | os.PathLike[str],
    transform: Callable[[Any], Any] | None = None,
    uint8_input: bool = False,
    output: str | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Convert ``model`` to OpenVINO IR at ``path`` (+ ``.bin``; weights kept in fp32),
    passing the converted model through ``transform`` (quantisation) first when given.
    ``uint8_input``: the IR takes uint8 NHWC pixels and normalises them itself. ``output``
    names the output tensor and ``metadata`` goes into the IR's ``rt_info`` (under
    ``tlearn``)."""
    ov = _ov()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = pre.input_size
    try:
        with CONVERSION_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notices
            converted = ov.convert_model(
                model.eval(),
                example_input=torch.zeros(1, 3, size, size),
                input=[(-1, 3, size, size)],
            )
        if uint8_input:
            converted = with_uint8_input(converted, pre)
        if transform is not None:
            converted = transform(converted)
        label_model(converted, output, metadata)
        # the .bin first, the .xml last: it marks a complete export
        with atomic_path(path, suffix=path.suffix, companions=(".bin",)) as tmp:
            ov.save_model(converted, tmp, compress_to_fp16=False)
    except EngineError:
        raise
    except Exception as e:
        raise EngineError(f"OpenVINO cannot convert this backbone ({str(e)[:200]})") from None


def label_model(model: Any, output: str | None, metadata: dict[str, str] | None) -> None:
    """Name an OpenVINO model's output and put ``metadata`` in its ``rt_info``."""
    if output is not None:
        model.outputs[0].get_tensor().set_names({output})
    for key, value in (metadata or {}).items():
        model.set_rt_info(value, ["tlearn", key])


def ir_description(xml: bytes, weights: bytes) -> tuple[dict[str, str], list[Any], list[Any]]:
    """The ``tlearn`` entries of an IR's ``rt_info`` and the shapes of its first input and
    output (``None`` for a dynamic dimension); :class:`EngineError` when OpenVINO cannot
    read it."""
    try:
        model = _read(xml, weights)
        shapes = [model.inputs[0].get_partial_shape(), model.outputs[0].get_partial_shape()]
        metadata = {}
        if model.has_rt_info(["tlearn"]):
            keys = model.get_rt_info(["tlearn"]).astype(dict)
            metadata = {str(k): model.get_rt_info(["tlearn", k]).astype(str) for k in keys}
    except Exception as e:
        raise EngineError(f"OpenVINO cannot load this model ({str(e)[:200]})") from None
    inputs, outputs = ([d.get_length() if d.is_static else None for d in shape] for shape in shapes)
    return metadata, inputs, outputs


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


def quantize_int8(converted: Any, calibration: np.ndarray) -> Any:
    """NNCF post-training int8 quantisation on ``calibration`` (uint8 NHWC images, as the
    converted model takes them). The stem convolution stays fp32: it sees the raw pixels,
    and quantising it too cost 0.21 points of CIFAR-10 probe accuracy for 10% more speed."""
    nncf = require_runtime("openvino-int8", "openvino", "nncf", "NNCF")
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
                ignored_scope=nncf.IgnoredScope(names=convs[:1]),
            )
    finally:
        nncf_log.setLevel(level)


#: Images per infer request in bulk runs. OpenVINO's CPU plugin runs a model compiled for a
#: fixed batch faster than one compiled for any batch: EfficientNet-Lite0 at 224 px on 2
#: cores, batches of 64 over the two throughput streams, interleaved rounds: 93-121
#: images/s in fixed chunks of 8 (85-101 in 16, 79-92 in 32) against 73-82 with the
#: dynamic batch; Lite1 + Lite2 at 128 px +14%; the outputs are bit-identical.
STATIC_BATCH = 8


def static_copy(model: Any, batch: int) -> Any | None:
    """``model`` with its batch fixed at ``batch``, or None when any other input dimension
    is dynamic (then it stays as it is)."""
    shape = model.inputs[0].get_partial_shape()
    if len(model.inputs) != 1 or shape.rank.is_dynamic:
        return None
    rest = list(shape)[1:]
    if any(d.is_dynamic for d in rest):
        return None
    fixed = model.clone()
    fixed.reshape({0: [batch, *(d.get_length() for d in rest)]})
    return fixed


class _Runner:
    """A compiled model run as parallel infer requests on fixed chunks of ``chunk`` images
    (compiled for that batch size: see :data:`STATIC_BATCH`), the requests kept busy in
    turn; what is left over, and a whole batch with fewer chunks than requests (one image
    at an idle server), runs on a second compilation with a dynamic batch, tuned for
    latency, which spreads it over every core instead of leaving some idle (2 cores, lite0
    at 224 px: one image in 4.4 ms instead of 7.2 ms).

    A call owns the requests while it runs (a lock), and reads their outputs before it
    lets go: concurrent callers can never see each other's results. Each call already uses
    every core, so serialising calls costs no throughput.
    """

    def __init__(self, compiled: Any, latency: Any, chunk: int | None = None) -> None:
        ov = _ov()
        n = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.uint8 = compiled.inputs[0].get_element_type() == ov.Type.u8
        self.chunk = chunk
        self._requests = [compiled.create_infer_request() for _ in range(n)]
        self._latency = latency.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(self._requests)
        if self.chunk is None:  # any batch size: one slice per request
            if len(batch) < n:
                return self._run_chunks([], batch)
            step = -(-len(batch) // n)
            return self._run_chunks([batch[i : i + step] for i in range(0, len(batch), step)])
        # fewer chunks than requests would leave cores idle: a server's batch of 8-15
        # runs on the latency compilation, spread over every core, instead of one stream
        full = 0 if len(batch) < self.chunk * n else len(batch) - len(batch) % self.chunk
        chunks = [batch[i : i + self.chunk] for i in range(0, full, self.chunk)]
        return self._run_chunks(chunks, batch[full:])

    def _run_chunks(self, chunks: list[np.ndarray], rest: np.ndarray | None = None) -> np.ndarray:
        """Each request takes the next chunk as soon as its previous one is read out."""
        n = len(self._requests)
        outs: list[np.ndarray] = []

        def read(request: Any) -> None:
            request.wait()
            # a copy: the request's output memory is reused by its next run
            outs.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))

        with self._lock:
            for k, chunk in enumerate(chunks):
                request = self._requests[k % n]
                if k >= n:
                    read(request)
                request.start_async({0: chunk})
            for k in range(max(0, len(chunks) - n), len(chunks)):
                read(self._requests[k % n])
            if rest is not None and len(rest):
                self._latency.infer({0: rest})
                outs.append(np.array(self._latency.get_output_tensor(0).data, dtype=np.float32))
        return np.concatenate(outs)


def _compile(model: Any, precision: str) -> _Runner:
    ov = _ov()
    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    threads = engine_threads()
    if threads is not None:
        # A worker given some of the cores (a Ray actor): never pin. OpenVINO pins its
        # threads to the first cores, so two 1-thread processes shared one core (measured:
        # 43 + 46 images/s side by side against 96 alone; unpinned, see benchmarks/scale_ray.py)
        config["INFERENCE_NUM_THREADS"] = threads
        config["ENABLE_CPU_PINNING"] = False
    latency = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
    fixed = static_copy(model, STATIC_BATCH)
    throughput = core.compile_model(
        model if fixed is None else fixed, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"}
    )
    return _Runner(throughput, latency, None if fixed is None else STATIC_BATCH)


def _read(xml: bytes, weights: bytes) -> Any:
    ov = _ov()
    return ov.Core().read_model(xml, ov.Tensor(np.frombuffer(weights, np.uint8).copy()))


class OpenVinoEngine:
    """A backbone (or an exported classifier) compiled by OpenVINO for the CPU.

    ``precision``: ``"f32"``; ``"bf16"`` (OpenVINO's bf16 inference hint); or ``"int8"``
    (NNCF on ``calibration``, uint8 NHWC images preprocessed like the input). An int8
    engine keeps its IR bytes (``ir``): it was calibrated on images that are gone later, so
    it travels as bytes in model files and pickles. fp32/bf16 engines pickle as "rebuild
    from the backbone" (the disk cache makes that cheap).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        pre: Preprocessing,
        key: dict[str, Any],
        precision: str = "f32",
        calibration: np.ndarray | None = None,
    ) -> None:
        self.name = next(n for n, p in PRECISIONS.items() if p == precision)
        self.precision = precision
        self.pre, self._model, self._key = pre, model, key
        self.ir: tuple[bytes, bytes] | None = None
        key = {
            **key,
            "engine": "openvino-int8" if precision == "int8" else "openvino",
            "input": "uint8-nhwc",  # normalisation is part of the compiled model
        }
        quantize = None
        if precision == "int8":  # only int8 uses the calibration images
            images = check_calibration(calibration)
            key["calibration_sha256"] = hashlib.sha256(images.tobytes()).hexdigest()
            quantize = lambda m: quantize_int8(m, images)  # noqa: E731
        path = cache_path(key, ".xml")
        self.path: Path | None = path
        self._run = cached(
            [path, path.with_suffix(".bin")],
            build=lambda: convert_openvino(model, pre, path, quantize, uint8_input=True),
            load=lambda: self._load_files(path),
            what=f"OpenVINO {precision} model of {key['architecture']}",
        )

    def _load_files(self, path: Path) -> _Runner:
        xml, weights = path.read_bytes(), path.with_suffix(".bin").read_bytes()
        run = _compile(_read(xml, weights), self.precision)
        if self.precision == "int8":
            self.ir = (xml, weights)
        return run

    @classmethod
    def from_ir(
        cls, xml: bytes, weights: bytes, pre: Preprocessing, name: str = "openvino"
    ) -> OpenVinoEngine:
        """Run an IR given as bytes (an int8 engine from a model file, or an export)."""
        engine = cls.__new__(cls)
        engine.name, engine.precision = name, PRECISIONS.get(name, "f32")
        engine.pre, engine.path, engine.ir = pre, None, (bytes(xml), bytes(weights))
        try:
            engine._run = _compile(_read(*engine.ir), engine.precision)
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"OpenVINO cannot load this model ({str(e)[:200]})") from None
        return engine

    def carried(self) -> dict[str, bytes]:
        """An int8 engine's graph (calibrated on images that are gone), or an export's."""
        return {} if self.ir is None else {"xml": self.ir[0], "bin": self.ir[1]}

    def __reduce__(self) -> tuple[Any, ...]:
        if self.ir is not None:
            return (OpenVinoEngine.from_ir, (*self.ir, self.pre, self.name))
        return (OpenVinoEngine, (self._model, self.pre, self._key, self.precision))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if not len(images):
            return np.empty((0, 0), np.float32)
        if self._run.uint8:
            return self._run(np.ascontiguousarray(images))
        return self._run(normalise_numpy(images, self.pre))

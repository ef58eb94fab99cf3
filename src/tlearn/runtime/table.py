"""The engine table, as pure data (no PyTorch import, so the command line's help can list
it): every inference engine described once, in ``auto``'s order of preference. Everything
else is derived from it: parameter validation, ``auto``'s order, the ``--engine`` help, the
table in docs/engines.md (a test compares them) and the builders in :mod:`tlearn.runtime.engines`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AUTO", "ENGINES", "ENGINE_TABLE", "EngineSpec", "engine_help", "register_engine"]

AUTO = "auto"


@dataclass(frozen=True)
class EngineSpec:
    """One engine: what runs it, in which precision, where, and what it needs."""

    name: str
    runtime: str  # "torch", "onnxruntime" or "openvino"
    precision: str  # "fp32", "bf16", "fp16" or "int8"
    devices: tuple[str, ...]
    extra: str | None  # the pip extra that installs its runtime
    calibrates: bool  # quantised on images from fit(X)
    summary: str

    @property
    def reduced(self) -> bool:
        return self.precision != "fp32"


ENGINE_TABLE: dict[str, EngineSpec] = {}


def register_engine(spec: EngineSpec) -> EngineSpec:
    """Add an engine to the table (in ``auto``'s order); duplicate names are refused."""
    if spec.name in ENGINE_TABLE or spec.name == AUTO:
        raise ValueError(f"an engine named {spec.name!r} is already registered")
    ENGINE_TABLE[spec.name] = spec
    return spec


for _spec in (
    EngineSpec(
        "openvino-int8", "openvino", "int8", ("cpu",), "openvino", True,
        "OpenVINO int8, quantised by NNCF on up to 300 of the images given to fit(X)",
    ),
    EngineSpec("openvino", "openvino", "fp32", ("cpu",), "openvino", False, "OpenVINO fp32"),
    EngineSpec("onnxruntime", "onnxruntime", "fp32", ("cpu",), "onnx", False,
               "ONNX export run by ONNX Runtime on CPU"),
    EngineSpec("openvino-bf16", "openvino", "bf16", ("cpu",), "openvino", False,
               "OpenVINO with its bf16 inference hint"),
    EngineSpec("torch-bf16", "torch", "bf16", ("cpu", "cuda"), None, False,
               "bf16 autocast (CPUs with AVX512-BF16/AMX, GPUs)"),
    EngineSpec("torch-fp16", "torch", "fp16", ("cuda",), None, False,
               "fp16 autocast, channels-last (CUDA GPUs)"),
    EngineSpec("torch", "torch", "fp32", ("cpu", "cuda", "mps"), None, False,
               "fp32 PyTorch, channels-last, cache-sized micro-batches; CUDA when there"),
):  # fmt: skip
    register_engine(_spec)

#: Every value the ``engine`` parameter accepts.
ENGINES = (AUTO, *ENGINE_TABLE)


def engine_help() -> str:
    """One sentence listing the engines, for the command line's ``--engine``."""
    return (
        "Inference engine: "
        + ", ".join(f"{s.name} ({s.summary.split(',')[0]})" for s in ENGINE_TABLE.values())
        + ", or auto (the default: the fastest fp32 engine here whose features agree with"
        " fp32 torch)."
    )

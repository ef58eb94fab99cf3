"""Fuzzing the model-file reader: a model file is data from anywhere, so every mutation of a
real one (its JSON metadata, its safetensors header, its tensor bytes) must end in a loaded
model that predicts, or in ModelFileError, within bounded time and memory, writing nothing.

Inputs that once broke the reader are kept in tests/corpus/model_files/ and replayed.
TLEARN_FUZZ_EXAMPLES=500 explores more (the default keeps the suite fast; the examples are
derandomised so that every run tries the same ones).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import resource
import struct
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlearn import LinearProbe, ModelFileError
from tlearn.backbones import state_dict_sha256
from tlearn.persistence import dumps, loads

CORPUS = Path(__file__).parent / "corpus" / "model_files"
EXAMPLES = int(os.environ.get("TLEARN_FUZZ_EXAMPLES", "40"))
#: The most one load may take here (the tiny network loads in well under a second).
SECONDS = 20.0
#: How much the process's peak memory may grow over all the examples.
PEAK_GROWTH_MIB = 512

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return make_model_bytes()


def make_model_bytes() -> bytes:
    """A small real model file: a probe on timm's tiny test network (400 KB)."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    y = np.array(["cat", "dog", "owl"] * 4)
    probe = LinearProbe(
        "timm:test_efficientnet",
        weights=None,
        image_size=32,
        Cs=[1.0],
        cv=2,
        engine="torch",
        pooling="last",
        flip_average=False,
        batch_size=16,
    ).fit(X, y)
    # zero weights: the reader's checks do not depend on their values, and the corpus's
    # files then compress to a few kilobytes
    backbone = probe.features_.backbone_
    with torch.no_grad():
        for tensor in backbone.model.state_dict().values():
            tensor.zero_()
    backbone.weights_sha256 = state_dict_sha256(backbone.model.state_dict())
    return dumps(probe)


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder and tlearn home: loading must leave both empty."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("TLEARN_HOME", str(home))
    monkeypatch.chdir(work)
    return tmp_path


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors file as its header (JSON) and the tensors' bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the tensors to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + body


def with_metadata(data: bytes, meta: dict[str, Any]) -> bytes:
    header, body = split(data)
    header["__metadata__"]["tlearn"] = json.dumps(meta)
    return join(header, body)


def metadata(data: bytes) -> dict[str, Any]:
    return json.loads(split(data)[0]["__metadata__"]["tlearn"])


def keep_if_failing(data: bytes, error: BaseException) -> None:
    """With TLEARN_FUZZ_KEEP=1, an input that fails the checks below is added to the corpus
    (then replayed by every run), named after the error and where tlearn raised it: while
    Hypothesis shrinks a failure, the smaller inputs overwrite the larger."""
    if not os.environ.get("TLEARN_FUZZ_KEEP"):
        return
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "tlearn" in f.filename]
    where = frames[-1].name if frames else "test"
    CORPUS.mkdir(parents=True, exist_ok=True)
    (CORPUS / f"{type(error).__name__}-{where}.safetensors.gz").write_bytes(gzip.compress(data))


def check_outcome(data: bytes) -> str:
    """Load ``data``: it must give a model that predicts finite probabilities, or
    ModelFileError, in bounded time. Returns ``"loaded"`` or ``"refused"``."""
    try:
        return _check_outcome(data)
    except BaseException as e:
        keep_if_failing(data, e)
        raise


def _check_outcome(data: bytes) -> str:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback engine or device is warned about
        try:
            model = loads(data, "fuzzed.safetensors")
        except ModelFileError as e:
            assert "fuzzed.safetensors" in str(e)  # the message names the file
            outcome = "refused"
        else:
            pixels = np.random.default_rng(1).integers(0, 255, (2, 16, 16, 3), np.uint8)
            proba = model.predict_proba(pixels)
            assert proba.shape == (2, len(model.classes_))
            assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1)
            outcome = "loaded"
    assert time.perf_counter() - start < SECONDS
    return outcome


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def assert_nothing_written(sandbox: Path) -> None:
    """Nothing but the engine cache, where an ONNX Runtime or OpenVINO engine recorded at
    fit is converted (as persistence documents)."""
    engines = sandbox / "home" / "engines"
    written = [p for p in sandbox.rglob("*") if p.is_file() and engines not in p.parents]
    assert not written, f"loading wrote {written[:5]}"


# -- what a mutation puts in place of a value ------------------------------------------
HOSTILE_NUMBERS = st.sampled_from(
    [0, -1, 1, 2, 7, 8, 4096, 4097, 30_000, 2**31, 2**63 - 1, 2**63, 10**30, -(2**63)]
) | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 1e300, 0.5, 3.5])
HOSTILE_TEXT = st.sampled_from(
    [
        "",
        "/etc/passwd",
        "../../../tmp/x",
        "C:\\Windows\\x",
        "~/.ssh/id_rsa",
        "cuda",
        "cuda:7",
        "mps",
        "meta",
        "xla",
        "cpu:0",
        "auto",
        "torch",
        "onnxruntime",
        "openvino-int8",
        "timm:vit_giant_patch14_224",
        "torchvision:resnet18",
        "ensemble:timm:test_vit+timm:test_efficientnet",
        "x" * 70_000,
        "\x00\ud800",
    ]
) | st.text(max_size=20)
DEEP = st.integers(1, 200).map(lambda n: json.loads("[" * n + "]" * n))
VALUES = st.one_of(
    HOSTILE_NUMBERS,
    HOSTILE_TEXT,
    st.none(),
    st.booleans(),
    DEEP,
    st.lists(HOSTILE_NUMBERS, max_size=5),
    st.just(200_000).map(lambda n: list(range(n))),  # a fresh list: mutations change it
    st.dictionaries(st.text(max_size=5), HOSTILE_NUMBERS, max_size=3),
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value: dict keys and list positions."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:4]):
            out += paths(v, (*prefix, i))
    return out


def mutate(meta: dict[str, Any], where: tuple[Any, ...], how: str, value: Any) -> None:
    parent = meta
    for key in where[:-1]:
        parent = parent[key]
    last = where[-1]
    if how == "delete":
        del parent[last]
    elif how == "extra" and isinstance(parent, dict):
        parent[f"extra_{last}"] = value
    else:
        parent[last] = value


#: One mutation of the metadata: (which place, by position in paths(), how, new value).
MUTATIONS = st.lists(
    st.tuples(st.integers(0, 10**6), st.sampled_from(["replace", "delete", "extra"]), VALUES),
    min_size=1,
    max_size=3,
)


@FUZZ
@given(mutations=MUTATIONS)
def test_mutated_metadata_loads_or_is_refused(model_bytes, sandbox, mutations):
    meta = metadata(model_bytes)
    places = paths(meta)
    for position, how, value in mutations:
        # an earlier mutation may have removed or replaced that place
        with contextlib.suppress(KeyError, IndexError, TypeError):
            mutate(meta, places[position % len(places)], how, value)
    before = peak_mib()
    check_outcome(with_metadata(model_bytes, meta))
    assert peak_mib() - before < PEAK_GROWTH_MIB
    assert_nothing_written(sandbox)


#: One mutation of the safetensors header or bytes: (how, which tensor by position, a
#: number, a list of numbers).
DAMAGE = st.tuples(
    st.sampled_from(["shape", "dtype", "offsets", "drop", "flip", "truncate", "length"]),
    st.integers(0, 10**6),
    st.integers(0, 2**64 - 1) | st.sampled_from([0, 7, 2**24, 2**63]),
    st.lists(HOSTILE_NUMBERS, max_size=4),
    st.sampled_from(["F64", "F16", "U8", "BOOL", "I64", "X"]),
)


@FUZZ
@given(damage=DAMAGE)
def test_mutated_header_and_bytes_load_or_are_refused(model_bytes, sandbox, damage):
    how, position, number, numbers, dtype = damage
    header, body = split(model_bytes)
    names = sorted(k for k in header if k != "__metadata__")
    name = names[position % len(names)]
    start, end = header[name]["data_offsets"]
    if how == "shape":
        header[name]["shape"] = numbers
    elif how == "dtype":
        header[name]["dtype"] = dtype
    elif how == "offsets":
        header[name]["data_offsets"] = numbers[:2]
    elif how == "drop":
        del header[name]
    raw = join(header, body)
    if how == "flip":  # damage one byte of one tensor
        at = len(raw) - len(body) + start + number % max(1, end - start)
        raw = raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]
    elif how == "truncate":
        raw = raw[: number % len(raw)]
    elif how == "length":  # the header's declared length
        raw = struct.pack("<Q", number) + raw[8:]
    before = peak_mib()
    check_outcome(raw)
    assert peak_mib() - before < PEAK_GROWTH_MIB
    assert_nothing_written(sandbox)


def test_the_unmutated_file_loads(model_bytes, sandbox):
    assert check_outcome(model_bytes) == "loaded"
    assert_nothing_written(sandbox)


@pytest.mark.parametrize(
    "path", sorted(CORPUS.glob("*.safetensors.gz")), ids=lambda p: p.name.split(".")[0]
)
def test_corpus_inputs_load_or_are_refused(path, sandbox):
    """Each file here once crashed the reader, or made it hang or exhaust memory."""
    check_outcome(gzip.decompress(path.read_bytes()))
    assert_nothing_written(sandbox)

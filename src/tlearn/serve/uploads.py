"""Request bodies -> images and parameters, all in memory (nothing is written to disk),
and images -> checked, preprocessed pixels.

Three ways to send images to ``POST /v1/predict``:

- ``multipart/form-data``: one or more ``file`` parts (any part with a filename counts);
  an optional ``top_k`` field;
- a raw body with ``Content-Type: image/*`` (or ``application/octet-stream``);
- JSON, Hugging Face's image-classification convention:
  ``{"inputs": "<base64>", "parameters": {"top_k": 5}}`` (``inputs`` may also be a list).
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlearn.data.images import Preprocessing, decode_image, preprocess_image
from tlearn.serve.errors import ServeError

__all__ = ["Upload", "decode_upload", "parse_body", "parse_top_k"]

_IMAGE_FIELDS = ("file", "files", "image", "images")
_MAX_FIELDS = 8  # non-image form fields tolerated beside the files


@dataclass
class Upload:
    images: list[tuple[str, bytes | bytearray]] = field(default_factory=list)  # (name, data)
    params: dict[str, Any] = field(default_factory=dict)
    many: bool = False  # answer with one result per image, even for one


def parse_body(content_type: str, body: bytes | bytearray, max_files: int) -> Upload:
    """Split a request body into images and parameters; raise :class:`ServeError`."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        upload = _parse_multipart(content_type, body, max_files)
    elif media in ("application/json", "text/json") or media.endswith("+json"):
        upload = _parse_json(body, max_files)
    elif media.startswith("image/") or media == "application/octet-stream":
        upload = Upload([("body", body)])
    else:
        raise ServeError(
            "unsupported_media_type",
            f"Content-Type {media or '(none)'!r} is not accepted: send multipart/form-data "
            'with a \'file\' part, a raw image/* body, or JSON {"inputs": "<base64>"}',
        )
    if not upload.images:
        raise ServeError("bad_request", "the request holds no image")
    if len(upload.images) > max_files:
        raise ServeError(
            "too_many_files",
            f"{len(upload.images)} images in one request; this server takes at most {max_files}",
        )
    return upload


class _Parts:
    """python-multipart's callbacks, collecting each part's headers and data in memory."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts: list[dict[str, Any]] = []
        self.field = b""
        self.ended = False

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise ServeError("too_many_files", "too many parts in one request")
        self.parts.append({"headers": {}, "data": []})

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        headers = self.parts[-1]["headers"]
        name = self.field.lower()
        headers[name] = headers.get(name, b"") + data[start:end]

    def on_header_end(self) -> None:
        self.field = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1]["data"].append(data[start:end])

    def on_end(self) -> None:
        self.ended = True

    def callbacks(self) -> dict[str, Any]:
        names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end",
                 "on_part_data", "on_end")  # fmt: skip
        return {name: getattr(self, name) for name in names}


def _parse_multipart(content_type: str, body: bytes | bytearray, max_files: int) -> Upload:
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ServeError("bad_request", "multipart/form-data without a boundary parameter")
    collected = _Parts(max_files + _MAX_FIELDS)
    try:
        parser = MultipartParser(boundary, collected.callbacks())  # type: ignore[arg-type]
        parser.write(body)  # type: ignore[arg-type]  # a bytearray parses the same, uncopied
        parser.finalize()
    except MultipartParseError as e:
        raise ServeError("bad_request", f"broken multipart body: {e}") from None
    if not collected.ended:
        raise ServeError("bad_request", "the multipart body ends before its closing boundary")
    return _multipart_upload(collected.parts)


def _multipart_upload(parts: list[dict[str, Any]]) -> Upload:
    from python_multipart.multipart import parse_options_header

    upload = Upload(many=True)
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        data = b"".join(part["data"])
        if filename is not None or name in _IMAGE_FIELDS:
            label = (filename or name.encode()).decode("utf-8", "replace")[:200]
            upload.images.append((label or "file", data))
        elif name == "top_k":
            upload.params["top_k"] = data.decode("ascii", "replace").strip()
    upload.many = len(upload.images) > 1
    return upload


def _parse_json(body: bytes | bytearray, max_files: int) -> Upload:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ServeError("bad_request", f"invalid JSON: {str(e)[:200]}") from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise ServeError(
            "bad_request",
            'JSON bodies are {"inputs": "<base64 image>", "parameters": {"top_k": 5}}',
        )
    inputs = doc["inputs"]
    many = isinstance(inputs, list)
    items = inputs if many else [inputs]
    if len(items) > max_files:
        raise ServeError(
            "too_many_files",
            f"{len(items)} images in one request; this server takes at most {max_files}",
        )
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ServeError("bad_request", '"parameters" must be an object')
    upload = Upload(params=dict(params), many=many)
    for i, item in enumerate(items):
        upload.images.append((f"inputs[{i}]" if many else "inputs", _base64(item)))
    return upload


def _base64(item: Any) -> bytes:
    if not isinstance(item, str):
        raise ServeError("bad_request", '"inputs" must be a base64 string (or a list of them)')
    text = item.strip()
    if text.startswith("data:") and "," in text:  # a data URI
        text = text.split(",", 1)[1]
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise ServeError("bad_request", f'"inputs" is not valid base64 ({e})') from None


def parse_top_k(value: Any, default: int, n_classes: int) -> int:
    """``top_k`` from a query, form or JSON value: an int in [1, 1000]; capped at the
    number of classes."""
    if value is None or value == "":
        return min(default, n_classes)
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        k = int(value)
    except (TypeError, ValueError):
        raise ServeError(
            "invalid_parameter", f"top_k must be an integer, got {str(value)[:40]!r}"
        ) from None
    if not 1 <= k <= 1000:
        raise ServeError("invalid_parameter", f"top_k must be in [1, 1000], got {k}")
    return min(k, n_classes)


def decode_upload(
    data: bytes | bytearray,
    name: str,
    pre: Preprocessing,
    formats: tuple[str, ...],
    max_pixels: int,
) -> np.ndarray:
    """One uploaded image -> preprocessed uint8 pixels; raise :class:`ServeError` with the
    image's code (the header is checked before any pixel is decoded)."""
    from tlearn.exceptions import ImageReadError

    try:
        img = decode_image(
            data, name, min_side=pre.resize_size, formats=formats, max_pixels=max_pixels
        )
        return preprocess_image(img, pre)
    except ImageReadError as e:
        code = e.code if e.code != "unreadable" else "corrupt_image"
        raise ServeError(code, f"{name}: {e.reason}") from None
    except (MemoryError, OSError, ValueError) as e:  # defensive: PIL on hostile data
        raise ServeError("corrupt_image", f"{name}: cannot decode ({type(e).__name__})") from None

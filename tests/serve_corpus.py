"""Generated hostile and malformed inputs for the server's tests (and its benchmark).

Each entry is ``(name, method, path, headers, body, status, code)``: what to send and the
JSON 4xx it must get. Images are made here, in memory: nothing is read from disk.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
from PIL import Image


def jpeg(size: tuple[int, int] = (320, 240), seed: int = 0, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def png(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, "PNG")
    return out.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming ``width x height`` pixels, with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def gif_bomb() -> bytes:
    """A GIF whose logical screen is 65535 x 65535."""
    out = io.BytesIO()
    Image.new("P", (8, 8)).save(out, "GIF")
    data = bytearray(out.getvalue())
    data[6:10] = struct.pack("<HH", 65535, 65535)
    data[0x17:0x1B] = struct.pack("<HH", 65535, 65535)  # the image descriptor's size too
    return bytes(data)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += (
            (
                f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


MP = {"content-type": "multipart/form-data; boundary=b0undary"}
JSON = {"content-type": "application/json"}
IMG = {"content-type": "image/jpeg"}


def corpus() -> list[tuple[str, str, str, dict[str, str], bytes, int, str]]:
    good = jpeg()
    tiff = io.BytesIO()
    Image.new("RGB", (16, 16)).save(tiff, "TIFF")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    b64 = base64.b64encode(good).decode()
    deep = b"[" * 100_000 + b"]" * 100_000
    p = "/v1/predict"
    return [
        ("empty body, image type", "POST", p, IMG, b"", 400, "empty_image"),
        (
            "zero-byte file part",
            "POST",
            p,
            MP,
            multipart([("file", "a.jpg", b"")]),
            400,
            "empty_image",
        ),
        ("random bytes", "POST", p, IMG, bytes(range(256)) * 8, 415, "unsupported_format"),
        ("text as image", "POST", p, IMG, b"hello, I am not an image", 415, "unsupported_format"),
        ("SVG", "POST", p, {"content-type": "image/svg+xml"}, svg, 415, "unsupported_format"),
        ("EPS (Ghostscript never runs)", "POST", p, IMG, eps, 415, "unsupported_format"),
        (
            "TIFF off the allow-list",
            "POST",
            p,
            {"content-type": "image/tiff"},
            tiff.getvalue(),
            415,
            "unsupported_format",
        ),
        ("truncated JPEG", "POST", p, IMG, good[: len(good) // 2], 422, "corrupt_image"),
        ("JPEG header only", "POST", p, IMG, good[:200], 422, "corrupt_image"),
        (
            "PNG bomb 100000x100000",
            "POST",
            p,
            {"content-type": "image/png"},
            png_bomb(),
            413,
            "too_many_pixels",
        ),
        (
            "PNG 7000x7000 header",
            "POST",
            p,
            {"content-type": "image/png"},
            png_bomb(7000, 7000),
            413,
            "too_many_pixels",
        ),
        ("GIF bomb", "POST", p, {"content-type": "image/gif"}, gif_bomb(), 413, "too_many_pixels"),
        (
            "PNG with broken IDAT",
            "POST",
            p,
            {"content-type": "image/png"},
            png_bomb(64, 64),
            422,
            "corrupt_image",
        ),
        (
            "text/plain",
            "POST",
            p,
            {"content-type": "text/plain"},
            b"x",
            415,
            "unsupported_media_type",
        ),
        ("no content-type", "POST", p, {}, good, 415, "unsupported_media_type"),
        (
            "form-urlencoded",
            "POST",
            p,
            {"content-type": "application/x-www-form-urlencoded"},
            b"file=abc",
            415,
            "unsupported_media_type",
        ),
        (
            "multipart without boundary",
            "POST",
            p,
            {"content-type": "multipart/form-data"},
            b"--x\r\n",
            400,
            "bad_request",
        ),
        (
            "multipart cut short",
            "POST",
            p,
            MP,
            multipart([("file", "a.jpg", good)])[:-40],
            400,
            "bad_request",
        ),
        ("multipart garbage", "POST", p, MP, b"\x00\xff" * 500, 400, "bad_request"),
        (
            "multipart with no file",
            "POST",
            p,
            MP,
            multipart([("top_k", None, b"3")]),
            400,
            "bad_request",
        ),
        (
            "multipart 40 files",
            "POST",
            p,
            MP,
            multipart([("file", f"{i}.jpg", b"x") for i in range(40)]),
            413,
            "too_many_files",
        ),
        (
            "multipart bad top_k",
            "POST",
            p,
            MP,
            multipart([("file", "a.jpg", good), ("top_k", None, b"lots")]),
            422,
            "invalid_parameter",
        ),
        ("invalid JSON", "POST", p, JSON, b"{inputs: nope", 400, "bad_request"),
        ("JSON array", "POST", p, JSON, b"[1, 2, 3]", 400, "bad_request"),
        ("JSON without inputs", "POST", p, JSON, b'{"image": "abc"}', 400, "bad_request"),
        ("JSON inputs not a string", "POST", p, JSON, b'{"inputs": 12}', 400, "bad_request"),
        ("JSON bad base64", "POST", p, JSON, b'{"inputs": "@@@not base64@@@"}', 400, "bad_request"),
        ("JSON nested 100000 deep", "POST", p, JSON, deep, 400, "bad_request"),
        (
            "JSON 5000-digit top_k",
            "POST",
            p,
            JSON,
            b'{"inputs": "' + b64.encode() + b'", "parameters": {"top_k": ' + b"9" * 5000 + b"}}",
            400,
            "bad_request",
        ),
        (
            "JSON top_k 0",
            "POST",
            p,
            JSON,
            json.dumps({"inputs": b64, "parameters": {"top_k": 0}}).encode(),
            422,
            "invalid_parameter",
        ),
        (
            "JSON top_k float",
            "POST",
            p,
            JSON,
            json.dumps({"inputs": b64, "parameters": {"top_k": 2.5}}).encode(),
            422,
            "invalid_parameter",
        ),
        (
            "JSON parameters a list",
            "POST",
            p,
            JSON,
            json.dumps({"inputs": b64, "parameters": [1]}).encode(),
            400,
            "bad_request",
        ),
        (
            "JSON 40 inputs",
            "POST",
            p,
            JSON,
            json.dumps({"inputs": ["eA=="] * 40}).encode(),
            413,
            "too_many_files",
        ),
        ("query top_k -1", "POST", p + "?top_k=-1", IMG, good, 422, "invalid_parameter"),
        ("query top_k junk", "POST", p + "?top_k=%00%ff", IMG, good, 422, "invalid_parameter"),
        ("GET on predict", "GET", p, {}, b"", 405, "method_not_allowed"),
        ("PUT on model", "PUT", "/v1/model", IMG, good, 405, "method_not_allowed"),
        ("unknown route", "GET", "/v2/predict", {}, b"", 404, "not_found"),
        ("path traversal", "GET", "/../../etc/passwd", {}, b"", 404, "not_found"),
        (
            "filename traversal (nothing is written)",
            "POST",
            p,
            MP,
            multipart([("file", "../../../../tmp/evil.jpg", b"not an image")]),
            415,
            "unsupported_format",
        ),
    ]


def raw_corpus() -> list[tuple[str, bytes]]:
    """Requests that are not valid HTTP/1.1, sent on a raw socket: each must get a JSON 400
    (from the server's own HTTP parser), never a crash."""
    host = b"Host: 127.0.0.1\r\n"
    return [
        ("garbage request line", b"\x00\x01\x02 HELLO\r\n\r\n"),
        ("no HTTP version", b"GET /livez\r\n\r\n"),
        ("bad header name", b"GET /livez HTTP/1.1\r\n" + host + b"Bad Header: x\r\n\r\n"),
        (
            "Content-Length not a number",
            b"POST /v1/predict HTTP/1.1\r\n" + host + b"Content-Length: 12x\r\n\r\n",
        ),
        (
            "two different Content-Lengths",
            b"POST /v1/predict HTTP/1.1\r\n"
            + host
            + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
        ),
        (
            "headers of 1 MB",
            b"GET /livez HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
        ),
        (
            "broken chunk size",
            b"POST /v1/predict HTTP/1.1\r\n"
            + host
            + b"Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
        ),
    ]

"""Every error the server answers with, as ``{"error": {"code", "message"}}``: one table,
from which the responses, the OpenAPI description and the list in docs/serving.md are made."""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR_CODES", "ServeError", "error_body"]

#: code -> (HTTP status, when it is sent)
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (
        400,
        "the body is not what its Content-Type says (broken multipart, "
        "invalid JSON or base64, no image in it)",
    ),
    "empty_image": (400, "an image of 0 bytes"),
    "unauthorized": (401, "the API key is missing or wrong"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "the route exists, the method does not"),
    "request_timeout": (408, "the body did not arrive within its own deadline (body_timeout_s)"),
    "payload_too_large": (
        413,
        "the body is over --max-body-mb (refused before reading it when Content-Length says so)",
    ),
    "too_many_pixels": (413, "an image over --max-pixels, from its header, before decoding"),
    "too_many_files": (413, "more images in one request than the server takes"),
    "unsupported_media_type": (
        415,
        "a Content-Type other than multipart/form-data, image/* or application/json",
    ),
    "unsupported_format": (415, "an image format not on the allow-list, or not an image"),
    "corrupt_image": (422, "the image header is fine but its data cannot be decoded"),
    "invalid_parameter": (422, "a parameter (top_k, ...) outside its range"),
    "overloaded": (
        503,
        "the queue is full, or the bodies being uploaded fill the upload buffer: retry after "
        "the Retry-After seconds",
    ),
    "not_ready": (503, "the model is still loading or warming up"),
    "shutting_down": (503, "the server is draining before it exits"),
    "timeout": (504, "no answer within the request's deadline"),
    "internal": (500, "a bug: the engine failed; the message says how"),
}


class ServeError(Exception):
    """An error with its code; the app turns it into the JSON response."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        if code not in ERROR_CODES:
            raise KeyError(code)
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = ERROR_CODES[code][0]
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}

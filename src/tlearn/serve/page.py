"""The web page: one self-contained HTML file (inline CSS and JS, no external URL),
filled in with the server's limits."""

from __future__ import annotations

import functools
import html
from importlib.resources import files

from tlearn.serve.config import ServeConfig

__all__ = ["page_html"]

_MIME = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "PPM": "image/x-portable-pixmap",
    "ICO": "image/x-icon",
}


@functools.cache
def _template() -> str:
    return files("tlearn.serve").joinpath("page.html").read_text(encoding="utf-8")


def page_html(config: ServeConfig) -> str:
    types = sorted({_MIME[f] for f in config.formats})
    names = [f for f in config.formats if f != "MPO"]
    values = {
        "AUTH": "1" if config.api_key else "0",
        "MAX_BYTES": str(config.max_body_bytes),
        "MAX_MB": f"{config.max_body_mb:g}",
        "TYPES": ",".join(types),
        "ACCEPT": ",".join(types),
        "FORMATS": ", ".join(names),
        "TOP_K": str(config.top_k),
    }
    page = _template()
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", html.escape(value))
    return page

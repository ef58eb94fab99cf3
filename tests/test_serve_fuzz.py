"""The server's parsers on untrusted bytes, with Hypothesis: whatever a request holds
(random or broken multipart, JSON of any shape, raw bodies, images cut or overwritten, any
``top_k``, any Content-Type), the answer is a result or a :class:`ServeError` with a 4xx
status, never another exception, in bounded time; then a bounded number of hostile
requests through the whole ASGI app get a JSON 4xx or a result, never a 5xx.

A longer campaign (4,000 examples for each parser, 1,500 requests through the app) found
no input that breaks them; one that does belongs in tests/corpus/serve/, with a replay
test."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.serve_corpus import gif_bomb, jpeg, multipart, png, png_bomb
from tests.served import fitted_model
from tlearn.data.images import Preprocessing
from tlearn.serve import ERROR_CODES, ServeConfig, ServeError
from tlearn.serve.uploads import Upload, decode_upload, parse_body, parse_top_k

SECONDS = 2.0  # per input: every one is under 100 kB
MAX_FILES = 4
PRE = Preprocessing(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
FORMATS = ServeConfig().formats

CONTENT_TYPES = st.one_of(
    st.sampled_from([
        "multipart/form-data; boundary=b0undary", "multipart/form-data",
        "multipart/form-data; boundary=", 'multipart/form-data; boundary="b0undary"',
        "Multipart/Form-Data; boundary=b0undary; charset=utf-8", "application/json",
        "text/json", "application/vnd.api+json", "application/json; charset=latin-1",
        "image/jpeg", "image/png", "IMAGE/WEBP", "application/octet-stream", "text/plain",
        "", ";", "image/", "multipart/mixed; boundary=b0undary",
    ]),
    st.text(max_size=60),
)  # fmt: skip


def _image(kind: str) -> bytes:
    if kind == "jpeg":
        return jpeg((40, 30))
    if kind == "png":
        return png((20, 12), "RGBA")
    out = io.BytesIO()
    Image.new("RGB", (24, 16), (10, 200, 30)).save(out, kind.upper())
    return out.getvalue()


IMAGES = {kind: _image(kind) for kind in ("jpeg", "png", "gif", "bmp", "webp", "tiff", "ico")}
IMAGES |= {"png bomb": png_bomb(), "gif bomb": gif_bomb()}


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` cut short, overwritten in places, or with bytes put in."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        how = draw(st.sampled_from(["cut", "overwrite", "insert"]))
        at = draw(st.integers(0, len(out)))
        if how == "cut":
            del out[at:]
        elif how == "overwrite":
            out[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(out)


IMAGE_BYTES = st.sampled_from(sorted(IMAGES)).flatmap(lambda k: mutated(IMAGES[k]))
PART_NAMES = st.sampled_from(["file", "files", "image", "top_k", "other", "", 'x"y', "é"])
PARTS = st.lists(
    st.tuples(PART_NAMES, st.one_of(st.none(), st.text(max_size=20)), IMAGE_BYTES),
    max_size=MAX_FILES + 3,
)
MULTIPART = PARTS.map(
    lambda parts: multipart(
        [(n, None if f is None else f.replace('"', ""), d) for n, f, d in parts]
    )
).flatmap(mutated)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
BASE64 = IMAGE_BYTES.map(lambda b: base64.b64encode(b).decode())
JSON_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.one_of(BASE64, st.lists(BASE64, max_size=MAX_FILES + 2), JSON_VALUES),
        "parameters": st.one_of(
            st.fixed_dictionaries({"top_k": JSON_VALUES | st.integers(-5, 2000)}), JSON_VALUES
        ),
    },
).map(lambda doc: json.dumps(doc).encode())
BODIES = st.one_of(st.binary(max_size=2000), MULTIPART, JSON_DOCS, IMAGE_BYTES)


def check_body(content_type: str, body: bytes) -> Upload | None:
    """An upload of 1 to MAX_FILES images, or a ServeError with a 4xx status."""
    start = time.perf_counter()
    try:
        upload = parse_body(content_type, body, MAX_FILES)
    except ServeError as e:
        assert 400 <= e.status < 500 and e.message, (e.code, e.message)
        return None
    finally:
        assert time.perf_counter() - start < SECONDS
    assert 1 <= len(upload.images) <= MAX_FILES
    assert all(isinstance(n, str) and len(n) <= 200 for n, _ in upload.images)
    assert all(isinstance(d, (bytes, bytearray)) for _, d in upload.images)
    assert isinstance(upload.params, dict)
    return upload


def check_image(data: bytes) -> None:
    """Pixels of the model's input size, or a ServeError with a 4xx status."""
    start = time.perf_counter()
    try:
        pixels = decode_upload(data, "x", PRE, FORMATS, 1_000_000)
    except ServeError as e:
        assert 400 <= e.status < 500 and e.message, (e.code, e.message)
    else:
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert time.perf_counter() - start < SECONDS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content_type=CONTENT_TYPES, body=BODIES)
def test_any_body_parses_into_images_or_a_4xx(content_type, body):
    check_body(content_type, body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=MULTIPART)
def test_multipart_bodies_parse_into_images_or_a_4xx(body):
    check_body("multipart/form-data; boundary=b0undary", body)


@settings(max_examples=150, deadline=None)
@given(body=JSON_DOCS)
def test_json_bodies_parse_into_images_or_a_4xx(body):
    upload = check_body("application/json", body)
    doc = json.loads(body)
    if upload is not None:  # what was accepted is exactly what was sent
        inputs = doc["inputs"] if isinstance(doc["inputs"], list) else [doc["inputs"]]
        assert len(upload.images) == len(inputs) and upload.many == isinstance(doc["inputs"], list)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(IMAGE_BYTES, st.binary(max_size=300)))
def test_any_image_bytes_decode_to_pixels_or_a_4xx(data):
    check_image(data)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES | st.text(max_size=12) | st.integers(), n_classes=st.integers(1, 2000))
def test_any_top_k_is_an_integer_in_range_or_a_422(value, n_classes):
    try:
        k = parse_top_k(value, 5, n_classes)
    except ServeError as e:
        assert e.code == "invalid_parameter" and e.status == 422
    else:
        assert isinstance(k, int) and 1 <= k <= min(1000, n_classes)


# -- through the app -------------------------------------------------------------------
PATHS = st.sampled_from(["/v1/predict", "/v1/predict", "/v1/model", "/", "/livez", "/readyz",
                         "/metrics", "/openapi.json", "/v2/x", "/v1/predict/"])  # fmt: skip
REQUESTS = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "OPTIONS"]),
        "path": PATHS,
        "top_k": st.one_of(st.none(), st.text(max_size=12)),
        "content_type": CONTENT_TYPES.filter(lambda t: t.isascii() and t.isprintable()),
        "body": BODIES,
    }
)


@pytest.fixture(scope="module")
def client(calibration_set, tmp_path_factory):
    from fastapi.testclient import TestClient

    from tlearn.serve import create_app

    app = create_app(str(fitted_model(calibration_set, tmp_path_factory)), max_files=MAX_FILES)
    with TestClient(app, raise_server_exceptions=False) as client:
        end = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < end
            time.sleep(0.05)
        yield client


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=REQUESTS)
def test_hostile_requests_through_the_app_get_a_json_4xx_or_a_result(client, request):
    start = time.perf_counter()
    r = client.request(
        request["method"],
        request["path"],
        params={} if request["top_k"] is None else {"top_k": request["top_k"]},
        content=request["body"],
        headers={"content-type": request["content_type"]},
    )
    assert r.status_code < 500, r.text[:300]
    assert time.perf_counter() - start < 10
    if r.status_code >= 400:
        error = r.json()["error"]
        assert ERROR_CODES[error["code"]][0] == r.status_code and error["message"]

"""The server's parts without HTTP: the dynamic batcher (no added latency when idle,
batches that grow under load, deadlines, failures, many threads), the body parsers, the
image checks, the limits' validation and the drain of unread bodies."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.serve_corpus import gif_bomb, jpeg, multipart, png, png_bomb
from tlearn.data.images import Preprocessing
from tlearn.exceptions import InvalidParameterError
from tlearn.serve import ERROR_CODES, ServeConfig, ServeError
from tlearn.serve.batcher import Batcher, DeadlineExceeded
from tlearn.serve.uploads import decode_upload, parse_body, parse_top_k


def _echo(batches: list[int], delay: float = 0.0):
    """An engine whose output row is the input's first pixel, so answers can be routed."""

    def predict(pixels: np.ndarray) -> np.ndarray:
        batches.append(len(pixels))
        time.sleep(delay)
        return pixels[:, 0, 0, :1].astype(np.float64)

    return predict


def _pixels(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, np.uint8)


def test_an_idle_batcher_runs_each_image_at_once_alone():
    batches: list[int] = []
    batcher = Batcher(_echo(batches), max_batch_size=8)
    for v in range(5):
        t0 = time.monotonic()
        result = batcher.submit(_pixels(v), time.monotonic() + 5).result(5)
        assert time.monotonic() - t0 < 0.5  # no waiting for a batch to fill
        assert result.proba[0] == v and result.batch_size == 1
    assert batches == [1] * 5
    batcher.close()


def test_batches_grow_under_load_and_every_caller_gets_its_own_row():
    batches: list[int] = []
    batcher = Batcher(_echo(batches, delay=0.02), max_batch_size=6)

    def call(v: int) -> float:
        return float(batcher.submit(_pixels(v), time.monotonic() + 30).result(30).proba[0])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, [v % 250 for v in range(200)]))
    assert answers == [float(v % 250) for v in range(200)]
    assert max(batches) == 6 and sum(batches) == 200
    assert len(batches) < 100  # batched, not one by one
    batcher.close()


def test_expired_and_abandoned_items_are_dropped_before_inference():
    batches: list[int] = []
    gate = threading.Event()

    def slow(pixels: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return _echo(batches)(pixels)

    dropped: list[int] = []
    batcher = Batcher(slow, max_batch_size=8, on_drop=dropped.append)
    first = batcher.submit(_pixels(1), time.monotonic() + 5)  # occupies the engine
    time.sleep(0.05)
    expired = batcher.submit(_pixels(2), time.monotonic() + 0.01)
    abandoned = batcher.submit(_pixels(3), time.monotonic() + 5)
    live = batcher.submit(_pixels(4), time.monotonic() + 5)
    assert abandoned.cancel()
    time.sleep(0.05)
    gate.set()
    assert first.result(5).proba[0] == 1 and live.result(5).proba[0] == 4
    with pytest.raises(DeadlineExceeded):
        expired.result(5)
    assert batches == [1, 1] and sum(dropped) == 2
    batcher.close()


def test_an_engine_failure_reaches_every_caller_of_that_batch_and_no_other():
    calls = {"n": 0}

    def flaky(pixels: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("engine fell over")
        return pixels[:, 0, 0, :1].astype(np.float64)

    batcher = Batcher(flaky, max_batch_size=4)
    with pytest.raises(RuntimeError, match="fell over"):
        batcher.submit(_pixels(1), time.monotonic() + 5).result(5)
    assert batcher.submit(_pixels(7), time.monotonic() + 5).result(5).proba[0] == 7
    batcher.close()


def test_bodies_parse_into_images_and_parameters():
    image = jpeg()
    mp = parse_body("multipart/form-data; boundary=b0undary",
                    multipart([("file", "a.jpg", image), ("file", "b.jpg", image),
                               ("top_k", None, b"2")]), 16)  # fmt: skip
    assert [n for n, _ in mp.images] == ["a.jpg", "b.jpg"] and mp.many
    assert mp.params == {"top_k": "2"}
    raw = parse_body("image/jpeg", image, 16)
    assert raw.images == [("body", image)] and not raw.many
    b64 = base64.b64encode(image).decode()
    hf = parse_body(
        "application/json", json.dumps({"inputs": b64, "parameters": {"top_k": 3}}).encode(), 16
    )
    assert hf.images[0][1] == image and hf.params == {"top_k": 3} and not hf.many
    uri = parse_body(
        "application/json",
        json.dumps({"inputs": [f"data:image/jpeg;base64,{b64}"] * 2}).encode(),
        16,
    )
    assert len(uri.images) == 2 and uri.many
    with pytest.raises(ServeError) as e:
        parse_body("image/png", png(), 0)
    assert e.value.code == "too_many_files" and e.value.status == 413


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 5), ("", 5), ("3", 3), (2, 2), ("1000", 10), (7, 7)],
)
def test_top_k_is_an_integer_capped_at_the_classes(value, expected):
    assert parse_top_k(value, 5, 10) == expected


@pytest.mark.parametrize("value", ["0", -1, "1001", "x", 2.5, True, [3], "1e3"])
def test_a_bad_top_k_is_invalid_parameter(value):
    with pytest.raises(ServeError) as e:
        parse_top_k(value, 5, 10)
    assert e.value.code == "invalid_parameter" and e.value.status == 422


PRE = Preprocessing(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
ALLOWED = ServeConfig().formats


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (b"GIF89a" + b"\0" * 20, "unsupported_format"),  # PIL cannot even identify it
        (png((300, 200))[:60], "corrupt_image"),
        (png_bomb(), "too_many_pixels"),
        (gif_bomb(), "too_many_pixels"),
        (png_bomb(7000, 7000), "too_many_pixels"),
        (jpeg()[:400], "corrupt_image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "unsupported_format"),
        (b"II*\0" + b"\0" * 100, "unsupported_format"),  # TIFF: not on the allow-list
    ],
)
def test_uploads_are_checked_before_decoding(data, code):
    with pytest.raises(ServeError) as e:
        decode_upload(data, "x", PRE, ALLOWED, 40_000_000)
    assert e.value.code == code
    assert e.value.status == ERROR_CODES[code][0]


def test_good_uploads_decode_to_the_model_input():
    for data in (jpeg((640, 480)), png((50, 40), "RGBA"), png((20, 30), "L")):
        pixels = decode_upload(data, "x", PRE, ALLOWED, 40_000_000)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


def test_limits_are_validated_with_one_message_each():
    with pytest.raises(InvalidParameterError, match="max_batch_size"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(InvalidParameterError, match="api_key"):
        ServeConfig(api_key="short")
    with pytest.raises(InvalidParameterError, match="formats"):
        ServeConfig(formats=("JPEG", "EPS"))
    config = ServeConfig(max_batch_size=8, queue_ms=100, decode_workers=2)
    assert config.queue_cap(images_per_second=160) == 16  # 160 images/s x 0.1 s
    assert config.queue_cap(images_per_second=1.0) == 3  # the pipeline stays full
    assert ServeConfig(max_queue=3).queue_cap(1000) == 3
    assert "api_key" not in ServeConfig(api_key="a-long-key").public()


def test_the_automatic_cap_follows_the_rate_answered_under_saturation():
    from tlearn.serve.service import Service

    service = Service(None, ServeConfig(queue_ms=100, decode_workers=2))
    assert service.queue_cap == 3  # before any load: what keeps the pipeline full
    service._window = (time.monotonic() - 1.0, 0)
    service._answered_images, service._saturated = 200, True  # 200 images/s while full
    assert service.admit(1)
    assert service.queue_cap == 20  # 200/s x 100 ms
    assert all(service.admit(1) for _ in range(19)) and not service.admit(1)
    service.release(20)
    fixed = Service(None, ServeConfig(max_queue=5))
    fixed._window = (time.monotonic() - 1.0, 0)
    fixed._answered_images, fixed._saturated = 500, True
    fixed.admit(1)
    assert fixed.queue_cap == 5


def _body(headers: dict[str, str], chunks: list[bytes], *, ends: bool = True):
    """A ``_Body`` over a client that sends ``chunks`` (then the end of the body, or
    nothing more: a stalled upload), with a 1,048-byte limit and a 0.2 s body deadline."""
    from tlearn.serve.app import _Body

    config = ServeConfig(max_body_mb=0.001, body_timeout_s=0.2)
    sent = iter(chunks)
    calls = [0]

    async def receive() -> dict:
        calls[0] += 1
        chunk = next(sent, None)
        if chunk is None:
            if not ends:
                await asyncio.sleep(10)
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    scope = {"headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    return _Body(scope, config, receive), calls


def test_an_unread_body_is_drained_up_to_4_limits_within_its_deadline():
    # up to 4 x the limit is read to its end: the client can read the answer
    body, calls = _body({"content-length": "3500"}, [b"x" * 700] * 5)
    assert asyncio.run(body.drain()) and body.seen == 3500
    # a Content-Length past that is not worth reading: answer at once, then close
    body, calls = _body({"content-length": "5000"}, [b"x" * 1000] * 5)
    assert not asyncio.run(body.drain()) and calls[0] == 0
    # a chunked body that goes on is read only up to 4 limits
    body, calls = _body({"transfer-encoding": "chunked"}, [b"x" * 500] * 100)
    assert not asyncio.run(body.drain()) and 4 * 1048 < body.seen <= 4 * 1048 + 500
    # a stalled one, until the body's deadline
    body, calls = _body({"content-length": "3000"}, [b"x" * 100], ends=False)
    t0 = time.monotonic()
    assert not asyncio.run(body.drain())
    assert 0.1 < time.monotonic() - t0 < 1


def test_no_body_is_invited_and_none_is_waited_for():
    # no body at all: nothing to read
    body, calls = _body({}, [])
    assert asyncio.run(body.drain()) and calls[0] == 0
    # a client waiting for "100 Continue" has sent nothing: do not invite it
    body, calls = _body({"content-length": "300", "expect": "100-continue"}, [b"x" * 300])
    assert not asyncio.run(body.drain()) and calls[0] == 0
    # once the app asked for the body (the server sent "100 Continue"), it is drained
    body, calls = _body({"content-length": "300", "expect": "100-continue"}, [b"x" * 100] * 3)
    asyncio.run(body.receive())
    assert asyncio.run(body.drain()) and body.seen == 300


def test_a_body_over_the_limit_is_refused_as_it_arrives():
    body, _ = _body({"transfer-encoding": "chunked"}, [b"x" * 600] * 3)
    asyncio.run(body.receive())
    with pytest.raises(ServeError) as e:
        asyncio.run(body.receive())
    assert e.value.code == "payload_too_large" and e.value.status == 413

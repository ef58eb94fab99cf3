"""``tlearn serve`` at its limits, on the shared server (an API key, a 10 MB body limit):
the key is needed except by the probes; idle uploads take no place in the inference queue
and get 408 after the body's deadline; a refused body is read, so ordinary clients read
their 413 (not a connection reset) and keep the connection; an upload flood stays within
the memory budget ``ServeConfig`` states, with no thread per connection."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.serve_corpus import jpeg
from tests.served import (
    SHARED_KEY,
    SHARED_LIMITS,
    Served,
    chunked_upload,
    raw_exchange,
    shared_server,
)
from tlearn.serve import ERROR_CODES, ServeConfig

KEY = SHARED_KEY
MAX_BODY = 10 * 1024 * 1024
CONFIG = ServeConfig(**SHARED_LIMITS)  # as served: the decoding threads are this machine's
AUTH = b"X-API-Key: " + KEY.encode() + b"\r\n"


@pytest.fixture(scope="module")
def server(request, calibration_set, tmp_path_factory) -> Served:
    served = shared_server(request, calibration_set, tmp_path_factory)
    assert CONFIG.max_body_bytes == MAX_BODY
    return served


def _code(status: int, body: bytes | str) -> str:
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["message"]
    assert ERROR_CODES[error["code"]][0] == status
    return str(error["code"])


def _post(data: bytes, length: int | None = None) -> bytes:
    """A raw ``POST /v1/predict`` with the key, closing after the answer."""
    return (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Connection: close\r\n" + AUTH + b"Content-Length: %d\r\n\r\n" % (length or len(data))
    ) + data


def test_the_api_key_is_needed_except_by_the_probes(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        image = {"content": jpeg(), "headers": {"content-type": "image/jpeg"}}
        missing = client.post("/v1/predict", **image)
        assert missing.status_code == 401 and _code(401, missing.text) == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post(
            "/v1/predict",
            content=jpeg(),
            headers={"content-type": "image/jpeg", "x-api-key": KEY + "x"},
        )
        assert wrong.status_code == 401
        for header in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            ok = client.post(
                "/v1/predict", content=jpeg(), headers={"content-type": "image/jpeg", **header}
            )
            assert ok.status_code == 200, ok.text
        assert client.get("/metrics").status_code == 401
        assert client.get("/v1/model").status_code == 401
        for open_path in ("/livez", "/readyz", "/"):
            assert client.get(open_path).status_code == 200
        assert 'data-auth="1"' in client.get("/").text


def test_idle_uploads_take_no_place_in_the_inference_queue(server):
    model = httpx.get(server.url + "/v1/model", headers={"x-api-key": KEY}, timeout=30).json()
    cap = model["limits"]["max_queue"]
    # more idle uploads than the queue has places: each sent its headers, no body
    with contextlib.ExitStack() as stack:
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            for _ in range(cap + 2)
        ]
        t0 = time.monotonic()
        for s in idle:
            s.sendall(_post(b"", length=1000))
        time.sleep(0.2)  # the server has them all
        ok = httpx.post(
            server.url + "/v1/predict",
            content=jpeg(),
            headers={"content-type": "image/jpeg", "x-api-key": KEY},
            timeout=10,
        )
        assert ok.status_code == 200, ok.text
        # answered while the idle ones still hold their connections, not after their 408
        assert time.monotonic() - t0 < CONFIG.body_timeout
        for s in idle:
            reply = b""
            with contextlib.suppress(ConnectionResetError):
                while part := s.recv(65536):
                    reply += part
            head, _, body = reply.partition(b"\r\n\r\n")
            assert _code(int(head.split()[1]), body) == "request_timeout"
        assert time.monotonic() - t0 < CONFIG.body_timeout + 2


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 1 << 20):
        yield data[i : i + (1 << 20)]


def test_a_refused_body_is_read_so_http_client_reads_its_413(server):
    body = bytes(MAX_BODY * 12 // 10)  # 12 MB against the 10 MB limit
    headers = {"Content-Type": "image/jpeg", "X-API-Key": KEY}
    with contextlib.closing(
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    ) as conn:
        for chunked in (False, True):
            if chunked:
                conn.request("POST", "/v1/predict", _chunks(body), headers, encode_chunked=True)
            else:  # Content-Length: refused before one byte is read, then read and dropped
                conn.request("POST", "/v1/predict", body, headers)
            r = conn.getresponse()
            assert r.status == 413 and _code(413, r.read()) == "payload_too_large"
            assert r.getheader("connection") != "close"  # all read: the connection goes on
        conn.request("POST", "/v1/predict", jpeg(), headers)
        assert conn.getresponse().status == 200


def test_a_refused_body_is_read_so_httpx_reads_its_413(server):
    body = bytes(MAX_BODY * 12 // 10)
    headers = {"content-type": "image/jpeg", "x-api-key": KEY}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for content in (body, _chunks(body)):
            r = client.post("/v1/predict", content=content, headers=headers)
            assert r.status_code == 413 and _code(413, r.text) == "payload_too_large"
            assert r.headers.get("connection") != "close"
        # past what is worth reading (4 bodies), it answers at once and closes
        t0 = time.monotonic()
        status, text = raw_exchange(server.port, _post(b"", length=50 * MAX_BODY))
        assert status == 413 and time.monotonic() - t0 < 1


def test_an_upload_flood_stays_within_the_stated_memory_budget(server):
    with httpx.Client(base_url=server.url, timeout=30, headers={"x-api-key": KEY}) as client:
        ok = client.post("/v1/predict", content=jpeg(), headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200  # the decoding threads exist before the baseline
    idle, idle_threads = server.rss_kb() * 1024, server.n_threads()
    server.reset_peak_rss()
    floods = [
        lambda: raw_exchange(server.port, _post(bytes(MAX_BODY)))[0],  # a full body
        lambda: raw_exchange(server.port, _post(bytes(MAX_BODY + 1)))[0],  # one byte over
        lambda: chunked_upload(server.port, 2 * MAX_BODY, AUTH),  # cut off at the limit
        lambda: raw_exchange(server.port, _post(bytes(MAX_BODY // 2), MAX_BODY))[0],  # stalls
    ]
    statuses: list[int] = []
    threads_seen = [idle_threads]
    done = threading.Event()

    def hammer(i: int) -> None:
        for _ in range(2):
            statuses.append(floods[i % len(floods)]())

    def watch() -> None:
        while not done.wait(0.05):
            threads_seen.append(server.n_threads())

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [threading.Thread(target=hammer, args=(i,)) for i in range(24)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(120)
    done.set()
    watcher.join()
    peak = server.rss_kb(peak=True) * 1024
    # every answer read (no reset): the body's verdict (not an image), too large, too
    # slow, or no room in the upload buffer or the queue
    assert len(statuses) == 48 and set(statuses) <= {408, 413, 415, 503}, statuses
    assert {408, 413, 415} <= set(statuses), statuses
    budget = CONFIG.memory_budget_bytes(idle, connections=len(clients))
    assert peak <= budget, f"peak {peak / 2**20:.0f} MB, budget {budget / 2**20:.0f} MB"
    # coroutines, not a thread per connection: at most the decoding threads not yet started
    assert max(threads_seen) <= idle_threads + CONFIG.n_decode_workers - 1, threads_seen
    with httpx.Client(base_url=server.url, timeout=30, headers={"x-api-key": KEY}) as client:
        ok = client.post("/v1/predict", content=jpeg(), headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200
        metrics = client.get("/metrics").text
    assert "\ntlearn_body_bytes 0.0\n" in metrics  # every body given back
    assert not list(server.tmpdir.iterdir()), "the server wrote temporary files"


def test_the_budget_is_what_the_bodies_can_hold():
    config = ServeConfig(max_body_mb=10, max_pixels=1_000_000, decode_workers=2)
    mb = 2**20
    assert config.upload_buffer_bytes == 80 * mb  # 8 bodies by default
    extra = config.memory_budget_bytes(0) - 50 * mb  # beyond the margin
    assert extra == 80 * mb + 2 * (2 * 10 * mb + 12 * 1_000_000)
    assert ServeConfig(upload_buffer_mb=30, max_body_mb=10).upload_buffer_bytes == 30 * mb
    with pytest.raises(ValueError, match="upload_buffer_mb"):
        ServeConfig(upload_buffer_mb=5, max_body_mb=10)
    assert ServeConfig(body_timeout_s=5, timeout_s=2).body_timeout == 2

"""``tlearn serve`` for real: uvicorn in a subprocess on 127.0.0.1 (the server shared with
the other serve modules, and ``tlearn serve`` itself for SIGTERM), called with httpx and
raw sockets. Served predictions equal ``tlearn predict``'s; a generated corpus of hostile
requests gets one JSON 4xx each and never a 5xx; ``/readyz`` during warm-up; SIGTERM under
load loses no accepted request; mounted in another app, the server's threads stop with it.
The limits (auth, slow and refused uploads, memory) are in ``test_serve_limits.py``."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.serve_corpus import corpus, jpeg, multipart, raw_corpus
from tests.served import SHARED_KEY, Served, fitted_model, raw_exchange, shared_server
from tlearn.data.images import read_bytes
from tlearn.serve import ERROR_CODES


@pytest.fixture(scope="module")
def model_file(calibration_set, tmp_path_factory) -> Path:
    return fitted_model(calibration_set, tmp_path_factory)


@pytest.fixture(scope="module")
def server(request, calibration_set, tmp_path_factory) -> Served:
    return shared_server(request, calibration_set, tmp_path_factory)


def _client(server: Served) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, headers={"x-api-key": SHARED_KEY})


@pytest.fixture(scope="module")
def images(calibration_set) -> list[tuple[str, bytes]]:
    paths = list(calibration_set[0][::10][:12])
    return [(p, read_bytes(p)) for p in paths]


def _error(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] in ERROR_CODES
    assert body["error"]["message"]
    return str(body["error"]["code"])


def test_served_predictions_equal_tlearn_predict(server, model_file, images, tmp_path):
    out = tmp_path / "predict.jsonl"
    cli = subprocess.run([sys.executable, "-m", "tlearn", "predict", str(model_file),
                          *[p for p, _ in images], "-o", str(out), "--top-k", "3"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(expected) == len(images)

    def same(predictions, row):
        assert [p["label"] for p in predictions] == row["top_labels"]
        for p, q in zip(predictions, row["top_probabilities"], strict=True):
            assert p["score"] == pytest.approx(q, abs=1e-4)  # other batch sizes: rounding

    with _client(server) as client:
        for (name, data), row in zip(images, expected, strict=True):
            r = client.post("/v1/predict", files={"file": (Path(name).name, data)})
            assert r.status_code == 200, r.text
            body = r.json()
            same(body["predictions"], row)
            assert set(body["timing_ms"]) == {"decode", "queue", "inference", "total"}
            assert body["model"]["n_classes"] == 3
        name, data = images[0]
        raw = client.post("/v1/predict", content=data, headers={"content-type": "image/jpeg"})
        same(raw.json()["predictions"], expected[0])
        doc = {"inputs": base64.b64encode(data).decode(), "parameters": {"top_k": 2}}
        hf = client.post("/v1/predict", json=doc)
        assert [p["label"] for p in hf.json()["predictions"]] == expected[0]["top_labels"][:2]
        many = client.post("/v1/predict", files=[("file", (n, d)) for n, d in images])
        results = many.json()["results"]
        assert len(results) == len(images)
        for result, row in zip(results, expected, strict=True):
            same(result["predictions"], row)


def test_every_hostile_request_gets_its_json_4xx_and_the_server_lives_on(server):
    failures = []
    with _client(server) as client:
        for name, method, path, headers, body, status, code in corpus():
            r = client.request(method, path, headers=headers, content=body)
            if r.status_code != status or _error(r) != code:
                failures.append((name, r.status_code, r.text[:200]))
        for name, raw in raw_corpus():
            status, body = raw_exchange(server.port, raw)
            if status != 400 or json.loads(body)["error"]["code"] != "bad_request":
                failures.append((name, status, body[:200]))
        assert not failures, failures
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
    assert server.proc.poll() is None
    assert "Traceback" not in server.output()
    assert not list(server.tmpdir.iterdir()), "the server wrote temporary files"
    assert 'tlearn_requests_total{route="/v1/predict",status="500"}' not in metrics
    assert 'tlearn_rejections_total{reason="unsupported_format"}' in metrics


def test_one_bad_image_among_15_good_leaves_the_15_answered_exactly_as_alone(server, images):
    good = [(f"{i}.jpg", jpeg((96 + 8 * i, 80), seed=i)) for i in range(15)]
    files = good[:7] + [("broken.jpg", good[0][1][:300])] + good[7:]
    with _client(server) as client:
        together = client.post("/v1/predict", files=[("file", f) for f in files]).json()
        alone = [client.post("/v1/predict", files={"file": f}).json() for f in good]
    results = together["results"]
    assert results[7]["error"]["code"] == "corrupt_image"
    assert "broken.jpg" in results[7]["error"]["message"]
    rest = results[:7] + results[8:]
    for mixed, single in zip(rest, alone, strict=True):
        assert [p["label"] for p in mixed["predictions"]] == [
            p["label"] for p in single["predictions"]
        ]
        for p, q in zip(mixed["predictions"], single["predictions"], strict=True):
            # batched with others vs alone: the engine's float rounding differs (~2e-5)
            assert p["score"] == pytest.approx(q["score"], abs=1e-4)


def test_routes_metrics_docs_and_the_page(server, calibration_set):
    with _client(server) as client:
        client.post("/v1/predict", content=jpeg(), headers={"content-type": "image/jpeg"})
        model = client.get("/v1/model").json()
        metrics = client.get("/metrics").text
        spec = client.get("/openapi.json").json()
        docs = client.get("/docs")
        page = client.get("/")
    assert model["classes"] == sorted(set(calibration_set[1]))
    assert model["engine"] == "torch" and model["limits"]["max_batch_size"] == 4
    pipeline_full = min(4, os.cpu_count() or 1) + 1  # decoding threads + the engine
    assert model["limits"]["max_queue"] >= pipeline_full and model["limits"]["auth"] is True
    for name in (
        "tlearn_requests_total",
        "tlearn_queue_seconds_bucket",
        "tlearn_decode_seconds_bucket",
        "tlearn_inference_seconds_bucket",
        "tlearn_batch_size_bucket",
        "tlearn_queue_depth",
        "tlearn_rejections_total",
    ):
        assert name in metrics, name
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "image/*", "application/json"}
    assert "corrupt_image" in spec["info"]["description"]
    assert docs.status_code == 200
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text
    assert len(page.content) < 60_000
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_readyz_during_warmup_and_sigterm_under_load_loses_nothing(model_file):
    # a cap above the 8 clients, so the slow upload below is surely admitted
    with Served(
        model_file, "--max-batch-size", "4", "--max-queue", "32", wait_ready=False
    ) as server:
        server.wait_live()
        first = httpx.get(server.url + "/readyz", timeout=5)
        server.wait("/readyz", 200, timeout=180)
        assert first.status_code == 503 and _error(first) == "not_ready"
        statuses: list[tuple[int, str]] = []
        stop = threading.Event()
        image = jpeg((640, 480))

        def load() -> None:
            with _client(server) as client:
                while not stop.is_set():
                    try:
                        r = client.post(
                            "/v1/predict", content=image, headers={"content-type": "image/jpeg"}
                        )
                    except httpx.TransportError:
                        return  # the socket closed after the drain: nothing was accepted
                    code = "" if r.status_code == 200 else _error(r)
                    statuses.append((r.status_code, code))
                    if code == "shutting_down":
                        return

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        end = time.monotonic() + 60  # real load first: a busy machine answers slower
        while sum(1 for s, _ in statuses if s == 200) <= 10 and time.monotonic() < end:
            time.sleep(0.05)
        # an upload still arriving when SIGTERM comes: in flight, so it must be answered
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        slow.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: %d\r\n\r\n" % len(image) + image[:1000]
        )
        time.sleep(0.3)
        server.proc.send_signal(15)
        time.sleep(0.3)
        draining = httpx.get(server.url + "/readyz", timeout=5)
        refused = httpx.post(
            server.url + "/v1/predict",
            content=image,
            headers={"content-type": "image/jpeg"},
            timeout=5,
        )
        slow.sendall(image[1000:])
        reply = b""
        while part := slow.recv(65536):
            reply += part
        slow.close()
        rc = server.proc.wait(60)
        stop.set()
        for t in threads:
            t.join(30)
        log = server.output()
    assert rc == 0, log
    assert draining.status_code == 503 and _error(draining) == "shutting_down"
    assert refused.status_code == 503 and _error(refused) == "shutting_down"
    assert refused.headers["retry-after"] == "1"
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert b'"predictions"' in reply
    assert {s for s, _ in statuses} <= {200, 503}, statuses
    assert {c for s, c in statuses if s == 503} <= {"shutting_down", "overloaded"}
    ok = sum(1 for s, _ in statuses if s == 200)
    assert ok > 10
    answered = int(log.rsplit("stopped: ", 1)[1].split()[0])
    assert answered == ok + 1, log  # every prediction answered was received (+ the slow one)


@pytest.mark.parametrize("parent", ["unaware", "enters its lifespan", "a loop per request"])
def test_mounted_in_another_app_its_threads_stop_with_the_parent(model_file, parent):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tlearn.serve import create_app

    before = set(threading.enumerate())
    classifier = create_app(str(model_file), max_batch_size=2)

    @asynccontextmanager
    async def lifespan(app):
        if parent == "enters its lifespan":  # the documented way: loads at start-up
            async with classifier.router.lifespan_context(classifier):
                yield
        else:  # a parent that knows nothing of it: it starts at its first request
            yield

    def started() -> list[str]:
        return [t.name for t in set(threading.enumerate()) - before if t.name.startswith("tlearn")]

    outer = FastAPI(lifespan=lifespan)
    outer.mount("/classifier", classifier)
    client = TestClient(outer)  # without `with`, each request runs its own event loop
    with contextlib.nullcontext(client) if parent == "a loop per request" else client:
        end = time.monotonic() + 120
        while client.get("/classifier/readyz").status_code != 200:
            assert time.monotonic() < end
            time.sleep(0.05)
        r = client.post("/classifier/v1/predict", files={"file": ("a.jpg", jpeg())})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
        if parent != "a loop per request":
            assert "tlearn-engine" in started() and any("tlearn-decode" in n for n in started())
    assert started() == []


def test_multipart_helper_round_trips():
    body = multipart([("file", "a.jpg", b"abc"), ("top_k", None, b"2")])
    from tlearn.serve.uploads import parse_body

    upload = parse_body("multipart/form-data; boundary=b0undary", body, 4)
    assert upload.images == [("a.jpg", b"abc")] and upload.params == {"top_k": "2"}


def test_a_request_past_its_deadline_gets_504_and_its_work_is_dropped(model_file):
    from fastapi.testclient import TestClient

    from tlearn import Predictor
    from tlearn.serve import create_app

    predictor = Predictor.load(model_file)
    fast = predictor.predict_pixels

    def slow(pixels, **kwargs):
        time.sleep(0.6)
        return fast(pixels, **kwargs)

    predictor.predict_pixels = slow  # the engine takes longer than the deadline
    app = create_app(predictor, timeout_s=0.3, max_queue=8)
    with TestClient(app) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.02)
        image = {"content": jpeg(), "headers": {"content-type": "image/jpeg"}}
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: client.post("/v1/predict", **image), range(3)))
        assert [r.status_code for r in answers] == [504] * 3
        assert {_error(r) for r in answers} == {"timeout"}
        time.sleep(1.5)  # the engine finishes its batch and drops the rest unrun
        metrics = client.get("/metrics").text
    assert 'tlearn_rejections_total{reason="timeout"}' in metrics
    batches = float(re.search(r"^tlearn_batch_size_count (\S+)$", metrics, re.M).group(1))
    assert batches <= 2  # warm-up excluded: what had expired never reached the engine

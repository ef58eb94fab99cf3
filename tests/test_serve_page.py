"""The server's web page in headless Chromium (Debian's), driven by Playwright: drop a
file, choose one, paste one; the top-k bars appear; a non-image and a too-large file get
their message before anything is uploaded; no request leaves 127.0.0.1. The screenshot is
kept in ``test-artifacts/serve-page.png``."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from tests.serve_corpus import jpeg
from tests.served import SHARED_KEY, SHARED_LIMITS, Served, shared_server


@pytest.fixture(scope="module")
def server(request, calibration_set, tmp_path_factory) -> Served:
    return shared_server(request, calibration_set, tmp_path_factory)


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
KEY = SHARED_KEY  # auth is on

_DISPATCH = """([b64, name, type, how]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type }));
  if (how === "drop") {
    const zone = document.getElementById("drop");
    for (const kind of ["dragenter", "dragover", "drop"]) {
      zone.dispatchEvent(new DragEvent(kind, { dataTransfer: data, bubbles: true,
                                                 cancelable: true }));
    }
  } else {
    document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true,
                                                          cancelable: true }));
  }
}"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is needed to test the page; `make test` installs Debian's")
    return path


def launch(playwright: Any) -> Any:
    """Debian's Chromium, headless, with nothing of its own going to the network."""
    return playwright.chromium.launch(
        executable_path=_chromium(),
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"],
    )  # fmt: skip


def test_the_page_classifies_dropped_chosen_and_pasted_images(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    photo = jpeg((400, 300), seed=5)
    assert SHARED_LIMITS["top_k"] == 3 and SHARED_LIMITS["max_body_mb"] == 10
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 900, "height": 800})
        requests: list[tuple[str, str]] = []
        page.on("request", lambda r: requests.append((r.method, r.url)))
        page.goto(server.url + "/")
        assert page.is_visible("#key")  # auth is on: the key field shows
        page.fill("#key", KEY)
        page.press("#key", "Tab")  # the key is used at once: the model's line fills in
        # Playwright's wait_for_function polls with eval, which the page's CSP forbids
        # (it passes only when the first try already holds): expect polls without it
        expect(page.locator("#model")).to_contain_text("3 classes", timeout=30_000)

        def predicted() -> list[str]:
            page.wait_for_selector("#bars .bar", timeout=30_000)
            assert page.is_hidden("#message")
            return page.locator("#bars .bar .name").all_inner_texts()

        page.set_input_files("#file", files=[
            {"name": "chosen.jpg", "mimeType": "image/jpeg", "buffer": photo}])  # fmt: skip
        chosen = predicted()
        assert len(chosen) == 3 and all(t.strip().endswith("%") for t in chosen)
        assert page.get_attribute("#preview", "src").startswith("blob:")
        b64 = base64.b64encode(photo).decode()
        page.evaluate(_DISPATCH, [b64, "dropped.jpg", "image/jpeg", "drop"])
        assert predicted() == chosen
        page.evaluate(_DISPATCH, [b64, "pasted.jpg", "image/jpeg", "paste"])
        assert predicted() == chosen
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

        posts = sum(1 for m, _ in requests if m == "POST")
        assert posts == 3
        page.set_input_files("#file", files=[
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just words"}])  # fmt: skip
        page.wait_for_selector("#message:not([hidden])")
        assert "not an image" in page.inner_text("#message")
        big = b"\xff\xd8\xff\xe0" + bytes(12_000_000)
        page.set_input_files("#file", files=[
            {"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": big}])  # fmt: skip
        expect(page.locator("#message")).to_contain_text("up to", timeout=30_000)
        assert "10.0 MB" in page.inner_text("#message")
        assert sum(1 for m, _ in requests if m == "POST") == posts  # nothing was uploaded
        browser.close()
    hosts = {urlsplit(url).hostname for _, url in requests if not url.startswith("blob:")}
    assert hosts == {"127.0.0.1"}, requests
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / "serve-page.png"
    shutil.copy(tmp_path / "page.png", kept)
    pixels = np.asarray(Image.open(kept).convert("RGB")).astype(int)
    blue_bars = (pixels[:, :, 2] > 150) & (pixels[:, :, 0] < 60)
    assert blue_bars.sum() > 500, "no bars rendered in the screenshot"


def _shown(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => ({
      bars: document.querySelectorAll("#bars .bar").length,
      result: !document.getElementById("result").hidden,
      error: document.getElementById("message").hidden ? null
             : document.getElementById("message").textContent })""")


def test_an_error_replaces_the_previous_images_results(server):
    """Good image, then a file the server refuses, then one the page refuses, each time
    after results: the error shows alone, and the next good image shows its results alone.
    Screenshots before, after the upload and after the error go to ``test-artifacts/``."""
    from playwright.sync_api import sync_playwright

    photo = jpeg((64, 48), seed=7)
    corrupt = photo[:200]  # a JPEG's first bytes (the page's check passes), cut short
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(server.url + "/")
        page.fill("#key", KEY)
        page.screenshot(path=str(ARTIFACTS / "serve-page-before.png"))

        def send(name: str, data: bytes, mime: str = "image/jpeg") -> dict[str, Any]:
            page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
            # a selector, not a function: the page's CSP forbids the eval that takes
            page.wait_for_selector("body[data-state=done], #message:not([hidden])", timeout=30_000)
            return _shown(page)

        assert send("good.jpg", photo) == {"bars": 3, "result": True, "error": None}
        page.screenshot(path=str(ARTIFACTS / "serve-page-after-upload.png"))
        refused = send("cut.jpg", corrupt)
        assert refused["bars"] == 0 and not refused["result"], refused
        assert "corrupt_image" in refused["error"]
        page.screenshot(path=str(ARTIFACTS / "serve-page-after-error.png"))
        assert send("good.jpg", photo) == {"bars": 3, "result": True, "error": None}
        refused = send("notes.txt", b"just words", "text/plain")  # refused by the page itself
        assert refused["bars"] == 0 and not refused["result"], refused
        assert "not an image" in refused["error"]
        assert send("good.jpg", photo) == {"bars": 3, "result": True, "error": None}
        browser.close()


def test_an_answer_overtaken_by_a_newer_image_is_dropped(server):
    """The first image's answer is held back until the second's is shown (top 1 bar, then
    top 3): when it comes, it does not replace the newer results."""
    from playwright.sync_api import sync_playwright

    photo = jpeg((64, 48), seed=8)
    held: list[Any] = []
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.fill("#key", KEY)
        page.route(
            "**/v1/predict*", lambda route: route.continue_() if held else held.append(route)
        )
        page.fill("#topk", "1")
        with page.expect_request("**/v1/predict*"):
            page.set_input_files("#file", files=[{"name": "first.jpg", "mimeType": "image/jpeg",
                                                  "buffer": photo}])  # fmt: skip
        page.fill("#topk", "3")
        page.set_input_files("#file", files=[{"name": "second.jpg", "mimeType": "image/jpeg",
                                              "buffer": photo}])  # fmt: skip
        page.wait_for_selector("body[data-state=done]", timeout=30_000)
        assert _shown(page) == {"bars": 3, "result": True, "error": None}
        assert len(held) == 1
        with page.expect_response("**/v1/predict*"):
            held[0].continue_()
        page.wait_for_timeout(500)  # the page reads the late answer's body
        assert _shown(page) == {"bars": 3, "result": True, "error": None}
        browser.close()

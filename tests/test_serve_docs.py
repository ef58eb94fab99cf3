"""The API page (/docs: Swagger UI) in headless Chromium: it renders every route from files
the server serves itself, with no request leaving 127.0.0.1 (FastAPI's own page loads its
script from a CDN, and is blank offline), and without the API key."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.served import SHARED_KEY, Served, shared_server
from tests.test_serve_page import launch

ROUTES = ["/livez", "/readyz", "/metrics", "/v1/model", "/v1/predict"]


@pytest.fixture(scope="module")
def server(request, calibration_set, tmp_path_factory) -> Served:
    return shared_server(request, calibration_set, tmp_path_factory)


def test_the_api_page_renders_offline_without_the_key(server):
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = launch(p)  # no key is given: the page and its files are open
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server.url + "/docs")
        # every route's line drawn (a locator waits without eval, which a CSP may forbid)
        page.locator(".opblock-summary-path").nth(len(ROUTES) - 1).wait_for(timeout=20_000)
        text = page.inner_text("body")
        browser.close()
    for route in ROUTES:
        assert route in text, (route, text[:2000])
    assert "tlearn image classifier" in text
    assert "corrupt_image" in text  # the description's table of error codes
    hosts = {urlsplit(url).hostname for url in requests if not url.startswith(("data:", "blob:"))}
    assert hosts == {"127.0.0.1"}, requests


def test_the_api_pages_files_are_open_and_counted(server):
    """The page's files need no key (a browser cannot send it for them); an unknown one is
    the usual JSON 404; requests for them share one metrics label. /redoc, whose ReDoc
    fetches its logo from a CDN, is not served."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        script = client.get("/docs/static/swagger-ui-bundle.js")
        missing = client.get("/docs/static/nothing.js")
        redoc = client.get("/redoc", headers={"X-API-Key": SHARED_KEY})
        metrics = client.get("/metrics", headers={"X-API-Key": SHARED_KEY}).text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert 'route="/docs/static"' in metrics
    assert redoc.status_code == 404 and "/docs" in redoc.json()["error"]["message"]

"""The denoising viewer at /: its files, offline; pinned words through the API; the page in a real browser."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient
from torch import nn

from remask.serve import create_app
from remask.serve.page import ASSETS
from test_serve import CFG, TOK, byte_model
from test_serve_live import live

CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshot: `REMASK_SCREENSHOT=docs/serve-page.png pytest tests/test_serve_page.py -k chromium`
# refreshes it; otherwise the test's screenshot goes to its temporary directory (a test run never
# rewrites a tracked file).
SCREENSHOT_ENV = "REMASK_SCREENSHOT"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def mdm() -> nn.Module:
    return byte_model()


@pytest.fixture(scope="module")
def client(mdm: nn.Module) -> TestClient:
    return TestClient(create_app(mdm, TOK, defaults=CFG, model_name="tiny"))


def steps_of(text: str) -> list[tuple[str, dict]]:
    """An event stream's (event name, JSON data) pairs, ``message`` for unnamed ones, [DONE] left out."""
    out = []
    for block in filter(None, text.split("\n\n")):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        if lines["data"] != "[DONE]":
            out.append((lines.get("event", "message"), json.loads(lines["data"])))
    return out


def test_page_and_assets_are_served_offline(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    linked = set(re.findall(r'(?:src|href)="([^"]+)"', page.text))
    assert linked == {f"/static/{name}" for name in ASSETS}  # every file the page loads is one remask serves
    kinds = {}
    for path in sorted(linked):
        r = client.get(path)
        assert r.status_code == 200
        kinds[path] = r.headers["content-type"]
    assert kinds == {"/static/viewer.css": "text/css; charset=utf-8",
                     "/static/viewer.js": "text/javascript; charset=utf-8"}
    for text in [page.text, *(client.get(p).text for p in linked)]:
        assert "http://" not in text and "https://" not in text  # no CDN, no external URL at all
        assert "//cdn" not in text and "@import" not in text


def test_unknown_static_file_is_an_openai_404(client: TestClient):
    for path in ["/static/nope.js", "/static/..%2Fapp.py", "/static/index.html"]:
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_page_routes_stay_out_of_the_api_schema(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_pinned_word_sits_at_its_position(client: TestClient):
    body = {"prompt": "def f(x):", "max_tokens": 16, "temperature": 0, "pins": [{"position": 5, "text": "cat"}]}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    [choice] = r.json()["choices"]
    assert "cat" in choice["text"] and choice["finish_reason"] == "length"
    streamed = client.post("/v1/completions", json={**body, "stream": True, "stream_steps": True})
    events = steps_of(streamed.text)
    assert events[0] == ("pins", {"object": "remask.pins", "index": 0, "length": 16,
                                  "pinned": [[5, ord("c"), "c"], [6, ord("a"), "a"], [7, ord("t"), "t"]]})
    canvas = {c: tok for c, tok, _ in events[0][1]["pinned"]}
    for name, data in events[1:]:
        if name == "step":
            assert not {c for c, *_ in data["commits"]} & {5, 6, 7}  # the pinned columns never change
            canvas.update({c: tok for c, tok, *_ in data["commits"]})
    assert sorted(canvas) == list(range(16)) and [canvas[c] for c in (5, 6, 7)] == TOK.encode("cat")
    answer = "".join(d["choices"][0]["text"] for n, d in events if n == "message" and d["choices"])
    assert answer == choice["text"]  # streamed and plain agree, both hold the word


def test_pins_in_chat_and_batched_with_equal_pins(client: TestClient):
    body = {"messages": [{"role": "user", "content": "Name an animal"}], "max_tokens": 16,
            "pins": [{"position": 0, "text": "dog"}, {"position": 10, "text": "!"}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    assert text.startswith("dog") and "!" in text


@pytest.mark.parametrize(("pins", "message"), [
    ("cat", "'pins' must be a list"),
    ([{"position": 16, "text": "x"}], "must be an integer in 0..15"),
    ([{"position": -1, "text": "x"}], "must be an integer in 0..15"),
    ([{"position": True, "text": "x"}], "must be an integer"),
    ([{"position": 14, "text": "cat"}], "runs past max_tokens 16"),
    ([{"position": 2, "text": ""}], "'text' must be a non-empty string"),
    ([{"position": 2, "text": 7}], "'text' must be a non-empty string"),
    ([{"position": 2, "word": "x"}], "must be an object with 'position' and 'text'"),
    ([{"position": 1, "text": "ab"}, {"position": 2, "text": "c"}], "overlap"),
    ([{"position": k, "text": "a"} for k in range(17)], "at most 16"),
])
def test_bad_pins_are_400s(client: TestClient, pins, message: str):
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 16, "pins": pins})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_pins_need_a_diffusion_checkpoint():
    ar = TestClient(create_app(byte_model(causal=True), TOK, model_name="tiny-ar"))
    r = ar.post("/v1/completions", json={"prompt": "a", "max_tokens": 8, "pins": [{"position": 2, "text": "x"}]})
    assert r.status_code == 400 and "needs a masked diffusion checkpoint" in r.json()["error"]["message"]
    assert "\n" not in r.json()["error"]["message"]
    assert ar.get("/").status_code == 200  # the page itself still serves an AR model (without pins)


# ----------------------------------------------------------------------------- in a real browser

def _browser_or_skip() -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium; .ci/run installs it)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is missing (pip install 'remask[browser]'; no browser download needed)")


def test_page_in_chromium(mdm: nn.Module, tmp_path: Path):
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    with live(create_app(mdm, TOK, defaults=CFG, model_name="tiny")) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 600})
            outside: list[str] = []
            page.on("request", lambda req: None if req.url.startswith(base[:-3]) else outside.append(req.url))
            page.goto(base[:-3] + "/")
            expect(page.locator("#model")).to_contain_text("tiny")
            # the defaults arrive after the model card; filling a field before then would be overwritten
            expect(page.locator("body")).to_have_attribute("data-ready", "1")
            _generate(page, expect)
            _replay(page, expect)
            _pin(page, expect)
            shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "serve-page.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:4] == b"\x89PNG"
            assert outside == []  # the page asked nothing of anyone but this server
        finally:
            browser.close()


def _generate(page, expect) -> None:
    """Submit a prompt; the canvas starts masked and ends with every cell committed."""
    page.fill("#prompt", "def add(a, b):")
    for field, value in [("#max_tokens", "16"), ("#steps", "16"), ("#block_length", "8"), ("#temperature", "0")]:
        page.fill(field, value)
    page.click("#generate")
    expect(page.locator("#status")).to_have_text(re.compile(r"^(done|failed)"), timeout=10_000)
    assert page.locator("#status").text_content().startswith("done"), page.locator("#error").text_content()
    expect(page.locator("#canvas .cell")).to_have_count(16)
    expect(page.locator("#canvas .cell.masked")).to_have_count(0)
    assert page.locator("#canvas .cell.committed").count() == 16
    assert page.evaluate("remaskViewer.run.frames.length") > 1


def _replay(page, expect) -> None:
    """The slider goes back: the first frame has the first step's commits and masks elsewhere."""
    page.focus("#replay")
    page.keyboard.press("Home")
    expect(page.locator("#frame")).to_have_text(re.compile(r"^step 0 / "))
    expect(page.locator("#canvas .cell.masked")).to_have_count(16)
    page.keyboard.press("ArrowRight")
    first = page.evaluate("remaskViewer.run.frames[0].commits.length")
    expect(page.locator("#canvas .cell.committed")).to_have_count(first)
    expect(page.locator("#canvas .cell.masked")).to_have_count(16 - first)
    page.click("input[name=colour][value=confidence]")
    page.keyboard.press("End")


def _pin(page, expect) -> None:
    """Pin a word by clicking a cell for its position; the answer holds it there."""
    page.locator("#canvas .cell").nth(6).click()
    assert page.input_value("#pin-pos") == "6"
    page.fill("#pin-text", "cat")
    page.click("#pin-add")
    expect(page.locator("#pin-list li")).to_have_count(1)
    page.click("input[name=colour][value=step]")
    for field, value in [("#max_tokens", "32"), ("#steps", "32"), ("#block_length", "16")]:
        page.fill(field, value)  # a longer answer, for the screenshot
    page.click("#generate")
    expect(page.locator("#status")).to_have_text(re.compile(r"^done"), timeout=10_000)
    expect(page.locator("#canvas .cell")).to_have_count(32)
    expect(page.locator("#canvas .cell.pinned")).to_have_count(3)
    assert page.locator("#canvas .cell").nth(6).inner_text() == "c"
    assert "cat" in page.inner_text("#answer")
    page.focus("#replay")
    for _ in range(12):
        page.keyboard.press("ArrowLeft")  # a frame mid-way, pins and masks both visible, for the screenshot
    page.locator("#replay").blur()

"""The example useChat page (``examples/ai-sdk-chat``, built from npm packages with esbuild) in
real headless Chromium, served from another origin than the gateway (CORS), against the mock
upstream: a reload mid-answer resumes it (``resume: true``), and Stop ends the generation
upstream, not only the page's connection.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from node_support import npm_installed
from ssegate.gateway import Settings, create_app
from ssegate.testing import MockRequest, MockUpstream, RunningServer, run_server

pytestmark = pytest.mark.browser

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ai-sdk-chat"
ANSWER = ".msg.assistant"


@pytest.fixture(scope="session")
def example_site() -> Iterator[RunningServer]:
    """The example built (``npm ci``, ``npm run build``) and served by a static server."""
    folder = npm_installed(EXAMPLE)
    subprocess.run(
        ["npm", "run", "build", "--silent"],
        cwd=folder,
        check=True,
        timeout=120,
        capture_output=True,
    )
    site_app = Starlette(routes=[Mount("/", StaticFiles(directory=folder / "static", html=True))])
    with run_server(site_app) as site:
        yield site


@pytest.fixture(scope="module")
def ui_gateway(example_site: RunningServer, mock_upstream: MockUpstream) -> Iterator[RunningServer]:
    # A reload leaves the stream without a reader for a moment: with a long grace only an
    # explicit stop can end it early, so the Stop test shows that the DELETE did.
    settings = Settings.from_options(
        provider="openai",
        base_url=mock_upstream.url + "/v1",
        model="mock",
        cors_origin=(example_site.url,),
        disconnect_grace=60,
    )
    with run_server(create_app(settings)) as server:
        yield server


def open_chat(page: Page, site: RunningServer, gateway: RunningServer) -> None:
    page.goto(f"{site.url}/?gateway={gateway.url}")
    expect(page.locator("#status")).to_have_attribute("data-status", "ready")


def ask(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def the_request(mock: MockUpstream, word: str) -> MockRequest:
    mine = [r for r in mock.requests if word in json.dumps(r.json)]
    assert len(mine) == 1, "one generation upstream, however often the page reloads"
    return mine[0]


def test_a_reload_mid_answer_resumes_it_once(
    page: Page, example_site: RunningServer, ui_gateway: RunningServer, mock: MockUpstream
) -> None:
    open_chat(page, example_site, ui_gateway)
    word = "w" + secrets.token_hex(4)
    ask(page, f"{word} [[tokens:60]] [[interval_ms:40]]")
    answer = page.locator(ANSWER)
    expect(answer).to_contain_text("tok3")  # mid-answer
    assert "chat=" in page.url
    page.reload()
    expect(page.locator("#status")).to_have_attribute("data-status", "streaming")  # resumed
    expect(page.locator("#status")).to_have_attribute("data-status", "ready", timeout=15_000)
    sent = the_request(mock, word)
    assert sent.ended_at is not None
    assert not sent.cancelled
    expect(page.locator(".msg.user")).to_have_count(1)
    expect(answer).to_have_count(1)
    assert answer.locator(".text").inner_text() == sent.text  # not doubled, not cut
    # Settled now: a further reload shows it from storage and resumes nothing.
    page.reload()
    expect(answer).to_have_count(1)
    assert answer.locator(".text").inner_text() == sent.text
    expect(page.locator("#status")).to_have_attribute("data-status", "ready")


def test_stop_ends_the_generation_upstream(
    page: Page, example_site: RunningServer, ui_gateway: RunningServer, mock: MockUpstream
) -> None:
    open_chat(page, example_site, ui_gateway)
    word = "w" + secrets.token_hex(4)
    ask(page, f"{word} [[tokens:2000]] [[interval_ms:20]]")
    expect(page.locator(ANSWER)).to_contain_text("tok3")
    index = next(i for i, r in enumerate(mock.requests) if word in json.dumps(r.json))
    page.click("#stop")
    mock.wait_for_close(index, timeout=5)
    sent = the_request(mock, word)
    assert sent.cancelled
    assert sent.tokens_sent < 2000
    expect(page.locator("#status")).to_have_attribute("data-status", "ready")
    kept = page.locator(ANSWER).locator(".text").inner_text()
    assert kept
    assert sent.text.startswith(kept)
    page.reload()  # nothing to resume: the stopped answer stays as it was
    expect(page.locator("#status")).to_have_attribute("data-status", "ready")
    expect(page.locator(ANSWER)).to_have_count(1)
    assert page.locator(ANSWER).locator(".text").inner_text() == kept

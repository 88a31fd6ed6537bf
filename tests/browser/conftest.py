"""Real headless Chromium (Debian's ``/usr/bin/chromium``) against a real gateway and mock LLM.

Never ``playwright install``: the browser is the system one (``SSEGATE_CHROMIUM`` overrides the
path). When it is missing these tests fail with a clear message (CI installs it); they are not
skipped.

A failing test leaves a screenshot of its page in ``test-output/<test name>.png``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import API_KEY, CHROMIUM, CHROMIUM_ARGS, RETRY_MS
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from ssegate.gateway import Settings, create_app
from ssegate.testing import DroppingProxy, MockUpstream, RunningServer, run_server


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, for the screenshot-on-failure fixture."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="package")
def playwright_() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright_: Playwright) -> Iterator[Browser]:
    executable = os.environ.get("SSEGATE_CHROMIUM", CHROMIUM)
    if not Path(executable).is_file():
        pytest.fail(
            f"{executable} is missing: the browser tests need Debian's chromium "
            "(apt-get install chromium; or point SSEGATE_CHROMIUM at a Chromium binary). "
            "They never download a browser.",
            pytrace=False,
        )
    browser = playwright_.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="package")
def gateway(mock_upstream: MockUpstream) -> Iterator[RunningServer]:
    settings = Settings.from_options(
        provider="openai", base_url=mock_upstream.url + "/v1", model="mock", retry_ms=RETRY_MS
    )
    with run_server(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="package")
def keyed_gateway(mock_upstream: MockUpstream) -> Iterator[RunningServer]:
    """A gateway that wants an API key on /v1/ (the page itself stays public)."""
    settings = Settings.from_options(
        provider="openai",
        base_url=mock_upstream.url + "/v1",
        model="mock",
        retry_ms=RETRY_MS,
        api_keys=(f"browser:{API_KEY}",),
    )
    with run_server(create_app(settings)) as server:
        yield server


@pytest.fixture
def page(request: pytest.FixtureRequest, browser: Browser, mock: MockUpstream) -> Iterator[Page]:
    """A fresh browser context (own localStorage) and page; the mock's records cleared."""
    mock.clear()
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert not errors, f"uncaught errors in the page: {errors}"
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            out = Path(request.config.rootpath) / "test-output"
            out.mkdir(exist_ok=True)
            name = re.sub(r"[^\w.-]+", "_", request.node.name)
            with contextlib.suppress(Exception):
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
        context.close()


@pytest.fixture
def proxy(gateway: RunningServer) -> Iterator[DroppingProxy]:
    """A cuttable TCP proxy in front of the gateway."""
    p = DroppingProxy(gateway.port).start()
    try:
        yield p
    finally:
        p.stop()

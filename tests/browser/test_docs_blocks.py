"""The ``html`` and ``js`` blocks of README.md and docs/*.md, run in real Chromium.

The rest of the docs' blocks run in ``tests/test_docs_snippets.py``, which says what a block
means. An ``html`` block is the page, a ``js`` block its module script, served from the
gateway's origin so that ``/static/ssegate.js`` and ``/v1/…`` are the gateway's; the only
rewrite is the default address ``localhost:8000``. The page must throw nothing and, with
``<!-- docs-test: console: TEXT -->`` above the block, log ``TEXT``.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from docs_snippets import Block, browser_blocks, point_at
from ssegate.testing import RunningServer

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("block", browser_blocks(), ids=lambda b: f"{b.path}:{b.line}")
def test_block_runs_in_the_browser(block: Block, page: Page, gateway: RunningServer) -> None:
    text = point_at(block.text, gateway.port)
    html = text if block.lang == "html" else f'<script type="module">\n{text}</script>\n'
    url = gateway.url + "/docs-block.html"
    page.route(url, lambda route: route.fulfill(content_type="text/html", body=html))
    console: list[str] = []
    errors: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if block.kind != "console":
        page.goto(url)
    else:
        try:
            with page.expect_console_message(lambda m: m.text == block.arg, timeout=15_000):
                page.goto(url)
        except PlaywrightTimeout:
            pytest.fail(
                f"{block.where}: the page never logged {block.arg!r}; it logged {console}, "
                f"it threw {errors}",
                pytrace=False,
            )
    assert not errors, f"{block.where}: the page threw {errors}"

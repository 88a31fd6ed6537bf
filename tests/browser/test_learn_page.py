"""The seed's page at ``/learn/``: a plain EventSource on ``/learn/sseChat``, in real Chromium."""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect

from ssegate.testing import DroppingProxy, RunningServer

pytestmark = pytest.mark.browser


def test_learn_page_gets_start_and_all_ten_messages(page: Page, gateway: RunningServer) -> None:
    page.goto(gateway.url + "/learn/?interval=0.05")
    messages = page.locator("#events .message")
    expect(messages).to_have_count(11)
    texts = messages.all_inner_texts()
    assert texts[0] == "New message: start"
    for i, text in enumerate(texts[1:], start=1):
        assert re.fullmatch(rf"New message: Thread-\d+: the next index:{i}", text), text
    # complete() closes the stream; the seed's onerror reports it and closes the EventSource.
    expect(page.locator("#events .error")).to_have_count(1)
    assert messages.count() == 11


@pytest.mark.parametrize("path", ["/learn/?interval=0.05", "/"])
def test_pages_name_their_icon_so_no_favicon_ico_404(
    page: Page, gateway: RunningServer, proxy: DroppingProxy, path: str
) -> None:
    # Without an icon in the page Chromium asks for /favicon.ico: a 404 in every access log.
    page.goto(proxy.url + path)
    icon = page.locator("link[rel=icon]")
    expect(icon).to_have_count(1)
    icon_path = urlsplit(icon.evaluate("link => link.href")).path
    deadline = time.monotonic() + 10
    # Chromium fetches the icon after the page loaded, outside the page's own requests.
    while not proxy.sent(f"get {icon_path} ".encode()):
        assert time.monotonic() < deadline, f"the browser never asked for {icon_path}"
        time.sleep(0.02)
    assert proxy.sent(b"get /favicon.ico") == []
    response = httpx.get(gateway.url + icon_path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"

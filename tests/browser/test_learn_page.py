"""The seed's page at ``/learn/``: a plain EventSource on ``/learn/sseChat``, in real Chromium."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from ssegate.testing import RunningServer

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

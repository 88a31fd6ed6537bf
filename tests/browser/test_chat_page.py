"""The chat page at ``/`` in real headless Chromium, against the gateway and the mock LLM."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from browser_support import API_KEY
from playwright.sync_api import Page, expect

from ssegate.testing import DroppingProxy, MockUpstream, RunningServer

pytestmark = pytest.mark.browser

LAST = ".msg.assistant >> nth=-1"

# Records every distinct text the last answer shows, from the first mutation on.
RECORD_STATES = """() => {
  window.__states = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('.msg.assistant .answer');
    if (!answers.length) return;
    const text = answers[answers.length - 1].textContent;
    if (window.__states[window.__states.length - 1] !== text) window.__states.push(text);
  }).observe(document.getElementById('messages'),
              {childList: true, subtree: true, characterData: true});
}"""


def ask(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def stored_chat(page: Page) -> dict[str, Any]:
    raw = page.evaluate("() => localStorage.getItem('ssegate.chat.v1')")
    assert raw, "the conversation was not saved"
    result: dict[str, Any] = json.loads(raw)
    return result


def wait_finished(page: Page, status: str = "done", timeout: float = 15_000) -> None:
    page.locator(LAST).and_(page.locator(f"[data-status={status}]")).wait_for(timeout=timeout)


def test_answer_grows_token_by_token_and_renders_exactly(
    page: Page, gateway: RunningServer, mock: MockUpstream
) -> None:
    page.goto(gateway.url + "/")
    expect(page.locator("#model-name")).to_have_text("mock")  # from GET /v1/models
    expect(page.locator("#demo-badge")).to_be_hidden()
    page.evaluate(RECORD_STATES)
    # Shift+Enter is a new line, not a send.
    page.fill("#input", "[[tokens:24]][[interval_ms:40]][[lang:mixed]] 你好")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("second line 🚀")
    assert page.locator(".msg").count() == 0
    page.press("#input", "Enter")

    expect(page.locator("#stop")).to_be_visible()
    wait_finished(page)
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_visible()

    sent = mock.requests[0]
    assert sent.json["messages"][-1]["content"].endswith("你好\nsecond line 🚀")
    expect(page.locator(".msg.user .bubble")).to_have_text(
        "[[tokens:24]][[interval_ms:40]][[lang:mixed]] 你好\nsecond line 🚀"
    )
    answer = page.locator(LAST).locator(".answer")
    final = answer.inner_text()
    assert final == sent.text.strip()
    assert "中文·🚀" in final
    states: list[str] = page.evaluate("() => window.__states")
    grown = [s.strip() for s in states if s.strip()]
    assert len(set(grown)) >= 5, grown
    assert all(final.startswith(s) for s in grown), grown  # it only ever grew
    # The saved conversation holds the exact text, trailing space and all.
    saved = stored_chat(page)["messages"][-1]
    assert saved["content"] == sent.text
    assert saved["status"] == "done"
    meta = page.locator(LAST).locator(".meta").inner_text()
    assert "to first token" in meta
    assert "tokens/s" in meta
    assert "out tokens" in meta
    assert "mock" in meta


def test_markdown_renders_and_hostile_html_runs_nothing(
    page: Page, gateway: RunningServer, mock: MockUpstream
) -> None:
    hostile = (
        "# Title\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "```python\nprint('hi')\n```\n\n"
        "<img src=x onerror=\"window.__xss='img'\"> "
        "<script>window.__xss='script'</script> "
        "<a href=\"javascript:window.__xss='a'\">js-link</a> "
        "<a href=\" jav&#x09;ascript:window.__xss='entity'\">entity-link</a> "
        "<javascript:window.__xss='autolink'> "
        "<svg onload=\"window.__xss='svg'\"></svg> "
        "<iframe src=\"javascript:window.__xss='iframe'\"></iframe> "
        "<a href='https://example.com/' onclick=\"window.__xss='onclick'\">safe-link</a> "
        "<form action='javascript:window.__xss=1'><button>form-button</button></form> end"
    )
    page.goto(gateway.url + "/")
    page.evaluate("() => { delete window.__xss; }")
    ask(page, f"[[text:{hostile}]][[interval_ms:5]]")
    wait_finished(page)
    answer = page.locator(LAST).locator(".answer")

    # Markdown: heading, list, table, highlighted code block.
    expect(answer.locator("h1")).to_have_text("Title")
    expect(answer.locator("ul > li")).to_have_count(2)
    expect(answer.locator("table th")).to_have_count(2)
    expect(answer.locator("pre code.language-python")).to_have_text("print('hi')")

    # Nothing active survived the sanitiser.
    for tag in ("script", "img", "svg", "iframe", "form", "button:not(.copy)", "style"):
        assert answer.locator(tag).count() == 0, tag
    handlers = answer.evaluate(
        "el => [...el.querySelectorAll('*')].flatMap(n => [...n.attributes]"
        ".filter(a => a.name.startsWith('on') || a.name === 'style').map(a => a.name))"
    )
    assert handlers == []
    hrefs = answer.evaluate("el => [...el.querySelectorAll('a')].map(a => a.getAttribute('href'))")
    assert hrefs.count("https://example.com/") == 1
    assert all(h is None or h.startswith("https://") for h in hrefs), hrefs
    for link in answer.locator("a").all():
        assert link.get_attribute("rel") == "noopener noreferrer nofollow"
        if link.get_attribute("href") is None:
            link.click()  # a neutralised javascript: link does nothing
    expect(answer).to_contain_text("js-link")
    expect(answer).to_contain_text("end")
    assert page.evaluate("() => window.__xss") is None
    assert mock.requests[0].text == hostile


def test_stop_cancels_the_stream_on_the_server(
    page: Page, gateway: RunningServer, mock: MockUpstream
) -> None:
    page.goto(gateway.url + "/")
    ask(page, "[[tokens:500]][[interval_ms:20]]")
    answer = page.locator(LAST).locator(".answer")
    expect(answer).to_contain_text("tok5")
    page.click("#stop")
    wait_finished(page, "cancelled")
    expect(page.locator(LAST).locator(".conn")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_visible()

    stream_id = page.locator(LAST).get_attribute("data-stream-id")
    assert stream_id is not None
    assert stream_id.startswith("st_")
    status = httpx.get(f"{gateway.url}/v1/streams/{stream_id}").json()
    assert status["status"] == "cancelled"
    mock.wait_for_close(0, timeout=5)  # the upstream request's connection was closed
    upstream = mock.requests[0]
    assert upstream.cancelled
    assert upstream.tokens_sent < 500
    assert stored_chat(page)["messages"][-1]["status"] == "cancelled"


@pytest.mark.parametrize("mode", ["fetch", "eventsource"])
def test_dropped_connection_resumes_without_loss_or_repeat(
    page: Page, proxy: DroppingProxy, mock: MockUpstream, mode: str
) -> None:
    page.goto(f"{proxy.url}/?mode={mode}")
    ask(page, "[[tokens:80]][[interval_ms:25]][[lang:mixed]]")
    answer = page.locator(LAST).locator(".answer")
    expect(answer).to_contain_text("tok8·")
    assert proxy.drop_all() > 0
    expect(page.locator(LAST).locator(".conn")).to_have_text("reconnecting…")
    wait_finished(page)
    sent = mock.requests[0]
    assert sent.tokens_sent == 80
    assert answer.inner_text() == sent.text.strip()
    assert stored_chat(page)["messages"][-1]["content"] == sent.text
    assert len(mock.requests) == 1  # resumed the same generation, did not start another
    needle = b"last-event-id: " if mode == "fetch" else b"last_event_id="
    assert proxy.sent(needle), "the reconnection did not ask for the events after its last id"


def test_reload_mid_answer_resumes_and_expired_stream_shows_error_with_retry(
    page: Page, gateway: RunningServer, mock: MockUpstream
) -> None:
    page.goto(gateway.url + "/")
    ask(page, "[[tokens:60]][[interval_ms:25]]")
    expect(page.locator(LAST).locator(".answer")).to_contain_text("tok10")
    page.wait_for_function(
        "() => (JSON.parse(localStorage.getItem('ssegate.chat.v1')).messages[1].lastEventId|0) > 5"
    )
    page.reload()
    wait_finished(page)
    sent = mock.requests[0]
    assert page.locator(LAST).locator(".answer").inner_text() == sent.text.strip()
    assert stored_chat(page)["messages"][-1]["content"] == sent.text
    assert len(mock.requests) == 1

    # A stream that no longer exists: the HTTP 404 is shown plainly, with a Retry button.
    page.evaluate(
        """() => {
          const chat = JSON.parse(localStorage.getItem('ssegate.chat.v1'));
          Object.assign(chat.messages[1],
                        {status: 'streaming', streamId: 'st_gone', lastEventId: '3'});
          localStorage.setItem('ssegate.chat.v1', JSON.stringify(chat));
        }"""
    )
    page.reload()
    wait_finished(page, "error")
    error = page.locator(LAST).locator(".error-box")
    expect(error).to_be_visible()
    expect(error).to_contain_text("not_found")
    retry = error.locator("button.retry")
    expect(retry).to_be_enabled()
    retry.click()
    wait_finished(page)
    assert len(mock.requests) == 2
    assert page.locator(LAST).locator(".answer").inner_text() == mock.requests[1].text.strip()


def tokens_per_second(page: Page) -> float:
    meta = page.locator(LAST).locator(".meta").inner_text()
    match = re.search(r"([0-9.]+) tokens/s", meta)
    assert match, meta
    return float(match.group(1))


@pytest.mark.parametrize("mode", ["fetch", "eventsource"])
def test_tokens_per_second_after_a_reload_counts_only_live_tokens(
    page: Page, gateway: RunningServer, mock: MockUpstream, mode: str
) -> None:
    # 20 tokens/s from the upstream. Reloaded half way, the page gets the first half again as
    # one burst: counted as streamed, it would show about twice the rate.
    page.goto(f"{gateway.url}/?mode={mode}")
    ask(page, "[[tokens:60]][[interval_ms:50]]")
    page.wait_for_function(
        "() => (JSON.parse(localStorage.getItem('ssegate.chat.v1')).messages[1].lastEventId|0) > 28"
    )
    page.reload()
    wait_finished(page, timeout=20_000)
    assert len(mock.requests) == 1
    rate = tokens_per_second(page)
    # Never faster than the upstream sent (a loaded machine only makes it slower).
    assert 5 < rate < 20 * 1.25, rate


@pytest.mark.parametrize("mode", ["fetch", "eventsource"])
def test_reasoning_apart_and_error_event_with_retry(
    page: Page, gateway: RunningServer, mock: MockUpstream, mode: str
) -> None:
    page.goto(f"{gateway.url}/?mode={mode}")
    ask(page, "[[reasoning:6]][[tokens:6]][[fault:stream_error]][[after:9]]")
    wait_finished(page, "error")
    last = page.locator(LAST)
    sent = mock.requests[0]
    reasoning = last.locator("details.reasoning")
    expect(reasoning).to_be_visible()
    reasoning.locator("summary").click()
    expect(reasoning.locator(".reasoning-text")).to_have_text(sent.reasoning)
    assert last.locator(".answer").inner_text() == sent.text.strip()
    assert "think" not in last.locator(".answer").inner_text()
    error = last.locator(".error-box")
    expect(error).to_be_visible()
    expect(error.locator("code")).to_contain_text("upstream_")  # the error event's own code
    error.locator("button.retry").click()
    mock.wait_for_request(1)
    wait_finished(page, "error")
    expect(page.locator(".msg.assistant")).to_have_count(1)  # retried in place
    assert page.locator(LAST).locator(".answer").inner_text() == mock.requests[1].text.strip()


def test_new_chat_clears_the_conversation(page: Page, gateway: RunningServer) -> None:
    page.goto(gateway.url + "/")
    ask(page, "[[tokens:3]]")
    wait_finished(page)
    page.reload()
    expect(page.locator(".msg")).to_have_count(2)  # kept across a reload
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    assert stored_chat(page)["messages"] == []


def test_demo_model_says_it_is_one_on_a_phone(browser: Any) -> None:
    from ssegate.gateway import Settings, create_app
    from ssegate.testing import run_server

    with run_server(create_app(Settings.from_options(demo_rate=0))) as demo:
        context = browser.new_context(
            viewport={"width": 375, "height": 720}, is_mobile=True, has_touch=True
        )
        try:
            page = context.new_page()
            page.goto(demo.url + "/")
            expect(page.locator("#demo-badge")).to_be_visible()
            expect(page.locator("#model-name")).to_have_text("ssegate-demo")
            ask(page, "你好 👋")
            wait_finished(page)
            answer = page.locator(LAST).locator(".answer")
            expect(answer).to_contain_text("你好 👋")
            expect(answer.locator("pre code")).to_have_count(1)
            # Nothing is wider than the phone's screen.
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 375
        finally:
            context.close()


def test_api_key_from_settings_with_eventsource(
    page: Page, keyed_gateway: RunningServer, mock: MockUpstream
) -> None:
    page.goto(f"{keyed_gateway.url}/?mode=eventsource")
    expect(page.locator("#model-name")).to_have_text("default model")  # /v1/models said 401
    ask(page, "[[tokens:12]][[interval_ms:5]]")
    wait_finished(page, "error")
    error = page.locator(LAST).locator(".error-box")
    expect(error).to_contain_text("Enter an API key in Settings")
    page.click("#settings-button")
    page.fill("#api-key", API_KEY)
    page.click("#settings-save")
    expect(page.locator("#settings")).to_be_hidden()
    expect(page.locator("#model-name")).to_have_text("mock")
    error.locator("button.retry").click()
    wait_finished(page)
    assert page.locator(LAST).locator(".answer").inner_text() == mock.requests[0].text.strip()
    saved = page.evaluate("() => localStorage.getItem('ssegate.settings.v1')")
    assert API_KEY in saved

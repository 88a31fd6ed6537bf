"""The useChat door (``/v1/ui/chat``) over real sockets: what it sends upstream, who may resume
or stop a chat, and resume and stop across two instances on one Redis. The ai package's own
client is in ``test_ui_chat_js.py``; the parts' translation is unit-tested at the end.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway_helpers import Gateway, running_gateway
from instance_helpers import RedisServer
from ssegate.gateway import Settings, create_app
from ssegate.gateway.routes._ui_chat_parts import UIParts
from ssegate.store import StoredEvent
from ssegate.testing import MockRequest, MockUpstream, RunningServer, run_server

API = "/v1/ui/chat"
KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"


def nonce() -> str:
    return "n" + secrets.token_hex(4)


def chat_body(text: str, chat_id: str | None = None, **extra: Any) -> dict[str, Any]:
    user = {"id": secrets.token_hex(4), "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": chat_id or secrets.token_hex(8), "messages": [user], **extra}


def parts_of(text: str) -> list[dict[str, Any]]:
    """The JSON parts of a UI message stream body (``[DONE]`` must end it)."""
    datas = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas[:-1]]


def upstream_request(mock: MockUpstream, word: str) -> MockRequest:
    matches = [r for r in mock.requests if word in json.dumps(r.json)]
    assert len(matches) == 1, [r.json for r in mock.requests]
    return matches[0]


def arrived(mock: MockUpstream, index: int, word: str) -> int:
    """Wait for upstream request ``index`` (``len(mock.requests)`` before it was caused) and
    check that it is the one with ``word``."""
    assert word in json.dumps(mock.wait_for_request(index).json)
    return index


@pytest.fixture(scope="module")
def gw(mock_upstream: MockUpstream) -> Iterator[Gateway]:
    with running_gateway(mock_upstream, disconnect_grace=30) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def keyed(mock_upstream: MockUpstream) -> Iterator[Gateway]:
    keys = (f"alice:{KEY_A}", f"bob:{KEY_B}")
    with running_gateway(mock_upstream, api_keys=keys, disconnect_grace=30) as gateway:
        yield gateway


# -- the request ---------------------------------------------------------------------------------


def test_the_stream_comes_with_the_protocol_header_and_its_stream_id(
    gw: Gateway, mock: MockUpstream
) -> None:
    word = nonce()
    r = httpx.post(gw.url + API, json=chat_body(f"{word} [[tokens:3]]"))
    assert r.status_code == 200
    assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert r.headers["content-type"].startswith("text/event-stream")
    stream_id = r.headers["x-ssegate-stream-id"]
    parts = parts_of(r.text)
    assert parts[0] == {"type": "start", "messageId": stream_id}
    assert parts[1]["messageMetadata"] == {"streamId": stream_id, "model": "mock"}
    text = "".join(p["delta"] for p in parts if p["type"] == "text-delta")
    assert text == upstream_request(mock, word).text
    # It is a gateway stream like any other, and it names its chat.
    events = httpx.get(f"{gw.url}/v1/streams/{stream_id}/events").text
    start = json.loads(events.split("data: ", 1)[1].split("\n", 1)[0])
    assert start["ui_chat_id"]
    assert "ui_message_id" not in start


def test_system_tools_and_settings_reach_the_upstream(gw: Gateway, mock: MockUpstream) -> None:
    word = nonce()
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    body = chat_body(
        f"{word} [[tokens:2]]", system="be brief", tools=[tool], max_tokens=50, temperature=0.5
    )
    assert httpx.post(gw.url + API, json=body).status_code == 200
    sent = upstream_request(mock, word).json
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["tools"] == [tool]
    assert (sent["max_tokens"], sent["temperature"]) == (50, 0.5)


def test_images_go_to_an_openai_upstream_as_image_url_parts(
    gw: Gateway, mock: MockUpstream
) -> None:
    word = nonce()
    url = "data:image/png;base64,iVBORw0KGgo="
    body = chat_body(f"{word} [[tokens:2]]")
    body["messages"][0]["parts"].append({"type": "file", "mediaType": "image/png", "url": url})
    assert httpx.post(gw.url + API, json=body).status_code == 200
    content = upstream_request(mock, word).json["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": f"{word} [[tokens:2]]"},
        {"type": "image_url", "image_url": {"url": url}},
    ]


def test_a_continued_assistant_message_keeps_its_id(gw: Gateway, mock: MockUpstream) -> None:
    word = nonce()
    body = chat_body(f"{word} [[tokens:2]]")
    call = {
        "type": "tool-get_weather",
        "toolCallId": "call_1",
        "state": "output-available",
        "input": {"city": "Paris"},
        "output": "sunny",
    }
    body["messages"].append({"id": "msg-7", "role": "assistant", "parts": [call]})
    r = httpx.post(gw.url + API, json=body)
    assert parts_of(r.text)[0] == {"type": "start", "messageId": "msg-7"}
    sent = upstream_request(mock, word).json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        # The chat id's form is in the body's schema: a 422 naming the field, as for the rest.
        ({"id": "a/b"}, 422, "invalid_request"),
        ({"id": ".."}, 422, "invalid_request"),
        ({"id": "x" * 201}, 422, "invalid_request"),
        ({"messages": []}, 422, "invalid_request"),
        ({"surprise": 1}, 422, "invalid_request"),
        ({"trigger": "resume-stream"}, 422, "invalid_request"),
        ({"max_tokens": 0}, 422, "invalid_request"),
        ({"model": "no-such-model"}, 404, "model_not_found"),
        ({"messages": [{"id": "1", "role": "user", "parts": [{"type": "text"}]}]}, 422, None),
        ({"messages": [{"id": "1", "role": "user", "parts": ["hi"]}]}, 422, "invalid_request"),
    ],
)
def test_bad_requests_get_a_json_error(
    gw: Gateway, change: dict[str, Any], status: int, code: str | None
) -> None:
    r = httpx.post(gw.url + API, json={**chat_body("hi"), **change})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == (code or "invalid_message")
    if code is None:
        assert error["param"] == "messages[0].parts[0]"


def test_files_are_refused_where_the_upstream_takes_none() -> None:
    with running_gateway(MockUpstream(), provider="demo") as gw:  # text only
        body = chat_body("hi")
        file = {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AA=="}
        body["messages"][0]["parts"].append(file)
        r = httpx.post(gw.url + API, json=body)
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "messages[0].parts[1]"
    assert "no files" in r.json()["error"]["message"]


def test_the_path_is_configurable(mock_upstream: MockUpstream) -> None:
    with running_gateway(mock_upstream, ui_chat_path="/v1/chat/ai") as gw:
        assert httpx.post(gw.url + "/v1/chat/ai", json=chat_body("[[tokens:1]]")).status_code == 200
        assert httpx.get(gw.url + "/v1/chat/ai/nope/stream").status_code == 204
        assert httpx.post(gw.url + API, json=chat_body("hi")).status_code == 404


# -- resume, stop, ownership -----------------------------------------------------------------------


def test_resume_replays_a_running_stream_then_204_once_it_ends(
    gw: Gateway, mock: MockUpstream
) -> None:
    chat_id, word = secrets.token_hex(8), nonce()
    with (
        httpx.Client(base_url=gw.url, timeout=10) as client,
        client.stream(
            "POST", API, json=chat_body(f"{word} [[tokens:30]] [[interval_ms:10]]", chat_id)
        ) as first,
    ):
        lines = first.iter_lines()
        assert next(lines).startswith("data: ")  # it has started; now the page goes away
    resumed = httpx.get(f"{gw.url}{API}/{chat_id}/stream", timeout=10)
    assert resumed.status_code == 200
    assert resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
    parts = parts_of(resumed.text)
    assert parts[0]["type"] == "start"
    assert parts[-1] == {"type": "finish", "finishReason": "stop"}
    text = "".join(p["delta"] for p in parts if p["type"] == "text-delta")
    assert text == upstream_request(mock, word).text
    assert httpx.get(f"{gw.url}{API}/{chat_id}/stream").status_code == 204


def test_resume_is_refused_past_the_subscriber_limit(mock_upstream: MockUpstream) -> None:
    chat_id = secrets.token_hex(8)
    body = chat_body("[[tokens:500]] [[interval_ms:20]]", chat_id)
    with (
        running_gateway(mock_upstream, max_subscribers=1, disconnect_grace=30) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as client,
        client.stream("POST", API, json=body) as first,
    ):
        lines = first.iter_lines()
        assert any('"text-delta"' in next(lines) for _ in range(10))  # following: the one
        refused = client.get(f"{API}/{chat_id}/stream")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_subscribers"
        assert refused.headers["retry-after"]
        client.delete(f"{API}/{chat_id}/stream")


def test_stop_closes_the_upstream_request(gw: Gateway, mock: MockUpstream) -> None:
    chat_id, word = secrets.token_hex(8), nonce()
    body = chat_body(f"{word} [[tokens:500]] [[interval_ms:20]]", chat_id)
    index = len(mock.requests)
    with (
        httpx.Client(base_url=gw.url, timeout=10) as client,
        client.stream("POST", API, json=body) as live,
    ):
        stream_id = live.headers["x-ssegate-stream-id"]
        assert (
            client.delete(f"{API}/{chat_id}/stream", params={"stream_id": "st_other"}).status_code
            == 409
        )
        stopped = client.delete(f"{API}/{chat_id}/stream")
        assert stopped.status_code == 200
        assert stopped.json()["status"] == "cancelled"
        assert stopped.json()["id"] == stream_id
        mock.wait_for_close(arrived(mock, index, word))
        parts = parts_of(live.read().decode())
    assert parts[-1] == {"type": "abort", "reason": "client"}
    assert upstream_request(mock, word).cancelled
    assert httpx.get(f"{gw.url}{API}/{chat_id}/stream").status_code == 204
    assert httpx.delete(f"{gw.url}{API}/{secrets.token_hex(8)}/stream").status_code == 404


def test_a_new_message_stops_the_answer_it_replaces(gw: Gateway, mock: MockUpstream) -> None:
    chat_id, first, second = secrets.token_hex(8), nonce(), nonce()
    index = len(mock.requests)
    with (
        httpx.Client(base_url=gw.url, timeout=10) as client,
        client.stream(
            "POST", API, json=chat_body(f"{first} [[tokens:500]] [[interval_ms:20]]", chat_id)
        ),
    ):
        arrived(mock, index, first)
        r = client.post(API, json=chat_body(f"{second} [[tokens:2]]", chat_id))
        assert r.status_code == 200
    mock.wait_for_close(index)
    assert upstream_request(mock, first).cancelled
    assert not upstream_request(mock, second).cancelled


def test_a_chat_belongs_to_the_key_that_started_it(keyed: Gateway, mock: MockUpstream) -> None:
    chat_id = secrets.token_hex(8)
    a = {"authorization": f"Bearer {KEY_A}"}
    b = {"authorization": f"Bearer {KEY_B}"}
    body = chat_body("[[tokens:300]] [[interval_ms:20]]", chat_id)
    with (
        httpx.Client(base_url=keyed.url, timeout=10) as client,
        client.stream("POST", API, json=body, headers=a) as live,
    ):
        assert live.status_code == 200
        assert client.post(API, json=chat_body("hi")).status_code == 401
        assert client.get(f"{API}/{chat_id}/stream", headers=b).status_code == 404
        assert client.delete(f"{API}/{chat_id}/stream", headers=b).status_code == 404
        taken = client.post(API, json=chat_body("hi", chat_id), headers=b)
        assert (taken.status_code, taken.json()["error"]["code"]) == (409, "chat_id_taken")
        with client.stream("GET", f"{API}/{chat_id}/stream", headers=a) as resumed:
            assert resumed.status_code == 200
            assert next(resumed.iter_lines()).startswith('data: {"type":"start"')
        assert client.delete(f"{API}/{chat_id}/stream", headers=a).json()["status"] == "cancelled"


def test_a_page_on_another_origin_may_call_it(mock_upstream: MockUpstream) -> None:
    origin = "http://app.example"
    with running_gateway(mock_upstream, cors_origin=(origin,)) as gw:
        for method in ("POST", "GET", "DELETE"):
            pre = httpx.options(
                f"{gw.url}{API}/c1/stream" if method != "POST" else gw.url + API,
                headers={
                    "origin": origin,
                    "access-control-request-method": method,
                    "access-control-request-headers": "content-type, authorization",
                },
            )
            assert pre.status_code == 200, pre.text
            assert pre.headers["access-control-allow-origin"] == origin
        r = httpx.post(gw.url + API, json=chat_body("[[tokens:1]]"), headers={"origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
        assert "x-ssegate-stream-id" in r.headers["access-control-expose-headers"]


# -- two instances, one Redis ------------------------------------------------------------------


@pytest.fixture
def pair(
    redis_server: RedisServer, redis_prefix: str, mock: MockUpstream
) -> Iterator[tuple[RunningServer, RunningServer]]:
    settings = Settings.from_options(
        provider="openai",
        base_url=mock.url + "/v1",
        model="mock",
        store=redis_server.url,
        redis_prefix=redis_prefix,
        disconnect_grace=30,
    )
    with run_server(create_app(settings)) as a, run_server(create_app(settings)) as b:
        yield a, b


@pytest.mark.redis
def test_resume_and_stop_land_on_the_other_instance(
    pair: tuple[RunningServer, RunningServer], mock: MockUpstream
) -> None:
    a, b = pair
    chat_id, word = secrets.token_hex(8), nonce()
    body = chat_body(f"{word} [[tokens:40]] [[interval_ms:10]]", chat_id)
    with httpx.stream("POST", a.url + API, json=body, timeout=10) as first:
        assert next(first.iter_lines()).startswith("data: ")  # started on A; the page reloads
    resumed = httpx.get(f"{b.url}{API}/{chat_id}/stream", timeout=10)
    assert resumed.status_code == 200
    parts = parts_of(resumed.text)
    text = "".join(p["delta"] for p in parts if p["type"] == "text-delta")
    assert text == upstream_request(mock, word).text  # once: not doubled, not cut
    assert parts[-1]["type"] == "finish"
    assert httpx.get(f"{b.url}{API}/{chat_id}/stream").status_code == 204
    # Stop on B closes the upstream request A is making.
    word2 = nonce()
    body = chat_body(f"{word2} [[tokens:500]] [[interval_ms:20]]", chat_id)
    index = len(mock.requests)
    with httpx.stream("POST", a.url + API, json=body, timeout=10) as live:
        arrived(mock, index, word2)
        stopped = httpx.delete(f"{b.url}{API}/{chat_id}/stream", timeout=10)
        assert stopped.status_code in (200, 202)
        mock.wait_for_close(index)
        assert parts_of(live.read().decode())[-1]["type"] == "abort"


# -- the translation, unit by unit --------------------------------------------------------------


def events(*items: tuple[str, dict[str, Any]]) -> list[StoredEvent]:
    return [StoredEvent.build(i, e, orjson.dumps(d).decode()) for i, (e, d) in enumerate(items, 1)]


def translated(*items: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    parts = UIParts()
    wire = b"".join(b"".join(parts.translate(e)) for e in events(*items)).decode()
    return parts_of(wire)


def test_each_part_opens_and_closes_in_order() -> None:
    parts = translated(
        ("start", {"stream_id": "st_1", "model": "m", "created": 1}),
        ("reasoning", {"text": "think"}),
        ("delta", {"text": "a"}),
        ("tool_call", {"index": 0, "id": "c1", "name": "f", "arguments": '{"x":'}),
        ("tool_call", {"index": 0, "arguments": "1}"}),
        ("delta", {"text": "b"}),
        ("usage", {"prompt_tokens": 2, "completion_tokens": 3}),
        ("done", {"finish_reason": "stop"}),
    )
    assert [p["type"] for p in parts] == [
        "start", "message-metadata", "start-step",
        "reasoning-start", "reasoning-delta", "reasoning-end",
        "text-start", "text-delta", "text-end",
        "tool-input-start", "tool-input-delta", "tool-input-delta", "tool-input-available",
        "text-start", "text-delta", "message-metadata", "text-end", "finish-step", "finish",
    ]  # fmt: skip
    assert parts[12] == {
        "type": "tool-input-available", "toolCallId": "c1", "toolName": "f", "input": {"x": 1},
    }  # fmt: skip
    assert parts[13]["id"] != parts[6]["id"]  # a new text part after the tool call
    assert parts[15]["messageMetadata"] == {
        "usage": {"inputTokens": 2, "outputTokens": 3, "totalTokens": 5}
    }


def test_endings() -> None:
    start = ("start", {"stream_id": "st_1", "model": "m", "created": 1})
    cut = translated(start, ("delta", {"text": "a"}), ("cancelled", {"cause": "client"}))
    assert [p["type"] for p in cut[-3:]] == ["text-end", "finish-step", "abort"]
    failed = translated(
        start,
        ("tool_call", {"index": 0, "id": "c1", "name": "f", "arguments": "{not json"}),
        ("error", {"code": "upstream_error", "message": "boom", "retryable": True}),
    )
    assert failed[-5]["type"] == "tool-input-error"
    assert failed[-5]["input"] == "{not json"
    assert failed[-3:] == [
        {"type": "message-metadata", "messageMetadata": {"errorCode": "upstream_error"}},
        {"type": "error", "errorText": "boom"},
        {"type": "finish", "finishReason": "error"},
    ]
    reasons = [translated(start, ("done", {"finish_reason": r}))[-1] for r in ("length", "odd")]
    assert [p["finishReason"] for p in reasons] == ["length", "other"]


def test_the_docs_page_is_the_example_the_browser_test_runs() -> None:
    # docs/ai-sdk.md's React page can't run as a docs block; the example is that page, and
    # tests/browser/test_ui_chat_page.py builds and drives it in Chromium.
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "ai-sdk.md").read_text("utf-8")
    pages = re.findall(r"\n```jsx\n(.*?)```\n", doc, re.DOTALL)
    example = (root / "examples" / "ai-sdk-chat" / "src" / "main.jsx").read_text("utf-8")
    assert pages == [example]

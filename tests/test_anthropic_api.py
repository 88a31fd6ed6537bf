"""The Anthropic Messages API door, driven by the official ``anthropic`` SDK (sync and async)
against a real gateway on loopback, with the real mock upstream behind it speaking both the
OpenAI-compatible format (model ``mock``) and Anthropic's (model ``claude-mock``). Every
streamed event is checked against the SDK's own types."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic import Anthropic, AsyncAnthropic
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import OpenAI
from pydantic import TypeAdapter

from ssegate.codec import Decoder, ServerSentEvent
from ssegate.gateway import Settings, create_app
from ssegate.testing import MockRequest, MockUpstream, run_server

EVENT = TypeAdapter(RawMessageStreamEvent)
MESSAGE = TypeAdapter(Message)
ERROR = TypeAdapter(ErrorResponse)
BOTH = pytest.mark.parametrize("model", ["mock", "claude-mock"])
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
KEY = "sk-gateway-anthropic-0123"


@dataclass
class Gateway:
    url: str
    mock: MockUpstream

    def client(self, **options: Any) -> Anthropic:
        return Anthropic(base_url=self.url, api_key="sk-caller", max_retries=0, **options)

    def async_client(self, **options: Any) -> AsyncAnthropic:
        return AsyncAnthropic(base_url=self.url, api_key="sk-caller", max_retries=0, **options)

    def record(self, marker: str) -> MockRequest:
        """The upstream request whose body holds ``marker``."""
        for rec in reversed(self.mock.requests):
            if marker in json.dumps(rec.json, ensure_ascii=False):
                return rec
        raise AssertionError(f"no upstream request with {marker!r}")

    def status(self, stream_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/streams/{stream_id}")
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result


def model_map(path: Path, mock: MockUpstream) -> str:
    path.write_text(
        f'["mock"]\nprovider = "openai"\nbase_url = "{mock.url}/v1"\n\n'
        f'["claude-mock"]\nprovider = "anthropic"\nbase_url = "{mock.url}"\n',
        encoding="utf-8",
    )
    return str(path)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, mock_upstream: MockUpstream
) -> Iterator[Gateway]:
    models = model_map(tmp_path_factory.mktemp("anthropic") / "models.toml", mock_upstream)
    settings = Settings.from_options(
        model_map=models, disconnect_grace=0.3, upstream_idle_timeout=1.0
    )
    with run_server(create_app(settings)) as server:
        yield Gateway(server.url, mock_upstream)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[Anthropic]:
    with gateway.client() as sdk:
        yield sdk


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def raw_stream(
    gateway: Gateway, body: dict[str, Any]
) -> tuple[httpx.Response, list[ServerSentEvent]]:
    """POST ``body`` with ``stream: true``; the response and its SSE events, each checked
    against the SDK's types in strict mode (``ping`` and ``error`` included)."""
    with httpx.stream(
        "POST", gateway.url + "/v1/messages", json={**body, "stream": True}, timeout=10
    ) as response:
        raw = response.read()
    events = Decoder().feed(raw)
    for event in events:
        if event.event == "error":
            ERROR.validate_json(event.data or "", strict=True)
        elif event.event == "ping":  # the SDK skips it, and has no type for it
            assert json.loads(event.data or "") == {"type": "ping"}
        else:
            parsed = EVENT.validate_json(event.data or "", strict=True)
            assert parsed.type == event.event
    return response, events


def texts(events: list[ServerSentEvent]) -> str:
    out = ""
    for event in events:
        data = json.loads(event.data or "{}")
        if event.event == "content_block_delta" and data["delta"]["type"] == "text_delta":
            out += data["delta"]["text"]
    return out


# -- streaming -------------------------------------------------------------------------------


@BOTH
def test_create_stream_sends_anthropics_events_in_order(
    gateway: Gateway, client: Anthropic, model: str
) -> None:
    events = list(
        client.messages.create(
            model=model, max_tokens=64, messages=user(f"s1{model} [[tokens:5]]"), stream=True
        )
    )
    rec = gateway.record(f"s1{model} ")
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.id.startswith("msg_st_")
    assert start.message.model == model
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == rec.text == "tok0 tok1 tok2 tok3 tok4 "
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn"
    assert rec.usage is not None
    assert delta.usage.output_tokens == rec.usage["completion_tokens"] == 5
    assert delta.usage.input_tokens == rec.usage["prompt_tokens"]


@BOTH
def test_every_raw_event_validates_strictly_and_names_its_stream(
    gateway: Gateway, model: str
) -> None:
    body = {
        "model": model,
        "max_tokens": 64,
        "messages": user(f"s2{model} [[tokens:3]] [[reasoning:2]]"),
    }
    response, events = raw_stream(gateway, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    stream_id = response.headers["x-ssegate-stream-id"]
    assert response.headers["request-id"] == stream_id
    first = json.loads(events[0].data or "")
    assert first["message"]["id"] == f"msg_{stream_id}"
    kinds = [
        (e.event, json.loads(e.data or "{}").get("content_block", {}).get("type"))
        for e in events
        if e.event == "content_block_start"
    ]
    assert kinds == [("content_block_start", "thinking"), ("content_block_start", "text")]
    assert texts(events) == "tok0 tok1 tok2 "
    assert events[-1].event == "message_stop"
    # Gateway event k ends with the SSE event of id k: ids rise by one, none left out.
    ids = list(dict.fromkeys(int(e.id) for e in events if e.id))  # the decoder keeps the last
    assert ids == list(range(1, len(ids) + 1))
    status = httpx.get(f"{gateway.url}/v1/streams/{stream_id}").json()
    assert ids[-1] == status["last_event_id"]


def test_messages_stream_helper_text_stream_and_final_message(
    gateway: Gateway, client: Anthropic
) -> None:
    with client.messages.stream(
        model="claude-mock", max_tokens=64, messages=user("s3 [[tokens:6]] [[lang:mixed]]")
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    rec = gateway.record("s3 ")
    assert "".join(pieces) == rec.text
    assert "中文·🚀" in rec.text
    assert final.content[0].type == "text"
    assert final.content[0].text == rec.text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6


@pytest.mark.anyio
@BOTH
async def test_async_stream_helper(gateway: Gateway, model: str) -> None:
    async with gateway.async_client() as client:
        async with client.messages.stream(
            model=model, max_tokens=64, messages=user(f"s4{model} [[tokens:4]]")
        ) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
    rec = gateway.record(f"s4{model} ")
    assert "".join(pieces) == rec.text == "tok0 tok1 tok2 tok3 "
    assert final.content[0].type == "text"
    assert final.content[0].text == rec.text


def test_an_idle_stream_sends_anthropic_ping_events(
    tmp_path: Path, mock_upstream: MockUpstream
) -> None:
    settings = Settings.from_options(
        model_map=model_map(tmp_path / "models.toml", mock_upstream), heartbeat=0.1
    )
    body = {
        "model": "mock",
        "max_tokens": 64,
        "messages": user("p1 [[tokens:3]] [[interval_ms:400]]"),
    }
    with run_server(create_app(settings)) as server:
        response, events = raw_stream(Gateway(server.url, mock_upstream), body)
    assert response.status_code == 200
    pings = [e for e in events if e.event == "ping"]
    assert all(json.loads(p.data or "") == {"type": "ping"} for p in pings)
    # Heartbeats have no id (the usage report's ping has one).
    assert response.content.count(b'event: ping\ndata: {"type":"ping"}\n\n') >= 2
    assert texts(events) == "tok0 tok1 tok2 "
    assert events[-1].event == "message_stop"


# -- non-streaming ---------------------------------------------------------------------------


@BOTH
def test_non_streaming_returns_one_message(gateway: Gateway, client: Anthropic, model: str) -> None:
    message = client.messages.create(
        model=model,
        max_tokens=64,
        system="You are terse.",
        messages=user(f"n1{model} [[tokens:5]]"),
        stop_sequences=["END"],
        extra_body={"temperature": 0.5, "top_p": 0.9},  # this SDK has no parameters for them
    )
    rec = gateway.record(f"n1{model} ")
    MESSAGE.validate_python(message.model_dump(mode="json", exclude_none=True))
    assert message.id.startswith("msg_st_")
    assert message.model == model
    assert message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == rec.text
    assert message.stop_reason == "end_turn"
    assert rec.usage is not None
    assert message.usage.output_tokens == rec.usage["completion_tokens"] == 5
    assert message.usage.input_tokens == rec.usage["prompt_tokens"]
    upstream = rec.json
    assert upstream["max_tokens"] == 64
    assert upstream["temperature"] == 0.5
    assert upstream["top_p"] == 0.9
    if model == "mock":  # OpenAI's names
        assert upstream["messages"][0] == {"role": "system", "content": "You are terse."}
        assert upstream["stop"] == ["END"]
    else:
        assert upstream["system"] == "You are terse."
        assert upstream["stop_sequences"] == ["END"]


@pytest.mark.anyio
async def test_async_non_streaming(gateway: Gateway) -> None:
    async with gateway.async_client() as client:
        message = await client.messages.create(
            model="claude-mock",
            max_tokens=8,
            messages=user("n2 [[tokens:3]] [[finish:max_tokens]]"),
        )
    assert message.content[0].type == "text"
    assert message.content[0].text == "tok0 tok1 tok2 "
    assert message.stop_reason == "max_tokens"


# -- tools and thinking ----------------------------------------------------------------------


@BOTH
def test_tool_use_round_trip_across_formats(
    gateway: Gateway, client: Anthropic, model: str
) -> None:
    first = client.messages.create(
        model=model,
        max_tokens=64,
        tools=[WEATHER],
        tool_choice={"type": "auto"},
        messages=user(f"t1{model} [[tokens:2]] [[tool_call]]"),
    )
    rec = gateway.record(f"t1{model} ")
    if model == "mock":
        assert rec.json["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": WEATHER["input_schema"],
                    "description": WEATHER["description"],
                },
            }
        ]
        assert rec.json["tool_choice"] == "auto"
    else:
        assert rec.json["tools"] == [WEATHER]
        assert rec.json["tool_choice"] == {"type": "auto"}
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    call = first.content[1]
    assert call.type == "tool_use"
    assert call.name == "get_weather"
    assert call.input == {"city": "Paris", "unit": "celsius"}
    # The result goes back as a tool_result block; the upstream gets it in its own format.
    second = client.messages.create(
        model=model,
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": f"t2{model} what is the weather?"},
            first.to_param(),
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"},
                    {"type": "text", "text": "[[tokens:3]] thanks"},
                ],
            },
        ],
    )
    rec = gateway.record(f"t2{model} ")
    sent = rec.json["messages"]
    if model == "mock":
        assert sent[1]["role"] == "assistant"
        assert sent[1]["tool_calls"][0]["id"] == call.id
        assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == call.input
        assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}
    else:
        assert sent[1]["content"][-1] == {
            "type": "tool_use",
            "id": call.id,
            "name": "get_weather",
            "input": call.input,
        }
        assert sent[2]["content"][0]["type"] == "tool_result"
        assert sent[2]["content"][0]["tool_use_id"] == call.id
    assert second.content[0].type == "text"
    assert second.content[0].text == "tok0 tok1 tok2 "


def test_and_the_other_way_an_openai_client_calls_tools_on_an_anthropic_upstream(
    gateway: Gateway,
) -> None:
    tool: Any = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]},
    }
    with OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        first = client.chat.completions.create(
            model="claude-mock", tools=[tool], messages=user("t4 [[tokens:1]] [[tool_call]]")
        )
        calls = first.choices[0].message.tool_calls
        assert calls is not None
        call = calls[0]
        assert call.type == "function"
        assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
        second = client.chat.completions.create(
            model="claude-mock",
            tools=[tool],
            messages=[
                *user("t5 weather?"),
                first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
                *user("[[tokens:2]]"),
            ],
        )
    assert first.choices[0].finish_reason == "tool_calls"
    sent = gateway.record("t5 ").json["messages"]
    assert sent[1]["content"][-1]["type"] == "tool_use"
    assert sent[1]["content"][-1]["id"] == call.id
    assert sent[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": "sunny",
    }
    assert second.choices[0].message.content == "tok0 tok1 "


@BOTH
def test_streamed_tool_input_arrives_as_input_json_deltas(gateway: Gateway, model: str) -> None:
    body = {
        "model": model,
        "max_tokens": 64,
        "tools": [WEATHER],
        "messages": user(f"t3{model} [[tokens:0]] [[tool_call]]"),
    }
    _, events = raw_stream(gateway, body)
    starts = [json.loads(e.data or "") for e in events if e.event == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]
    assert starts[0]["content_block"]["input"] == {}
    pieces = [json.loads(e.data or "")["delta"] for e in events if e.event == "content_block_delta"]
    assert {p["type"] for p in pieces} == {"input_json_delta"}
    assert json.loads("".join(p["partial_json"] for p in pieces)) == {
        "city": "Paris",
        "unit": "celsius",
    }
    last = json.loads(events[-2].data or "")
    assert last["delta"]["stop_reason"] == "tool_use"


@BOTH
def test_thinking_blocks_from_a_reasoning_upstream(
    gateway: Gateway, client: Anthropic, model: str
) -> None:
    with client.messages.stream(
        model=model,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=user(f"r1{model} [[tokens:2]] [[reasoning:3]]"),
    ) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    rec = gateway.record(f"r1{model} ")
    assert kinds == ["thinking_delta"] * 3 + ["text_delta"] * 2
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == rec.reasoning == "think0 think1 think2 "
    if model == "claude-mock":
        assert rec.json["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    else:
        assert "thinking" not in rec.json


def test_thinking_blocks_of_earlier_turns_are_not_sent_on(
    gateway: Gateway, client: Anthropic
) -> None:
    client.messages.create(
        model="mock",
        max_tokens=16,
        messages=[
            {"role": "user", "content": "r2 hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": ""},
                    {"type": "text", "text": "hello"},
                ],
            },
            {"role": "user", "content": "[[tokens:1]] again"},
        ],
    )
    sent = gateway.record("r2 ").json["messages"]
    assert sent[1] == {"role": "assistant", "content": "hello"}


# -- errors ----------------------------------------------------------------------------------


def test_an_unknown_model_is_not_found(client: Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(model="nope", max_tokens=8, messages=user("e1"))
    assert raised.value.status_code == 404
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model: nope"},
    }


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"model": "mock", "messages": user("x")}, "max_tokens"),
        ({"model": "mock", "max_tokens": 8, "messages": []}, "messages"),
        (
            {"model": "mock", "max_tokens": 8, "messages": user("x"), "temperature": 1.5},
            "temperature",
        ),
        ({"model": "mock", "max_tokens": "8", "messages": user("x")}, "max_tokens"),
        ({"model": "mock", "max_tokens": 8, "messages": user("x"), "n": 2}, "n"),
        (
            {
                "model": "mock",
                "max_tokens": 8,
                "messages": user("x"),
                "tool_choice": {"type": "tool"},
            },
            "tool_choice",
        ),
        (
            {
                "model": "mock",
                "max_tokens": 8,
                "messages": user("x"),
                "thinking": {"type": "enabled"},
            },
            "thinking",
        ),
        (
            {
                "model": "mock",
                "max_tokens": 8,
                "messages": user("x"),
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools[0]",
        ),
        (
            {
                "model": "mock",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
            },
            "messages[0]",
        ),
        (
            {
                "model": "mock",
                "max_tokens": 8,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}],
                    }
                ],
            },
            "messages[0]",
        ),
    ],
)
def test_bad_input_is_a_bad_request_naming_the_field(
    gateway: Gateway, client: Anthropic, body: dict[str, Any], named: str
) -> None:
    response = httpx.post(gateway.url + "/v1/messages", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert named in error["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.post("/v1/messages", cast_to=Message, body=body)


def test_a_body_too_large_is_request_too_large(tmp_path: Path, mock_upstream: MockUpstream) -> None:
    settings = Settings.from_options(
        model_map=model_map(tmp_path / "models.toml", mock_upstream), max_body_bytes=1000
    )
    with run_server(create_app(settings)) as server:
        with Anthropic(base_url=server.url, api_key="unused", max_retries=0) as sdk:
            with pytest.raises(anthropic.APIStatusError) as raised:
                sdk.messages.create(model="mock", max_tokens=8, messages=user("x" * 2000))
    assert raised.value.status_code == 413
    assert raised.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


def test_a_body_that_is_not_json_is_a_bad_request(gateway: Gateway) -> None:
    response = httpx.post(
        gateway.url + "/v1/messages", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


@BOTH
@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_429_is_a_rate_limit_error(client: Anthropic, model: str, stream: bool) -> None:
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(
            model=model, max_tokens=8, messages=user("e2 [[fault:http_429]]"), stream=stream
        )
    assert raised.value.status_code == 429
    assert raised.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


@BOTH
def test_an_upstream_500_is_an_api_error(client: Anthropic, model: str) -> None:
    with pytest.raises(anthropic.InternalServerError) as raised:
        client.messages.create(model=model, max_tokens=8, messages=user("e3 [[fault:http_500]]"))
    assert raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]


@BOTH
@pytest.mark.parametrize("fault", ["drop", "malformed", "stall", "stream_error", "no_end"])
def test_a_mid_stream_fault_ends_in_anthropics_error_event(
    gateway: Gateway, model: str, fault: str
) -> None:
    started = time.monotonic()
    body = {
        "model": model,
        "max_tokens": 64,
        "messages": user(f"f1{model}{fault} [[tokens:6]] [[fault:{fault}]] [[after:2]]"),
    }
    response, events = raw_stream(gateway, body)
    assert time.monotonic() - started < 8
    assert response.status_code == 200
    assert events[-1].event == "error"
    error = json.loads(events[-1].data or "")
    assert error["type"] == "error"
    assert error["error"]["type"] in ("api_error", "overloaded_error", "timeout_error")
    assert error["error"]["message"]
    assert texts(events).startswith("tok0 tok1 ")
    assert "message_stop" not in [e.event for e in events]


def read_text(pieces: Iterable[str], into: list[str]) -> None:
    """Append each piece to ``into`` (kept if the stream raises)."""
    for piece in pieces:
        into.append(piece)


def test_the_sdk_raises_on_a_mid_stream_error(client: Anthropic) -> None:
    got: list[str] = []
    with client.messages.stream(
        model="claude-mock", max_tokens=64, messages=user("f2 [[tokens:6]] [[fault:drop]]")
    ) as stream:
        with pytest.raises(anthropic.APIStatusError) as raised:
            read_text(stream.text_stream, got)
    assert "".join(got) == "tok0 tok1 "
    assert raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]


# -- the stream behind the message -----------------------------------------------------------


def test_a_dropped_stream_resumes_through_the_streams_api(gateway: Gateway) -> None:
    body = {
        "model": "mock",
        "max_tokens": 64,
        "stream": True,
        "on_disconnect": "continue",
        "messages": user("c1 [[tokens:30]] [[interval_ms:20]]"),
    }
    decoder = Decoder()
    seen: list[ServerSentEvent] = []
    last_id = ""
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, timeout=10) as response:
        stream_id = response.headers["x-ssegate-stream-id"]
        for data in response.iter_raw():
            for event in decoder.feed(data):
                seen.append(event)
                last_id = event.id or last_id
            if texts(seen).count("tok") >= 3:
                break
    head = texts(seen)
    with httpx.stream(
        "GET",
        f"{gateway.url}/v1/streams/{stream_id}/events",
        headers={"Last-Event-ID": last_id},
        timeout=10,
    ) as events:
        rest = [
            json.loads(e.data or "")["text"]
            for e in Decoder().feed(events.read())
            if e.event == "delta"
        ]
    rec = gateway.record("c1 ")
    assert head + "".join(rest) == rec.text
    assert rec.tokens_sent == 30


@pytest.mark.anyio
async def test_delete_stops_the_generation_and_the_upstream(gateway: Gateway) -> None:
    async with (
        gateway.async_client() as client,
        client.messages.with_streaming_response.create(
            model="claude-mock",
            max_tokens=64,
            messages=user("x1 [[tokens:1000]] [[interval_ms:10]]"),
            stream=True,
        ) as response,
    ):
        stream_id = response.headers["x-ssegate-stream-id"]
        events = await response.parse()
        text = ""
        async for event in events:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
            if text == "tok0 tok1 ":
                break
        rec = gateway.record("x1 ")
        async with httpx.AsyncClient() as http:
            asked = time.time()
            stopped = await http.delete(f"{gateway.url}/v1/streams/{stream_id}")
        assert stopped.json()["status"] == "cancelled"
        with pytest.raises(anthropic.APIStatusError) as raised:
            async for _ in events:
                pass
    closed = await gateway.mock.wait_for_close_async(rec.index)
    assert closed - asked < 0.5
    assert rec.tokens_sent < 1000
    assert "cancelled" in raised.value.message
    assert gateway.status(stream_id)["cause"] == "client"


# -- models ----------------------------------------------------------------------------------


def test_models_in_anthropics_shape(gateway: Gateway, client: Anthropic) -> None:
    page = client.models.list()
    assert [m.id for m in page.data] == ["mock", "claude-mock"]
    assert all(m.type == "model" for m in page.data)
    assert page.has_more is False
    assert client.models.retrieve("claude-mock").display_name == "claude-mock"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("nope")
    plain = httpx.get(gateway.url + "/v1/models").json()  # no anthropic-version: OpenAI's
    assert plain["object"] == "list"
    assert plain["data"][0]["object"] == "model"


# -- API keys --------------------------------------------------------------------------------


def test_keys_are_accepted_as_x_api_key_and_bearer(
    tmp_path: Path, mock_upstream: MockUpstream
) -> None:
    settings = Settings.from_options(
        model_map=model_map(tmp_path / "models.toml", mock_upstream), api_keys=(f"team:{KEY}",)
    )
    with run_server(create_app(settings)) as server:
        with Anthropic(base_url=server.url, api_key=KEY, max_retries=0) as sdk:
            message = sdk.messages.create(
                model="mock", max_tokens=8, messages=user("k1 [[tokens:1]]")
            )
            assert message.content[0].type == "text"
        with Anthropic(base_url=server.url, auth_token=KEY, api_key=None, max_retries=0) as sdk:
            assert sdk.models.list().data[0].id == "mock"
        with Anthropic(base_url=server.url, api_key="sk-wrong", max_retries=0) as sdk:
            with pytest.raises(anthropic.AuthenticationError) as raised:
                sdk.messages.create(model="mock", max_tokens=8, messages=user("k2"))
        assert raised.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        anthropic_headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        models = httpx.get(server.url + "/v1/models", headers=anthropic_headers)
        assert models.json()["data"][0]["type"] == "model"
        # Elsewhere, and without anthropic-version, the key goes in Authorization.
        plain = httpx.get(server.url + "/v1/models", headers={"x-api-key": KEY})
        assert plain.status_code == 401
        missing = httpx.post(server.url + "/v1/messages", json={"model": "mock"})
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"


# -- hostile bodies --------------------------------------------------------------------------

_TEXT = st.text(max_size=20)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_BLOCK = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_use", "tool_result", "thinking", "image", "x"])},
    optional={
        "text": _TEXT | st.integers(),
        "id": _TEXT,
        "name": _TEXT,
        "input": _JSON,
        "tool_use_id": _TEXT,
        "content": _TEXT
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _TEXT})),
        "thinking": _TEXT,
        "signature": _TEXT,
    },
)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", ""])},
    optional={"content": _TEXT | st.lists(_BLOCK, max_size=3) | _JSON},
)
_BODY = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["mock", "claude-mock", "nope"]) | _JSON,
        "messages": st.lists(_MESSAGE, min_size=1, max_size=3) | _JSON,
    },
    optional={
        "max_tokens": st.integers(min_value=-2, max_value=10**6) | _JSON,
        "stream": st.booleans() | _JSON,
        "system": _TEXT | _JSON,
        "temperature": st.floats(min_value=-1, max_value=3) | _JSON,
        "top_k": st.integers(min_value=-1, max_value=100),
        "stop_sequences": st.lists(_TEXT, max_size=3) | _JSON,
        "tools": st.just([WEATHER]) | _JSON,
        "tool_choice": st.sampled_from(
            [{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "get_weather"}]
        )
        | _JSON,
        "thinking": st.just({"type": "enabled", "budget_tokens": 1024}) | _JSON,
        "metadata": st.just({"user_id": "u"}) | _JSON,
        "unknown": _JSON,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_BODY)
def test_any_body_gets_a_message_or_an_anthropic_error_never_a_5xx(
    gateway: Gateway, body: dict[str, Any]
) -> None:
    if isinstance(body.get("messages"), list):  # keep the upstream's answers short
        body["messages"].append({"role": "user", "content": "[[tokens:1]]"})
    response = httpx.post(gateway.url + "/v1/messages", json=body, timeout=10)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = ERROR.validate_json(response.content)
        assert error.error.message
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = Decoder().feed(response.content)
        assert events[-1].event in ("message_stop", "error")
    else:
        MESSAGE.validate_json(response.content)

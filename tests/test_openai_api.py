"""The OpenAI-compatible API, driven by the official ``openai`` SDK (sync and async clients)
against a real gateway on loopback with the real mock upstream behind it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionChunk

from ssegate.codec import Decoder
from ssegate.gateway import Settings, create_app
from ssegate.gateway._errors import ApiError
from ssegate.gateway.routes._openai import openai_caller
from ssegate.testing import MockRequest, MockUpstream, run_server

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOL_ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'


@dataclass
class Gateway:
    app: FastAPI
    url: str
    mock: MockUpstream

    def client(self, **options: Any) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key="sk-caller", max_retries=0, **options)

    def async_client(self, **options: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url + "/v1", api_key="sk-caller", max_retries=0, **options)

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


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    with MockUpstream() as mock:
        settings = Settings.from_options(
            provider="openai", base_url=mock.url + "/v1", model="mock", disconnect_grace=0.3
        )
        app = create_app(settings)
        with run_server(app) as server:
            yield Gateway(app, server.url, mock)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[OpenAI]:
    with gateway.client() as sdk:
        yield sdk


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


async def drain(chunks: AsyncIterable[ChatCompletionChunk]) -> None:
    async for _ in chunks:
        pass


def read_text(chunks: Iterable[ChatCompletionChunk], into: list[str]) -> None:
    """Append each chunk's content to ``into`` (kept if the stream raises)."""
    for chunk in chunks:
        into.append(chunk.choices[0].delta.content or "")


# -- streaming -------------------------------------------------------------------------------


def test_streaming_chunks_are_openai_chunks_and_carry_the_upstream_text(
    gateway: Gateway, client: OpenAI
) -> None:
    stream = client.chat.completions.create(
        model="mock", messages=user("s1 [[tokens:6]] [[lang:mixed]]"), stream=True
    )
    chunks = list(stream)
    rec = gateway.record("s1 ")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == rec.text
    assert "中文·🚀" in rec.text
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-st_")
    assert all(c.object == "chat.completion.chunk" and c.model == "mock" for c in chunks)
    assert all(abs(c.created - time.time()) < 60 for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 7 + ["stop"]
    assert all(c.usage is None and c.choices[0].index == 0 for c in chunks)


@pytest.mark.anyio
async def test_streaming_with_include_usage_ends_with_a_usage_chunk(gateway: Gateway) -> None:
    async with gateway.async_client() as client:
        stream = await client.chat.completions.create(
            model="mock",
            messages=user("s2 [[tokens:4]]"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    rec = gateway.record("s2 ")
    assert rec.usage is not None
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == rec.usage["prompt_tokens"]
    assert last.usage.completion_tokens == rec.usage["completion_tokens"] == 4
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == rec.text


def test_the_sse_body_is_what_openai_clients_parse(gateway: Gateway) -> None:
    body = {"model": "mock", "messages": user("s3 [[tokens:2]]"), "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        raw = response.read()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    # No retry: field: the SDK would decode it as an empty event and fail on its JSON.
    assert b"retry:" not in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    events = Decoder().feed(raw)
    assert all(event.event == "message" and event.id is None for event in events)
    first = json.loads(events[0].data or "")
    assert first["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    assert first["id"] == "chatcmpl-" + response.headers["x-ssegate-stream-id"]


# -- non-streaming ---------------------------------------------------------------------------


def test_non_streaming_returns_one_chat_completion(gateway: Gateway, client: OpenAI) -> None:
    completion = client.chat.completions.create(model="mock", messages=user("n1 [[tokens:5]]"))
    rec = gateway.record("n1 ")
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-st_")
    assert completion.model == "mock"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == rec.text == "tok0 tok1 tok2 tok3 tok4 "
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert completion.usage is not None
    assert rec.usage is not None
    assert completion.usage.completion_tokens == rec.usage["completion_tokens"]
    assert completion.usage.total_tokens == rec.usage["prompt_tokens"] + 5
    # The gateway asked the upstream for a stream with usage, whatever the caller asked.
    assert rec.json["stream"] is True
    assert rec.json["stream_options"] == {"include_usage": True}


# What the mock's [[openai_extras]] adds, as documented in ssegate.testing.
MOCK_FINGERPRINT = "fp_mock_0001"
MOCK_ANNOTATION: dict[str, Any] = {
    "type": "url_citation",
    "url_citation": {"start_index": 0, "end_index": 4, "url": "https://example.com/", "title": "E"},
}
MOCK_TOKEN_DETAILS = {
    "prompt_tokens_details": {"cached_tokens": 1, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def test_fields_clients_read_pass_through_streamed(gateway: Gateway, client: OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="mock",
        messages=user("x1 [[tokens:3]] [[openai_extras]]"),
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        stream_id = response.headers["x-ssegate-stream-id"]
        chunks = list(response.parse())
    # Still one chunk per gateway event (the held usage event's chunk comes at the end), so
    # that chunk n is event n for a client that resumes.
    assert len(chunks) == gateway.status(stream_id)["last_event_id"]
    # The role chunk comes before the upstream said anything; every chunk after knows.
    assert {c.system_fingerprint for c in chunks[1:]} == {MOCK_FINGERPRINT}
    assert {c.service_tier for c in chunks[1:]} == {"default"}
    annotations = [
        a for c in chunks if c.choices for a in (c.choices[0].delta.model_extra or {}).get(
            "annotations", []
        )
    ]  # fmt: skip
    assert annotations == [MOCK_ANNOTATION]
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_fields_clients_read_pass_through_whole(gateway: Gateway, client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="mock", messages=user("x2 [[tokens:3]] [[openai_extras]]")
    )
    assert completion.system_fingerprint == MOCK_FINGERPRINT
    assert completion.service_tier == "default"
    message = completion.choices[0].message
    assert message.content == "tok0 tok1 tok2 "
    assert message.annotations is not None
    assert [a.model_dump() for a in message.annotations] == [
        {**MOCK_ANNOTATION, "url_citation": {**MOCK_ANNOTATION["url_citation"]}}
    ]
    assert completion.usage is not None
    for name in ("prompt_tokens_details", "completion_tokens_details"):
        details = getattr(completion.usage, name)
        assert details.model_dump(exclude_none=True) == MOCK_TOKEN_DETAILS[name]


def test_a_refusal_passes_through(gateway: Gateway, client: OpenAI) -> None:
    streamed = client.chat.completions.create(
        model="mock", messages=user("x3 [[tokens:4]] [[refusal]]"), stream=True
    )
    parts = [c.choices[0].delta for c in streamed if c.choices]
    refusal = "".join(d.refusal or "" for d in parts)
    assert refusal == gateway.record("x3 ").text == "tok0 tok1 tok2 tok3 "
    assert "".join(d.content or "" for d in parts) == ""
    whole = client.chat.completions.create(
        model="mock", messages=user("x4 [[tokens:4]] [[refusal]]")
    )
    assert whole.choices[0].message.refusal == refusal
    assert whole.choices[0].message.content is None
    # Without them upstream, none of these appear.
    plain = client.chat.completions.create(model="mock", messages=user("x5 [[tokens:2]]"))
    assert plain.system_fingerprint is None
    assert plain.service_tier is None
    assert plain.choices[0].message.refusal is None
    assert plain.choices[0].message.annotations is None


def test_the_demo_model_honours_max_completion_tokens() -> None:
    with (
        run_server(create_app(Settings.from_options(demo_rate=0))) as server,
        OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client,
    ):
        for limit in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
            completion = client.chat.completions.create(
                model="ssegate-demo", messages=user("hello"), **limit
            )
            assert completion.choices[0].finish_reason == "length", limit
            assert completion.usage is not None
            assert completion.usage.completion_tokens == 3, limit


@pytest.mark.anyio
async def test_reasoning_content_arrives_streamed_and_whole(gateway: Gateway) -> None:
    async with gateway.async_client() as client:
        stream = await client.chat.completions.create(
            model="mock", messages=user("r1 [[reasoning:3]] [[tokens:2]]"), stream=True
        )
        deltas = [chunk.choices[0].delta async for chunk in stream if chunk.choices]
        completion = await client.chat.completions.create(
            model="mock", messages=user("r2 [[reasoning:2]] [[reasoning_field:reasoning]]")
        )
    reasoning = "".join((d.model_extra or {}).get("reasoning_content", "") for d in deltas)
    assert reasoning == gateway.record("r1 ").reasoning == "think0 think1 think2 "
    # Reasoning comes first, then the answer, as the upstream sent them.
    kinds = ["r" if (d.model_extra or {}).get("reasoning_content") else "t" for d in deltas[1:-1]]
    assert kinds == ["r", "r", "r", "t", "t"]
    message = completion.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == "think0 think1 "
    assert message.content == gateway.record("r2 ").text


def test_tool_calls_stream_in_openai_shape(gateway: Gateway, client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="mock",
        messages=user("t1 [[tool_call]] [[tokens:0]]"),
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        stream=True,
    )
    calls = [
        c.choices[0].delta.tool_calls for c in stream if c.choices and c.choices[0].delta.tool_calls
    ]
    first = calls[0][0]
    assert (first.index, first.id, first.type) == (0, "call_mock_0", "function")
    assert first.function is not None
    assert first.function.name == "get_weather"
    later = [call[0] for call in calls[1:]]
    assert all(c.id is None and c.type is None and c.function.name is None for c in later)  # type: ignore[union-attr]
    assert "".join(call[0].function.arguments or "" for call in calls) == TOOL_ARGUMENTS  # type: ignore[union-attr]
    upstream = gateway.record("t1 ").json
    assert upstream["tools"] == [WEATHER_TOOL]
    assert upstream["tool_choice"] == "auto"


def test_tool_calls_whole_and_through_the_sdk_stream_helper(
    gateway: Gateway, client: OpenAI
) -> None:
    completion = client.chat.completions.create(
        model="mock", messages=user("t2 [[tool_call:lookup]] [[tokens:0]]"), tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "call_mock_0"
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == ("lookup", TOOL_ARGUMENTS)  # type: ignore[union-attr]
    # The SDK's own accumulator (chat.completions.stream) rebuilds the same message.
    with client.chat.completions.stream(
        model="mock", messages=user("t3 [[tool_call]] [[tokens:2]]"), tools=[WEATHER_TOOL]
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "tok0 tok1 "
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.arguments == TOOL_ARGUMENTS  # type: ignore[union-attr]
    assert final.choices[0].finish_reason == "tool_calls"


def test_request_fields_reach_the_upstream(gateway: Gateway, client: OpenAI) -> None:
    client.chat.completions.create(
        model="mock",
        messages=[{"role": "system", "content": "be brief"}, *user("p1 [[tokens:1]]")],
        temperature=0.2,
        top_p=0.9,
        max_completion_tokens=50,
        stop=["\n\n"],
        seed=7,
        presence_penalty=0.5,
        response_format={"type": "json_object"},
        reasoning_effort="low",
        user="end-user-1",
        metadata={"team": "a"},
        store=True,
        extra_body={"top_k": 5},
    )
    sent = gateway.record("p1 ").json
    assert sent["model"] == "mock"
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["temperature"] == 0.2
    assert sent["top_p"] == 0.9
    assert sent["max_completion_tokens"] == 50
    assert sent["stop"] == ["\n\n"]
    assert sent["seed"] == 7
    assert sent["presence_penalty"] == 0.5
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["reasoning_effort"] == "low"
    assert sent["user"] == "end-user-1"
    assert sent["top_k"] == 5
    # About the operator's upstream account, not the answer: not forwarded.
    assert "metadata" not in sent
    assert "store" not in sent


# -- the gateway stream behind every completion --------------------------------------------


def test_with_raw_response_gives_the_stream_id(gateway: Gateway, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock", messages=user("w1 [[tokens:3]]")
    )
    stream_id = raw.headers["x-ssegate-stream-id"]
    completion = raw.parse()
    assert completion.id == f"chatcmpl-{stream_id}"
    assert completion._request_id == stream_id
    status = gateway.status(stream_id)
    assert status["status"] == "done"
    assert status["model"] == "mock"
    assert status["usage"]["completion_tokens"] == 3
    with client.chat.completions.with_streaming_response.create(
        model="mock", messages=user("w2 [[tokens:3]]"), stream=True
    ) as response:
        stream_id = response.headers["x-ssegate-stream-id"]
        ids = {chunk.id for chunk in response.parse()}
    assert ids == {f"chatcmpl-{stream_id}"}


def test_a_cut_stream_resumes_through_the_streams_api(gateway: Gateway, client: OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="mock",
        messages=user("c1 [[tokens:40]] [[interval_ms:5]]"),
        stream=True,
        extra_body={"on_disconnect": "continue"},
    ) as response:
        stream_id = response.headers["x-ssegate-stream-id"]
        chunks = response.parse()
        seen = [next(chunks) for _ in range(5)]  # the role chunk and four tokens
    text = "".join(c.choices[0].delta.content or "" for c in seen)
    assert text == "tok0 tok1 tok2 tok3 "
    # Chunk n is gateway event n: resume after the fifth.
    rest: list[str] = []
    decoder = Decoder()
    with httpx.stream(
        "GET", f"{gateway.url}/v1/streams/{stream_id}/events", headers={"Last-Event-ID": "5"}
    ) as events:
        assert events.status_code == 200
        for data in events.iter_raw():
            for event in decoder.feed(data):
                if event.event == "delta":
                    rest.append(json.loads(event.data or "")["text"])
    assert event.event == "done"
    assert text + "".join(rest) == gateway.record("c1 ").text
    assert gateway.record("c1 ").tokens_sent == 40


def test_a_dropped_sdk_stream_cancels_the_upstream_after_the_grace(
    gateway: Gateway, client: OpenAI
) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="mock", messages=user("d1 [[tokens:1000]] [[interval_ms:10]]"), stream=True
    ) as response:
        stream_id = response.headers["x-ssegate-stream-id"]
        chunks = response.parse()
        next(chunks), next(chunks)
    rec = gateway.record("d1 ")
    gateway.mock.wait_for_close(rec.index, timeout=10)
    assert rec.cancelled
    assert rec.tokens_sent < 1000
    status = gateway.status(stream_id)
    assert (status["status"], status["cause"]) == ("cancelled", "disconnect")


def test_a_dropped_non_streaming_call_cancels_the_upstream_too(
    gateway: Gateway, client: OpenAI
) -> None:
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="mock", messages=user("d2 [[tokens:1000]] [[interval_ms:10]]"), timeout=0.5
        )
    rec = gateway.record("d2 ")
    gateway.mock.wait_for_close(rec.index, timeout=10)
    assert rec.cancelled
    assert rec.tokens_sent < 1000


# -- errors ----------------------------------------------------------------------------------


def test_invalid_bodies_are_bad_request_errors(gateway: Gateway, client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="mock", messages=[])
    assert empty.value.status_code == 400
    assert empty.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert empty.value.body["param"] == "messages"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as wrong_type:
        client.chat.completions.create(model="mock", messages=user("x"), temperature="hot")  # type: ignore[arg-type]
    assert wrong_type.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.chat.completions.create(model="mock", messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item, misc]
    assert bad_role.value.body["param"] == "messages[0].role"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as many:
        client.chat.completions.create(model="mock", messages=user("x"), n=2)
    assert many.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as logprobs:
        client.chat.completions.create(model="mock", messages=user("x"), logprobs=True)
    assert logprobs.value.body["param"] == "logprobs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="mock", messages=user("x"), modalities=["text", "audio"]
        )
    url = gateway.url + "/v1/chat/completions"
    for content, headers in (
        (b'{"messages": [', {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
        (b"\xff\xfe", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
    ):
        response = httpx.post(url, content=content, headers=headers)
        assert response.status_code == 400, content
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    assert not [r for r in gateway.mock.requests if r.json and "robot" in json.dumps(r.json)]


_HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": _HI, "stream": "yes"}, "stream"),
        ({"messages": _HI, "max_tokens": True}, "max_tokens"),
        ({"messages": _HI, "temperature": "0.5"}, "temperature"),
        ({"messages": _HI, "stream_options": {"include_usage": "yes"}, "stream": True},
         "stream_options.include_usage"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "system"}, *_HI]}, "messages[0].content"),
        ({"messages": [*_HI, {"role": "tool", "content": "42"}]}, "messages[1].tool_call_id"),
        ({"messages": _HI, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
    ids=[
        "stream-string", "max_tokens-bool", "temperature-string",
        "include_usage-string", "user-content-null", "system-no-content", "tool-no-id",
        "stream_options-without-stream",
    ],
)  # fmt: skip
def test_strict_types_and_required_fields_are_400s_naming_the_param(
    gateway: Gateway, client: OpenAI, body: dict[str, Any], param: str
) -> None:
    # As OpenAI answers: no coercion of "yes" or true, no message without what its role needs.
    before = len(gateway.mock.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="mock", **body)
    error = refused.value.body
    assert error["param"] == param, error  # type: ignore[index]
    assert error["type"] == "invalid_request_error"  # type: ignore[index]
    assert error["message"]  # type: ignore[index]
    assert len(gateway.mock.requests) == before  # nothing went upstream


def test_numbers_stay_numbers_under_strict_types(gateway: Gateway, client: OpenAI) -> None:
    # Strict is about types, not JSON's number forms: an integer temperature is a number, 5.0 is
    # an integer (as JSON Schema, and so /openapi.json, has it), and an assistant message with
    # tool calls needs no content.
    completion = client.chat.completions.create(
        model="mock",
        temperature=1,
        max_tokens=5.0,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": "weather? strict-numbers"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    )
    assert completion.choices[0].message.content
    sent = gateway.record("strict-numbers").json
    assert sent["temperature"] == 1
    assert sent["max_tokens"] == 5
    assert isinstance(sent["max_tokens"], int)


def test_an_unknown_model_is_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as create:
        client.chat.completions.create(model="gpt-nope", messages=user("x"))
    assert create.value.code == "model_not_found"
    assert create.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


def test_models_lists_what_is_configured(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["mock"]
    model = client.models.retrieve("mock")
    assert (model.id, model.object, model.owned_by) == ("mock", "model", "openai")
    assert abs(model.created - time.time()) < 3600


@pytest.mark.anyio
async def test_an_upstream_rate_limit_is_a_rate_limit_error(gateway: Gateway) -> None:
    async with gateway.async_client() as client:
        with pytest.raises(openai.RateLimitError) as whole:
            await client.chat.completions.create(
                model="mock", messages=user("e1 [[fault:http_429]]")
            )
        with pytest.raises(openai.RateLimitError) as streamed:
            await client.chat.completions.create(
                model="mock", messages=user("e2 [[fault:http_429]]"), stream=True
            )
    for raised in (whole.value, streamed.value):
        assert raised.status_code == 429
        assert raised.code == "upstream_rate_limited"
        assert raised.response.headers["x-should-retry"] == "true"
        stream_id = raised.response.headers["x-ssegate-stream-id"]
        assert gateway.status(stream_id)["status"] == "error"


def test_upstream_faults_are_server_errors_not_our_callers(client: OpenAI) -> None:
    # The upstream refusing OUR key must not look like the caller's key being wrong.
    with pytest.raises(openai.InternalServerError) as auth:
        client.chat.completions.create(model="mock", messages=user("e3 [[fault:http_401]]"))
    assert auth.value.status_code == 502
    assert auth.value.code == "upstream_auth"
    assert auth.value.response.headers["x-should-retry"] == "false"
    assert not isinstance(auth.value, openai.AuthenticationError)
    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(
            model="mock", messages=user("e4 [[fault:http_503]]"), stream=True
        )
    assert down.value.status_code == 503
    assert down.value.response.headers["x-should-retry"] == "true"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="mock", messages=user("e5 [[fault:http_400]]"))
    assert refused.value.code == "upstream_bad_request"
    # Clients are told what happened, not where the upstream is.
    for raised in (auth, down, refused):
        assert "127.0.0.1" not in raised.value.message, raised.value.message
        assert "HTTP" in raised.value.message


def test_a_mid_stream_upstream_failure_raises_api_error(gateway: Gateway, client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="mock", messages=user("m1 [[fault:stream_error]] [[after:3]]"), stream=True
    )
    texts: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        read_text(stream, texts)
    text = "".join(texts)
    assert not isinstance(raised.value, openai.APIStatusError)  # the status was already 200
    assert text == "tok0 tok1 tok2 "
    assert raised.value.code is not None
    assert raised.value.code.startswith("upstream_")
    assert "error while processing" in raised.value.message


@pytest.mark.anyio
async def test_a_stream_cancelled_through_the_streams_api_ends_with_an_error(
    gateway: Gateway,
) -> None:
    async with (
        gateway.async_client() as client,
        client.chat.completions.with_streaming_response.create(
            model="mock", messages=user("x1 [[tokens:1000]] [[interval_ms:10]]"), stream=True
        ) as response,
    ):
        stream_id = response.headers["x-ssegate-stream-id"]
        chunks = await response.parse()
        text = ""
        async for chunk in chunks:
            text += chunk.choices[0].delta.content or ""
            if text == "tok0 tok1 ":
                break
        async with httpx.AsyncClient() as http:
            stopped = await http.delete(f"{gateway.url}/v1/streams/{stream_id}")
        assert stopped.json()["status"] == "cancelled"
        with pytest.raises(openai.APIError) as raised:
            await drain(chunks)
    assert raised.value.code == "cancelled"
    assert gateway.status(stream_id)["cause"] == "client"


def test_gateway_auth_plugs_in_and_answers_401(gateway: Gateway) -> None:
    async def deny() -> str:
        raise ApiError(401, "invalid_api_key", "Incorrect API key provided.")

    gateway.app.dependency_overrides[openai_caller] = deny
    try:
        with gateway.client() as client:
            with pytest.raises(openai.AuthenticationError) as raised:
                client.chat.completions.create(model="mock", messages=user("a1"))
            with pytest.raises(openai.AuthenticationError):
                client.models.list()
    finally:
        gateway.app.dependency_overrides.clear()
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"
    assert raised.value.body["type"] == "invalid_request_error"  # type: ignore[index]


# -- model map -------------------------------------------------------------------------------


def test_a_model_map_routes_to_two_providers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSEGATE_TEST_KEY_A", "key-alpha")
    monkeypatch.setenv("SSEGATE_TEST_KEY_B", "key-beta")
    with MockUpstream(api_key="key-alpha") as first, MockUpstream(api_key="key-beta") as second:
        model_map = tmp_path / "models.toml"
        model_map.write_text(
            f"""
["alpha"]
provider = "openai"
base_url = "{first.url}/v1"
api_key_env = "SSEGATE_TEST_KEY_A"

["team/beta"]
provider = "openai"
base_url = "{second.url}/v1"
model = "beta-upstream [[tokens:2]]"
api_key_env = "SSEGATE_TEST_KEY_B"
owned_by = "team"
""",
            encoding="utf-8",
        )
        app = create_app(Settings.from_options(model_map=str(model_map)))
        with (
            run_server(app) as server,
            OpenAI(base_url=server.url + "/v1", api_key="sk-caller", max_retries=0) as client,
        ):
            assert [(m.id, m.owned_by) for m in client.models.list()] == [
                ("alpha", "openai"),
                ("team/beta", "team"),
            ]
            assert client.models.retrieve("team/beta").id == "team/beta"
            a = client.chat.completions.create(model="alpha", messages=user("[[tokens:3]]"))
            b = client.chat.completions.create(model="team/beta", messages=user("hi"))
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="mock", messages=user("hi"))
    assert (a.model, a.choices[0].message.content) == ("alpha", "tok0 tok1 tok2 ")
    assert (b.model, b.choices[0].message.content) == ("team/beta", "tok0 tok1 ")
    assert [r.json["model"] for r in first.requests] == ["alpha"]
    assert [r.json["model"] for r in second.requests] == ["beta-upstream [[tokens:2]]"]
    assert first.requests[0].headers["authorization"] == "Bearer key-alpha"
    assert second.requests[0].headers["authorization"] == "Bearer key-beta"


def test_fields_map_onto_anthropic_and_ollama_upstreams(gateway: Gateway, tmp_path: Path) -> None:
    mock = gateway.mock
    model_map = tmp_path / "models.json"
    model_map.write_text(
        json.dumps(
            {
                "claude": {"provider": "anthropic", "base_url": mock.url, "model": "c-up"},
                "llama": {"provider": "ollama", "base_url": mock.url, "model": "l-up"},
                "ssegate-demo": {"provider": "demo"},
            }
        ),
        encoding="utf-8",
    )
    app = create_app(Settings.from_options(model_map=str(model_map), demo_rate=0))
    with (
        run_server(app) as server,
        OpenAI(base_url=server.url + "/v1", api_key="sk-caller", max_retries=0) as client,
    ):
        claude = client.chat.completions.create(
            model="claude",
            messages=[{"role": "system", "content": "be brief"}, *user("am1 [[tokens:2]]")],
            top_p=0.5,
            stop="END",
            max_completion_tokens=33,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            user="u1",
            seed=3,
        )
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="claude", messages=user("am2"), response_format={"type": "json_object"}
            )
        thinking = client.chat.completions.create(
            model="claude", messages=user("am3 [[reasoning:2]] [[tokens:1]]"), stream=True
        )
        reasoning = "".join(
            (c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
            for c in thinking
            if c.choices
        )
        llama = client.chat.completions.create(
            model="llama",
            messages=user("om1 [[tokens:3]]"),
            temperature=0.1,
            top_p=0.5,
            stop=["x"],
            seed=3,
            max_tokens=20,
            response_format={"type": "json_object"},
        )
        demo = client.chat.completions.create(model="ssegate-demo", messages=user("hello"))
    assert claude.choices[0].message.content == "tok0 tok1 "
    sent = gateway.record("am1 ")
    assert sent.path == "/v1/messages"
    assert sent.json["model"] == "c-up"
    assert sent.json["system"] == "be brief"
    assert sent.json["max_tokens"] == 33
    assert sent.json["top_p"] == 0.5
    assert sent.json["stop_sequences"] == ["END"]
    assert sent.json["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent.json["metadata"] == {"user_id": "u1"}
    assert "seed" not in sent.json
    assert "user" not in sent.json
    assert refused.value.param == "response_format"
    assert reasoning == "think0 think1 "
    assert llama.choices[0].message.content == "tok0 tok1 tok2 "
    sent = gateway.record("om1 ")
    assert sent.path == "/api/chat"
    assert sent.json["options"] == {
        "num_predict": 20,
        "temperature": 0.1,
        "top_p": 0.5,
        "seed": 3,
        "stop": ["x"],
    }
    assert sent.json["format"] == "json"
    assert "demo model" in (demo.choices[0].message.content or "")
    assert demo.usage is not None
    assert demo.usage.completion_tokens > 10


def test_heartbeats_before_the_first_token_are_ignored_by_the_sdk(gateway: Gateway) -> None:
    # A short heartbeat also bounds the wait for the first event: the 200 goes out at once
    # and pings keep the connection busy while the upstream thinks.
    settings = Settings.from_options(
        provider="openai", base_url=gateway.mock.url + "/v1", model="mock", heartbeat=0.05
    )
    body = {"model": "mock", "messages": user("h1 [[delay_ms:400]] [[tokens:3]]"), "stream": True}
    with run_server(create_app(settings)) as server:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
            raw = response.read()
        with OpenAI(base_url=server.url + "/v1", api_key="sk-caller", max_retries=0) as client:
            body["messages"] = user("h2 [[delay_ms:400]] [[tokens:3]]")
            chunks = list(client.chat.completions.create(**body))
    assert raw.index(b": ping\n\n") < raw.index(b'"content":"tok0 "')
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 "
    assert chunks[-1].choices[0].finish_reason == "stop"

"""OllamaProvider (native /api/chat, NDJSON) against the mock upstream over real loopback HTTP."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import pytest

from ssegate.providers import (
    ChatRequest,
    Delta,
    Finish,
    OllamaProvider,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamProtocolError,
    Usage,
    create_provider,
)
from ssegate.providers._parsing import LineSplitter
from ssegate.providers.ollama import build_body
from ssegate.testing import MockUpstream

pytestmark = pytest.mark.mock_defaults(tokens=3)


async def _collect(mock: MockUpstream, text: str, **kw: Any) -> list[Delta]:
    provider = create_provider("ollama", base_url=mock.url)
    assert isinstance(provider, OllamaProvider)
    request = ChatRequest(messages=[{"role": "user", "content": text}], model="llama-mock", **kw)
    async with aclosing(provider.stream(request)) as deltas:
        out = [delta async for delta in deltas]
    await provider.aclose()
    return out


@pytest.mark.anyio
async def test_text_usage_and_finish(mock: MockUpstream) -> None:
    first = len(mock.requests)
    deltas = await _collect(mock, "hi there", max_tokens=64, temperature=0.1)
    assert deltas == [
        TextDelta("tok0 "),
        TextDelta("tok1 "),
        TextDelta("tok2 "),
        Usage(prompt_tokens=2, completion_tokens=3),
        Finish("stop"),
    ]
    record = mock.requests[first]
    assert record.path == "/api/chat"
    assert record.json["stream"] is True
    assert record.json["options"] == {"num_predict": 64, "temperature": 0.1}
    assert "authorization" not in record.headers  # no key configured, none sent


@pytest.mark.anyio
async def test_thinking_and_tool_call(mock: MockUpstream) -> None:
    deltas = await _collect(mock, "[[reasoning:2]][[tool_call]][[tokens:1]]")
    assert deltas[:3] == [ReasoningDelta("think0 "), ReasoningDelta("think1 "), TextDelta("tok0 ")]
    assert deltas[3] == ToolCallDelta(
        index=0, id="call_0", name="get_weather", arguments='{"city":"Paris","unit":"celsius"}'
    )
    assert deltas[-1] == Finish("tool_calls")


@pytest.mark.anyio
async def test_done_reason_length_and_no_counts(mock: MockUpstream) -> None:
    deltas = await _collect(mock, "[[finish:length]][[usage:off]]")
    assert deltas[-1] == Finish("length")
    assert not any(isinstance(d, Usage) for d in deltas)


def test_assistant_tool_call_arguments_are_sent_as_objects() -> None:
    messages: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"x": 2}'}}],
        },
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    body = build_body(ChatRequest(messages=messages, model="m"))
    assert body["messages"][0]["tool_calls"] == [{"function": {"name": "f", "arguments": {"x": 2}}}]
    assert body["messages"][0]["content"] == ""
    assert body["messages"][1]["content"] == "ab"


def test_line_splitter_is_bounded_and_joins_split_lines() -> None:
    lines = LineSplitter(16)
    assert lines.feed(b'{"a"') == []
    assert lines.feed(b':1}\r\n\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert lines.flush() == b'{"c"'
    with pytest.raises(UpstreamProtocolError):
        lines.feed(b"x" * 17)
    with pytest.raises(UpstreamProtocolError):
        LineSplitter(4).feed(b"12345\n")

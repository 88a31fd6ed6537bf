"""AnthropicProvider against the mock upstream over real loopback HTTP."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import pytest

from ssegate.providers import (
    AnthropicProvider,
    ChatRequest,
    Delta,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    create_provider,
)
from ssegate.providers.anthropic import build_body
from ssegate.testing import MockUpstream

KEY = "sk-ant-test-0123456789"


pytestmark = pytest.mark.mock_defaults(tokens=4)


async def _collect(mock: MockUpstream, messages: list[dict[str, Any]], **kw: Any) -> list[Delta]:
    provider = create_provider("anthropic", base_url=mock.url, api_key=KEY)
    assert isinstance(provider, AnthropicProvider)
    request = ChatRequest(messages=messages, model="claude-mock", **kw)
    async with aclosing(provider.stream(request)) as deltas:
        out = [delta async for delta in deltas]
    await provider.aclose()
    return out


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.mark.anyio
async def test_text_usage_and_finish(mock: MockUpstream) -> None:
    first = len(mock.requests)
    deltas = await _collect(mock, _user("hello"))
    record = mock.requests[first]
    assert deltas == [
        TextDelta("tok0 "),
        TextDelta("tok1 "),
        TextDelta("tok2 "),
        TextDelta("tok3 "),
        Usage(prompt_tokens=1, completion_tokens=4),
        Finish("stop"),  # end_turn, in OpenAI's words
    ]
    assert record.usage == {"prompt_tokens": 1, "completion_tokens": 4}


@pytest.mark.anyio
async def test_request_shape_headers_and_system(mock: MockUpstream) -> None:
    first = len(mock.requests)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
        {"role": "user", "content": "hi"},
    ]
    await _collect(mock, messages, temperature=0.5)
    record = mock.requests[first]
    assert record.path == "/v1/messages"
    assert record.headers["x-api-key"] == KEY
    assert record.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in record.headers
    body = record.json
    assert body["system"] == "You are terse.\n\nNo emoji."
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 1024  # required by Anthropic
    assert body["stream"] is True
    assert body["temperature"] == 0.5


@pytest.mark.anyio
async def test_thinking_then_text_then_tool_use(mock: MockUpstream) -> None:
    deltas = await _collect(mock, _user("[[reasoning:2]][[tool_call:search]][[tokens:1]]"))
    assert deltas[:3] == [ReasoningDelta("think0 "), ReasoningDelta("think1 "), TextDelta("tok0 ")]
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert calls[0] == ToolCallDelta(index=0, id="toolu_mock_0", name="search")
    assert {c.index for c in calls} == {0}
    assert "".join(c.arguments for c in calls) == '{"city": "Paris", "unit": "celsius"}'
    assert deltas[-2] == Usage(prompt_tokens=1, completion_tokens=4)
    assert deltas[-1] == Finish("tool_calls")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reason", "mapped"),
    [("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter")],
)
async def test_stop_reasons_are_mapped(mock: MockUpstream, reason: str, mapped: str) -> None:
    deltas = await _collect(mock, _user(f"[[finish:{reason}]]"), max_tokens=5)
    assert deltas[-1] == Finish(mapped)
    assert mock.requests[-1].json["max_tokens"] == 5


@pytest.mark.anyio
async def test_chinese_text(mock: MockUpstream) -> None:
    deltas = await _collect(mock, _user("你好 [[lang:zh]][[reasoning:1]]"))
    assert deltas[0] == ReasoningDelta("思考0 ")
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == mock.requests[-1].text
    assert "第3个词" in mock.requests[-1].text


def test_openai_tool_history_becomes_tool_use_and_tool_result() -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
        }
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    body = build_body(ChatRequest(messages=messages, model="m", tools=tools), 99)
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object"}, "description": "d"}]
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "sunny"}],
    }
    assert body["max_tokens"] == 99

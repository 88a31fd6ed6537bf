"""OpenAIProvider against the mock upstream over real loopback HTTP."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import pytest

from ssegate.providers import (
    ChatRequest,
    Delta,
    Finish,
    OpenAIProvider,
    ProviderConfig,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamStreamError,
    Usage,
    create_provider,
)
from ssegate.testing import MockUpstream

KEY = "sk-test-0123456789abcdef"


pytestmark = pytest.mark.mock_defaults(tokens=5)


def _provider(mock: MockUpstream, **options: Any) -> OpenAIProvider:
    provider = create_provider("openai", base_url=mock.url + "/v1", api_key=KEY, **options)
    assert isinstance(provider, OpenAIProvider)
    return provider


async def _collect(provider: OpenAIProvider, content: str, **request: Any) -> list[Delta]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    chat = ChatRequest(messages=messages, model=request.pop("model", "gpt-mock"), **request)
    async with aclosing(provider.stream(chat)) as deltas:
        return [delta async for delta in deltas]


def _text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


@pytest.mark.anyio
async def test_text_usage_and_finish_arrive_in_order(mock: MockUpstream) -> None:
    provider = _provider(mock)
    first = len(mock.requests)
    deltas = await _collect(provider, "hello there")
    await provider.aclose()
    assert _text(deltas) == "tok0 tok1 tok2 tok3 tok4 "
    assert deltas[0] == TextDelta("tok0 ")
    record = mock.requests[first]
    assert deltas[-2:] == [Usage(**record.usage), Finish("stop")]  # type: ignore[arg-type]
    assert deltas[-2] == Usage(prompt_tokens=4, completion_tokens=5)


@pytest.mark.anyio
async def test_request_has_stream_options_auth_and_extra(mock: MockUpstream) -> None:
    provider = _provider(mock, headers={"x-team": "blue"})
    first = len(mock.requests)
    await _collect(
        provider,
        "hi",
        max_tokens=50,
        temperature=0.2,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        extra={"seed": 7, "stream": False},
    )
    await provider.aclose()
    record = mock.requests[first]
    assert record.path == "/v1/chat/completions"
    assert record.headers["authorization"] == f"Bearer {KEY}"
    assert record.headers["x-team"] == "blue"
    body = record.json
    assert body["stream"] is True  # extra cannot turn streaming off
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 50
    assert body["temperature"] == 0.2
    assert body["seed"] == 7
    assert body["tools"][0]["function"]["name"] == "f"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_comes_before_the_answer(mock: MockUpstream, field: str) -> None:
    provider = _provider(mock)
    first = len(mock.requests)
    deltas = await _collect(provider, f"think [[reasoning:3]][[reasoning_field:{field}]]")
    await provider.aclose()
    assert mock.requests[first].json["messages"][1]["content"].startswith("think")
    reasoning = [d.text for d in deltas if isinstance(d, ReasoningDelta)]
    assert reasoning == ["think0 ", "think1 ", "think2 "]
    first_text = next(i for i, d in enumerate(deltas) if isinstance(d, TextDelta))
    assert all(isinstance(d, ReasoningDelta) for d in deltas[:first_text])
    assert deltas[-2] == Usage(prompt_tokens=4, completion_tokens=8)


@pytest.mark.anyio
async def test_tool_call_deltas_and_finish_reason(mock: MockUpstream) -> None:
    provider = _provider(mock)
    deltas = await _collect(provider, "weather? [[tool_call:lookup]][[tokens:1]]")
    await provider.aclose()
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert calls[0] == ToolCallDelta(index=0, id="call_mock_0", name="lookup", arguments="")
    assert all(c.index == 0 and c.id is None for c in calls[1:])
    assert "".join(c.arguments for c in calls) == '{"city": "Paris", "unit": "celsius"}'
    assert deltas[-1] == Finish("tool_calls")


@pytest.mark.anyio
@pytest.mark.parametrize("lang", ["zh", "emoji", "mixed"])
async def test_unicode_text_survives_the_trip(mock: MockUpstream, lang: str) -> None:
    provider = _provider(mock)
    first = len(mock.requests)
    deltas = await _collect(provider, f"[[lang:{lang}]][[tokens:20]]")
    await provider.aclose()
    assert _text(deltas) == mock.requests[first].text
    assert any(ord(ch) > 0x2E80 for ch in _text(deltas))


@pytest.mark.anyio
async def test_finish_length_and_missing_usage(mock: MockUpstream) -> None:
    provider = _provider(mock)
    deltas = await _collect(provider, "[[finish:length]][[usage:off]]")
    await provider.aclose()
    assert deltas[-1] == Finish("length")
    assert not any(isinstance(d, Usage) for d in deltas)


@pytest.mark.anyio
async def test_connection_is_reused_after_a_complete_stream(mock: MockUpstream) -> None:
    # Reading the body to its end after [DONE] returns the connection to httpx's pool.
    provider = _provider(mock)
    first = len(mock.requests)
    await _collect(provider, "one")
    await _collect(provider, "two")
    await provider.aclose()
    one, two = mock.requests[first : first + 2]
    assert one.connection == two.connection
    assert one.ended_at is not None
    assert two.ended_at is not None


@pytest.mark.anyio
async def test_default_config_points_at_openai() -> None:
    provider = OpenAIProvider()
    assert provider.config == ProviderConfig(kind="openai")
    assert provider.config.resolved_base_url == "https://api.openai.com/v1"
    await provider.aclose()


@pytest.mark.anyio
async def test_coalesce_merges_a_burst_that_arrives_in_one_read(mock: MockUpstream) -> None:
    provider = _provider(mock, coalesce=True)
    # At full speed the mock writes the whole answer at once: one read, so one delta per run.
    deltas = await _collect(provider, "[[reasoning:3]][[tokens:4]][[tool_call:f]]")
    await provider.aclose()
    assert deltas[:2] == [
        ReasoningDelta("think0 think1 think2 "),
        TextDelta("tok0 tok1 tok2 tok3 "),
    ]
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert len(calls) > 1  # tool-call pieces are never merged
    assert deltas[2 : 2 + len(calls)] == calls
    assert isinstance(deltas[-2], Usage)
    assert deltas[-1] == Finish("tool_calls")


@pytest.mark.anyio
async def test_coalesce_keeps_one_delta_per_read(mock: MockUpstream) -> None:
    provider = _provider(mock, coalesce=True)
    # Paced: each token is its own write, read on its own; nothing to merge.
    deltas = await _collect(provider, "[[tokens:3]][[interval_ms:100]]")
    await provider.aclose()
    assert deltas[:3] == [TextDelta(f"tok{i} ") for i in range(3)]


def test_coalesce_keeps_the_order_and_merges_only_neighbours() -> None:
    from ssegate.providers._parsing import coalesce

    call = ToolCallDelta(index=0, arguments="{")
    deltas: list[Delta] = [
        TextDelta("a"),
        TextDelta("b"),
        ReasoningDelta("r"),
        ReasoningDelta("s"),
        TextDelta("c"),
        call,
        TextDelta("d"),
        Usage(1, 2),
        Finish("stop"),
    ]
    assert coalesce(deltas) == [
        TextDelta("ab"),
        ReasoningDelta("rs"),
        TextDelta("c"),
        call,
        TextDelta("d"),
        Usage(1, 2),
        Finish("stop"),
    ]
    assert coalesce([]) == []


@pytest.mark.anyio
async def test_coalesce_delivers_what_came_before_a_fault_in_the_same_read(
    mock: MockUpstream,
) -> None:
    provider = _provider(mock, coalesce=True)
    got: list[Delta] = []
    chat = ChatRequest(messages=[{"role": "user", "content": "[[fault:stream_error]]"}], model="m")

    async def consume() -> None:
        async with aclosing(provider.stream(chat)) as deltas:
            async for delta in deltas:
                got.append(delta)

    with pytest.raises(UpstreamStreamError):
        await consume()
    await provider.aclose()
    assert _text(got) == "tok0 tok1 "

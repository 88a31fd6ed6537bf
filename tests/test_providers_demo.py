"""The offline demo model: deterministic, labelled, bilingual, paced, with usage."""

from __future__ import annotations

from contextlib import aclosing

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssegate.providers import (
    DEMO_MODEL,
    ChatRequest,
    Delta,
    DemoProvider,
    Finish,
    ReasoningDelta,
    TextDelta,
    Usage,
    create_provider,
)
from ssegate.providers.demo import demo_reply, split_tokens


def _request(question: str, **kw: object) -> ChatRequest:
    messages = [
        {"role": "system", "content": "be helpful"},
        {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": question},
    ]
    return ChatRequest(messages=messages, model=DEMO_MODEL, **kw)  # type: ignore[arg-type]


async def _collect(provider: DemoProvider, request: ChatRequest) -> list[tuple[float, Delta]]:
    async with aclosing(provider.stream(request)) as deltas:
        return [(anyio.current_time(), delta) async for delta in deltas]


def _text(timed: list[tuple[float, Delta]]) -> str:
    return "".join(d.text for _, d in timed if isinstance(d, TextDelta))


@pytest.mark.anyio
async def test_english_reply_quotes_the_question_with_markdown() -> None:
    timed = await _collect(DemoProvider(rate=None), _request("What is  SSE?\nExplain."))
    text = _text(timed)
    assert text.startswith("(demo model) ")
    assert "> What is SSE? Explain." in text  # the last user message, whitespace collapsed
    assert "\n- " in text
    assert "```python\n" in text
    assert "ssegate-demo" in text


@pytest.mark.anyio
async def test_chinese_question_gets_a_chinese_reply() -> None:
    timed = await _collect(DemoProvider(rate=0), _request("什么是 SSE？"))
    text = _text(timed)
    assert text.startswith("（演示模型）")
    assert "> 什么是 SSE？" in text
    assert "```python\n" in text


@pytest.mark.anyio
async def test_deterministic_with_usage_and_finish_last() -> None:
    provider = create_provider("demo", demo_rate=None)
    assert isinstance(provider, DemoProvider)
    first = [d for _, d in await _collect(provider, _request("same question"))]
    second = [d for _, d in await _collect(provider, _request("same question"))]
    await provider.aclose()
    assert first == second
    texts = [d for d in first if isinstance(d, TextDelta)]
    assert len(texts) > 40
    assert first[-1] == Finish("stop")
    expected_prompt = sum(
        len(split_tokens(m["content"])) for m in _request("same question").messages
    )
    assert first[-2] == Usage(prompt_tokens=expected_prompt, completion_tokens=len(texts))
    assert "".join(d.text for d in texts) == demo_reply("same question")


@pytest.mark.anyio
async def test_rate_is_honoured() -> None:
    rate = 200.0
    timed = await _collect(DemoProvider(rate=rate), _request("pace me"))
    times = [t for t, d in timed if isinstance(d, TextDelta)]
    # An absolute schedule: token n is never early. (Only a lower bound: a busy machine may
    # make it later, never earlier.)
    assert times[-1] - times[0] >= (len(times) - 1) / rate * 0.95
    fast = await _collect(DemoProvider(rate=None), _request("pace me"))
    assert fast[-1][0] - fast[0][0] < (len(times) - 1) / rate  # unthrottled is faster


@pytest.mark.anyio
async def test_max_tokens_cuts_with_finish_length_and_thinking() -> None:
    timed = await _collect(DemoProvider(rate=None, thinking=True), _request("hi", max_tokens=5))
    deltas = [d for _, d in timed]
    assert isinstance(deltas[0], ReasoningDelta)
    assert len([d for d in deltas if isinstance(d, TextDelta)]) == 5
    assert deltas[-1] == Finish("length")


@pytest.mark.anyio
async def test_cancellable_while_pacing() -> None:
    provider = DemoProvider(rate=1.0)  # one token a second: cancel must not wait for it
    got: list[Delta] = []
    with anyio.move_on_after(0.2):
        async with aclosing(provider.stream(_request("slow"))) as deltas:
            async for delta in deltas:
                got.append(delta)
    assert len(got) == 1


def test_model_name_and_factory() -> None:
    provider = create_provider("demo", demo_rate=12.5)
    assert isinstance(provider, DemoProvider)
    assert (provider.name, provider.model, provider.rate) == ("demo", "ssegate-demo", 12.5)
    with pytest.raises(ValueError, match="rate"):
        DemoProvider(rate=-1)


@given(st.text())
def test_tokens_join_back_to_the_text(text: str) -> None:
    assert "".join(split_tokens(text)) == text


def test_cjk_characters_are_single_tokens() -> None:
    assert split_tokens("你好 world!") == ["你", "好", " world", "!"]

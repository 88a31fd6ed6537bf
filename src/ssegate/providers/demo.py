"""The offline demo model, ``ssegate-demo``: so ``ssegate serve`` answers with no LLM configured.

It streams a fixed, clearly labelled reply that quotes the question — in Chinese when the
question contains CJK characters, else in English — with a little markdown (a list and a code
block) so the chat page shows its rendering. The reply is cut into word-sized tokens (one per
CJK character) streamed at ``rate`` tokens per second; ``None`` or ``0`` streams as fast as the
consumer reads. It ends with :class:`Usage` (prompt and completion counted with the same
tokenizer) and ``Finish("stop")``, or ``Finish("length")`` when ``max_tokens`` cut it short.
Nothing is random: the same request always gives the same deltas.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import anyio.lowlevel

from ._base import ChatRequest, Delta, Finish, ReasoningDelta, TextDelta, Usage

__all__ = ["DEMO_MODEL", "DemoProvider", "demo_reply", "split_tokens"]

#: The model name the demo provider reports.
DEMO_MODEL = "ssegate-demo"

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# A token is a word (with the whitespace before it) or a single other character; trailing
# whitespace is a token of its own. Joined, the tokens give back the text exactly.
_TOKEN = re.compile(r"\s*[A-Za-z0-9_'’]+|\s*\S|\s+")
_QUOTE_LIMIT = 200

_EN = """(demo model) You asked:

> {question}

This answer comes from **ssegate-demo**, a built-in stand-in that needs no LLM. It streams a
fixed reply token by token so you can try the gateway:

- each token arrives as a Server-Sent Event;
- press **Stop** to cancel the generation;
- reload the page mid-answer and the stream resumes where it left off.

```python
for token in answer:
    print(token, end="", flush=True)
```

Configure a real provider (OpenAI-compatible, Anthropic or Ollama) to get real answers."""

_ZH = (
    "（演示模型）你的问题是：\n\n> {question}\n\n"
    "这个回答来自 **ssegate-demo**，一个不需要大模型的内置演示模型。"
    "它逐个词元地流式输出固定的回答，方便你试用网关：\n\n"
    """- 每个词元都是一条 Server-Sent Event；
- 点击 **停止** 可以取消生成；
- 回答到一半时刷新页面，流会从断开的地方继续。

```python
for token in answer:
    print(token, end="", flush=True)
```

配置真实的模型提供方（兼容 OpenAI 的接口、Anthropic 或 Ollama）即可获得真正的回答。"""
)

_THINKING_EN = "The user asked a question. I am the demo model, so I will show a fixed reply."
_THINKING_ZH = "用户提了一个问题。我是演示模型，所以给出固定的回答。"


def split_tokens(text: str) -> list[str]:
    """Cut ``text`` into demo tokens; ``"".join(split_tokens(t)) == t``."""
    return _TOKEN.findall(text)


def _question(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def demo_reply(question: str) -> str:
    """The demo's full answer to ``question``: Chinese if it has CJK characters, else English."""
    quoted = " ".join(question.split()) or "…"
    if len(quoted) > _QUOTE_LIMIT:
        quoted = quoted[:_QUOTE_LIMIT] + "…"
    template = _ZH if _CJK.search(question) else _EN
    return template.format(question=quoted)


class DemoProvider:
    """The offline demo model: a deterministic, labelled reply at ``rate`` tokens per second.

    ``thinking=True`` first streams a one-sentence :class:`ReasoningDelta` (to show how the
    chat page renders reasoning).
    """

    name = "demo"
    model = DEMO_MODEL

    def __init__(self, rate: float | None = 30.0, *, thinking: bool = False) -> None:
        if rate is not None and rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate or None
        self.thinking = thinking

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        """Yield the demo reply's deltas, then usage and finish."""
        question = _question(request)
        chinese = bool(_CJK.search(question))
        pieces: list[Delta] = []
        if self.thinking:
            thought = _THINKING_ZH if chinese else _THINKING_EN
            pieces += [ReasoningDelta(t) for t in split_tokens(thought)]
        reply_tokens = split_tokens(demo_reply(question))
        finish = "stop"
        if request.max_tokens is not None and request.max_tokens < len(reply_tokens):
            reply_tokens = reply_tokens[: request.max_tokens]
            finish = "length"
        pieces += [TextDelta(t) for t in reply_tokens]

        interval = 1.0 / self.rate if self.rate else 0.0
        start = anyio.current_time()
        for sent, piece in enumerate(pieces):
            if interval:
                # An absolute schedule: time spent by the consumer does not slow the rate down.
                delay = start + sent * interval - anyio.current_time()
                await anyio.sleep(max(delay, 0.0))
            else:
                await anyio.lowlevel.checkpoint()
            yield piece
        prompt = sum(len(split_tokens(_text(m.get("content")))) for m in request.messages)
        yield Usage(prompt_tokens=prompt, completion_tokens=len(pieces))
        yield Finish(finish)

    async def aclose(self) -> None:
        """Nothing to release."""

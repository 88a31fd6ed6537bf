"""UI messages (what ``useChat`` sends) → the OpenAI-style messages every provider takes.

A ``UIMessage`` is ``{id, role, parts, metadata?}`` (the ``ai`` package's ``ui-messages.ts``);
this follows the package's own ``convertToModelMessages`` where it can:

* ``system`` messages: their ``text`` parts, joined;
* ``user`` messages: ``text`` parts, and ``file`` parts with an ``image/*`` media type as
  ``image_url`` content parts (OpenAI-compatible upstreams only: the others take text alone,
  so a file for them is refused rather than silently dropped);
* ``assistant`` messages, cut into steps at ``step-start`` parts: each step's text becomes one
  assistant message with its tool calls (``tool-<name>`` and ``dynamic-tool`` parts whose input
  is complete), followed by one ``tool`` message per call that has an outcome
  (``output-available``, ``output-error``, ``output-denied``).

Reasoning, sources, data parts and anything newer are the page's own and are not sent back.
Bad parts are a :class:`MessageError` naming the part (``messages[2].parts[0]``).
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["MessageError", "provider_messages"]


class MessageError(ValueError):
    """A UI message part that can't be sent upstream; ``param`` says which."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = f"{param}: {message}"


_OUTCOMES = ("output-available", "output-error", "output-denied")


def provider_messages(
    messages: list[dict[str, Any]], *, files: bool, system: str | None = None
) -> list[dict[str, Any]]:
    """The provider messages for ``messages`` (validated ``UIMessage`` dicts: ``role`` and a
    list of ``parts``); ``files`` says whether the upstream takes images. ``system`` goes
    first."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        parts: list[Any] = message["parts"]
        role = message["role"]
        if role == "system":
            out.append({"role": "system", "content": "".join(_texts(parts, where))})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(parts, where, files=files)})
        else:
            out.extend(_assistant_messages(parts, where))
    return out


def _part(parts: list[Any], j: int, where: str) -> tuple[dict[str, Any], str, str]:
    part = parts[j]
    at = f"{where}.parts[{j}]"
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise MessageError(at, "a part must be an object with a string 'type'")
    return part, part["type"], at


def _string(part: dict[str, Any], name: str, at: str) -> str:
    value = part.get(name)
    if not isinstance(value, str):
        raise MessageError(at, f"a {part['type']!r} part needs a string {name!r}")
    return value


def _texts(parts: list[Any], where: str) -> list[str]:
    texts = []
    for j in range(len(parts)):
        part, kind, at = _part(parts, j, where)
        if kind == "text":
            texts.append(_string(part, "text", at))
    return texts


def _user_content(parts: list[Any], where: str, *, files: bool) -> str | list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for j in range(len(parts)):
        part, kind, at = _part(parts, j, where)
        if kind == "text":
            content.append({"type": "text", "text": _string(part, "text", at)})
        elif kind == "file":
            content.append(_image(part, at, files=files))
    if all(c["type"] == "text" for c in content):
        return "".join(c["text"] for c in content)  # what every upstream takes
    return content


def _image(part: dict[str, Any], at: str, *, files: bool) -> dict[str, Any]:
    media_type = _string(part, "mediaType", at)
    url = _string(part, "url", at)
    if not files:
        raise MessageError(at, "this model's upstream takes no files (only text)")
    if not media_type.startswith("image/"):
        raise MessageError(at, f"only image files can be sent, not {media_type!r}")
    if not url.startswith(("data:", "https:", "http:")):
        raise MessageError(at, "a file's 'url' must be a data: or http(s): URL")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_name(part: dict[str, Any], kind: str, at: str) -> str:
    name = _string(part, "toolName", at) if kind == "dynamic-tool" else kind[len("tool-") :]
    if not name:
        raise MessageError(at, "a tool part needs a tool name")
    return name


def _assistant_messages(parts: list[Any], where: str) -> list[dict[str, Any]]:
    """One assistant message per step, each followed by its tool results."""
    out: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def close_step() -> None:
        if text or calls:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
            if calls:
                message["tool_calls"] = list(calls)
            out.append(message)
        out.extend(results)
        text.clear()
        calls.clear()
        results.clear()

    for j in range(len(parts)):
        part, kind, at = _part(parts, j, where)
        if kind == "step-start":
            close_step()
        elif kind == "text":
            text.append(_string(part, "text", at))
        elif kind == "dynamic-tool" or kind.startswith("tool-"):
            state = _string(part, "state", at)
            if state in ("input-streaming", "approval-requested", "approval-responded"):
                continue  # not a call the model can be shown the outcome of yet
            call_id = _string(part, "toolCallId", at)
            name = _tool_name(part, kind, at)
            arguments = orjson.dumps(part.get("input") or {}).decode()
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
            if state in _OUTCOMES:
                results.append({"role": "tool", "tool_call_id": call_id, **_result(part, at)})
    close_step()
    # An assistant message with nothing the model said (no parts, or only the page's own) is
    # still a turn of the conversation: sent empty, as Chat Completions takes one.
    return out or [{"role": "assistant", "content": ""}]


def _result(part: dict[str, Any], at: str) -> dict[str, Any]:
    state = part["state"]
    if state == "output-error":
        return {"content": _string(part, "errorText", at)}
    if state == "output-denied":
        return {"content": "Tool call execution denied."}  # the ai package's own words
    output = part.get("output")
    return {"content": output if isinstance(output, str) else orjson.dumps(output).decode()}

"""Request size limits: the body's bytes, and the messages and text of a prompt.

=========================  ======  ==================================  ====================
limit                      status  code                                option
=========================  ======  ==================================  ====================
request body bytes         413     ``payload_too_large``               ``--max-body-bytes``
messages per request       422     ``too_many_messages``               ``--max-messages``
prompt characters          422     ``prompt_too_long``                 ``--max-prompt-chars``
=========================  ======  ==================================  ====================

(The OpenAI-compatible routes answer the two prompt limits with 400, as OpenAI does.) The
request rate and running streams per key are in :mod:`._quota`; docs/security.md lists every
limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "PromptLimitError", "check_prompt"]


# -- request body ------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    """Raised from ``receive()`` once the body passes the limit (FastAPI turns other exceptions
    raised while reading the body into a 400, so the middleware answers this one itself)."""


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, counting bytes as they arrive.

    ``Content-Length`` over the limit is refused before a byte is read; a chunked body is cut
    off as soon as the count passes the limit, so the app never holds more than ``max_bytes``
    of one request in memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self, scope: Scope) -> JSONResponse:
        message = f"the request body is larger than {self.max_bytes} bytes"
        error = {"code": "payload_too_large", "message": message}
        body: dict[str, Any] = {"error": {**error, "type": "invalid_request_error", "param": None}}
        if scope.get("path") == "/v1/messages":  # Anthropic's shape
            body = {"type": "error", "error": {"type": "request_too_large", "message": message}}
        return JSONResponse(body, status_code=413, headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                # The server (h11/httptools) has refused a malformed Content-Length already.
                if value.strip().isdigit() and int(value) > self.max_bytes:
                    await self._refusal(scope)(scope, receive, send)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked:
            # No body, or one of a declared length within the limit (the server delivers no
            # more than that): nothing to count, and an event stream's writes pass unwrapped.
            await self.app(scope, receive, send)
            return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                # The app answered something of its own after the body was cut (a 400 for a
                # body it could not parse): the client gets the 413 instead.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await self._refusal(scope)(scope, receive, send)


# -- prompt size -------------------------------------------------------------------------------


class PromptLimitError(Exception):
    """A request's messages are over a limit; ``code``, ``message`` and ``param`` say which."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        # Content parts: only text counts here (an image's bytes are bounded by the body
        # size limit, and are not characters the model reads).
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
        return total
    return 0


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, dict) else getattr(message, name, None)


def check_prompt(messages: Sequence[Any], *, max_messages: int, max_chars: int) -> None:
    """Raise :class:`PromptLimitError` if there are more than ``max_messages`` messages or
    their text is longer than ``max_chars`` characters (0 disables either check).

    ``messages`` are pydantic models or dicts with ``content`` (a string or content parts) and
    optionally ``tool_calls``, whose arguments count as text too.
    """
    if max_messages and len(messages) > max_messages:
        raise PromptLimitError(
            "too_many_messages",
            f"too many messages: {len(messages)} (the limit is {max_messages})",
            "messages",
        )
    if not max_chars:
        return
    total = 0
    for message in messages:
        total += _text_chars(_field(message, "content"))
        for call in _field(message, "tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                total += len(function["arguments"])
        if total > max_chars:
            raise PromptLimitError(
                "prompt_too_long",
                f"the messages hold more than {max_chars} characters of text",
                "messages",
            )

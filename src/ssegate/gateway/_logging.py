"""The gateway's logs: text or JSON lines, one line per stream, no secrets, content on request.

* :func:`logging_config` is the ``logging.config.dictConfig`` for the gateway *and* uvicorn
  (``--log-json``: every line, access lines included, is one JSON object).
* :class:`StreamLog` is a job observer that writes one line per stream when it ends: id, key
  owner, model, status, cause, duration and usage (logger ``ssegate.streams``).
* API keys are never logged (the gateway knows keys by their owner id), and read tokens are
  cut out of access-log URLs, whatever the spelling of their parameter's name
  (:class:`RedactTokens`).
* Prompts and answers are logged only with ``--log-content`` (:class:`ContentLog`, logger
  ``ssegate.content``), and then cut at :data:`CONTENT_LIMIT` characters each.

Structured fields ride on a record as ``extra={"fields": {...}}``: JSON lines carry them as
keys, text lines as ``key=value`` pairs after the message.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any
from urllib.parse import unquote_plus

import orjson

from .._jobs import JobObserver
from ..providers import ChatRequest, Delta, Provider, TextDelta
from ..store import StreamInfo, StreamStatus

__all__ = [
    "CONTENT_LIMIT",
    "ContentLog",
    "JsonFormatter",
    "RedactTokens",
    "StreamLog",
    "TextFormatter",
    "configure_logging",
    "logging_config",
    "redact_tokens",
]

#: The most characters of one prompt or answer that ``--log-content`` writes.
CONTENT_LIMIT = 100_000

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the record's
    ``fields``, and ``exception`` (the traceback text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value …``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        head, sep, tail = text.partition("\n")  # keep a traceback below the fields
        return f"{head} {pairs}{sep}{tail}"


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    return orjson.dumps(value, default=str).decode()


_QUERY = re.compile(r"\?[^\s\"]*")


def _redact_param(part: str) -> str:
    name, sep, _ = part.partition("=")
    decoded = unquote_plus(name, errors="replace")
    return f"{name}{sep}[redacted]" if sep and decoded.lower() == "token" else part


def _redact_query(match: re.Match[str]) -> str:
    return "?" + "&".join(_redact_param(part) for part in match[0][1:].split("&"))


def redact_tokens(text: str) -> str:
    """``text`` with the value of every query parameter named ``token`` replaced by
    ``[redacted]``; the name is compared after percent-decoding (``toke%6e=`` is ``token=``)
    and without regard to case, so no spelling the auth might read slips through."""
    return _QUERY.sub(_redact_query, text) if "?" in text else text


class RedactTokens(logging.Filter):
    """Cut read tokens out of uvicorn's access lines (``?token=…`` → ``?token=[redacted]``).

    A token only reads one stream for a short while, but access logs are kept longer and read
    by more people than the streams they describe.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "?" in a for a in args):
            record.args = tuple(redact_tokens(a) if isinstance(a, str) else a for a in args)
        elif isinstance(record.msg, str) and "?" in record.msg:
            record.msg = redact_tokens(record.msg)
        return True


def logging_config(level: str = "info", *, json: bool = False) -> dict[str, Any]:
    """A ``dictConfig`` for the gateway and uvicorn: ``level`` for everything, text or JSON
    lines on stderr, read tokens redacted from access lines. Pass it to ``uvicorn.Config`` as
    ``log_config`` (uvicorn applies it) or to :func:`configure_logging`."""
    formatter = (
        "ssegate.gateway._logging.JsonFormatter"
        if json
        else ("ssegate.gateway._logging.TextFormatter")
    )
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "ssegate.gateway._logging.RedactTokens"}},
        "formatters": {"default": {"()": formatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # uvicorn's own config gives these handlers and stops propagation; ours routes
            # them through the root handler so every line has one format.
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": level, "propagate": True},
        },
    }


def configure_logging(level: str = "info", *, json: bool = False) -> None:
    """Apply :func:`logging_config`."""
    import logging.config

    logging.config.dictConfig(logging_config(level, json=json))


# -- per-stream lines ----------------------------------------------------------------------------


class StreamLog(JobObserver):
    """One ``ssegate.streams`` line per stream when it ends, with its outcome.

    Holds ``(owner, model, provider, first-token latency)`` per running stream, so its memory
    is bounded by the running streams.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("ssegate.streams")
        self._running: dict[str, list[Any]] = {}

    def on_start(self, info: StreamInfo) -> None:
        self._running[info.id] = [info.owner, info.model, info.provider, None]

    def on_first_token(self, stream_id: str, latency: float) -> None:
        entry = self._running.get(stream_id)
        if entry is not None:
            entry[3] = round(latency, 3)

    def on_finish(
        self,
        stream_id: str,
        status: StreamStatus,
        cause: str | None,
        duration: float,
        usage: dict[str, Any] | None,
    ) -> None:
        owner, model, provider, ttft = self._running.pop(stream_id, (None, None, None, None))
        fields: dict[str, Any] = {
            "stream_id": stream_id,
            "owner": owner,
            "model": model,
            "provider": provider,
            "status": status.value,
            "cause": cause,
            "duration_s": round(duration, 3),
            "first_token_s": ttft,
        }
        if usage:
            fields["prompt_tokens"] = usage.get("prompt_tokens")
            fields["completion_tokens"] = usage.get("completion_tokens")
        level = logging.WARNING if status is StreamStatus.ERROR else logging.INFO
        outcome = status.value + (f" ({cause})" if cause else "")
        self.log.log(
            level,
            "stream %s %s after %.2f s",
            stream_id,
            outcome,
            duration,
            extra={"fields": fields},
        )


# -- content (only with --log-content) ----------------------------------------------------------


def _cut(text: str) -> str:
    if len(text) <= CONTENT_LIMIT:
        return text
    return text[:CONTENT_LIMIT] + f"…[{len(text) - CONTENT_LIMIT} more characters]"


class ContentLog:
    """Prompts and answers on logger ``ssegate.content`` (``--log-content`` only)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("ssegate.content")

    def prompt(self, stream_id: str, owner: str | None, messages: Sequence[Any]) -> None:
        """Log a stream's request messages (as JSON)."""
        text = orjson.dumps(list(messages), default=str).decode()
        self.log.info(
            "stream %s prompt",
            stream_id,
            extra={"fields": {"stream_id": stream_id, "owner": owner, "prompt": _cut(text)}},
        )

    def wrap(self, provider: Provider) -> _AnswerLogger:
        """A provider that logs the answer text ``provider`` streams; set ``stream_id`` on it
        once the stream exists (before the job's task runs)."""
        return _AnswerLogger(provider, self.log)


class _AnswerLogger:
    """A :class:`Provider` passing deltas through and logging the answer text when done."""

    def __init__(self, inner: Provider, log: logging.Logger) -> None:
        self.inner = inner
        self.name = inner.name
        self.stream_id = "?"
        self._log = log

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        parts: list[str] = []
        size = 0
        started = time.monotonic()
        try:
            async with aclosing(self.inner.stream(request)) as deltas:
                async for delta in deltas:
                    if isinstance(delta, TextDelta) and size <= CONTENT_LIMIT:
                        parts.append(delta.text)
                        size += len(delta.text)
                    yield delta
        finally:
            self._log.info(
                "stream %s answer",
                self.stream_id,
                extra={
                    "fields": {
                        "stream_id": self.stream_id,
                        "answer": _cut("".join(parts)),
                        "duration_s": round(time.monotonic() - started, 3),
                    }
                },
            )

    async def aclose(self) -> None:
        # The wrapped provider is shared and closed by the model registry, not here.
        return None

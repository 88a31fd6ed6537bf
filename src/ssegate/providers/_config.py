"""How to reach one LLM upstream (:class:`ProviderConfig`) and keeping its secrets out of text.

:func:`redact` is what every message and log detail about an upstream passes through, so
neither the API key, configured header values, nor URL credentials reach logs or clients.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["PROVIDER_KINDS", "ProviderConfig", "redact"]

#: The provider kinds :func:`~ssegate.providers.create_provider` knows.
PROVIDER_KINDS = ("openai", "anthropic", "ollama", "demo")

_DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://127.0.0.1:11434",
}
_MESSAGE_LIMIT = 500


@dataclass(frozen=True, slots=True, repr=False)
class ProviderConfig:
    """How to reach one LLM upstream.

    ``kind`` is one of ``openai`` (any OpenAI-compatible server), ``anthropic``, ``ollama``
    (native API) or ``demo`` (offline). ``base_url`` defaults per kind: for ``openai`` it
    includes ``/v1`` (requests go to ``{base_url}/chat/completions``); for ``anthropic`` and
    ``ollama`` it is the server root. ``connect_timeout`` bounds the TCP/TLS connect;
    ``idle_timeout`` is the longest silence accepted from the upstream, before and during the
    stream. ``headers`` are added to every request. ``max_connections`` bounds the pool;
    ``max_event_size`` bounds one SSE event or NDJSON line. ``default_max_tokens`` is sent to
    Anthropic (which requires ``max_tokens``) when the request has none. ``demo_rate`` is the
    demo model's speed in tokens per second (``None`` or ``0``: as fast as possible).
    ``coalesce`` merges the text (and reasoning) deltas that arrive in one read of the
    upstream into one delta, so a consumer that fell behind pays once per read, not once per
    token; a paced stream (a token per read) is unchanged.

    The repr hides ``api_key``, header values and URL credentials.
    """

    kind: str = "demo"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    max_connections: int = 1000
    max_event_size: int = 4 * 1024 * 1024
    default_max_tokens: int = 1024
    anthropic_version: str = "2023-06-01"
    demo_rate: float | None = 30.0
    coalesce: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PROVIDER_KINDS:
            raise ValueError(f"unknown provider kind {self.kind!r}; use one of {PROVIDER_KINDS}")
        if self.base_url is not None:
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("base_url must be an absolute http:// or https:// URL")
        if self.connect_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_connections < 1 or self.max_event_size < 1 or self.default_max_tokens < 1:
            raise ValueError("limits must be positive")
        if self.demo_rate is not None and self.demo_rate < 0:
            raise ValueError("demo_rate must be >= 0")
        # A plain dict would make the frozen config mutable through the back door.
        object.__setattr__(self, "headers", dict(self.headers))

    @property
    def resolved_base_url(self) -> str:
        """``base_url`` or the kind's default, without a trailing slash."""
        return (self.base_url or _DEFAULT_BASE_URLS.get(self.kind, "")).rstrip("/")

    @property
    def target(self) -> str:
        """``host:port`` of the upstream: how messages name it (never credentials or paths)."""
        parts = urlsplit(self.resolved_base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in a message: the key, header values, URL password."""
        found = [self.api_key or "", *self.headers.values()]
        password = urlsplit(self.resolved_base_url).password if self.kind != "demo" else None
        found.append(password or "")
        return tuple(s for s in found if len(s) >= 4)

    def __repr__(self) -> str:
        url = self.resolved_base_url
        parts = urlsplit(url)
        if parts.username or parts.password:
            url = url.replace(parts.netloc, parts.netloc.rpartition("@")[2], 1)
        key = "'***'" if self.api_key else "None"
        return (
            f"ProviderConfig(kind={self.kind!r}, base_url={url!r}, api_key={key}, "
            f"connect_timeout={self.connect_timeout}, idle_timeout={self.idle_timeout}, "
            f"headers={sorted(self.headers)!r})"
        )


_KEY_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-*]{6,}"),
    re.compile(r"(?i)\bbearer\s+[^\s\"',;]+"),
)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every secret and anything looking like an API key replaced by ``***``,
    cut to a bounded length."""
    for secret in secrets:
        text = text.replace(secret, "***")
    for pattern in _KEY_PATTERNS:
        text = pattern.sub("***", text)
    if len(text) > _MESSAGE_LIMIT:
        text = text[:_MESSAGE_LIMIT] + "…"
    return text

"""The gateway's settings: one frozen object, built by the CLI from flags and environment.

Nothing reads the environment behind the app's back: ``create_app(settings)`` gets everything
it needs here, and tests build ``Settings(...)`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

__all__ = ["OnDisconnect", "Settings"]

OnDisconnect = Literal["cancel", "continue"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``create_app`` needs. Every field has a flag and an ``SSEGATE_*`` variable."""

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"

    # The LLM upstream.
    provider: str = "demo"
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    model_map: str | None = None
    upstream_connect_timeout: float = 10.0
    upstream_idle_timeout: float = 60.0
    demo_tokens_per_second: float = 30.0

    # Streams.
    store: str = "memory"
    redis_prefix: str = "ssegate:"
    lease_ttl: float | None = None  # producer lease: 10 s on Redis, 15 s in memory
    stream_ttl: float = 600.0
    max_streams: int = 10_000
    max_events_per_stream: int = 100_000
    on_disconnect: OnDisconnect = "cancel"
    disconnect_grace: float = 5.0
    max_stream_duration: float = 360.0
    heartbeat_interval: float = 15.0
    retry_ms: int | None = 2000

    # HTTP.
    cors_origins: tuple[str, ...] = ()
    drain_timeout: float = 30.0

    # Security and limits (docs/security.md). ``api_keys`` entries are ``name:key`` or ``key``.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_keys_file: str | None = None
    token_secret: str | None = field(default=None, repr=False)
    token_ttl: float | None = None  # default: stream_ttl + max_stream_duration
    insecure: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    max_messages: int = 1000
    max_prompt_chars: int = 1_000_000
    max_streams_per_key: int = 32
    rate_limit: float = 20.0
    rate_burst: int = 100
    max_subscribers_per_stream: int = 64
    send_timeout: float | None = 30.0

    # Logs.
    log_json: bool = False
    log_content: bool = False

    def with_(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)  # type: ignore[arg-type]

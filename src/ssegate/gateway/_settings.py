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

    def with_(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)  # type: ignore[arg-type]

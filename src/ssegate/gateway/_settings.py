"""The gateway's settings: frozen, validated config groups, each setting declared once.

Every field below is one setting: its type, default, bounds and help are declared here, and
``ssegate serve`` makes its ``--flag`` and ``SSEGATE_*`` variable from that declaration
(:mod:`._options`). Nothing reads the environment behind the app's back: ``create_app(settings)``
gets everything it needs here, and tests build settings directly, with
``Settings.from_options(heartbeat=1, ...)`` (option names) or the groups themselves.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ._options import option, option_specs, validate

__all__ = [
    "LimitsConfig",
    "LoggingConfig",
    "OnDisconnect",
    "SecurityConfig",
    "ServerConfig",
    "Settings",
    "StoreConfig",
    "StreamsConfig",
    "UpstreamConfig",
]

OnDisconnect = Literal["cancel", "continue"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
ProviderKind = Literal["demo", "openai", "anthropic", "ollama"]

_STORE_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
_UI_CHAT_PATH = re.compile(r"/v1(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)+")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where the gateway listens, how long a client may take to send a request, and how it
    stops."""

    host: str = option("127.0.0.1", "Address to bind.")
    port: int = option(8000, "Port to bind.", minimum=0, maximum=65535)
    head_timeout: float = option(
        10.0,
        "Seconds a client has to send a request's head (request line and headers), counted "
        "from when its connection opens or its next request starts; then 408 and the "
        "connection closes. An idle keep-alive connection closes after 5 s.",
        minimum=0.01,
    )
    body_timeout: float = option(
        60.0,
        "Seconds a client has to send a request's body once its head arrived; then 408 and "
        "the connection closes.",
        minimum=0.01,
    )
    drain_timeout: float = option(
        30.0, "Seconds in-flight generations get to finish on SIGTERM.", minimum=0
    )
    listeners: int = option(
        16,
        "Listening sockets on the port (SO_REUSEPORT, Linux; elsewhere always 1). The event "
        "loop accepts one connection per socket per turn: more sockets accept a burst of new "
        "connections sooner while many streams keep the loop busy.",
        minimum=1,
        maximum=256,
    )
    workers: int = option(
        1,
        "Worker processes serving the port, each a gateway on the shared store (needs Redis: "
        "with the memory store a stream is visible to its own worker only). A worker that "
        "dies stops the others and the command exits 1 (docs/scaling.md).",
        minimum=1,
        maximum=64,
    )
    ui_chat_path: str = option(
        "/v1/ui/chat",
        "Path of the Vercel AI SDK's useChat endpoint (docs/ai-sdk.md); under /v1/, where API "
        "keys apply.",
    )

    def __post_init__(self) -> None:
        validate(self)
        if not _UI_CHAT_PATH.fullmatch(self.ui_chat_path):
            raise ValueError(
                "--ui-chat-path must be a path under /v1/ of letters, digits and '-', '_', '.' "
                f"segments, without a trailing slash (got {self.ui_chat_path!r})"
            )


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """What the gateway logs, and how."""

    level: LogLevel = option("info", "Log level.", flag="--log-level")
    json: bool = option(False, "Log JSON lines.", flag="--log-json")
    content: bool = option(
        False,
        "Log prompts and answers (off by default: they may hold personal data).",
        flag="--log-content",
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """The LLM behind the gateway."""

    provider: ProviderKind = option(
        "demo",
        "LLM upstream wire format. 'demo' answers offline; 'openai' serves every "
        "OpenAI-compatible server (OpenAI, DeepSeek, Qwen, Moonshot, vLLM, llama.cpp, LM Studio).",
    )
    base_url: str | None = option(None, "Upstream base URL, e.g. https://api.openai.com/v1.")
    model: str | None = option(None, "Upstream model name; also the public model name.")
    api_key_env: str | None = option(
        None,
        "Name of the environment variable holding the upstream API key (the key itself is "
        "never a flag, never logged, never sent to clients).",
    )
    api_key: str | None = option(
        None, "The upstream API key (read from --api-key-env).", source="code", secret=True
    )
    model_map: str | None = option(
        None,
        "JSON or TOML file mapping public model names to {provider, base_url, model, "
        "api_key_env}; replaces --provider/--model/--base-url (see docs/openai.md).",
        path=True,
    )
    connect_timeout: float = option(
        10.0,
        "Seconds to connect to the upstream.",
        flag="--upstream-connect-timeout",
        minimum=0.001,
    )
    idle_timeout: float = option(
        60.0,
        "Seconds without a byte from the upstream before the stream ends with an error.",
        flag="--upstream-idle-timeout",
        minimum=0.001,
    )
    demo_rate: float = option(
        30.0, "Tokens per second of the demo model (0 = as fast as possible).", minimum=0
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where streams live, and for how long."""

    url: str = option(
        "memory",
        "Where streams live: 'memory' (one instance) or Redis for several instances: "
        "redis://[:password@]host:port/db, rediss:// for TLS, or a Redis Cluster: "
        "redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS). Keep a password "
        "in SSEGATE_STORE rather than on the command line.",
        flag="--store",
        secret=True,
    )
    redis_prefix: str = option(
        "ssegate:",
        "Prefix of every Redis key and channel (deployments sharing one Redis need distinct ones).",
    )
    lease_ttl: float | None = option(
        None,
        "Seconds without a sign of life from the instance generating a stream before its "
        "followers get 'producer_lost'.",
        minimum=0.1,
        default_help="10 with Redis, 15 in memory",
    )
    stream_ttl: float = option(600.0, "Seconds a finished stream stays readable.", minimum=0.001)
    max_streams: int = option(
        10_000,
        "Most streams the memory store keeps at once, running or finished (503 store_full "
        "past it; finished streams make room as they expire).",
        minimum=1,
    )
    max_events_per_stream: int = option(
        100_000,
        "Events kept per stream; a client resuming from before the oldest kept one gets an "
        "'error' event with code 'gap'.",
        minimum=1,
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.url != "memory" and not self.url.startswith(_STORE_SCHEMES):
            raise ValueError(
                "--store must be 'memory' or a redis://, rediss://, unix://, redis+cluster:// "
                "or rediss+cluster:// URL (got another scheme)"
            )


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    """How one stream behaves: disconnects, its lifetime, and what its readers are sent."""

    on_disconnect: OnDisconnect = option(
        "cancel",
        "Default policy when no subscriber is left: cancel after the grace period, or keep "
        "generating.",
    )
    disconnect_grace: float = option(
        5.0, "Seconds without a subscriber before 'cancel' applies.", minimum=0
    )
    max_stream_duration: float = option(
        360.0, "Longest a generation may run, in seconds.", minimum=0.001
    )
    heartbeat_interval: float = option(
        15.0,
        "Seconds of silence before a ': ping' comment (0 = none).",
        flag="--heartbeat",
        minimum=0,
    )
    retry_ms: int = option(
        2000,
        "Reconnection delay sent to EventSource clients as 'retry:', in ms (0 = send none).",
        minimum=0,
    )
    send_timeout: float = option(
        30.0,
        "Seconds one write to a client may block before it is dropped (it resumes from its "
        "last id; 0 = never).",
        minimum=0,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may use the gateway, and from which web pages (docs/security.md)."""

    api_keys: tuple[str, ...] = option(
        (),
        "Gateway API keys, comma-separated '[name:]key' entries (a variable only: keys never "
        "go on a command line).",
        source="env",
        secret=True,
    )
    api_keys_file: str | None = option(
        None,
        "File of gateway API keys, one '[name:]key' a line ('#' comments); clients send "
        "'Authorization: Bearer <key>'. SSEGATE_API_KEYS adds comma-separated '[name:]key' "
        "entries. No keys: the gateway is open.",
        path=True,
    )
    token_secret: str | None = option(
        None,
        "Secret that signs stream read tokens (share it between instances; prefer the "
        "variable). Default: derived from the API keys.",
        secret=True,
    )
    token_ttl: float | None = option(
        None,
        "Seconds a stream read token is valid.",
        minimum=1,
        default_help="--stream-ttl + --max-stream-duration",
    )
    insecure: bool = option(
        False,
        "Allow listening on a non-loopback address without API keys (something in front "
        "must check access).",
    )
    cors_origins: tuple[str, ...] = option(
        (),
        "Origin allowed to call the gateway from a browser (repeatable; '*' allows any). "
        "None by default.",
        flag="--cors-origin",
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """How much one request, key or stream may take (docs/security.md)."""

    max_body_bytes: int = option(4 * 1024 * 1024, "Largest request body (413 past it).", minimum=1)
    max_messages: int = option(1000, "Most messages in one request (0 = no limit).", minimum=0)
    max_prompt_chars: int = option(
        1_000_000, "Most characters of text in one request's messages (0 = no limit).", minimum=0
    )
    max_streams_per_key: int = option(
        32, "Most running streams per API key, per instance (429; 0 = no limit).", minimum=0
    )
    rate_limit: float = option(
        20.0,
        "Requests per second per API key, and per stream for requests with a read token, per "
        "instance (429 with Retry-After; 0 = no limit).",
        minimum=0,
    )
    rate_burst: int = option(
        100,
        "Requests an API key (or a stream's read tokens) may make at once before --rate-limit "
        "applies.",
        minimum=1,
    )
    max_subscribers_per_stream: int = option(
        64,
        "Most connected readers of one stream (429; 0 = no limit).",
        flag="--max-subscribers",
        minimum=0,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``create_app`` needs, in groups; every setting has a flag and an
    ``SSEGATE_*`` variable (or, for secrets, a variable only)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @classmethod
    def from_options(cls, **options: Any) -> Settings:
        """Settings from option names — a flag's name with underscores (``heartbeat=1`` for
        ``--heartbeat 1``, ``store="redis://…"``) — the rest at their defaults. An unknown
        name raises ``TypeError``, a bad value ``ValueError``."""
        specs = {spec.name: spec for spec in option_specs(cls)}
        groups: dict[str, dict[str, Any]] = {}
        for name, value in options.items():
            spec = specs.get(name)
            if spec is None:
                raise TypeError(f"unknown setting {name!r}")
            if spec.multiple and isinstance(value, list):
                value = tuple(value)
            groups.setdefault(spec.group, {})[spec.field] = value
        defaults = cls()
        return cls(
            **{
                name: dataclasses.replace(getattr(defaults, name), **fields)
                for name, fields in groups.items()
            }
        )

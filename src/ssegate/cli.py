"""The ``ssegate`` command line: ``serve``, ``chat``, ``mock-upstream``.

Every ``serve`` option can also be set with an ``SSEGATE_*`` environment variable (shown in
``--help``); flags win over the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["main"]


def _env(name: str) -> str:
    return "SSEGATE_" + name.upper()


_F = TypeVar("_F", bound=Callable[..., Any])


def _option(*decls: str, env: str, **kwargs: Any) -> Callable[[_F], _F]:
    return click.option(*decls, envvar=_env(env), show_envvar=True, show_default=True, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ssegate")
def main() -> None:
    """ssegate: stream LLM output to browsers and apps over Server-Sent Events."""


@main.command()
@_option("--host", env="host", default="127.0.0.1", help="Address to bind.")
@_option("--port", env="port", default=8000, type=click.IntRange(0, 65535), help="Port to bind.")
@_option(
    "--log-level",
    env="log_level",
    default="info",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    help="Log level.",
)
@_option(
    "--provider",
    env="provider",
    default="demo",
    type=click.Choice(["demo", "openai", "anthropic", "ollama"]),
    help="LLM upstream wire format. 'demo' answers offline; 'openai' serves every "
    "OpenAI-compatible server (OpenAI, DeepSeek, Qwen, Moonshot, vLLM, llama.cpp, LM Studio).",
)
@_option(
    "--base-url",
    env="base_url",
    default=None,
    help="Upstream base URL, e.g. https://api.openai.com/v1.",
)
@_option(
    "--model", env="model", default=None, help="Upstream model name; also the public model name."
)
@_option(
    "--api-key-env",
    env="api_key_env",
    default=None,
    help="Name of the environment variable holding the upstream API key (the key itself is "
    "never a flag, never logged, never sent to clients).",
)
@_option(
    "--model-map",
    env="model_map",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON or TOML file mapping public model names to {provider, base_url, model, api_key_env}; replaces --provider/--model/--base-url (see docs/openai.md).",
)
@_option(
    "--upstream-connect-timeout",
    env="upstream_connect_timeout",
    default=10.0,
    type=float,
    help="Seconds to connect to the upstream.",
)
@_option(
    "--upstream-idle-timeout",
    env="upstream_idle_timeout",
    default=60.0,
    type=float,
    help="Seconds without a byte from the upstream before the stream ends with an error.",
)
@_option(
    "--demo-rate",
    env="demo_rate",
    default=30.0,
    type=float,
    help="Tokens per second of the demo model (0 = as fast as possible).",
)
@_option(
    "--store",
    env="store",
    default="memory",
    help="Where streams live: 'memory' (one instance) or Redis for several instances: "
    "redis://[:password@]host:port/db, rediss:// for TLS (keep the password in "
    "SSEGATE_STORE rather than on the command line).",
)
@_option(
    "--redis-prefix",
    env="redis_prefix",
    default="ssegate:",
    help="Prefix of every Redis key and channel (deployments sharing one Redis need distinct ones).",
)
@_option(
    "--lease-ttl",
    env="lease_ttl",
    default=None,
    type=click.FloatRange(min=0.1),
    help="Seconds without a sign of life from the instance generating a stream before its "
    "followers get 'producer_lost' [default: 10 with Redis, 15 in memory].",
)
@_option(
    "--stream-ttl",
    env="stream_ttl",
    default=600.0,
    type=float,
    help="Seconds a finished stream stays readable.",
)
@_option(
    "--on-disconnect",
    env="on_disconnect",
    default="cancel",
    type=click.Choice(["cancel", "continue"]),
    help="Default policy when no subscriber is left: cancel after the grace period, or keep generating.",
)
@_option(
    "--disconnect-grace",
    env="disconnect_grace",
    default=5.0,
    type=float,
    help="Seconds without a subscriber before 'cancel' applies.",
)
@_option(
    "--max-stream-duration",
    env="max_stream_duration",
    default=360.0,
    type=float,
    help="Longest a generation may run, in seconds.",
)
@_option(
    "--heartbeat",
    env="heartbeat",
    default=15.0,
    type=float,
    help="Seconds of silence before a ': ping' comment.",
)
@_option(
    "--cors-origin",
    env="cors_origin",
    multiple=True,
    help="Origin allowed to call the gateway from a browser (repeatable; '*' allows any). None by default.",
)
@_option(
    "--drain-timeout",
    env="drain_timeout",
    default=30.0,
    type=float,
    help="Seconds in-flight generations get to finish on SIGTERM.",
)
# -- security and limits (docs/security.md) --
@_option(
    "--api-keys-file",
    env="api_keys_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="File of gateway API keys, one '[name:]key' a line ('#' comments); clients send 'Authorization: Bearer <key>'. SSEGATE_API_KEYS adds comma-separated '[name:]key' entries. No keys: the gateway is open.",
)
@_option(
    "--token-secret",
    env="token_secret",
    default=None,
    help="Secret that signs stream read tokens (share it between instances; prefer the variable). Default: derived from the API keys.",
)
@_option(
    "--token-ttl",
    env="token_ttl",
    default=None,
    type=click.FloatRange(min=1),
    help="Seconds a stream read token is valid. Default: --stream-ttl + --max-stream-duration.",
)
@_option(
    "--insecure",
    env="insecure",
    is_flag=True,
    default=False,
    help="Allow listening on a non-loopback address without API keys (something in front must check access).",
)
@_option(
    "--max-body-bytes",
    env="max_body_bytes",
    default=4 * 1024 * 1024,
    type=click.IntRange(min=1),
    help="Largest request body (413 past it).",
)
@_option(
    "--max-messages",
    env="max_messages",
    default=1000,
    type=click.IntRange(min=0),
    help="Most messages in one request (0 = no limit).",
)
@_option(
    "--max-prompt-chars",
    env="max_prompt_chars",
    default=1_000_000,
    type=click.IntRange(min=0),
    help="Most characters of text in one request's messages (0 = no limit).",
)
@_option(
    "--max-streams-per-key",
    env="max_streams_per_key",
    default=32,
    type=click.IntRange(min=0),
    help="Most running streams per API key, per instance (429; 0 = no limit).",
)
@_option(
    "--rate-limit",
    env="rate_limit",
    default=20.0,
    type=click.FloatRange(min=0),
    help="Requests per second per API key, per instance (429 with Retry-After; 0 = no limit).",
)
@_option(
    "--rate-burst",
    env="rate_burst",
    default=100,
    type=click.IntRange(min=1),
    help="Requests an API key may make at once before --rate-limit applies.",
)
@_option(
    "--max-subscribers",
    env="max_subscribers",
    default=64,
    type=click.IntRange(min=0),
    help="Most connected readers of one stream (429; 0 = no limit).",
)
@_option(
    "--send-timeout",
    env="send_timeout",
    default=30.0,
    type=click.FloatRange(min=0),
    help="Seconds one write to a client may block before it is dropped (it resumes from its last id; 0 = never).",
)
@_option("--log-json", env="log_json", is_flag=True, default=False, help="Log JSON lines.")
@_option(
    "--log-content",
    env="log_content",
    is_flag=True,
    default=False,
    help="Log prompts and answers (off by default: they may hold personal data).",
)
def serve(**opts: Any) -> None:
    """Run the gateway (uvicorn with uvloop and httptools)."""
    from .gateway import Settings, run
    from .gateway._auth import bind_refusal, split_key_entries

    api_key = None
    if opts["api_key_env"]:
        api_key = os.environ.get(opts["api_key_env"])
        if not api_key:
            raise click.UsageError(f"environment variable {opts['api_key_env']} is not set")
    settings = Settings(
        host=opts["host"],
        port=opts["port"],
        log_level=opts["log_level"],
        provider=opts["provider"],
        base_url=opts["base_url"],
        model=opts["model"],
        api_key=api_key,
        api_key_env=opts["api_key_env"],
        model_map=opts["model_map"],
        upstream_connect_timeout=opts["upstream_connect_timeout"],
        upstream_idle_timeout=opts["upstream_idle_timeout"],
        demo_tokens_per_second=opts["demo_rate"],
        store=opts["store"],
        redis_prefix=opts["redis_prefix"],
        lease_ttl=opts["lease_ttl"],
        stream_ttl=opts["stream_ttl"],
        on_disconnect=opts["on_disconnect"],
        disconnect_grace=opts["disconnect_grace"],
        max_stream_duration=opts["max_stream_duration"],
        heartbeat_interval=opts["heartbeat"],
        cors_origins=tuple(opts["cors_origin"]),
        drain_timeout=opts["drain_timeout"],
        api_keys=split_key_entries(os.environ.get("SSEGATE_API_KEYS", "")),
        api_keys_file=opts["api_keys_file"],
        token_secret=opts["token_secret"] or None,
        token_ttl=opts["token_ttl"],
        insecure=opts["insecure"],
        max_body_bytes=opts["max_body_bytes"],
        max_messages=opts["max_messages"],
        max_prompt_chars=opts["max_prompt_chars"],
        max_streams_per_key=opts["max_streams_per_key"],
        rate_limit=opts["rate_limit"],
        rate_burst=opts["rate_burst"],
        max_subscribers_per_stream=opts["max_subscribers"],
        send_timeout=opts["send_timeout"] or None,
        log_json=opts["log_json"],
        log_content=opts["log_content"],
    )
    refusal = bind_refusal(settings)
    if refusal is not None:
        click.echo(f"Error: {refusal}", err=True)
        sys.exit(2)
    sys.exit(run(settings))


@main.command("mock-upstream")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=9000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind."
)
def mock_upstream(host: str, port: int) -> None:
    """Run the mock LLM upstream (OpenAI, Anthropic and Ollama wire formats) for testing."""
    from .testing import run_mock_upstream

    run_mock_upstream(host, port, on_ready=lambda url: click.echo(f"mock upstream on {url}"))


@main.command()
@click.argument("question")
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    envvar="SSEGATE_URL",
    help="Gateway URL.",
)
@click.option("--model", default=None, help="Model to ask (default: the gateway's).")
@click.option(
    "--api-key-env",
    default="SSEGATE_API_KEY",
    show_default=True,
    help="Variable holding the gateway API key, if it needs one.",
)
@click.option(
    "--show-reasoning/--hide-reasoning",
    default=True,
    show_default=True,
    help="Print reasoning text (dimmed).",
)
def chat(
    question: str, url: str, model: str | None, api_key_env: str, show_reasoning: bool
) -> None:
    """Ask QUESTION and print the answer as it streams; resumes on a dropped connection, Ctrl-C stops it."""
    from ._chat_client import run_chat

    sys.exit(
        run_chat(
            url,
            question,
            model=model,
            api_key=os.environ.get(api_key_env) or None,
            show_reasoning=show_reasoning,
        )
    )

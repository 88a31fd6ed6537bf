"""The ``ssegate`` command line: ``serve``, ``chat``, ``mock-upstream``.

``serve``'s options are made from the settings' declarations (:mod:`ssegate.gateway._settings`):
every one can also be set with an ``SSEGATE_*`` environment variable (shown in ``--help``);
flags win over the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from .gateway import Settings, run
from .gateway._auth import bind_refusal
from .gateway._keys import split_key_entries
from .gateway._options import OptionSpec, option_specs
from .gateway._workers import workers_refusal

__all__ = ["main", "serve_settings"]

_F = TypeVar("_F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ssegate")
def main() -> None:
    """ssegate: stream LLM output to browsers and apps over Server-Sent Events."""


def _click_type(spec: OptionSpec) -> Any:
    low, high = spec.option.minimum, spec.option.maximum
    if spec.choices is not None:
        return click.Choice(spec.choices)
    if spec.option.path:
        return click.Path(exists=True, dir_okay=False)
    if spec.kind is int:
        return click.IntRange(
            None if low is None else int(low), None if high is None else int(high)
        )
    if spec.kind is float:
        return click.FloatRange(low, high)
    return spec.kind


def _click_option(spec: OptionSpec) -> Callable[[_F], _F]:
    """The click option of one setting: its flag, variable, type, range, default and help."""
    text = spec.option.help
    if spec.option.default_help:
        text += f"  [default: {spec.option.default_help}]"
    kwargs: dict[str, Any] = {"default": spec.default}
    if spec.kind is bool:
        kwargs["is_flag"] = True
    elif spec.multiple:
        kwargs.update(type=spec.kind, multiple=True, default=None)
    else:
        kwargs["type"] = _click_type(spec)
    return click.option(
        spec.flag,
        spec.name,
        envvar=spec.env,
        show_envvar=True,
        show_default=spec.default not in (None, ()),
        help=text,
        **kwargs,
    )


def _settings_options(command: _F) -> _F:
    """Add one click option per setting that has a flag, as :mod:`ssegate.gateway._settings`
    declares it."""
    for spec in reversed(option_specs(Settings)):
        if spec.option.source == "flag":
            command = _click_option(spec)(command)
    return command


def _settings(options: dict[str, Any]) -> Settings:
    """The settings of ``serve``'s options, the variable-only settings (API keys) and the
    upstream key named by ``--api-key-env``; a bad value is a usage error."""
    values = {name: value for name, value in options.items() if value != ""}
    for spec in option_specs(Settings):
        if spec.option.source == "env":
            raw = os.environ.get(spec.env, "")
            values[spec.name] = split_key_entries(raw) if spec.multiple else (raw or None)
    if values.get("api_key_env"):
        values["api_key"] = os.environ.get(values["api_key_env"])
        if not values["api_key"]:
            raise click.UsageError(f"environment variable {values['api_key_env']} is not set")
    try:
        return Settings.from_options(**values)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@_settings_options
def serve(**options: Any) -> None:
    """Run the gateway (uvicorn with uvloop and httptools)."""
    settings = _settings(options)
    refusal = bind_refusal(settings) or workers_refusal(settings)
    if refusal is not None:
        click.echo(f"Error: {refusal}", err=True)
        sys.exit(2)
    sys.exit(run(settings))


def serve_settings(args: Sequence[str]) -> Settings:
    """The settings ``ssegate serve ARGS`` runs with (its flags, then the ``SSEGATE_*``
    variables, then the defaults); a bad value raises :class:`click.UsageError`."""
    with serve.make_context("serve", list(args)) as ctx:
        return _settings(ctx.params)


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

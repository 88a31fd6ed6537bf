"""Settings are declared once: each config group's fields make ``ssegate serve``'s flags and
``SSEGATE_*`` variables, and the same declaration validates settings built in code."""

from __future__ import annotations

import dataclasses
import os

import click
import httpx
import pytest
from click.testing import CliRunner

from gateway_helpers import ask
from instance_helpers import GatewayProcess, running_gateways
from ssegate.cli import main, serve_settings
from ssegate.gateway import Settings, StoreConfig, StreamsConfig
from ssegate.gateway._options import option_specs
from ssegate.testing import MockUpstream

SPECS = option_specs(Settings)


def test_every_flag_setting_is_a_serve_option_with_its_variable() -> None:
    help_text = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output
    flags = [spec for spec in SPECS if spec.option.source == "flag"]
    assert len(flags) >= 35
    for spec in flags:
        assert spec.flag in help_text, spec.flag
        assert spec.env in help_text, spec.env
    # The variable-only and program-set settings are not flags.
    assert "--api-keys " not in help_text
    assert "--api-key " not in help_text


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("SSEGATE_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.usefixtures("clean_env")
def test_no_flags_give_the_declared_defaults() -> None:
    assert serve_settings([]) == Settings()


def test_flags_and_variables_reach_their_groups(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SSEGATE_HEARTBEAT", "3")
    clean_env.setenv("SSEGATE_API_KEYS", "a:sk-aaaaaaaaaaaaaaaa, sk-bbbbbbbbbbbbbbbb")
    clean_env.setenv("UPSTREAM_KEY", "sk-upstream")
    settings = serve_settings(
        [
            "--max-streams", "7",
            "--max-events-per-stream", "50",
            "--cors-origin", "https://a.example",
            "--cors-origin", "https://b.example",
            "--send-timeout", "0",
            "--log-json",
            "--provider", "openai",
            "--model", "m",
            "--api-key-env", "UPSTREAM_KEY",
            "--head-timeout", "2.5",
            "--max-subscribers", "9",
        ]
    )  # fmt: skip
    assert settings.store == StoreConfig(max_streams=7, max_events_per_stream=50)
    assert settings.streams == StreamsConfig(heartbeat_interval=3.0, send_timeout=0.0)
    assert settings.security.cors_origins == ("https://a.example", "https://b.example")
    assert settings.security.api_keys == ("a:sk-aaaaaaaaaaaaaaaa", "sk-bbbbbbbbbbbbbbbb")
    assert settings.upstream.api_key == "sk-upstream"
    assert settings.logging.json is True
    assert settings.server.head_timeout == 2.5
    assert settings.limits.max_subscribers_per_stream == 9
    # The flag wins over its variable.
    assert serve_settings(["--heartbeat", "4"]).streams.heartbeat_interval == 4.0


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "args",
    [
        ["--max-streams", "0"],
        ["--max-events-per-stream", "-1"],
        ["--port", "70000"],
        ["--heartbeat", "-1"],
        ["--on-disconnect", "sometimes"],
        ["--store", "postgres://x"],
        ["--rate-limit", "nan"],
    ],
)
def test_bad_values_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(click.UsageError):
        serve_settings(args)


def test_settings_built_in_code_are_checked_by_the_same_declaration() -> None:
    with pytest.raises(ValueError, match="--max-streams must be at least 1"):
        Settings.from_options(max_streams=0)
    with pytest.raises(ValueError, match="--heartbeat must be a number"):
        StreamsConfig(heartbeat_interval="15")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--on-disconnect must be one of cancel, continue"):
        Settings.from_options(on_disconnect="later")
    with pytest.raises(TypeError, match="unknown setting 'heartbeat_interval'"):
        Settings.from_options(heartbeat_interval=1)
    secret = "s3cret-token-secret"
    with pytest.raises(ValueError, match="--token-secret must be a str") as info:
        Settings.from_options(token_secret=b"s3cret")
    assert "s3cret" not in str(info.value)
    assert secret not in repr(Settings.from_options(token_secret=secret))
    settings = Settings.from_options(heartbeat=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.streams.heartbeat_interval = 2  # type: ignore[misc]


def test_max_streams_and_max_events_per_stream_are_real_options() -> None:
    """``--max-streams 1``: a second running stream is refused; ``--max-events-per-stream 5``:
    a client resuming from before the kept events is told ``gap``."""
    with MockUpstream() as mock:
        gateway = GatewayProcess(
            "--provider", "openai", "--base-url", mock.url + "/v1", "--model", "mock",
            "--max-streams", "1", "--max-events-per-stream", "5",
        )  # fmt: skip
        with running_gateways(gateway), httpx.Client(base_url=gateway.url, timeout=10) as client:
            slow = ask("[[tokens:500]] [[interval_ms:20]]", on_disconnect="continue")
            first = client.post("/v1/streams", json=slow)
            assert first.status_code == 201, first.text
            refused = client.post("/v1/streams", json=ask("[[tokens:2]]"))
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "store_full"
            stream = first.json()["id"]
            with client.stream("GET", f"/v1/streams/{stream}/events") as live:
                for line in live.iter_lines():
                    if line == "id: 10":  # more events than are kept
                        break
            assert client.delete(f"/v1/streams/{stream}").status_code == 200
            events = client.get(f"/v1/streams/{stream}/events", headers={"Last-Event-ID": "1"})
            assert "event: error" in events.text
            assert '"code":"gap"' in events.text

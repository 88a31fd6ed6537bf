"""ProviderConfig, the factory, and keeping secrets out of reprs and messages."""

from __future__ import annotations

import dataclasses
from contextlib import aclosing

import pytest

from ssegate.providers import (
    PROVIDER_KINDS,
    AnthropicProvider,
    ChatRequest,
    DemoProvider,
    OllamaProvider,
    OpenAIProvider,
    ProviderConfig,
    UpstreamConnectError,
    create_provider,
    redact,
)
from ssegate.testing import closed_port_url

KEY = "sk-live-abcdefghijklmnop"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "cls", "base_url"),
    [
        ("openai", OpenAIProvider, "https://api.openai.com/v1"),
        ("anthropic", AnthropicProvider, "https://api.anthropic.com"),
        ("ollama", OllamaProvider, "http://127.0.0.1:11434"),
        ("demo", DemoProvider, ""),
    ],
)
async def test_factory_builds_each_kind(kind: str, cls: type, base_url: str) -> None:
    provider = create_provider(kind, api_key=KEY)
    assert type(provider) is cls
    assert provider.name == kind
    if kind != "demo":
        assert provider.config.resolved_base_url == base_url  # type: ignore[attr-defined]
    await provider.aclose()


@pytest.mark.anyio
async def test_factory_takes_a_config_and_overrides() -> None:
    config = ProviderConfig(kind="ollama", base_url="http://gpu:11434/", idle_timeout=5)
    provider = create_provider(config, idle_timeout=9)
    assert isinstance(provider, OllamaProvider)
    assert provider.config == dataclasses.replace(config, idle_timeout=9)
    assert provider.config.resolved_base_url == "http://gpu:11434"
    await provider.aclose()


def test_bad_configs_are_refused() -> None:
    assert set(PROVIDER_KINDS) == {"openai", "anthropic", "ollama", "demo"}
    with pytest.raises(ValueError, match="unknown provider kind"):
        create_provider("gemini")
    with pytest.raises(TypeError):
        create_provider("openai", api_kee="typo")
    with pytest.raises(ValueError, match="base_url"):
        ProviderConfig(kind="openai", base_url="api.openai.com/v1")
    with pytest.raises(ValueError, match="timeouts"):
        ProviderConfig(kind="openai", idle_timeout=0)


def test_repr_hides_key_headers_and_url_credentials() -> None:
    config = ProviderConfig(
        kind="openai",
        base_url="https://bob:hunter2-pass@llm.example.com/v1",
        api_key=KEY,
        headers={"x-org-token": "org-secret-value"},
    )
    text = repr(config) + str(config)
    for secret in (KEY, "hunter2-pass", "org-secret-value", "bob"):
        assert secret not in text
    assert "llm.example.com" in text
    assert "x-org-token" in text  # header names are fine
    assert set(config.secrets()) == {KEY, "org-secret-value", "hunter2-pass"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.api_key = "other"  # type: ignore[misc]
    assert hash(config) == hash(dataclasses.replace(config))  # usable as a dict key


def test_redact() -> None:
    secrets = ("my-custom-token-123",)
    text = f"bad key {KEY}; auth Bearer abc.def-ghi; token my-custom-token-123; sk-proj-**xyzw"
    clean = redact(text, secrets)
    assert KEY not in clean
    assert "abc.def-ghi" not in clean
    assert "my-custom-token-123" not in clean
    assert "xyzw" not in clean
    assert clean.startswith("bad key ***")
    assert len(redact("x" * 5000)) <= 501


@pytest.mark.anyio
async def test_url_credentials_stay_out_of_connect_errors() -> None:
    url = closed_port_url().replace("http://", "http://bob:hunter2-pass@") + "/v1"
    provider = create_provider("openai", base_url=url, api_key=KEY)
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}], model="m")
    with pytest.raises(UpstreamConnectError) as info:
        async with aclosing(provider.stream(request)) as deltas:
            await anext(deltas)
    await provider.aclose()
    assert "hunter2-pass" not in str(info.value)
    assert "bob" not in str(info.value)
    assert KEY not in str(info.value)

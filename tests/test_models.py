"""The model registry: one provider from flags, or a JSON/TOML model map; the serve option."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ssegate.cli import main, serve_settings
from ssegate.gateway import Settings
from ssegate.gateway._models import (
    ModelSpec,
    UnknownModelError,
    build_registry,
    load_model_map,
    parse_model_map,
)

pytestmark = pytest.mark.anyio

TOML_MAP = """
["gpt-4o-mini"]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "KEY_A"

["claude"]
provider = "anthropic"
model = "claude-sonnet-4-5"
api_key_env = "KEY_B"

["local/llama"]
provider = "ollama"
base_url = "http://127.0.0.1:11434"
model = "llama3.2"

["ssegate-demo"]
provider = "demo"
"""


def test_a_toml_map_parses_in_order_with_defaults() -> None:
    specs = parse_model_map(TOML_MAP, toml=True)
    assert [s.name for s in specs] == ["gpt-4o-mini", "claude", "local/llama", "ssegate-demo"]
    assert specs[0] == ModelSpec(
        "gpt-4o-mini", "openai", "gpt-4o-mini", "http://127.0.0.1:9/v1", "KEY_A"
    )
    assert specs[1].model == "claude-sonnet-4-5"
    assert specs[1].base_url is None
    assert specs[3].model == "ssegate-demo"


def test_json_and_toml_maps_are_the_same_thing(tmp_path: Path) -> None:
    entries = {"a": {"provider": "openai", "model": "up-a"}, "b": {"provider": "demo"}}
    json_file = tmp_path / "models.json"
    json_file.write_text(json.dumps(entries), encoding="utf-8")
    toml_file = tmp_path / "models.TOML"
    toml_file.write_text(
        '[a]\nprovider = "openai"\nmodel = "up-a"\n[b]\nprovider = "demo"\n', encoding="utf-8"
    )
    assert load_model_map(json_file) == load_model_map(toml_file)


@pytest.mark.parametrize(
    ("text", "toml", "message"),
    [
        ("[]", False, "at least one"),
        ("{}", False, "at least one"),
        ('{"a": "openai"}', False, "expected a table"),
        ('{"a": {"model": "x"}}', False, "provider must be one of"),
        ('{"a": {"provider": "bard"}}', False, "provider must be one of"),
        ('{"a": {"provider": "openai", "api_key": "sk-x"}}', False, "unknown keys ['api_key']"),
        ('{"a": {"provider": "openai", "model": 4}}', False, "model must be a non-empty string"),
        ('{"a": {"provider": "openai", "model": ""}}', False, "non-empty"),
        ('{"": {"provider": "demo"}}', False, "printable"),
        ('{"a\\n": {"provider": "demo"}}', False, "printable"),
        ('{"a": {"provider": "demo"}, "a": {"provider": "openai"}}', False, "defined twice"),
        ("{not json", False, "Expecting property name"),
        ("[a]\nprovider = ", True, "Invalid value"),
        ('[a]\nprovider = "demo"\n[a]\nprovider = "demo"\n', True, "Cannot declare"),
    ],
)
def test_a_bad_map_is_a_value_error(text: str, toml: bool, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_model_map(text, toml=toml)


def test_an_unreadable_map_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the model map"):
        load_model_map(tmp_path / "missing.toml")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"a": {"provider": "nope"}}')
    with pytest.raises(ValueError, match=r"bad\.json"):
        load_model_map(bad)


async def test_a_map_builds_routes_that_share_providers(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        TOML_MAP + '\n["gpt-4o"]\nprovider = "openai"\n'
        'base_url = "http://127.0.0.1:9/v1"\napi_key_env = "KEY_A"\n',
        encoding="utf-8",
    )
    registry = build_registry(
        Settings.from_options(model_map=str(path)), environ={"KEY_A": "sk-aaaa", "KEY_B": "sk-bbbb"}
    )
    try:
        assert [r.name for r in registry] == [
            "gpt-4o-mini",
            "claude",
            "local/llama",
            "ssegate-demo",
            "gpt-4o",
        ]
        assert registry.default.name == "gpt-4o-mini"
        mini, claude = registry.resolve("gpt-4o-mini"), registry.resolve("claude")
        assert (claude.kind, claude.upstream_model, claude.owned_by) == (
            "anthropic",
            "claude-sonnet-4-5",
            "anthropic",
        )
        assert registry.resolve("ssegate-demo").is_demo
        # Same upstream, same key: one connection pool.
        assert registry.resolve("gpt-4o").provider is mini.provider
        assert claude.provider is not mini.provider
        key: Any = getattr(mini.provider, "config", None)
        assert key is not None
        assert key.api_key == "sk-aaaa"
        with pytest.raises(UnknownModelError):
            registry.resolve("gpt-5")
    finally:
        await registry.aclose()


def test_a_missing_key_variable_fails_at_startup(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(TOML_MAP, encoding="utf-8")
    with pytest.raises(ValueError, match="KEY_B is not set"):
        build_registry(Settings.from_options(model_map=str(path)), environ={"KEY_A": "sk-aaaa"})
    path.write_text('[x]\nprovider = "openai"\nbase_url = "ftp://host"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"model 'x'.*base_url"):
        build_registry(Settings.from_options(model_map=str(path)), environ={})


async def test_without_a_map_flags_make_one_model() -> None:
    demo = build_registry(Settings())
    single = build_registry(Settings.from_options(provider="openai", model="gpt-4o-mini"))
    try:
        assert [(r.name, r.kind) for r in demo] == [("ssegate-demo", "demo")]
        assert [(r.name, r.upstream_model, r.kind) for r in single] == [
            ("gpt-4o-mini", "gpt-4o-mini", "openai")
        ]
        assert single.resolve(None).name == "gpt-4o-mini"
    finally:
        await demo.aclose()
        await single.aclose()
    with pytest.raises(ValueError, match="--model is required"):
        build_registry(Settings.from_options(provider="openai"))


def test_serve_passes_the_model_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "models.json"
    path.write_text('{"a": {"provider": "demo"}}', encoding="utf-8")
    assert serve_settings(["--model-map", str(path)]).upstream.model_map == str(path)
    monkeypatch.setenv("SSEGATE_MODEL_MAP", str(path))
    assert serve_settings([]).upstream.model_map == str(path)
    missing = CliRunner().invoke(main, ["serve", "--model-map", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2

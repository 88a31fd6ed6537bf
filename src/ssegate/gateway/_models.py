"""Public model names → the provider and upstream model that serve them.

With ``--provider openai --model NAME`` the one public model is ``NAME``; with the demo provider
it is ``ssegate-demo``. With ``--model-map FILE`` the file names every public model, each routed
to its own provider (``--provider``/``--model``/``--base-url`` are then not used). Any other name
is ``model_not_found``.

A model map is a JSON object or a TOML document mapping public names to tables::

    ["gpt-4o-mini"]
    provider = "openai"                      # openai | anthropic | ollama | demo
    base_url = "https://api.openai.com/v1"   # optional: the provider kind's default
    model = "gpt-4o-mini"                    # optional: the upstream's name (default: the key)
    api_key_env = "OPENAI_API_KEY"           # optional: variable holding the upstream key
    owned_by = "openai"                      # optional: shown by GET /v1/models

The first entry is the default model. Entries that share ``provider``, ``base_url`` and
``api_key_env`` share one provider (one connection pool).
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..providers import DEMO_MODEL, PROVIDER_KINDS, Provider, ProviderConfig, create_provider
from ._settings import Settings

__all__ = [
    "ModelRegistry",
    "ModelRoute",
    "ModelSpec",
    "UnknownModelError",
    "build_registry",
    "load_model_map",
    "parse_model_map",
]

#: Longest public model name a map may define (requests are refused past it anyway).
MAX_MODEL_NAME = 200
_SPEC_KEYS = frozenset({"provider", "base_url", "model", "api_key_env", "owned_by"})


class UnknownModelError(LookupError):
    """No public model has this name."""


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """One public model: who serves it and under which upstream name."""

    name: str
    provider: Provider
    upstream_model: str
    kind: str
    owned_by: str

    @property
    def is_demo(self) -> bool:
        """Whether this is the offline demo model."""
        return self.kind == "demo"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One entry of a model map: a public ``name`` served by ``provider``'s ``model``."""

    name: str
    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    owned_by: str | None = None


class ModelRegistry:
    """The public models; the first one added is the default."""

    def __init__(self) -> None:
        self._routes: dict[str, ModelRoute] = {}
        self._default: str | None = None
        #: When the registry was built (Unix seconds): the ``created`` of ``GET /v1/models``.
        self.created = int(time.time())

    def add(self, route: ModelRoute) -> None:
        """Register ``route`` (its name must be new)."""
        if route.name in self._routes:
            raise ValueError(f"model {route.name!r} is defined twice")
        self._routes[route.name] = route
        if self._default is None:
            self._default = route.name

    def resolve(self, name: str | None) -> ModelRoute:
        """The route for ``name``, or the default for ``None``; :class:`UnknownModelError`."""
        if name is None:
            if self._default is None:
                raise UnknownModelError("no model is configured")
            return self._routes[self._default]
        try:
            return self._routes[name]
        except KeyError:
            raise UnknownModelError(name) from None

    @property
    def default(self) -> ModelRoute:
        """The default model."""
        return self.resolve(None)

    def __iter__(self) -> Iterator[ModelRoute]:
        return iter(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)

    async def aclose(self) -> None:
        """Close every provider once."""
        seen: set[int] = set()
        for route in self._routes.values():
            if id(route.provider) not in seen:
                seen.add(id(route.provider))
                await route.provider.aclose()


def parse_model_map(text: str, *, toml: bool) -> list[ModelSpec]:
    """The entries of a model map (TOML when ``toml``, else JSON); ``ValueError`` if invalid."""
    data: Any = tomllib.loads(text) if toml else json.loads(text, object_pairs_hook=_no_duplicates)
    if not isinstance(data, dict) or not data:
        raise ValueError("a model map must map at least one public model name to a table")
    specs: list[ModelSpec] = []
    for name, entry in data.items():
        where = f"model {name!r}"
        if not name or len(name) > MAX_MODEL_NAME or not name.isprintable():
            raise ValueError(f"{where}: a name must be 1-{MAX_MODEL_NAME} printable characters")
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a table with at least 'provider'")
        unknown = sorted(set(entry) - _SPEC_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(_SPEC_KEYS)}")
        for key, value in entry.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where}: {key} must be a non-empty string")
        provider = entry.get("provider")
        if provider not in PROVIDER_KINDS:
            raise ValueError(f"{where}: provider must be one of {list(PROVIDER_KINDS)}")
        model = entry.get("model") or (DEMO_MODEL if provider == "demo" else name)
        specs.append(
            ModelSpec(
                name=name,
                provider=provider,
                model=model,
                base_url=entry.get("base_url"),
                api_key_env=entry.get("api_key_env"),
                owned_by=entry.get("owned_by"),
            )
        )
    return specs


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"{key!r} is defined twice")
        out[key] = value
    return out


def load_model_map(path: str | os.PathLike[str]) -> list[ModelSpec]:
    """Read a model map file: TOML if it ends in ``.toml``, else JSON; ``ValueError`` if bad."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the model map {str(file)!r}: {exc}") from None
    try:
        return parse_model_map(text, toml=file.suffix.lower() == ".toml")
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors too
        raise ValueError(f"model map {str(file)!r}: {exc}") from None


def build_registry(
    settings: Settings, *, environ: Mapping[str, str] | None = None
) -> ModelRegistry:
    """The registry that ``settings`` describe.

    A model map's ``api_key_env`` variables are looked up in ``environ`` (default:
    ``os.environ``) here, once; a variable that is not set is a ``ValueError``.
    """
    if settings.upstream.model_map:
        return _registry_from_map(
            settings,
            load_model_map(settings.upstream.model_map),
            os.environ if environ is None else environ,
        )
    registry = ModelRegistry()
    kind = settings.upstream.provider
    if kind == "demo":
        provider = create_provider("demo", demo_rate=settings.upstream.demo_rate or None)
        registry.add(
            ModelRoute(
                settings.upstream.model or DEMO_MODEL, provider, DEMO_MODEL, "demo", "ssegate"
            )
        )
        return registry
    if not settings.upstream.model:
        raise ValueError(f"--model is required with --provider {kind}")
    provider = create_provider(
        kind,
        base_url=settings.upstream.base_url,
        api_key=settings.upstream.api_key,
        connect_timeout=settings.upstream.connect_timeout,
        idle_timeout=settings.upstream.idle_timeout,
    )
    registry.add(ModelRoute(settings.upstream.model, provider, settings.upstream.model, kind, kind))
    return registry


def _registry_from_map(
    settings: Settings, specs: list[ModelSpec], environ: Mapping[str, str]
) -> ModelRegistry:
    # Every entry is checked (config, key variable) before any provider opens a pool, so a
    # bad entry leaves nothing to close.
    configs: dict[tuple[str, str | None, str | None], ProviderConfig] = {}
    for spec in specs:
        key = (spec.provider, spec.base_url, spec.api_key_env)
        if key in configs:
            continue
        api_key = None
        if spec.api_key_env:
            api_key = environ.get(spec.api_key_env)
            if not api_key:
                raise ValueError(
                    f"model {spec.name!r}: environment variable {spec.api_key_env} is not set"
                )
        try:
            configs[key] = ProviderConfig(
                kind=spec.provider,
                base_url=spec.base_url,
                api_key=api_key,
                connect_timeout=settings.upstream.connect_timeout,
                idle_timeout=settings.upstream.idle_timeout,
                demo_rate=settings.upstream.demo_rate or None,
            )
        except ValueError as exc:
            raise ValueError(f"model {spec.name!r}: {exc}") from None
    providers = {key: create_provider(config) for key, config in configs.items()}
    registry = ModelRegistry()
    for spec in specs:
        provider = providers[(spec.provider, spec.base_url, spec.api_key_env)]
        owned_by = spec.owned_by or ("ssegate" if spec.provider == "demo" else spec.provider)
        registry.add(ModelRoute(spec.name, provider, spec.model, spec.provider, owned_by))
    return registry

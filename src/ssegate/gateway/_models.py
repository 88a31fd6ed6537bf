"""Public model names → the provider and upstream model that serve them.

With ``--provider openai --model NAME`` the one public model is ``NAME``; with the demo provider
it is ``ssegate-demo``. A model map (a later addition) adds more names, each routed to its own
provider. Any other name is ``model_not_found``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..providers import DEMO_MODEL, Provider, create_provider
from ._settings import Settings

__all__ = ["ModelRegistry", "ModelRoute", "UnknownModelError", "build_registry"]


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


class ModelRegistry:
    """The public models; the first one added is the default."""

    def __init__(self) -> None:
        self._routes: dict[str, ModelRoute] = {}
        self._default: str | None = None

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


def build_registry(settings: Settings) -> ModelRegistry:
    """The registry that ``settings`` describe."""
    registry = ModelRegistry()
    kind = settings.provider
    if kind == "demo":
        provider = create_provider("demo", demo_rate=settings.demo_tokens_per_second or None)
        registry.add(
            ModelRoute(settings.model or DEMO_MODEL, provider, DEMO_MODEL, "demo", "ssegate")
        )
        return registry
    if not settings.model:
        raise ValueError(f"--model is required with --provider {kind}")
    provider = create_provider(
        kind,
        base_url=settings.base_url,
        api_key=settings.api_key,
        connect_timeout=settings.upstream_connect_timeout,
        idle_timeout=settings.upstream_idle_timeout,
    )
    registry.add(ModelRoute(settings.model, provider, settings.model, kind, kind))
    return registry

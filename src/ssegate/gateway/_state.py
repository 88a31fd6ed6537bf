"""The gateway's live state: settings, models, store, jobs; one per app, made in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from starlette.requests import HTTPConnection

from .._errors import SsegateError
from .._jobs import JobManager
from .._shutdown import ShutdownSignal
from ..store import Store, StreamNotFoundError
from ._metrics import GatewayMetrics
from ._models import ModelRegistry
from ._settings import Settings

__all__ = ["GatewayState", "state_of"]


@dataclass
class GatewayState:
    """What the routes need; ``app.state.gateway`` while the app runs."""

    settings: Settings
    models: ModelRegistry
    store: Store
    jobs: JobManager
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    shutdown: ShutdownSignal = field(default_factory=ShutdownSignal)
    draining: bool = False

    async def readiness(self) -> dict[str, bool]:
        """Named checks; the gateway is ready when all are true.

        ``accepting``: not draining (SIGTERM turns it false first, so a load balancer stops
        sending new streams while running ones finish). ``store``: the store answered a lookup
        within a second (with Redis: a round trip).
        """
        store_ok = True
        with anyio.move_on_after(1.0) as scope:
            try:
                await self.store.get("_readyz_probe")
            except StreamNotFoundError:
                pass  # the healthy answer: the store answered
            except SsegateError:
                store_ok = False
        if scope.cancelled_caught:
            store_ok = False
        return {"accepting": not self.draining, "store": store_ok}


def state_of(conn: HTTPConnection) -> GatewayState:
    """The state of the app serving ``conn``."""
    state: GatewayState = conn.app.state.gateway
    return state

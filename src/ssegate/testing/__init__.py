"""Test and benchmark helpers: a real uvicorn server on a free port, the mock LLM
upstream, and a TCP proxy that can drop every connection."""

from ._mock_upstream import (
    MockRequest,
    MockUpstream,
    Scenario,
    blackhole_url,
    closed_port_url,
    run_mock_upstream,
)
from ._proxy import DroppingProxy
from ._server import RunningServer, run_server

__all__ = [
    "DroppingProxy",
    "MockRequest",
    "MockUpstream",
    "RunningServer",
    "Scenario",
    "blackhole_url",
    "closed_port_url",
    "run_mock_upstream",
    "run_server",
]

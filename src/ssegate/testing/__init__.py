"""Test and benchmark helpers: a real uvicorn server on a free port, the mock LLM upstream."""

from ._mock_upstream import (
    MockRequest,
    MockUpstream,
    Scenario,
    blackhole_url,
    closed_port_url,
    run_mock_upstream,
)
from ._server import RunningServer, run_server

__all__ = [
    "MockRequest",
    "MockUpstream",
    "RunningServer",
    "Scenario",
    "blackhole_url",
    "closed_port_url",
    "run_mock_upstream",
    "run_server",
]

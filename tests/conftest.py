"""Fixtures shared by the whole suite: one mock LLM upstream and one redis-server per session.

Tests share these servers, so none may depend on another's state:

* ``mock`` is the session's mock upstream with its scenario defaults set for one test (a
  module or test says which with ``@pytest.mark.mock_defaults(tokens=4, ...)``) and put back
  after it. A test that reads ``mock.requests`` indexes from ``len(mock.requests)`` taken before
  its own requests (or finds its request by a word of its prompt), never from 0.
  Module- or package-scoped fixtures take ``mock_upstream`` (the defaults untouched).
* ``redis_server`` is the session's redis-server; each test works under its own key prefix
  (``redis_prefix``) or stream ids. A test that stops, restarts or reconfigures a server starts
  its own (``instance_helpers.RedisServer``).
* ``redis_cluster`` is the session's Redis Cluster (three masters, three replicas), started
  when a test first asks for it. A test that kills a node starts its own
  (``cluster_helpers.running_cluster``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from cluster_helpers import LocalCluster, running_cluster
from instance_helpers import RedisServer, running_redis
from ssegate.testing import MockUpstream, Scenario


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "mock_defaults(**scenario): the scenario defaults of `mock` for this test"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Playwright's sync API keeps an event loop running in the main thread while it is open;
    # run the browser tests last so no async test ever runs beside it.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("browser") is not None or "browser" in item.path.parts
        )
    )


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[MockUpstream]:
    """The session's one mock LLM upstream (a real HTTP server on loopback)."""
    with MockUpstream() as upstream:
        yield upstream


@pytest.fixture
def mock(request: pytest.FixtureRequest, mock_upstream: MockUpstream) -> Iterator[MockUpstream]:
    """The session's mock upstream, with this test's ``mock_defaults`` for its scenarios."""
    marker = request.node.get_closest_marker("mock_defaults")
    before = mock_upstream.defaults
    mock_upstream.defaults = Scenario(**marker.kwargs) if marker else Scenario()
    try:
        yield mock_upstream
    finally:
        mock_upstream.defaults = before


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's one throw-away redis-server on a free loopback port."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """The session's one throw-away Redis Cluster on free loopback ports."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own on the shared redis-server."""
    return f"t{secrets.token_hex(4)}:"

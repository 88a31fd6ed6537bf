"""Third-party SSE clients against a real gateway on loopback: npm's ``eventsource`` (the
``EventSource`` of Node apps, run by Node) and ``httpx-sse`` (Python).

The JavaScript client lives in ``tests/js`` (``package.json`` and its lockfile); ``npm ci``
installs it once per test session. Node and npm are required: without them these tests fail
with a clear message rather than skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from ssegate.gateway import Settings, create_app
from ssegate.testing import RunningServer, run_server

JS_DIR = Path(__file__).parent / "js"


@pytest.fixture(scope="session")
def node_clients() -> Path:
    """``tests/js`` with its locked packages installed (``npm ci``, once per session)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("these tests need Node.js 20+ and npm (apt-get install nodejs npm)")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=JS_DIR,
        check=True,
        timeout=300,
    )
    return JS_DIR


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningServer]:
    # The demo model, as fast as it goes; a short retry so a looping client loops quickly.
    settings = Settings.from_options(demo_rate=0, retry_ms=200)
    with run_server(create_app(settings)) as server:
        yield server


def _finished_stream(gateway: RunningServer, text: str = "hello there") -> tuple[str, int]:
    """A stream that has ended: its id and its last event id."""
    created = httpx.post(
        gateway.url + "/v1/streams", json={"messages": [{"role": "user", "content": text}]}
    ).json()
    with httpx.stream("GET", f"{gateway.url}/v1/streams/{created['id']}/events") as response:
        response.read()
    info = httpx.get(f"{gateway.url}/v1/streams/{created['id']}").json()
    assert info["status"] == "done"
    return created["id"], int(info["last_event_id"])


def _follow_with_node(clients: Path, url: str, bound_ms: int) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(clients / "follow_eventsource.mjs"), url, str(bound_ms)],
        capture_output=True,
        text=True,
        timeout=bound_ms / 1000 + 30,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_npm_eventsource_resuming_by_query_replays_once_and_stops(
    node_clients: Path, gateway: RunningServer
) -> None:
    stream_id, last = _finished_stream(gateway)
    start = last - 3
    url = f"{gateway.url}/v1/streams/{stream_id}/events?last_event_id={start}"
    seen = _follow_with_node(node_clients, url, bound_ms=5000)
    # The reconnect sends `Last-Event-ID: last` to the same URL: 204, and the source closes.
    assert seen["closed"], seen
    assert seen["opens"] == 1, seen
    assert seen["ids"] == list(range(start + 1, last + 1)), seen
    assert seen["types"][-1] == "done"


def test_npm_eventsource_reads_a_whole_stream_once(
    node_clients: Path, gateway: RunningServer
) -> None:
    stream_id, last = _finished_stream(gateway)
    seen = _follow_with_node(node_clients, f"{gateway.url}/v1/streams/{stream_id}/events", 5000)
    assert seen["closed"], seen
    assert seen["opens"] == 1, seen
    assert seen["ids"] == list(range(1, last + 1))
    assert seen["types"][0] == "start"
    assert seen["types"][-1] == "done"


def test_httpx_sse_reads_no_empty_event(gateway: RunningServer) -> None:
    stream_id, last = _finished_stream(gateway)
    with (
        httpx.Client() as client,
        connect_sse(client, "GET", f"{gateway.url}/v1/streams/{stream_id}/events") as source,
    ):
        events = list(source.iter_sse())
    assert [e.event for e in events if not e.data] == []
    assert [int(e.id) for e in events] == list(range(1, last + 1))
    assert events[0].event == "start"
    assert events[-1].event == "done"


def test_httpx_sse_reads_every_event_of_a_stream(gateway: RunningServer) -> None:
    # Every stored event arrives once, in order, with its id.
    stream_id, last = _finished_stream(gateway)
    with (
        httpx.Client() as client,
        connect_sse(client, "GET", f"{gateway.url}/v1/streams/{stream_id}/events") as source,
    ):
        events = [e for e in source.iter_sse() if e.data]
    assert [int(e.id) for e in events] == list(range(1, last + 1))
    assert [e.event for e in events][:: len(events) - 1] == ["start", "done"]
    assert all(isinstance(json.loads(e.data), dict) for e in events)

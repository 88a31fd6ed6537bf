"""The request head is bounded in size (431) and, with the body, in time (408): a huge header,
a silent connection, a partial head and a partial body are all let go, and the server keeps
serving everything else, long event streams included."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from instance_helpers import GatewayProcess, running_gateways
from ssegate.gateway import Settings, create_app
from ssegate.gateway._http import bounded_http_protocol
from ssegate.testing import RunningServer, run_server


def _raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
        except OSError:
            pass  # the server may close while we are still sending
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except OSError:
            pass
        return b"".join(chunks)


def test_huge_request_head_is_refused_with_431_and_the_server_keeps_serving() -> None:
    app = create_app(Settings.from_options(demo_rate=0))
    with run_server(app, http=bounded_http_protocol(16 * 1024)) as srv:
        big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
        answer = _raw_request(srv.port, big)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
        assert b'"headers_too_large"' in answer
        # Normal requests, keep-alive ones included, still work.
        with httpx.Client(base_url=srv.url) as client:
            for _ in range(3):
                assert client.get("/healthz", headers={"X-Ok": "b" * 8000}).status_code == 200
            response = client.post(
                "/v1/streams",
                json={"messages": [{"role": "user", "content": "x" * 100_000}]},
            )
            assert response.status_code == 201  # a large body is not a large head


HEAD_TIMEOUT = 0.5
BODY_TIMEOUT = 0.7


@pytest.fixture(scope="module")
def strict() -> Iterator[RunningServer]:
    """A gateway (demo model) that gives clients half a second for a head, 0.7 s for a body."""
    app = create_app(Settings.from_options(demo_rate=50))
    protocol = bounded_http_protocol(head_timeout=HEAD_TIMEOUT, body_timeout=BODY_TIMEOUT)
    with run_server(app, http=protocol) as srv:
        yield srv


def _until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    began = time.monotonic()
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks), time.monotonic() - began


def test_a_silent_connection_is_closed(strict: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        answer, waited = _until_closed(sock)
    assert answer == b""  # nothing was asked: nothing is answered
    assert HEAD_TIMEOUT * 0.8 <= waited < HEAD_TIMEOUT + 5


def test_a_partial_head_gets_408(strict: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer, waited = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b'"request_timeout"' in answer
    assert HEAD_TIMEOUT * 0.8 <= waited < HEAD_TIMEOUT + 5


def test_a_partial_body_gets_408(strict: RunningServer) -> None:
    head = b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.sendall(head + b"Content-Length: 100\r\n\r\n" + b'{"messages": [')
        answer, waited = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b"the request body did not arrive" in answer
    assert BODY_TIMEOUT * 0.8 <= waited < BODY_TIMEOUT + 5


def test_a_kept_alive_connection_times_its_next_head(strict: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n")
        answer, _ = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 408 " in answer


def test_streams_longer_than_the_deadlines_are_not_cut(strict: RunningServer) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    headers = {"accept": "text/event-stream"}
    began = time.monotonic()
    with (
        httpx.Client(base_url=strict.url, timeout=30) as client,
        client.stream("POST", "/v1/streams", json=body, headers=headers) as response,
    ):
        text = response.read().decode()
        # Keep-alive: the next request on the same connection is served too.
        assert client.get("/healthz").status_code == 200
    assert time.monotonic() - began > 2 * BODY_TIMEOUT  # the stream outlived both deadlines
    assert "event: done" in text


def test_serve_applies_the_head_timeout() -> None:
    gateway = GatewayProcess("--head-timeout", "0.5", "--body-timeout", "0.5")
    with running_gateways(gateway):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            answer, waited = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert waited < 5

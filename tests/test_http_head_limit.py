"""The request head is bounded: a huge header gets 431 and the server keeps serving."""

from __future__ import annotations

import socket

import httpx

from ssegate.gateway import Settings, create_app
from ssegate.gateway._http import bounded_http_protocol
from ssegate.testing import run_server


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

"""Every upstream fault, for every HTTP provider, gives the right error; early close frees the
upstream connection at once."""

from __future__ import annotations

import os
import time
from contextlib import aclosing
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ssegate.providers import (
    ChatRequest,
    Delta,
    Provider,
    TextDelta,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamTimeoutError,
    create_provider,
)
from ssegate.testing import MockUpstream, blackhole_url, closed_port_url, run_server

KEY = "sk-secret-key-0123456789abcdef"
KINDS = ["openai", "anthropic", "ollama"]


pytestmark = pytest.mark.mock_defaults(tokens=6)


def _provider(kind: str, base: str, **options: Any) -> Provider:
    url = base + "/v1" if kind == "openai" else base
    options.setdefault("idle_timeout", 5.0)
    return create_provider(kind, base_url=url, api_key=KEY, **options)


def _request(content: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": content}], model="mock-model")


async def _run(provider: Provider, content: str) -> tuple[list[Delta], UpstreamError]:
    got: list[Delta] = []

    async def consume() -> None:
        async with aclosing(provider.stream(_request(content))) as deltas:
            async for delta in deltas:
                got.append(delta)

    with pytest.raises(UpstreamError) as info:
        await consume()
    await provider.aclose()
    error = info.value
    for text in (str(error), repr(error), str(error.to_dict()), str(error.__cause__)):
        assert KEY not in text
    assert error.__cause__ is None  # no httpx exception travels with ours
    return got, error


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (401, "upstream_auth", False),
        (403, "upstream_auth", False),
        (404, "upstream_not_found", False),
        (429, "upstream_rate_limited", True),
        (500, "upstream_unavailable", True),
        (503, "upstream_unavailable", True),
    ],
)
async def test_http_status_errors(
    mock: MockUpstream, kind: str, status: int, code: str, retryable: bool
) -> None:
    got, error = await _run(_provider(kind, mock.url), f"[[fault:http_{status}]]")
    assert got == []
    assert type(error) is UpstreamHTTPError
    assert (error.status, error.code, error.retryable) == (status, code, retryable)
    # The client is told the status; the log (detail) also gets the upstream's own message.
    assert f"HTTP {status}" in error.message
    assert f"HTTP {status}: " in error.detail
    assert "127.0.0.1" not in error.message  # the upstream's address stays in the log


@pytest.mark.anyio
async def test_key_echoed_by_the_upstream_is_redacted(mock: MockUpstream) -> None:
    # The mock's OpenAI 401 says "Incorrect API key provided: <the key>", as OpenAI does.
    _, error = await _run(_provider("openai", mock.url), "[[fault:http_401]]")
    assert "Incorrect API key provided: ***" in error.detail


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "code", "retryable"),
    [
        ("openai", "upstream_server_error", True),
        ("anthropic", "upstream_overloaded_error", True),
        ("ollama", "upstream_error", False),
    ],
)
async def test_error_inside_the_stream(
    mock: MockUpstream, kind: str, code: str, retryable: bool
) -> None:
    got, error = await _run(_provider(kind, mock.url), "[[fault:stream_error]]")
    assert got == [TextDelta("tok0 "), TextDelta("tok1 ")]
    assert type(error) is UpstreamStreamError
    assert (error.code, error.retryable) == (code, retryable)
    assert error.message.startswith("upstream error in stream: ")
    assert len(error.message) > len("upstream error in stream: ") + 5


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fault", "error_type", "words", "sent"),
    [
        ("drop", UpstreamProtocolError, "connection dropped", 2),
        ("reset", UpstreamProtocolError, "connection dropped", 2),
        ("hangup", UpstreamProtocolError, "connection dropped", 0),
        ("malformed", UpstreamProtocolError, "malformed JSON", 2),
        ("unknown_shape", UpstreamProtocolError, "upstream", 2),
        ("no_end", UpstreamProtocolError, "ended the stream early", 6),
        ("stall", UpstreamTimeoutError, "sent nothing for 0.3s", 0),
        ("slow_headers", UpstreamTimeoutError, "sent nothing for 0.3s", 0),
    ],
)
async def test_broken_streams(
    mock: MockUpstream,
    kind: str,
    fault: str,
    error_type: type[UpstreamError],
    words: str,
    sent: int,
) -> None:
    idle = 0.3 if error_type is UpstreamTimeoutError else 5.0  # short only where it must fire
    got, error = await _run(_provider(kind, mock.url, idle_timeout=idle), f"[[fault:{fault}]]")
    assert got == [TextDelta(f"tok{i} ") for i in range(sent)]
    assert type(error) is error_type
    assert words in error.message
    assert error.retryable


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_silence_after_some_tokens_times_out(mock: MockUpstream, kind: str) -> None:
    provider = _provider(kind, mock.url, idle_timeout=0.3)
    got, error = await _run(provider, "[[fault:stall]][[after:3]]")
    assert len(got) == 3
    assert error.code == "upstream_timeout"


@pytest.mark.anyio
async def test_connection_refused() -> None:
    _, error = await _run(_provider("openai", closed_port_url()), "hi")
    assert type(error) is UpstreamConnectError
    assert (error.code, error.retryable) == ("upstream_unreachable", True)
    assert "cannot connect" in error.message
    assert "127.0.0.1:" in error.detail
    assert "127.0.0.1" not in error.message  # the client gets no address
    assert "Error" not in error.message  # nor an exception's class name


@pytest.mark.anyio
async def test_connect_timeout() -> None:
    with blackhole_url() as url:
        started = anyio.current_time()
        _, error = await _run(_provider("anthropic", url, connect_timeout=0.2), "hi")
    assert type(error) is UpstreamConnectError
    assert (error.code, error.retryable) == ("upstream_connect_timeout", True)
    assert anyio.current_time() - started < 5


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_aclose_mid_stream_closes_the_upstream_connection(
    mock: MockUpstream, kind: str
) -> None:
    provider = _provider(kind, mock.url, idle_timeout=5)
    index = len(mock.requests)
    stream = provider.stream(_request("[[tokens:1000]][[interval_ms:20]]"))
    async with aclosing(stream) as deltas:
        got = [await anext(deltas) for _ in range(3)]
        assert _established_to(mock.port) == 1
        closing = time.time()
    # Closed by the time aclose() returned, not later by a finaliser.
    assert _established_to(mock.port) == 0
    with anyio.fail_after(5):
        closed = await mock.wait_for_close_async(index)
    await provider.aclose()
    assert got == [TextDelta("tok0 "), TextDelta("tok1 "), TextDelta("tok2 ")]
    record = mock.requests[index]
    assert record.cancelled
    assert record.ended_at is None
    assert record.tokens_sent < 1000
    assert closed - closing < 0.5


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_while_waiting_closes_the_upstream_connection(
    mock: MockUpstream, kind: str
) -> None:
    provider = _provider(kind, mock.url, idle_timeout=30)
    index = len(mock.requests)
    got: list[Delta] = []
    async with aclosing(provider.stream(_request("[[fault:stall]][[after:1]]"))) as deltas:
        with anyio.move_on_after(0.3):
            async for delta in deltas:
                got.append(delta)
        cancelled = time.time()
    assert _established_to(mock.port) == 0
    with anyio.fail_after(5):
        closed = await mock.wait_for_close_async(index)
    await provider.aclose()
    assert got == [TextDelta("tok0 ")]
    assert mock.requests[index].cancelled
    assert closed - cancelled < 0.5


def _established_to(port: int) -> int:
    """How many of this machine's TCP connections to ``port`` are ESTABLISHED (client side)."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp")
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if int(row[2].split(":")[1], 16) == port and row[3] == "01")


def _odd_upstream() -> Starlette:
    async def json_error(request: Request) -> Response:
        error = {"message": f"quota exhausted for key {KEY}", "type": "insufficient_quota"}
        return JSONResponse({"error": error})

    async def html_502(request: Request) -> Response:
        return HTMLResponse("<html><body>502 Bad Gateway</body></html>", status_code=502)

    async def huge_error(request: Request) -> Response:
        return JSONResponse({"error": {"message": "x" * 1_000_000}}, status_code=400)

    return Starlette(
        routes=[
            Route("/json/chat/completions", json_error, methods=["POST"]),
            Route("/html/chat/completions", html_502, methods=["POST"]),
            Route("/huge/chat/completions", huge_error, methods=["POST"]),
        ]
    )


@pytest.mark.anyio
async def test_json_answer_instead_of_a_stream_is_a_stream_error() -> None:
    with run_server(_odd_upstream()) as server:
        provider = create_provider("openai", base_url=server.url + "/json", api_key=KEY)
        _, error = await _run(provider, "hi")
    assert type(error) is UpstreamStreamError
    assert "quota exhausted for key ***" in error.message


@pytest.mark.anyio
async def test_html_error_page_and_huge_error_body() -> None:
    with run_server(_odd_upstream()) as server:
        html = create_provider("openai", base_url=server.url + "/html", api_key=KEY)
        _, error = await _run(html, "hi")
        assert type(error) is UpstreamHTTPError
        assert error.status == 502
        assert "<html>" not in error.message
        huge = create_provider("openai", base_url=server.url + "/huge", api_key=KEY)
        _, error = await _run(huge, "hi")
        assert error.code == "upstream_bad_request"
        assert len(error.message) <= 501

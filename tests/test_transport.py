"""The lean HTTP/1.1 transport, over real sockets: bodies of every framing, the keep-alive
pool (reuse only after a clean end), faults as httpx's exceptions, TLS."""

from __future__ import annotations

import re
import resource
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSListener

from ssegate.providers import ProviderConfig, _transport
from ssegate.providers._http import HttpUpstream
from ssegate.providers._transport import LeanTransport, _Parse
from ssegate.testing import MockUpstream, closed_port_url

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True, params=["asyncio-wire", "anyio-wire"])
def wire(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both connection kinds: plain ``http`` on asyncio reads through
    ``AsyncioWire``; ``anyio-wire`` makes it take anyio's stream, as ``https`` and other
    backends do."""
    if request.param == "anyio-wire":
        monkeypatch.setattr(_transport, "on_asyncio", lambda: False)
    return str(request.param)


Handler = Callable[[ByteStream], Awaitable[None]]


async def _serve(
    handler: Handler,
    body: Callable[[str], Awaitable[Any]],
    *,
    tls: ssl.SSLContext | None = None,
) -> Any:
    """Run ``handler`` per connection on a local port while ``body(base_url)`` runs."""
    listener: Any = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    scheme = "http"
    if tls is not None:
        listener = TLSListener(listener, tls, standard_compatible=False)
        scheme = "https"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        try:
            return await body(f"{scheme}://127.0.0.1:{port}")
        finally:
            tg.cancel_scope.cancel()


async def _read_request(stream: ByteStream) -> bytes | None:
    """One request's head (its body is read and dropped); ``None`` when the client left."""
    buffer = b""
    try:
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive()
        head, _, body = buffer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        while length and len(body) < int(length.group(1)):
            body += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return None
    return head


def _keep_alive_server(response: bytes, connections: list[int]) -> Handler:
    async def handler(stream: ByteStream) -> None:
        connections.append(len(connections))
        async with stream:
            while await _read_request(stream) is not None:
                await stream.send(response)

    return handler


def _client(**options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=LeanTransport(**options), timeout=5)


_CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
)
_LENGTH = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world"


@pytest.mark.parametrize("response", [_CHUNKED, _LENGTH], ids=["chunked", "content-length"])
async def test_complete_responses_reuse_one_connection(response: bytes) -> None:
    connections: list[int] = []

    async def body(url: str) -> None:
        async with _client() as client:
            for _ in range(3):
                answer = await client.post(url + "/x", content=b'{"a": 1}')
                assert (answer.status_code, answer.text) == (200, "hello world")

    await _serve(_keep_alive_server(response, connections), body)
    assert len(connections) == 1


async def test_a_half_read_response_closes_its_connection() -> None:
    connections: list[int] = []
    first = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"

    async def handler(stream: ByteStream) -> None:
        connections.append(len(connections))
        async with stream:
            if await _read_request(stream) is None:
                return
            if len(connections) == 1:
                await stream.send(first)  # never finished: the client closes it
                await _read_request(stream)  # returns None at the client's close
                return
            while True:
                await stream.send(_LENGTH)
                if await _read_request(stream) is None:
                    return

    async def body(url: str) -> None:
        async with _client() as client:
            async with client.stream("GET", url) as response:
                async for part in response.aiter_bytes():
                    assert part == b"hello"
                    break
            for _ in range(2):
                assert (await client.get(url)).text == "hello world"

    await _serve(handler, body)
    assert len(connections) == 2  # the half-read one was not reused, the next one was


def test_chunked_framing_split_at_every_byte() -> None:
    for size in (1, 2, 3, 7):
        parse = _Parse()
        for i in range(0, len(_CHUNKED), size):
            parse.feed(_CHUNKED[i : i + size])
        assert (parse.status, parse.complete) == (200, True)
        assert b"".join(parse.body) == b"hello world"


async def test_one_read_yields_every_chunk_that_arrived_together() -> None:
    chunks = b"".join(b"3\r\n%02d \r\n" % i for i in range(50))
    response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"

    async def body(url: str) -> list[bytes]:
        async with _client() as client, client.stream("GET", url) as answer:
            return [part async for part in answer.aiter_raw()]

    parts = await _serve(_keep_alive_server(response, []), body)
    assert b"".join(parts) == b"".join(b"%02d " % i for i in range(50))
    assert len(parts) < 50  # not one part per HTTP chunk


async def test_a_body_that_runs_to_the_close() -> None:
    connections: list[int] = []

    async def handler(stream: ByteStream) -> None:
        connections.append(len(connections))
        async with stream:
            if await _read_request(stream) is not None:
                await stream.send(b"HTTP/1.1 200 OK\r\n\r\nuntil ")
                await stream.send(b"the close")

    async def body(url: str) -> None:
        async with _client() as client:
            assert (await client.get(url)).text == "until the close"
            assert (await client.get(url)).text == "until the close"

    await _serve(handler, body)
    assert len(connections) == 2


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    connections: list[int] = []
    closed = anyio.Event()

    async def handler(stream: ByteStream) -> None:
        connections.append(len(connections))
        async with stream:
            if await _read_request(stream) is not None:
                await stream.send(_LENGTH)  # keep-alive by default, then closed anyway
        closed.set()

    async def body(url: str) -> None:
        async with _client() as client:
            assert (await client.get(url)).text == "hello world"
            with anyio.fail_after(5):
                await closed.wait()  # the FIN is in the client's socket now (loopback)
            assert (await client.get(url)).text == "hello world"

    await _serve(handler, body)
    assert len(connections) == 2


async def test_informational_responses_are_skipped() -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n" + _LENGTH

    async def body(url: str) -> None:
        async with _client() as client:
            answer = await client.post(url, content=b"x")
            assert (answer.status_code, answer.text) == (200, "hello world")
            assert "link" not in answer.headers

    await _serve(_keep_alive_server(response, []), body)


async def test_headers_and_status_reach_httpx() -> None:
    response = b"HTTP/1.1 429 Too Many\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\n{}"

    async def body(url: str) -> None:
        async with _client() as client:
            answer = await client.get(url)
            assert (answer.status_code, answer.reason_phrase) == (429, "Too Many")
            assert answer.headers.get_list("x-a") == ["1", "2"]
            assert answer.http_version == "HTTP/1.1"

    await _serve(_keep_alive_server(response, []), body)


# -- faults -----------------------------------------------------------------------------------


async def _fault(handler: Handler, **options: Any) -> Exception:
    async def body(url: str) -> Exception:
        async with httpx.AsyncClient(transport=LeanTransport(), **options) as client:
            try:
                async with client.stream("GET", url) as answer:
                    await answer.aread()
            except httpx.HTTPError as exc:
                return exc
        raise AssertionError("no error")

    result: Exception = await _serve(handler, body)
    return result


async def test_eof_mid_body_is_a_remote_protocol_error() -> None:
    async def handler(stream: ByteStream) -> None:
        async with stream:
            await _read_request(stream)
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")

    error = await _fault(handler)
    assert isinstance(error, httpx.RemoteProtocolError)


async def test_a_malformed_response_is_a_remote_protocol_error() -> None:
    async def handler(stream: ByteStream) -> None:
        async with stream:
            await _read_request(stream)
            await stream.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")

    error = await _fault(handler)
    assert isinstance(error, httpx.RemoteProtocolError)
    assert "malformed" in str(error)


async def test_a_hangup_before_the_head_is_a_remote_protocol_error() -> None:
    async def handler(stream: ByteStream) -> None:
        async with stream:
            await _read_request(stream)

    error = await _fault(handler)
    assert isinstance(error, httpx.RemoteProtocolError)


async def test_a_reset_is_a_read_error() -> None:
    async def handler(stream: ByteStream) -> None:
        await _read_request(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        sock = stream.extra(SocketAttribute.raw_socket)
        import socket
        import struct

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await anyio.aclose_forcefully(stream)

    error = await _fault(handler)
    assert isinstance(error, (httpx.ReadError, httpx.RemoteProtocolError))


async def test_silence_is_a_read_timeout() -> None:
    stop = anyio.Event()

    async def handler(stream: ByteStream) -> None:
        async with stream:
            await _read_request(stream)
            await stop.wait()

    error = await _fault(handler, timeout=httpx.Timeout(5, read=0.2))
    stop.set()
    assert isinstance(error, httpx.ReadTimeout)


async def test_a_full_pool_is_a_pool_timeout() -> None:
    async def body(url: str) -> None:
        transport = LeanTransport(max_connections=1)
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, pool=0.2)) as c:
            async with c.stream("GET", url) as first:
                async for _ in first.aiter_bytes():
                    break
                with pytest.raises(httpx.PoolTimeout):
                    await c.get(url)
            # The half-read response freed its place: the pool works again.
            assert (await c.get(url)).status_code == 200

    await _serve(_keep_alive_server(_CHUNKED, []), body)


async def test_connection_refused_is_a_connect_error() -> None:
    async with _client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(closed_port_url())


async def test_other_schemes_are_refused() -> None:
    transport = LeanTransport()
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/x"))


async def test_cancelling_mid_body_closes_the_connection() -> None:
    closed = anyio.Event()

    async def handler(stream: ByteStream) -> None:
        async with stream:
            await _read_request(stream)
            await stream.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
            assert await _read_request(stream) is None
            closed.set()

    async def body(url: str) -> None:
        async with _client() as client:
            with anyio.move_on_after(0.2):
                async with client.stream("GET", url) as answer:
                    async for _ in answer.aiter_bytes():
                        pass
            with anyio.fail_after(2):
                await closed.wait()

    await _serve(handler, body)


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_with_a_trusted_certificate_and_reuse(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    connections: list[int] = []

    async def handler(stream: ByteStream) -> None:
        await _keep_alive_server(_CHUNKED, connections)(stream)

    async def body(url: str) -> None:
        trusted = ssl.create_default_context(cafile=str(cert))
        async with _client(ssl_context=trusted) as client:
            for _ in range(2):
                assert (await client.get(url)).text == "hello world"
        async with _client() as untrusting:  # httpx's default context: not our certificate
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(url)

    await _serve(handler, body, tls=server)
    assert len(connections) == 1  # both requests on one connection; the refused one: none


# -- many open descriptors ---------------------------------------------------------------------


@pytest.fixture
def past_1024_descriptors() -> Any:
    """Hold 1,100 open sockets, so every socket opened next has a descriptor past 1024
    (``select.select``'s limit), raising the soft ``RLIMIT_NOFILE`` within the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1100 + 200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held: list[socket.socket] = []
    try:
        for _ in range(550):
            held.extend(socket.socketpair())
        with socket.socket() as probe:
            assert probe.fileno() >= 1024
        yield held
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("past_1024_descriptors")
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_keep_alive_is_reused_with_1100_sockets_open(
    scheme: str, certificate: tuple[Path, Path]
) -> None:
    # The pool asks an idle connection's socket whether the server closed it before reusing
    # it; that question must work for a descriptor past 1024 (select.select raised there,
    # which read as "not reusable": keep-alive silently stopped under load).
    connections: list[int] = []
    tls = client = None
    if scheme == "https":
        cert, key = certificate
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        client = ssl.create_default_context(cafile=str(cert))

    async def body(url: str) -> None:
        async with _client(ssl_context=client) as http:
            for _ in range(3):
                assert (await http.post(url + "/x", content=b"{}")).text == "hello world"

    await _serve(_keep_alive_server(_CHUNKED, connections), body, tls=tls)
    assert len(connections) == 1


# -- the pool the providers build ---------------------------------------------------------------


async def test_the_providers_pool_keeps_a_whole_wave_of_connections_alive() -> None:
    # 150 streams at once, then 150 more: the second wave rides the first wave's connections
    # (a pool that kept only 100 idle reconnected 50 of them, a TLS handshake each upstream).
    wave = 150
    with MockUpstream(header_delay_ms=300) as mock:
        upstream = HttpUpstream(ProviderConfig("openai", base_url=mock.url + "/v1"))
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}

        async def one() -> None:
            answer = await upstream.client.post(mock.url + "/v1/chat/completions", json=body)
            assert answer.status_code == 200

        try:
            for _ in range(2):
                async with anyio.create_task_group() as tg:
                    for _ in range(wave):
                        tg.start_soon(one)
        finally:
            await upstream.aclose()
        requests = mock.requests
    assert len(requests) == 2 * wave
    assert len({r.connection for r in requests}) == wave

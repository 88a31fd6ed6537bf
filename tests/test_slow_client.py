"""A client that stops reading holds a bounded amount of the gateway's memory, is dropped after
``send_timeout``, and resumes from its last id with nothing lost (real sockets)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncGenerator

import httpx

from gateway_helpers import answer_text, ask, payloads
from ssegate import CloseReason, Decoder, EventSourceResponse, EventStreamStatistics
from ssegate.gateway import Settings, create_app
from ssegate.gateway._models import ModelRoute
from ssegate.providers import ChatRequest, Delta, Finish, TextDelta
from ssegate.testing import run_server

CHUNKS = 1000
CHUNK_CHARS = 10_000  # 1,000 events of 10 kB: 10 MB of events
BUFFER = 64 * 1024


class BulkProvider:
    """10 MB of answer as fast as the store takes it."""

    name = "bulk"

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        for i in range(CHUNKS):
            yield TextDelta(f"{i:06d}" + "x" * (CHUNK_CHARS - 6))
        yield Finish("stop")

    async def aclose(self) -> None:
        pass


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read just the response head (a few hundred bytes); return it and what came after."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1024)
        assert chunk, "the server closed before the headers"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _dechunk(raw: bytes) -> bytes:
    """The body of a chunked transfer, up to where it was cut."""
    out = bytearray()
    while raw:
        size_line, sep, raw = raw.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        out += raw[:size]
        raw = raw[size + 2 :]
        if size == 0:
            break
    return bytes(out)


def test_a_client_that_reads_nothing_is_bounded_then_dropped_then_resumes() -> None:
    settings = Settings(
        client_buffer_bytes=BUFFER,
        send_timeout=1.0,
        on_disconnect="continue",
        max_events_per_stream=10_000,
        heartbeat_interval=60,
    )
    app = create_app(settings)
    closed = threading.Event()
    final: dict[str, object] = {}

    def on_close(response: EventSourceResponse) -> None:
        if response is final.get("response"):
            final["statistics"] = response.statistics()
            final["reason"] = response.close_reason
            closed.set()

    with run_server(app) as server:
        app.state.gateway.models.add(ModelRoute("bulk", BulkProvider(), "bulk", "demo", "test"))
        app.state.ssegate_security.event_streams.on_close.append(on_close)

        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", server.port))
        try:
            body = json.dumps(ask("everything", model="bulk")).encode()
            slow.sendall(
                b"POST /v1/streams HTTP/1.1\r\nHost: gateway\r\nAccept: text/event-stream\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            head, early = _read_head(slow)  # then the slow client reads nothing more
            assert head.startswith(b"HTTP/1.1 200")
            stream_id = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-ssegate-stream-id:")
            )
            tracker = app.state.ssegate_security.event_streams
            [final["response"]] = tracker.live()  # the slow client's, the only one so far

            # A fast reader gets all 10 MB: the generation did not wait for the slow one.
            with httpx.Client(base_url=server.url, timeout=30) as client:
                full = client.get(f"/v1/streams/{stream_id}/events")
            events = payloads(Decoder().feed(full.content))
            assert events[-1][1] == "done"
            total = len(full.content)
            assert total > 10_000_000

            assert closed.wait(15), "the slow client was never dropped"
            statistics = final["statistics"]
            assert isinstance(statistics, EventStreamStatistics)
            assert final["reason"] is CloseReason.SEND_TIMEOUT
            # Read ahead for the slow client: the configured buffer and one event at most.
            assert statistics.buffered_bytes <= BUFFER + CHUNK_CHARS + 100
            # Everything else stayed in the store: what left the response (into the kernel's
            # socket buffers) and what it holds are a fraction of the stream.
            assert statistics.bytes_sent + statistics.buffered_bytes < total // 2
            assert tracker.closed[CloseReason.SEND_TIMEOUT] == 1
            assert tracker.closed[CloseReason.COMPLETED] == 1  # the fast reader's

            # The slow client finally reads: what was sent, then the end of the connection.
            slow.settimeout(10)
            raw = bytearray(early)
            while True:
                try:
                    chunk = slow.recv(1 << 20)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                raw += chunk
        finally:
            slow.close()
        decoder = Decoder()
        got = decoder.feed(_dechunk(bytes(raw)))
        assert got, "the slow client got no complete event"
        assert got[-1].event != "done"
        last_id = decoder.last_event_id

        # It resumes from its last id and gets exactly the rest.
        with httpx.Client(base_url=server.url, timeout=30) as client:
            rest = client.get(f"/v1/streams/{stream_id}/events", headers={"Last-Event-ID": last_id})
        rest_events = Decoder().feed(rest.content)
        combined = payloads(got) + payloads(rest_events)
        assert combined == events
        assert len(answer_text(got + rest_events)) == CHUNKS * CHUNK_CHARS

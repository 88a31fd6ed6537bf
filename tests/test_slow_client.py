"""A client that stops reading holds no more of the gateway's memory than the server's write
buffer, is dropped after ``send_timeout``, and resumes from its last id with nothing lost
(real sockets)."""

from __future__ import annotations

import json
import socket
import threading
import time
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
    settings = Settings.from_options(
        send_timeout=1.0,
        on_disconnect="continue",
        max_events_per_stream=10_000,
        heartbeat=60,
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
            # Everything else stayed in the store: what left the response (into the server's
            # write buffer and the kernel's socket buffers) is a fraction of the stream.
            assert statistics.bytes_sent < total // 2
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


class ManyTokensProvider:
    """60,000 small deltas as fast as the store takes them."""

    name = "many"

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        for i in range(TOKENS):
            yield TextDelta(f"t{i} ")
        yield Finish("stop")

    async def aclose(self) -> None:
        pass


TOKENS = 60_000
READERS = 64


def test_readers_that_never_read_a_long_stream_cost_a_write_per_batch_not_per_event() -> None:
    """64 readers that read nothing of a finished 60,000-event stream: the kept events go out
    in batches (a few hundred items per reader, not 60,000), so they cost little CPU and the
    gateway keeps answering."""
    settings = Settings.from_options(send_timeout=2.0, max_events_per_stream=100_000, heartbeat=60)
    app = create_app(settings)
    with run_server(app) as server:
        app.state.gateway.models.add(ModelRoute("many", ManyTokensProvider(), "many", "demo", "t"))
        with httpx.Client(base_url=server.url, timeout=30) as client:
            created = client.post("/v1/streams", json=ask("go", model="many")).json()
            stream_id = created["id"]
            # Read it once to its end: the stream is finished and every event is kept.
            full = client.get(f"/v1/streams/{stream_id}/events")
            assert Decoder().feed(full.content)[-1].event == "done"

            ended: list[EventStreamStatistics] = []
            all_ended = threading.Event()

            def on_close(response: EventSourceResponse) -> None:
                ended.append(response.statistics())
                if len(ended) == READERS:
                    all_ended.set()

            app.state.ssegate_security.event_streams.on_close.append(on_close)
            cpu_before = time.process_time()
            readers = []
            try:
                for _ in range(READERS):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.connect(("127.0.0.1", server.port))
                    sock.sendall(
                        f"GET /v1/streams/{stream_id}/events HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
                    )
                    readers.append(sock)
                for sock in readers:
                    head, _ = _read_head(sock)
                    assert head.startswith(b"HTTP/1.1 200")
                # The gateway keeps answering while 64 replays are stuck on their clients.
                assert client.get("/healthz").status_code == 200
            finally:
                for sock in readers:
                    sock.close()
            assert all_ended.wait(15), "not every reader's response ended"
            cpu = time.process_time() - cpu_before
    # Items the response pulled per reader: batches of kept events, not one per event.
    assert max(s.events for s in ended) <= TOKENS // 256 + 10
    # The whole test process (server and client threads) over the window, with 64 replays
    # of 60,000 events: a per-event replay took over 10 s of CPU here.
    assert cpu < 5.0, f"{cpu:.1f} s of CPU"

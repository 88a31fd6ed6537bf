"""``python -m benchmarks.per_event``: what one event costs each response, in CPU instructions.

Each case streams events through one response in this process, the way uvicorn calls an ASGI
app (its scope, a ``send`` that takes each message, a ``receive`` that waits for a disconnect
that never comes), on uvloop, with a loop turn per event (``await asyncio.sleep(0)`` after
each, as a relay's tokens arrive). No socket: what is left is the response's own path and the
event's making, the part a library adds to what every server pays for a write.

A case runs twice under ``valgrind --tool=callgrind`` in a new interpreter, with ``--base``
events and with ``--base + --events``: the difference of the two instruction counts over
``--events`` is the cost of one event, start-up and imports cancelled out. Instruction counts
do not move with the machine's load, unlike times (``--timed`` measures nanoseconds instead,
with ``time.perf_counter_ns``: quicker, noisier, no valgrind needed).

The pieces (``piece:`` cases) time one event's making alone, without a response.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

PAYLOAD_PAD = "x" * 23  # with the 9-character counter: a 32-byte payload, as scenario (a)


def _payload(i: int) -> str:
    return f"{i:08d}:{PAYLOAD_PAD}"


# -- the cases: each returns an ASGI app streaming n events, or (pieces) a plain loop ---------


def _starlette(n: int) -> Any:
    from starlette.responses import StreamingResponse

    async def events() -> AsyncIterator[bytes]:
        for i in range(n):
            yield f"id: {i}\ndata: {_payload(i)}\n\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(events(), media_type="text/event-stream")


def _ssegate_bytes(n: int) -> Any:
    from ssegate import EventSourceResponse

    async def events() -> AsyncIterator[bytes]:
        for i in range(n):
            yield f"id: {i}\ndata: {_payload(i)}\n\n".encode()
            await asyncio.sleep(0)

    return EventSourceResponse(events())


def _ssegate_fields(n: int) -> Any:
    from ssegate import EventSourceResponse
    from ssegate.codec import encode_fields

    async def events() -> AsyncIterator[bytes]:
        for i in range(n):
            yield encode_fields(_payload(i), id=i)
            await asyncio.sleep(0)

    return EventSourceResponse(events())


def _ssegate_event(n: int) -> Any:
    from ssegate import EventSourceResponse, ServerSentEvent

    async def events() -> AsyncIterator[ServerSentEvent]:
        for i in range(n):
            yield ServerSentEvent(data=_payload(i), id=str(i))
            await asyncio.sleep(0)

    return EventSourceResponse(events())


def _sse_starlette(n: int) -> Any:
    from sse_starlette import EventSourceResponse, ServerSentEvent

    async def events() -> AsyncIterator[Any]:
        for i in range(n):
            yield ServerSentEvent(data=_payload(i), id=str(i))
            await asyncio.sleep(0)

    return EventSourceResponse(events())


def _piece_fstring(n: int) -> None:
    for i in range(n):
        f"id: {i}\ndata: {_payload(i)}\n\n".encode()


def _piece_fields(n: int) -> None:
    from ssegate.codec import encode_fields

    for i in range(n):
        encode_fields(_payload(i), id=i)


def _piece_event(n: int) -> None:
    from ssegate import ServerSentEvent, encode

    for i in range(n):
        encode(ServerSentEvent(data=_payload(i), id=str(i)))


def _piece_loop_turn(n: int) -> None:
    async def turns() -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    _run(turns())


RESPONSES: dict[str, Callable[[int], Any]] = {
    "starlette": _starlette,
    "ssegate-bytes": _ssegate_bytes,
    "ssegate-fields": _ssegate_fields,
    "ssegate-event": _ssegate_event,
    "sse-starlette": _sse_starlette,
}
PIECES: dict[str, Callable[[int], None]] = {
    "piece:f-string": _piece_fstring,
    "piece:encode_fields": _piece_fields,
    "piece:ServerSentEvent+encode": _piece_event,
    "piece:loop-turn": _piece_loop_turn,
}
DESCRIPTIONS = {
    "starlette": "Starlette `StreamingResponse` of bytes the app encodes (an f-string)",
    "ssegate-bytes": "ssegate `EventSourceResponse` of the same bytes",
    "ssegate-fields": "ssegate `EventSourceResponse` of `encode_fields(data, id=i)`",
    "ssegate-event": "ssegate `EventSourceResponse` of `ServerSentEvent(data=…, id=…)`",
    "sse-starlette": "sse-starlette `EventSourceResponse` of its `ServerSentEvent`",
    "piece:f-string": "making the event's bytes with an f-string, alone",
    "piece:encode_fields": "`encode_fields(data, id=i)`, alone",
    "piece:ServerSentEvent+encode": "`encode(ServerSentEvent(data=…, id=…))`, alone",
    "piece:loop-turn": "one `await asyncio.sleep(0)` in a task, alone",
}


def _run(coro: Awaitable[None]) -> None:
    import uvloop

    uvloop.run(coro)  # type: ignore[arg-type]


async def _serve(app: Any) -> int:
    """Call ``app`` as uvicorn's httptools protocol does; the ``data`` lines it sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": "/stream",
        "raw_path": b"/stream",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"text/event-stream")],
        "state": {},
    }
    sent = 0
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        sent += message.get("body", b"").count(b"data:")

    await app(scope, receive, send)
    return sent


def run_case(name: str, n: int) -> int | None:
    """Stream ``n`` events through case ``name`` (in this process): the events a response
    case sent (``None`` for a piece)."""
    if name in PIECES:
        PIECES[name](n)
        return None
    app = RESPONSES[name](n)
    sent = 0

    async def main() -> None:
        nonlocal sent
        sent = await _serve(app)

    _run(main())
    return sent


# -- measuring ------------------------------------------------------------------------------

_COLLECTED = re.compile(rb"Collected\s*:\s*(\d+)")


def _instructions(name: str, n: int) -> int:
    """Instructions of a new interpreter running case ``name`` with ``n`` events."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.per_event",
        "--run",
        name,
        "--events",
        str(n),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=900, check=True)
    match = _COLLECTED.search(proc.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from callgrind for {name}")
    return int(match.group(1))


def _timed_ns(name: str, n: int) -> float:
    """Nanoseconds per event of case ``name``, in this process (``n`` events after a warm-up)."""
    run_case(name, min(n, 1000))
    start = time.perf_counter_ns()
    run_case(name, n)
    return (time.perf_counter_ns() - start) / n


def measure(names: list[str], base: int, events: int, timed: bool) -> dict[str, float]:
    """Per-event cost of each case: instructions (callgrind), or nanoseconds with ``timed``."""
    out: dict[str, float] = {}
    for name in names:
        if timed:
            out[name] = _timed_ns(name, events)
        else:
            low = _instructions(name, base)
            high = _instructions(name, base + events)
            out[name] = (high - low) / events
        print(f"{name}: {out[name]:,.0f}", file=sys.stderr, flush=True)
    return out


def table(results: dict[str, float], timed: bool) -> str:
    """The results as a Markdown table, ratios against the Starlette response."""
    unit = "ns per event" if timed else "instructions per event"
    ref = results.get("starlette")
    lines = [f"| case | {unit} | × starlette | what |", "|---|---:|---:|---|"]
    for name, value in results.items():
        ratio = f"{value / ref:.2f}×" if ref and not name.startswith("piece:") else ""
        lines.append(f"| `{name}` | {value:,.0f} | {ratio} | {DESCRIPTIONS[name]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.per_event", description=__doc__)
    parser.add_argument("--events", type=int, default=2000, help="events measured per case")
    parser.add_argument("--base", type=int, default=200, help="events of the baseline run")
    parser.add_argument("--timed", action="store_true", help="nanoseconds, no valgrind")
    parser.add_argument("--cases", default=",".join([*RESPONSES, *PIECES]))
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    if args.run:
        sent = run_case(args.run, args.events)
        if sent is not None and sent != args.events:
            sys.exit(f"{args.run} sent {sent} of {args.events} events")
        return
    names = [name for name in args.cases.split(",") if name]
    unknown = [name for name in names if name not in DESCRIPTIONS]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    print(table(measure(names, args.base, args.events, args.timed), args.timed))


if __name__ == "__main__":
    main()

"""A mock LLM upstream: a real HTTP/1.1 server on loopback with fault modes.

It speaks three wire formats, streamed with chunked transfer encoding:

* OpenAI: ``POST /v1/chat/completions`` (SSE; ``stream: false`` gets one JSON completion),
  ``GET /v1/models``;
* Anthropic: ``POST /v1/messages`` (SSE, ``stream: true`` only);
* Ollama: ``POST /api/chat`` (NDJSON), ``GET /api/tags``;

plus ``GET /_mock/requests[?since=N]``: the records below as JSON, for tests in other processes.

**Scenario directives.** What a request gets is chosen per request, so it works from another
process: ``[[name]]`` or ``[[name:value]]`` anywhere in the model name, in an ``x-mock``
header, or in the last user message (later sources win, all over the defaults given to
:class:`MockUpstream`). An unknown directive gets HTTP 400.

=====================  =====================================================================
``tokens:N``           answer tokens (default 8): ``tok0 tok1 …``
``lang:L``             token words: ``en`` (``tok3 ``), ``zh`` (``第3个词 ``), ``emoji``
                       (``🚀3 ``), ``mixed`` (``tok3·中文·🚀 ``)
``text:T``             stream ``T`` (split after whitespace) instead; ``T`` cannot hold ``]``
``stamp``              every token is ``"<seq>:<time.time_ns() at send> "`` (benchmarks)
``interval_ms:F``      pause between tokens; ``delay_ms:F`` before the first one
``header_delay_ms:F``  pause before the response headers
``reasoning:N``        N reasoning tokens (``think0 …``) before the answer
``reasoning_field:F``  OpenAI only: ``reasoning_content`` (default) or ``reasoning``
``tool_call[:name]``   then one tool call (default ``get_weather``), finish ``tool_calls``
``finish:R``           the finish reason to report (format's own word for Anthropic)
``usage:off``          send no usage
``openai_extras``      OpenAI only: what real servers add and clients read:
                       ``system_fingerprint`` (``fp_mock_0001``) and ``service_tier``
                       (``default``) on every chunk, usage ``*_tokens_details`` (1 cached
                       token), a ``url_citation`` annotation before the finish
``refusal``            OpenAI only: the answer tokens go in ``delta.refusal``, not ``content``
``fault:F``            a fault, see below; ``after:K`` = tokens sent before it fires
=====================  =====================================================================

Faults: ``http_NNN`` (that status with the format's own error body; 429 adds
``retry-after``; 401 for OpenAI echoes the key, as a redaction test), ``stream_error`` (an
error inside the 200 stream: OpenAI error object, Anthropic ``overloaded_error`` event, Ollama
error line; the body then ends), ``stall`` (after K tokens, default 0: silence, connection kept
open), ``drop`` (after K tokens close the TCP connection, body unfinished), ``reset`` (same with
an RST), ``malformed`` / ``unknown_shape`` (after K tokens one bad-JSON / unknown-shape chunk,
then the rest as normal), ``no_end`` (a complete body without the end marker: no ``[DONE]``,
``message_stop`` or ``done: true``), ``slow_headers`` (headers after ``header_delay_ms``,
default an hour), ``hangup`` (close the connection without any response). ``after`` defaults
to 2 (0 for ``stall``).

Usage is deterministic: ``prompt_tokens`` counts the whitespace-separated words of all
messages (and Anthropic's ``system``), ``completion_tokens`` the reasoning and answer tokens
sent plus one for a tool call. With ``MockUpstream(api_key=...)`` a request must present that
key (``authorization: Bearer`` or ``x-api-key``) or gets the format's 401.

**https.** Pass a server ``ssl.SSLContext`` (``ssl_context=``) and the mock serves https
(its URL starts ``https://``). A test makes the certificate at run time, e.g. with ``trustme``::

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with MockUpstream(ssl_context=context) as mock: ...

and tells the client to trust ``ca`` (a gateway process: ``SSL_CERT_FILE`` naming the CA's
PEM file, which httpx honours).

For connection refused, use a closed port (:func:`closed_port_url`); for a connect timeout,
:func:`blackhole_url` gives a listening socket whose accept queue is full, so the kernel drops
SYNs and ``connect()`` hangs (Linux; elsewhere use a tiny connect timeout).

**Records.** Every request (but ``/_mock/*``) gets a :class:`MockRequest`: method, path,
headers, JSON body, scenario, the text and reasoning sent, and wall-clock times
(``time.time()``) when it started, when the response ended and when the client's connection
closed. Disconnects are seen at once (asyncio ``connection_lost``), not polled.

It is built for load (1,000 concurrent streams on 2 cores): one asyncio protocol per
connection on uvloop when installed, each response a plain generator driven by loop timers —
no task per stream, no framework.

This module holds the public face (:class:`MockUpstream`, :func:`run_mock_upstream` and the
URL helpers); the scenarios and directive parsing are in ``_mock_scenario``, the wire formats
in ``_mock_formats``, and the HTTP/1.1 server in ``_mock_http``.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio.to_thread

from ._mock_http import MockState, serve
from ._mock_scenario import MockRequest, Scenario

__all__ = [
    "MockRequest",
    "MockUpstream",
    "Scenario",
    "blackhole_url",
    "closed_port_url",
    "run_mock_upstream",
]


def run_mock_upstream(
    host: str = "127.0.0.1",
    port: int = 8400,
    *,
    api_key: str | None = None,
    on_ready: Callable[[str], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **defaults: Any,
) -> None:
    """Serve the mock upstream until SIGINT/SIGTERM (blocking; for ``ssegate mock-upstream``).

    ``defaults`` are :class:`Scenario` fields; ``on_ready`` gets the URL once listening (useful
    with ``port=0``). With ``api_key``, requests must present it (else HTTP 401); with
    ``ssl_context`` (a server context) it serves https.
    """
    state = MockState(Scenario(**defaults), api_key, max_records=10_000)

    def started(loop: asyncio.AbstractEventLoop, server: asyncio.Server) -> None:
        bound = server.sockets[0].getsockname()
        if on_ready is not None:
            on_ready(_url(ssl_context, host, bound[1]))

    serve(state, host, port, started, handle_signals=True, ssl_context=ssl_context)


def _url(ssl_context: ssl.SSLContext | None, host: str, port: int) -> str:
    scheme = "https" if ssl_context is not None else "http"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


class MockUpstream:
    """The mock upstream in a background thread, for tests and benchmarks::

        with MockUpstream(tokens=20, interval_ms=5) as mock:
            ... OpenAIProvider(ProviderConfig("openai", base_url=mock.url + "/v1")) ...
            close_time = mock.wait_for_close(0)

    ``defaults`` are :class:`Scenario` fields (settable later through :attr:`defaults`).
    ``max_records`` bounds the records kept (later requests are served, not recorded).
    With ``ssl_context`` (a server context holding its certificate) it serves https.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        max_records: int = 100_000,
        ssl_context: ssl.SSLContext | None = None,
        **defaults: Any,
    ) -> None:
        self.host = host
        self._port = port
        self._ssl_context = ssl_context
        self._state = MockState(Scenario(**defaults), api_key, max_records)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.url = ""

    @property
    def defaults(self) -> Scenario:
        """The scenario requests start from before their own directives."""
        return self._state.defaults

    @defaults.setter
    def defaults(self, scenario: Scenario) -> None:
        self._state.defaults = scenario

    def start(self) -> MockUpstream:
        """Start serving; returns ``self`` once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def started(loop: asyncio.AbstractEventLoop, server: asyncio.Server) -> None:
            self._loop = loop
            self.port = server.sockets[0].getsockname()[1]
            self.url = _url(self._ssl_context, self.host, self.port)
            ready.set()

        def run() -> None:
            try:
                serve(self._state, self.host, self._port, started, ssl_context=self._ssl_context)
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="ssegate-mock-upstream", daemon=True)
        self._thread.start()
        ready.wait(20)
        if failure or not self.url:
            raise RuntimeError("mock upstream did not start") from (failure[0] if failure else None)
        return self

    def stop(self) -> None:
        """Stop serving and abort open connections; pending waits end too."""
        with self._state.cond:
            self._state.stopped = True
            self._state.cond.notify_all()
        if self._loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[MockRequest]:
        """A snapshot of the records, in arrival order."""
        with self._state.cond:
            return list(self._state.records)

    def clear(self) -> None:
        """Forget the records (indexes start again at 0)."""
        with self._state.cond:
            self._state.records.clear()

    def wait_for_request(self, index: int, timeout: float | None = 5.0) -> MockRequest:
        """Block until request ``index`` has arrived; ``TimeoutError`` after ``timeout``."""
        state = self._state
        with state.cond:
            arrived = state.cond.wait_for(
                lambda: len(state.records) > index or state.stopped, timeout
            )
            if not arrived:
                raise TimeoutError(f"request {index} did not arrive within {timeout}s")
            if len(state.records) <= index:
                raise RuntimeError("the mock upstream stopped")
            return state.records[index]

    def wait_for_close(self, index: int, timeout: float | None = 5.0) -> float:
        """Block until request ``index``'s connection closed; return when (``time.time()``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        rec = self.wait_for_request(index, timeout)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not rec.closed.wait(left) or rec.closed_at is None:
            raise TimeoutError(f"the connection of request {index} is still open")
        return rec.closed_at

    async def wait_for_close_async(self, index: int) -> float:
        """:meth:`wait_for_close` without blocking the event loop; bound it with
        ``anyio.fail_after()``.

        The wait runs in a worker thread that a cancel abandons; it ends at the latest when
        the mock stops (which closes every connection).
        """
        return await anyio.to_thread.run_sync(
            self.wait_for_close, index, None, abandon_on_cancel=True
        )


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def blackhole_url() -> Iterator[str]:
    """A loopback URL where ``connect()`` hangs, for connect-timeout tests.

    A socket listens with a backlog of 0 and never accepts; once its accept queue is full,
    Linux drops further SYNs, so a client's connect times out exactly as with an unreachable
    host. (On systems that answer instead, the client connects and then waits for a response.)
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        with selectors.DefaultSelector() as selector:
            for _ in range(8):  # fill the accept queue until a connect no longer completes
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(address)
                key = selector.register(filler, selectors.EVENT_WRITE)
                writable = selector.select(0.2)
                selector.unregister(key.fileobj)
                if not writable:
                    break
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()

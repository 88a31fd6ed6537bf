"""``ShutdownSignal``: tells open event streams that the server is shutting down.

uvicorn, asked to stop, waits for open responses to finish and tells them nothing (no
``http.disconnect`` reaches a running response), so an endless event stream would hold the
server open. A server that knows better (``ssegate.server.ShutdownAwareServer``) trips a
:class:`ShutdownSignal` as shutdown begins and publishes it in the ASGI lifespan state under
:data:`SHUTDOWN_STATE_KEY`; every :class:`~ssegate.EventSourceResponse` finds it there and ends
cleanly, so an ``EventSource`` reconnects — to another instance — with its ``Last-Event-ID``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio
import anyio.from_thread
import anyio.lowlevel

__all__ = ["SHUTDOWN_STATE_KEY", "ShutdownSignal"]

#: The ASGI lifespan-state key under which a server publishes its :class:`ShutdownSignal`.
SHUTDOWN_STATE_KEY = "ssegate.shutdown"


class ShutdownSignal:
    """A one-shot signal that the server is shutting down; open streams end when it is set.

    :meth:`set` may be called from any thread. Pass one to :class:`~ssegate.EventSourceResponse`
    (or :class:`~ssegate.SseEmitter`) as ``shutdown=``, or let the server publish one in the
    lifespan state under :data:`SHUTDOWN_STATE_KEY` (``ssegate.server.ShutdownAwareServer``
    does).
    """

    __slots__ = ("_is_set", "_lock", "_subscribers", "_tokens")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._is_set = False
        # Each callback with the thread of the event loop that subscribed it, and one token per
        # such loop (to reach it from another thread): a stream costs one dict entry.
        self._subscribers: dict[Callable[[], object], int] = {}
        self._tokens: dict[int, anyio.lowlevel.EventLoopToken] = {}

    def is_set(self) -> bool:
        """Whether shutdown has begun."""
        return self._is_set

    def set(self) -> None:
        """Begin shutdown: every stream watching this signal ends. Idempotent.

        Callbacks of the calling thread's event loop run here; those of another loop run on
        that loop, and this call returns once they have (a loop that has stopped is skipped).
        """
        with self._lock:
            if self._is_set:
                return
            self._is_set = True
            subscribers, self._subscribers = self._subscribers, {}
            tokens, self._tokens = self._tokens, {}
        by_thread: dict[int, list[Callable[[], object]]] = {}
        for callback, thread in subscribers.items():
            by_thread.setdefault(thread, []).append(callback)
        here = threading.get_ident()
        _call_all(by_thread.pop(here, []))
        for thread, callbacks in by_thread.items():
            try:
                anyio.from_thread.run_sync(_call_all, callbacks, token=tokens[thread])
            except anyio.RunFinishedError:  # that loop has stopped: nobody is left to wake
                pass

    async def wait(self) -> None:
        """Wait until the signal is set."""
        event = anyio.Event()
        if self.subscribe(event.set):
            try:
                await event.wait()
            finally:
                self.unsubscribe(event.set)
        # else: set already

    def subscribe(self, callback: Callable[[], object]) -> bool:
        """Call ``callback()`` on the calling event loop when the signal is set; ``False`` if
        the signal is set already (``callback`` has then been called, here and now).

        Must be called on an event loop's thread; :meth:`unsubscribe` takes the same callback
        (an equal one: bound methods of one object compare equal).
        """
        with self._lock:
            if not self._is_set:
                thread = threading.get_ident()
                if thread not in self._tokens:
                    self._tokens[thread] = anyio.lowlevel.current_token()
                self._subscribers[callback] = thread
                return True
        callback()
        return False

    def unsubscribe(self, callback: Callable[[], object]) -> None:
        """Stop watching: ``callback`` will not be called."""
        with self._lock:
            self._subscribers.pop(callback, None)

    def __repr__(self) -> str:
        return f"<ShutdownSignal is_set={self._is_set}>"


def _call_all(callbacks: list[Callable[[], object]]) -> None:
    for callback in callbacks:
        callback()

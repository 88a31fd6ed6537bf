"""The stream store's contract: :class:`Store`, :class:`StreamStatus`, :class:`StreamInfo`.

A store keeps, per stream, an ordered log of events (ids ``1..n``), the stream's status and
metadata, a cancel signal, a subscriber count and the producer's lease. Everything that crosses
the interface is plain data (``str``, ``int``, ``dict``, immutable values), so one store can
be shared by many processes: the memory store lives in one process, the Redis store maps each
method onto Redis Streams and pub/sub:

===================  ============================================================================
method               Redis (each write is one Lua script, so it is atomic)
===================  ============================================================================
``create``           ``HSET`` a metadata hash, ``SET`` the lease key with a TTL
``append``           check status, ``HINCRBY`` last id, ``XADD id MAXLEN ~`` (capped), ``PUBLISH``
                     the event on the stream's data channel, renew the lease
``finish``           ``XADD`` the terminal event, ``HSET`` status, ``EXPIRE`` the keys and
                     ``PUBLISH`` the end on the control channel, in one step
``read``             ``XRANGE`` after an id (a hole before the first kept entry is a
                     :class:`StreamGapError`)
``follow``           ``XRANGE`` the backlog, then live events from the stream's data channel, which
                     the instance's one pub/sub connection subscribes to while anything in the
                     process follows; ``XRANGE`` again only after a reconnect or when behind
                     the instance's cache of recent events
``request_cancel``   ``HSETNX cancel`` + ``PUBLISH`` on the control channel (another instance
                     may own the job)
``wait_cancel``      ``HGET cancel``, then wait on the control channel
``subscriber``       a member of a sorted set scored by its expiry, renewed by its instance (a
                     crashed instance can't pin the count)
``renew_lease``      ``SET lease PX`` by the producing instance; followers learn of a lost
                     producer when the key is gone (``PTTL``; :class:`ProducerLostError`)
===================  ============================================================================

Status is a small state machine with an explicit table (:data:`TRANSITIONS`)::

    running --append--> running
    running --done----> done        (terminal)
    running --error---> error       (terminal)
    running --cancel--> cancelled   (terminal)

Anything else raises :class:`IllegalTransitionError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType, TracebackType
from typing import Any, Self

from ..codec import encode_fields
from ._errors import IllegalTransitionError, ProducerLostError, StreamGapError

__all__ = [
    "FINISH_INPUTS",
    "FOLLOW_BATCH",
    "TERMINAL_EVENTS",
    "TRANSITIONS",
    "IllegalTransitionError",
    "ProducerLostError",
    "Store",
    "StoreStatistics",
    "StoredEvent",
    "StreamGapError",
    "StreamInfo",
    "StreamInput",
    "StreamStatus",
    "transition",
]


# -- status state machine --------------------------------------------------------------------


class StreamStatus(StrEnum):
    """Where a stream is in its life. ``running`` is the only non-terminal state."""

    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether no event can follow (``done``, ``error`` or ``cancelled``)."""
        return self is not StreamStatus.RUNNING

    def apply(self, stream_input: StreamInput) -> StreamStatus:
        """The status after ``stream_input``; raises :class:`IllegalTransitionError` if illegal."""
        return transition(self, stream_input)


class StreamInput(StrEnum):
    """What can happen to a stream: an event is appended, or it finishes one of three ways."""

    APPEND = "append"
    DONE = "done"
    ERROR = "error"
    CANCEL = "cancel"


#: Every legal (status, input) pair and the status it leads to; the rest are illegal.
TRANSITIONS: Mapping[tuple[StreamStatus, StreamInput], StreamStatus] = MappingProxyType(
    {
        (StreamStatus.RUNNING, StreamInput.APPEND): StreamStatus.RUNNING,
        (StreamStatus.RUNNING, StreamInput.DONE): StreamStatus.DONE,
        (StreamStatus.RUNNING, StreamInput.ERROR): StreamStatus.ERROR,
        (StreamStatus.RUNNING, StreamInput.CANCEL): StreamStatus.CANCELLED,
    }
)

#: The input that finishes a stream with a given terminal status (and names its last event).
FINISH_INPUTS: Mapping[StreamStatus, StreamInput] = MappingProxyType(
    {
        StreamStatus.DONE: StreamInput.DONE,
        StreamStatus.ERROR: StreamInput.ERROR,
        StreamStatus.CANCELLED: StreamInput.CANCEL,
    }
)

#: Event types that end a stream; their names are the terminal statuses' values.
TERMINAL_EVENTS: frozenset[str] = frozenset(s.value for s in FINISH_INPUTS)

#: The most events :meth:`Store.follow_batches` yields in one list, unless told otherwise.
FOLLOW_BATCH = 256


def transition(status: StreamStatus, stream_input: StreamInput) -> StreamStatus:
    """Apply ``stream_input`` to ``status`` using :data:`TRANSITIONS`.

    Raises :class:`IllegalTransitionError` for a pair the table does not list.
    """
    try:
        return TRANSITIONS[(status, stream_input)]
    except KeyError:
        raise IllegalTransitionError(
            f"a {status.value} stream cannot take {stream_input.value}"
        ) from None


# -- data ------------------------------------------------------------------------------------


class StoredEvent:
    """One event of a stream, with its SSE wire form encoded once: an immutable value.

    ``data`` is one line of JSON text. ``encoded`` is what a subscriber writes to its socket;
    every subscriber shares the same bytes object, so fan-out never re-encodes.
    """

    # Read-only properties over slots rather than a frozen dataclass, for the reason
    # ServerSentEvent gives: one is built per token, and a frozen dataclass's
    # ``object.__setattr__`` per field cost more than encoding the event.
    __slots__ = ("_data", "_encoded", "_event", "_id")

    def __init__(self, id: int, event: str, data: str, encoded: bytes) -> None:
        self._id = id
        self._event = event
        self._data = data
        self._encoded = encoded

    @classmethod
    def build(cls, id: int, event: str, data: str) -> StoredEvent:
        """Make the event and its wire bytes; ``data`` must be one line (``ValueError``)."""
        if "\n" in data or "\r" in data:
            raise ValueError("event data must be one line")
        return cls(id, event, data, encode_fields(data, event=event, id=id))

    @property
    def id(self) -> int:
        """The event's id in its stream (``1..n``)."""
        return self._id

    @property
    def event(self) -> str:
        """The event type."""
        return self._event

    @property
    def data(self) -> str:
        """The payload, one line of JSON text."""
        return self._data

    @property
    def encoded(self) -> bytes:
        """The SSE wire form (``id``, ``event`` and ``data`` lines, then a blank line)."""
        return self._encoded

    def _fields(self) -> tuple[int, str, str, bytes]:
        return (self._id, self._event, self._data, self._encoded)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"StoredEvent(id={self._id!r}, event={self._event!r}, data={self._data!r})"


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A snapshot of a stream's metadata, as ``GET /v1/streams/{id}`` reports it.

    ``owner`` (an API key's name or hash) is for ownership checks and is left out of
    :meth:`to_dict`. ``cause`` says why a stream was cancelled or timed out (``client``,
    ``disconnect``, ``timeout``, ``shutdown``, ``deleted``). ``subscribers`` counts connected
    SSE subscribers (see :meth:`Store.subscriber`).
    """

    id: str
    status: StreamStatus
    model: str
    provider: str
    owner: str | None
    created: float
    finished_at: float | None = None
    last_event_id: int = 0
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancel_requested: bool = False
    cause: str | None = None
    subscribers: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The status JSON (no ``owner``)."""
        return {
            "id": self.id,
            "status": self.status.value,
            "model": self.model,
            "provider": self.provider,
            "created": self.created,
            "finished_at": self.finished_at,
            "last_event_id": self.last_event_id,
            "usage": self.usage,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "cause": self.cause,
            "subscribers": self.subscribers,
        }


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters for metrics, as this process sees them (a Redis store may know fewer)."""

    streams: int
    running: int
    events: int
    subscribers: int
    followers: int


# -- the interface ---------------------------------------------------------------------------


class Store(ABC):
    """Per-stream ordered events, status, cancel signal, subscribers and producer lease.

    Use as ``async with store:`` (or call :meth:`aclose`). All methods raise
    :class:`~ssegate.store.StreamNotFoundError` for an unknown or expired stream id, and
    :class:`~ssegate.store.StoreUnavailableError` when the backend can't be reached or the store
    is closed. Callers bound waits with ``anyio.fail_after``/``move_on_after``.
    """

    #: Seconds a producer's lease lasts; the producer renews it well before (every third).
    lease_ttl: float

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @abstractmethod
    async def create(
        self, stream_id: str, *, model: str, provider: str, owner: str | None = None
    ) -> StreamInfo:
        """Create a ``running`` stream with no events and a fresh lease.

        Raises :class:`~ssegate.store.StoreFullError` when no room can be made, ``ValueError``
        if the id exists.
        """

    @abstractmethod
    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        """Append a non-terminal event; it gets the next id. Also counts as a lease renewal.

        Raises :class:`IllegalTransitionError` if the stream is finished, ``ValueError`` for a
        terminal event type (use :meth:`finish`) or multi-line data.
        """

    @abstractmethod
    async def finish(
        self,
        stream_id: str,
        status: StreamStatus,
        data: str,
        *,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        cause: str | None = None,
    ) -> StoredEvent:
        """Append the terminal event named ``status.value`` and set ``status``, atomically.

        ``usage``, ``error`` and ``cause`` are recorded in :class:`StreamInfo`. The finished
        stream expires after the store's TTL. Raises :class:`IllegalTransitionError` if the
        stream is already finished, ``ValueError`` if ``status`` is ``running``.
        """

    @abstractmethod
    async def get(self, stream_id: str) -> StreamInfo:
        """A snapshot of the stream's metadata."""

    @abstractmethod
    async def read(
        self, stream_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """The kept events with id > ``after`` (at most ``limit``), without waiting.

        Raises :class:`StreamGapError` if some event with id > ``after`` is no longer kept.
        """

    async def follow(self, stream_id: str, after: int = 0) -> AsyncGenerator[StoredEvent, None]:
        """Yield events with id > ``after``: the kept ones, then live ones as they come.

        Ends after the terminal event (at once if the stream is finished and ``after`` is at or
        past its last id). Raises :class:`StreamGapError` when an event it should yield is no
        longer kept (at the start, or mid-way for a follower that fell behind the cap),
        :class:`ProducerLostError` when the producer's lease expires while it waits, and
        ``StreamNotFoundError`` if the stream is deleted. Consume under
        ``contextlib.aclosing()``.

        The events of :meth:`follow_batches`, one by one.
        """
        async with aclosing(self.follow_batches(stream_id, after)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    @abstractmethod
    def follow_batches(
        self, stream_id: str, after: int = 0, limit: int = FOLLOW_BATCH
    ) -> AsyncGenerator[list[StoredEvent], None]:
        """What :meth:`follow` yields, as lists: each one all the events that were there to
        read at once (in order, none empty, at most ``limit`` events).

        A reader that fell behind — its client is slower than the upstream, or it resumes a
        long stream — gets what has piled up in one list and can write it in one go; one that
        keeps up gets lists of one. The same endings and errors as :meth:`follow`; the events
        before an error are yielded first.
        """

    @abstractmethod
    async def request_cancel(self, stream_id: str, cause: str = "client") -> bool:
        """Ask the producer (maybe in another process) to stop, recording ``cause``.

        Returns ``True`` if the stream is running (cancel is now requested), ``False`` if it
        had already finished.
        """

    @abstractmethod
    async def wait_cancel(self, stream_id: str) -> str:
        """Return the cause once cancel is requested (at once if it already was)."""

    @abstractmethod
    def subscriber(self, stream_id: str) -> AbstractAsyncContextManager[None]:
        """Count one connected subscriber in for the ``async with`` block, then out."""

    @abstractmethod
    async def wait_abandoned(self, stream_id: str, grace: float) -> None:
        """Return once the stream has had no subscriber for ``grace`` seconds in a row.

        The grace clock starts now if nobody is subscribed, or when the last one leaves; a
        subscriber arriving within it resets it. Used by the ``on_disconnect=cancel`` policy.
        """

    @abstractmethod
    async def renew_lease(self, stream_id: str) -> None:
        """Extend the producer's lease by :attr:`lease_ttl` from now."""

    @abstractmethod
    async def producer_alive(self, stream_id: str) -> bool:
        """Whether the stream is running and its producer's lease is current."""

    @abstractmethod
    async def delete(self, stream_id: str) -> bool:
        """Forget the stream now (a running one is asked to cancel, cause ``deleted``).

        Returns ``False`` if there was no such stream. Its followers get
        ``StreamNotFoundError``.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Release the store; waiting followers and waiters get ``StoreUnavailableError``."""

    @abstractmethod
    def statistics(self) -> StoreStatistics:
        """Current counters."""

    # -- aliases -------------------------------------------------------------------------

    @abstractmethod
    async def set_alias(self, alias: str, stream_id: str, *, ttl: float) -> str | None:
        """Point the name ``alias`` at ``stream_id`` (a front door's own id for its stream, such
        as a chat id); return the stream it pointed at before, if that one is still kept.

        The alias ends with its stream (once the stream is deleted or has expired,
        :meth:`get_alias` answers ``None``) and after ``ttl`` seconds at the latest: pass the
        longest the stream may still live (its time limit plus the finished-stream TTL), so
        the name never outlives its purpose in storage. Raises ``StreamNotFoundError`` if
        ``stream_id`` is not kept, ``ValueError`` for an empty name or a ``ttl`` that is not
        positive.
        """

    @abstractmethod
    async def get_alias(self, alias: str) -> str | None:
        """The stream ``alias`` points at, or ``None`` if it was never set, has expired, or
        its stream is no longer kept."""

"""The stream store's errors, each with its ``code`` and ``retryable`` (the tree is drawn in
:mod:`ssegate._errors`). redis exceptions become these in this package and never leave it."""

from __future__ import annotations

from .._errors import SsegateError

__all__ = [
    "IllegalTransitionError",
    "ProducerLostError",
    "StoreError",
    "StoreFullError",
    "StoreUnavailableError",
    "StreamGapError",
    "StreamNotFoundError",
]


class StoreError(SsegateError):
    """The stream store failed."""

    code = "store_error"


class StreamNotFoundError(StoreError):
    """No such stream (never existed, expired, or not yours)."""

    code = "not_found"


class StoreUnavailableError(StoreError):
    """The store's backend (Redis) cannot be reached right now."""

    code = "store_unavailable"
    retryable = True


class StoreFullError(StoreError):
    """The store holds as many streams as it may."""

    code = "store_full"
    retryable = True


class StreamGapError(StoreError):
    """Events after ``after`` are no longer kept (the stream was capped and trimmed).

    ``first_id`` is the oldest id still kept. A resuming client is told so (an ``error`` event
    with code ``gap``) rather than silently missing events.
    """

    code = "gap"

    def __init__(self, stream_id: str, *, after: int, first_id: int):
        super().__init__(
            f"stream {stream_id}: events after id {after} are no longer kept "
            f"(the oldest kept id is {first_id})"
        )
        self.stream_id = stream_id
        self.after = after
        self.first_id = first_id


class ProducerLostError(StoreError):
    """The stream is still ``running`` but its producer's lease expired: no event will come."""

    code = "producer_lost"


class IllegalTransitionError(StoreError):
    """A status transition the table forbids, e.g. appending to a finished stream."""

    code = "illegal_transition"

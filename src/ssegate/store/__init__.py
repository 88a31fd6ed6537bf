"""Stream stores: ordered, resumable events per stream, with status, cancel and lease.

:class:`Store` is the contract; :class:`MemoryStore` the embedded default. A Redis store
(``ssegate.store.redis``) implements the same contract for more than one instance; importing
this package does not import redis. The store's errors (:class:`StoreError` and its subclasses)
are here too.

The memory store runs on any anyio backend (asyncio or trio). The Redis store runs on asyncio
only: it is built on redis-py's asyncio client.
"""

from ._base import (
    FOLLOW_BATCH,
    TERMINAL_EVENTS,
    TRANSITIONS,
    Store,
    StoredEvent,
    StoreStatistics,
    StreamInfo,
    StreamInput,
    StreamStatus,
    transition,
)
from ._errors import (
    IllegalTransitionError,
    ProducerLostError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    StreamGapError,
    StreamNotFoundError,
)
from .memory import MemoryStore, MemoryStoreConfig

__all__ = [
    "FOLLOW_BATCH",
    "TERMINAL_EVENTS",
    "TRANSITIONS",
    "IllegalTransitionError",
    "MemoryStore",
    "MemoryStoreConfig",
    "ProducerLostError",
    "Store",
    "StoreError",
    "StoreFullError",
    "StoreStatistics",
    "StoreUnavailableError",
    "StoredEvent",
    "StreamGapError",
    "StreamInfo",
    "StreamInput",
    "StreamNotFoundError",
    "StreamStatus",
    "transition",
]

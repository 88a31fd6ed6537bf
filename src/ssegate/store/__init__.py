"""Stream stores: ordered, resumable events per stream, with status, cancel and lease.

:class:`Store` is the contract; :class:`MemoryStore` the embedded default. A Redis store
(``ssegate.store.redis``) implements the same contract for more than one instance; importing
this package does not import redis.
"""

from ._base import (
    TERMINAL_EVENTS,
    TRANSITIONS,
    IllegalTransitionError,
    ProducerLostError,
    Store,
    StoredEvent,
    StoreStatistics,
    StreamGapError,
    StreamInfo,
    StreamInput,
    StreamStatus,
    transition,
)
from .memory import MemoryStore, MemoryStoreConfig

__all__ = [
    "TERMINAL_EVENTS",
    "TRANSITIONS",
    "IllegalTransitionError",
    "MemoryStore",
    "MemoryStoreConfig",
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

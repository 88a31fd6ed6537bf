"""ssegate: stream LLM output to browsers and apps over Server-Sent Events.

The library face: the sans-IO codec, the Spring-style :class:`SseEmitter`, the event-stream
response, and the error tree. ``import ssegate`` imports neither FastAPI, redis nor httpx; the
gateway lives in :mod:`ssegate.gateway`.
"""

from ._emitter import EmitterState, EmitterStatistics, SseEmitter
from ._errors import (
    EmitterClosedError,
    IllegalTransitionError,
    ProducerLostError,
    ShuttingDownError,
    SsegateError,
    SseProtocolError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    StreamGapError,
    StreamNotFoundError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamTimeoutError,
)
from ._response import (
    CloseReason,
    EventSourceResponse,
    EventStreamOptions,
    EventStreamStatistics,
    StreamItem,
)
from ._shutdown import SHUTDOWN_STATE_KEY, ShutdownSignal
from .codec import Decoder, ServerSentEvent, encode, encode_comment

__version__ = "0.1.0"

__all__ = [
    "SHUTDOWN_STATE_KEY",
    "CloseReason",
    "Decoder",
    "EmitterClosedError",
    "EmitterState",
    "EmitterStatistics",
    "EventSourceResponse",
    "EventStreamOptions",
    "EventStreamStatistics",
    "IllegalTransitionError",
    "ProducerLostError",
    "ServerSentEvent",
    "ShutdownSignal",
    "ShuttingDownError",
    "SseEmitter",
    "SseProtocolError",
    "SsegateError",
    "StoreError",
    "StoreFullError",
    "StoreUnavailableError",
    "StreamGapError",
    "StreamItem",
    "StreamNotFoundError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamStreamError",
    "UpstreamTimeoutError",
    "__version__",
    "encode",
    "encode_comment",
]

"""ssegate: stream LLM output to browsers and apps over Server-Sent Events.

The library face: the sans-IO codec, the Spring-style :class:`SseEmitter`, the event-stream
response, and the library's errors. ``import ssegate`` imports neither FastAPI, redis nor
httpx. The gateway lives in :mod:`ssegate.gateway`; its layers keep their own errors
(:mod:`ssegate.providers` the upstream's, :mod:`ssegate.store` the store's).
"""

from ._emitter import EmitterState, EmitterStatistics, SseEmitter
from ._errors import EmitterClosedError, SsegateError, SseProtocolError
from ._response import (
    CloseReason,
    EventSourceResponse,
    EventStreamOptions,
    EventStreamStatistics,
    StreamItem,
)
from ._shutdown import SHUTDOWN_STATE_KEY, ShutdownSignal
from .codec import Decoder, ServerSentEvent, encode, encode_comment

#: The one place the version is written (pyproject.toml reads it from here).
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
    "ServerSentEvent",
    "ShutdownSignal",
    "SseEmitter",
    "SseProtocolError",
    "SsegateError",
    "StreamItem",
    "__version__",
    "encode",
    "encode_comment",
]

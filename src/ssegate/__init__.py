"""ssegate: stream LLM output to browsers and apps over Server-Sent Events.

The library face: the sans-IO codec, the Spring-style :class:`SseEmitter`, the event-stream
response, and the error tree. ``import ssegate`` imports neither FastAPI, redis nor httpx; the
gateway lives in :mod:`ssegate.gateway`.
"""

from ._errors import (
    EmitterClosedError,
    SsegateError,
    SseProtocolError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    StreamNotFoundError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamTimeoutError,
)
from .codec import Decoder, ServerSentEvent, encode, encode_comment

__version__ = "0.1.0"

__all__ = [
    "Decoder",
    "EmitterClosedError",
    "ServerSentEvent",
    "SseProtocolError",
    "SsegateError",
    "StoreError",
    "StoreFullError",
    "StoreUnavailableError",
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

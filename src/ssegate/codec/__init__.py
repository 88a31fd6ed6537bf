"""The sans-IO SSE codec: :class:`ServerSentEvent`, :func:`encode` and :class:`Decoder`.

This package imports no asyncio, anyio or web framework and does no I/O (a test checks it).
"""

from ._decoder import Decoder
from ._encode import encode, encode_comment, encode_fields
from ._event import ServerSentEvent

__all__ = ["Decoder", "ServerSentEvent", "encode", "encode_comment", "encode_fields"]

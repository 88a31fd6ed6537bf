"""Stream read tokens: a short-lived right to *read* one stream, for clients that cannot send
headers (``EventSource``).

An API key never goes in a URL, so starting a stream also returns a token that lets its holder
read that one stream (``?token=`` on its events and status URLs) — not cancel it, not read any
other. A token is ``v1.<expiry>.<HMAC-SHA256(secret, stream id, expiry)>`` with the expiry in
canonical form (Unix seconds, no leading zero): any instance with the same secret
(``--token-secret``, or else derived from the keys) verifies it without a lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable

from ._keys import KeyRing
from ._settings import Settings

__all__ = ["ReadTokens"]

# The expiry in canonical form only: the signature covers the number, so "v1.0<expiry>.<sig>"
# would otherwise verify too, and one token would have many spellings.
_TOKEN = re.compile(r"v1\.([1-9][0-9]{0,11})\.([A-Za-z0-9_-]{24})")


class ReadTokens:
    """Issue and verify stream-scoped read tokens (HMAC-SHA256 over stream id and expiry)."""

    def __init__(
        self, secret: bytes, ttl: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not secret:
            raise ValueError("a token secret must not be empty")
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError("the token lifetime must be a positive number of seconds")
        self._secret = secret
        self.ttl = ttl
        self._clock = clock

    @classmethod
    def for_settings(
        cls, settings: Settings, keys: KeyRing, *, clock: Callable[[], float] = time.time
    ) -> ReadTokens:
        """The tokens of a gateway: signed with ``--token-secret``, or else a secret derived
        from all of ``keys``; valid ``--token-ttl`` seconds (default: ``--stream-ttl`` +
        ``--max-stream-duration``, as long as a stream can be read)."""
        security = settings.security
        if security.token_secret:
            secret = hashlib.sha256(
                b"ssegate token secret\0" + security.token_secret.encode("utf-8")
            ).digest()
        else:
            secret = keys.derived_secret
        ttl = security.token_ttl or settings.store.stream_ttl + settings.streams.max_stream_duration
        return cls(secret, ttl, clock=clock)

    def _signature(self, stream_id: str, expires: int) -> str:
        message = b"ssegate/read/v1\n" + stream_id.encode("utf-8", "surrogatepass")
        message += b"\n" + str(expires).encode("ascii")
        mac = hmac.new(self._secret, message, hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(mac).decode("ascii")

    def issue(self, stream_id: str) -> tuple[str, int]:
        """A token for reading ``stream_id``, and when it expires (Unix seconds)."""
        expires = math.ceil(self._clock() + self.ttl)
        return f"v1.{expires}.{self._signature(stream_id, expires)}", expires

    def verify(self, token: str, stream_id: str) -> str | None:
        """``None`` if ``token`` lets its holder read ``stream_id`` now, else why not:
        ``invalid_token`` or ``token_expired``."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            return "invalid_token"
        expires = int(match[1])
        if not hmac.compare_digest(match[2], self._signature(stream_id, expires)):
            return "invalid_token"
        if expires < self._clock():
            return "token_expired"
        return None

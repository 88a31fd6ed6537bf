"""Who may use the gateway: API keys, per-stream read tokens, ownership, and the bind check.

* **API keys** come from ``--api-keys-file`` (one ``[name:]key`` a line, ``#`` comments) and
  ``SSEGATE_API_KEYS`` (comma-separated ``[name:]key``). A request presents one as
  ``Authorization: Bearer <key>``. It is hashed and compared with every configured key's hash by
  :func:`hmac.compare_digest`, without stopping at a match, so the time taken says nothing
  about which key (or how much of one) matched. Keys are never logged; the gateway knows a key
  by its *owner id*: its name, or ``key-`` and 12 hex digits of its SHA-256 when unnamed.
* **Ownership**: a stream records the owner id of the key that started it, and only that key
  may read, resume or cancel it; for anyone else it does not exist (404).
* **Read tokens**: ``EventSource`` cannot send headers, and an API key never goes in a URL, so
  starting a stream also returns a short-lived token that lets its holder *read* that one
  stream (``?token=`` on its events and status URLs) — not cancel it, not read any other. A
  token is ``v1.<expiry>.<HMAC-SHA256(secret, stream id, expiry)>``: any instance with the same
  secret (``--token-secret``, or else derived from the keys) verifies it without a lookup.
* With no keys the gateway is open, and ``ssegate serve`` refuses to listen on anything but a
  loopback address unless ``--insecure`` is given (:func:`bind_refusal`).

:class:`AuthMiddleware` checks every request under ``/v1/`` before the app reads its body:
``401`` (with ``WWW-Authenticate: Bearer``) for a missing or wrong key or a bad token, then the
key's request rate (``429``). Routes find the result with :func:`caller_of`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .._jobs import JobObserver, ObserverChain
from ..store import StreamInfo
from ._limits import (
    BodyLimitMiddleware,
    EventStreamTracker,
    JsonCORSMiddleware,
    RateLimiter,
    StreamQuota,
)
from ._logging import ContentLog, StreamLog
from ._settings import Settings

__all__ = [
    "ApiKey",
    "AuthMiddleware",
    "Caller",
    "GatewaySecurity",
    "KeyRing",
    "ReadTokens",
    "bind_refusal",
    "caller_of",
    "parse_key_entries",
    "security_of",
    "split_key_entries",
]

log = logging.getLogger("ssegate.auth")

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# Visible ASCII but the separators of the two formats; keys are compared as bytes, and ASCII
# reads the same whatever encoding a client's HTTP library assumes for headers.
_KEY = re.compile(r"[!-~]+")
_MIN_KEY_LENGTH = 16
_MAX_KEY_LENGTH = 512


# -- keys --------------------------------------------------------------------------------------


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key, kept as its SHA-256 only. ``owner`` is what streams record."""

    owner: str
    digest: bytes = field(repr=False)
    named: bool


def split_key_entries(value: str) -> tuple[str, ...]:
    """The entries of ``SSEGATE_API_KEYS``: comma-separated, blanks around them ignored."""
    return tuple(entry.strip() for entry in value.split(",") if entry.strip())


def parse_key_entries(entries: Iterable[str], *, source: str) -> list[tuple[str | None, str]]:
    """``(name, key)`` pairs from ``[name:]key`` entries; ``ValueError`` names a bad entry by
    its position (never its text: it holds a key)."""
    pairs: list[tuple[str | None, str]] = []
    for number, entry in enumerate(entries, 1):
        name: str | None = None
        key = entry
        head, sep, tail = entry.partition(":")
        if sep:
            if not _NAME.fullmatch(head):
                raise ValueError(
                    f"{source}, entry {number}: a key name is 1-64 of A-Z a-z 0-9 _ . @ -"
                )
            name, key = head, tail
        if not key or len(key) > _MAX_KEY_LENGTH or not _KEY.fullmatch(key) or "," in key:
            raise ValueError(
                f"{source}, entry {number}: a key is 1-{_MAX_KEY_LENGTH} visible ASCII "
                "characters, without spaces or commas"
            )
        pairs.append((name, key))
    return pairs


def _file_entries(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the API keys file {path!r}: {exc}") from None
    entries = []
    for line in text.splitlines():
        # A comment is a line starting with '#', or ' #' after the key (keys have no spaces).
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            entries.append(line)
    if not entries:
        raise ValueError(f"the API keys file {path!r} holds no key")
    return entries


class KeyRing:
    """The configured API keys; :meth:`match` finds the one a request presents."""

    def __init__(self, pairs: Sequence[tuple[str | None, str]]) -> None:
        keys: list[ApiKey] = []
        owners: set[str] = set()
        digests: set[bytes] = set()
        for name, key in pairs:
            digest = _digest(key.encode("ascii"))
            owner = name if name is not None else "key-" + digest.hex()[:12]
            if owner in owners:
                raise ValueError(f"two API keys are named {owner!r}")
            if digest in digests:
                raise ValueError(f"the API key named {owner!r} is configured twice")
            if len(key) < _MIN_KEY_LENGTH:
                log.warning(
                    "the API key %s is shorter than %d characters: easy to guess",
                    owner,
                    _MIN_KEY_LENGTH,
                )
            owners.add(owner)
            digests.add(digest)
            keys.append(ApiKey(owner, digest, name is not None))
        self._keys = tuple(keys)
        # The read-token secret when none is configured: a function of every key, so instances
        # sharing the keys share it, and nobody without all of them can compute it.
        mac = hmac.new(b"ssegate read tokens v1", digestmod=hashlib.sha256)
        for _, key in sorted(pairs, key=lambda p: p[1]):
            mac.update(len(key).to_bytes(4, "big") + key.encode("ascii"))
        self._derived_secret = mac.digest()

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The keys of ``settings.api_keys`` and ``settings.api_keys_file``."""
        pairs = parse_key_entries(settings.api_keys, source="SSEGATE_API_KEYS")
        if settings.api_keys_file:
            entries = _file_entries(settings.api_keys_file)
            pairs += parse_key_entries(entries, source=f"API keys file {settings.api_keys_file!r}")
        return cls(pairs)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def owners(self) -> list[str]:
        """Every key's owner id."""
        return [k.owner for k in self._keys]

    def match(self, presented: bytes) -> ApiKey | None:
        """The key equal to ``presented``, or ``None``; constant time in the keys' contents."""
        digest = _digest(presented)
        found: ApiKey | None = None
        for key in self._keys:
            # No early exit: every key is compared, whichever matches.
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


# -- read tokens -------------------------------------------------------------------------------


_TOKEN = re.compile(r"v1\.([0-9]{1,12})\.([A-Za-z0-9_-]{24})")


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
        """The tokens of a gateway: signed with ``settings.token_secret``, or else a secret
        derived from all of ``keys``; valid ``token_ttl`` seconds (default: ``stream_ttl +
        max_stream_duration``, as long as a stream can be read)."""
        if settings.token_secret:
            secret = hashlib.sha256(
                b"ssegate token secret\0" + settings.token_secret.encode("utf-8")
            ).digest()
        else:
            secret = keys._derived_secret
        ttl = settings.token_ttl or settings.stream_ttl + settings.max_stream_duration
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


# -- the caller --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is making a request.

    ``owner`` is the key's owner id (``None`` on an open gateway or with a read token);
    ``stream_id`` is the one stream a read token lets the caller read.
    """

    owner: str | None = None
    stream_id: str | None = None
    open: bool = False

    def may_read(self, info: StreamInfo) -> bool:
        """Whether this caller may read ``info``'s stream (status, events, resume)."""
        if self.open:
            return True
        if self.owner is not None and self.owner == info.owner:
            return True
        return self.stream_id is not None and self.stream_id == info.id

    def may_cancel(self, info: StreamInfo) -> bool:
        """Whether this caller may cancel ``info``'s stream: its owner's key only."""
        return self.open or (self.owner is not None and self.owner == info.owner)


OPEN = Caller(open=True)
_CALLER_KEY = "ssegate.caller"


def caller_of(conn: HTTPConnection) -> Caller:
    """The caller :class:`AuthMiddleware` found for this request (open when auth is off)."""
    caller = conn.scope.get(_CALLER_KEY)
    return caller if isinstance(caller, Caller) else OPEN


# -- the middleware ----------------------------------------------------------------------------


_STREAM_READ = re.compile(r"/v1/streams/([^/]+)(?:/events)?")


def _error(scope: Scope, status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    """An error in the shape of the route family: the gateway's under ``/v1/streams``, OpenAI's
    for the rest of ``/v1`` (so the SDK raises ``AuthenticationError``/``RateLimitError``)."""
    if scope["path"].startswith("/v1/streams"):
        body: dict[str, Any] = {"code": code, "message": message}
    else:
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        body = {"message": message, "type": kind, "param": None, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _unauthorized(scope: Scope, code: str, message: str) -> Response:
    challenge = 'Bearer realm="ssegate"'
    if code in ("invalid_api_key", "invalid_token", "token_expired"):
        challenge += ', error="invalid_token"'
    return _error(scope, 401, code, message, {"WWW-Authenticate": challenge})


class AuthMiddleware:
    """Authenticate every ``/v1/`` request (key or read token) and apply the key's rate."""

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        tokens: ReadTokens,
        limiter: RateLimiter | None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.tokens = tokens
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            # A CORS preflight is answered outside; any other OPTIONS is a 405 with no effect.
            await self.app(scope, receive, send)
            return
        caller = self._authenticate(scope)
        if isinstance(caller, Response):
            await caller(scope, receive, send)
            return
        if self.limiter is not None and caller.owner is not None:
            wait = self.limiter.acquire(caller.owner)
            if wait > 0:
                retry_after = str(max(1, math.ceil(wait)))
                message = (
                    f"too many requests for this key (limit {self.limiter.rate:g}/s, bursts of "
                    f"{self.limiter.burst}); retry after {retry_after} s"
                )
                response = _error(scope, 429, "rate_limited", message, {"Retry-After": retry_after})
                await response(scope, receive, send)
                return
        scope[_CALLER_KEY] = caller
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope) -> Caller | Response:
        authorizations = [v for k, v in scope["headers"] if k == b"authorization"]
        if len(authorizations) > 1:
            return _unauthorized(scope, "invalid_api_key", "send one Authorization header")
        if authorizations:
            scheme, _, presented = authorizations[0].strip().partition(b" ")
            presented = presented.strip()
            if scheme.lower() != b"bearer" or not presented:
                return _unauthorized(
                    scope, "invalid_api_key", "the Authorization header must be 'Bearer <key>'"
                )
            key = self.keys.match(presented)
            if key is None:
                return _unauthorized(scope, "invalid_api_key", "the API key is not valid")
            return Caller(owner=key.owner)
        token = self._query_token(scope)
        if token is not None:
            match = _STREAM_READ.fullmatch(scope["path"])
            if match is None or scope["method"] not in ("GET", "HEAD"):
                message = (
                    "a read token can only read its stream (GET its events or status); "
                    "send the API key to do anything else"
                )
                return _unauthorized(scope, "missing_api_key", message)
            problem = self.tokens.verify(token, match[1])
            if problem == "token_expired":
                return _unauthorized(scope, problem, "the read token has expired")
            if problem is not None:
                return _unauthorized(scope, problem, "the read token is not valid for this stream")
            return Caller(stream_id=match[1])
        return _unauthorized(
            scope,
            "missing_api_key",
            "an API key is required: send 'Authorization: Bearer <key>'",
        )

    @staticmethod
    def _query_token(scope: Scope) -> str | None:
        query: bytes = scope.get("query_string", b"")
        if b"token" not in query:
            return None
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if name == "token":
                return value
        return None


# -- the bundle --------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve to anything


def bind_refusal(settings: Settings) -> str | None:
    """Why ``ssegate serve`` must not listen as configured, or ``None`` if it may."""
    has_keys = bool(settings.api_keys or settings.api_keys_file)
    if has_keys or settings.insecure or _is_loopback(settings.host):
        return None
    return (
        f"refusing to listen on {settings.host} without API keys: anyone who can reach that "
        "address could run generations on your LLM account and read every stream. Set "
        "SSEGATE_API_KEYS or --api-keys-file, or listen on 127.0.0.1, or pass --insecure if "
        "something in front of ssegate checks who may use it."
    )


class GatewaySecurity:
    """Everything of this module and :mod:`._limits` that one app uses, made from settings.

    ``keys``/``tokens`` are ``None`` on an open gateway.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        keys = KeyRing.from_settings(settings)
        self.keys: KeyRing | None = keys if len(keys) else None
        self.tokens = ReadTokens.for_settings(settings, keys) if self.keys is not None else None
        self.limiter = (
            RateLimiter(settings.rate_limit, max(1, settings.rate_burst))
            if settings.rate_limit > 0
            else None
        )
        self.quota = StreamQuota(settings.max_streams_per_key)
        self.event_streams = EventStreamTracker()
        self.stream_log = StreamLog()
        self.content_log = ContentLog() if settings.log_content else None
        if settings.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")

    @property
    def enabled(self) -> bool:
        """Whether API keys are required."""
        return self.keys is not None

    def observer(self, *others: JobObserver | None) -> JobObserver:
        """The job observer this needs (running streams per key, the per-stream log line),
        chained with ``others``."""
        return ObserverChain(self.quota, self.stream_log, *others)

    def install(self, app: FastAPI) -> None:
        """Add the middlewares (outermost first: CORS, auth and rate, body size)."""
        app.state.ssegate_security = self
        settings = self.settings
        app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
        if self.keys is not None and self.tokens is not None:
            app.add_middleware(
                AuthMiddleware, keys=self.keys, tokens=self.tokens, limiter=self.limiter
            )
        if settings.cors_origins:
            # '*' only when given, and then never with credentials (the CORS spec forbids it,
            # and a credentialed wildcard would let any site act as the user).
            wildcard = "*" in settings.cors_origins
            app.add_middleware(
                JsonCORSMiddleware,
                allow_origins=["*"] if wildcard else list(settings.cors_origins),
                allow_credentials=not wildcard,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Accept"],
                expose_headers=[
                    "x-ssegate-stream-id",
                    "x-ssegate-read-token",
                    "x-request-id",
                    "Location",
                    "Retry-After",
                ],
                max_age=600,
            )


def security_of(conn: HTTPConnection) -> GatewaySecurity:
    """The :class:`GatewaySecurity` of the app serving ``conn``."""
    security: GatewaySecurity = conn.app.state.ssegate_security
    return security

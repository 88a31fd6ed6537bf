"""Who may use the gateway: the caller of a request, the auth middleware, the bind check.

* **API keys** (:mod:`._keys`): a request presents one as ``Authorization: Bearer <key>``; a
  request to Anthropic's API (``/v1/messages``, or any with an ``anthropic-version`` header)
  may present it as ``x-api-key: <key>`` instead, as Anthropic's clients do.
* **Ownership**: a stream records the owner id of the key that started it, and only that key
  may read, resume or cancel it; for anyone else it does not exist (404).
* **Read tokens** (:mod:`._tokens`): ``?token=`` on a stream's events and status URLs lets its
  holder read that one stream. The query must name ``token`` once, spelled plainly (a query
  with two, or with the name percent-encoded, is refused: what the access log redacts and what
  the auth reads must be the same parameter).
* With no keys the gateway is open, and ``ssegate serve`` refuses to listen on anything but a
  loopback address unless ``--insecure`` is given (:func:`bind_refusal`).

:class:`AuthMiddleware` checks every request under ``/v1/`` before the app reads its body:
``401`` (with ``WWW-Authenticate: Bearer``) for a missing or wrong key or a bad token, then the
request rate (``429``): per key, and per stream for requests with a read token. Routes find
the result with :func:`caller_of`, and the app's security objects with :func:`security_of`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..store import StreamInfo
from ._event_streams import EventStreamTracker
from ._keys import KeyRing
from ._logging import ContentLog, StreamLog
from ._quota import RateLimiter, StreamQuota
from ._settings import Settings
from ._tokens import ReadTokens

__all__ = [
    "AuthMiddleware",
    "Caller",
    "GatewaySecurity",
    "bind_refusal",
    "caller_of",
    "security_of",
]


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
    elif scope["path"] == "/v1/messages":  # Anthropic's shape
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status)
        error = {"type": kind or "invalid_request_error", "message": message}
        return JSONResponse({"type": "error", "error": error}, status, headers)
    else:
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        body = {"message": message, "type": kind, "param": None, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _unauthorized(scope: Scope, code: str, message: str) -> Response:
    challenge = 'Bearer realm="ssegate"'
    if code in ("invalid_api_key", "invalid_token", "token_expired"):
        challenge += ', error="invalid_token"'
    return _error(scope, 401, code, message, {"WWW-Authenticate": challenge})


def _anthropic_client(scope: Scope) -> bool:
    """Whether the request is Anthropic's API (``/v1/messages``, or with ``anthropic-version``),
    whose clients send the key as ``x-api-key``."""
    if scope["path"] == "/v1/messages":
        return True
    return any(k == b"anthropic-version" for k, _ in scope["headers"])


class _TokenQueryError(Exception):
    """The query names ``token`` twice, or spells its name percent-encoded."""


def _query_token(scope: Scope) -> str | None:
    """The ``token`` parameter of the request's query, if any.

    Raises :class:`_TokenQueryError` for a query that names it more than once, or with an
    encoded name (``toke%6e``): a log redaction or a proxy rule looking for ``token=`` could
    miss that one, so it must not authenticate.
    """
    query: bytes = scope.get("query_string", b"")
    if b"token" not in query and b"%" not in query:
        return None
    found: str | None = None
    for part in query.split(b"&"):
        raw_name, _, raw_value = part.partition(b"=")
        name = unquote_to_bytes(raw_name.replace(b"+", b" "))
        if name != b"token":
            continue
        if raw_name != b"token" or found is not None:
            raise _TokenQueryError
        found = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("latin-1")
    return found


class AuthMiddleware:
    """Authenticate every ``/v1/`` request (key or read token) and apply its rate: per key
    (``limiter``), per stream for read tokens (``token_limiter``)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        tokens: ReadTokens,
        limiter: RateLimiter | None,
        token_limiter: RateLimiter | None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.tokens = tokens
        self.limiter = limiter
        self.token_limiter = token_limiter

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
        if isinstance(caller, Caller):
            caller = self._rate_limited(scope, caller)
        if isinstance(caller, Response):
            await caller(scope, receive, send)
            return
        scope[_CALLER_KEY] = caller
        await self.app(scope, receive, send)

    def _rate_limited(self, scope: Scope, caller: Caller) -> Caller | Response:
        """``caller``, or a 429 if its key (or, with a read token, its stream) is over the
        rate."""
        if caller.owner is not None:
            limiter, identity, whose = self.limiter, caller.owner, "this key"
        elif caller.stream_id is not None:
            limiter, identity = self.token_limiter, caller.stream_id
            whose = "this stream's read tokens"
        else:
            return caller
        if limiter is None:
            return caller
        wait = limiter.acquire(identity)
        if wait <= 0:
            return caller
        retry_after = str(max(1, math.ceil(wait)))
        message = (
            f"too many requests for {whose} (limit {limiter.rate:g}/s, bursts of "
            f"{limiter.burst}); retry after {retry_after} s"
        )
        return _error(scope, 429, "rate_limited", message, {"Retry-After": retry_after})

    def _authenticate(self, scope: Scope) -> Caller | Response:
        authorizations = [v for k, v in scope["headers"] if k == b"authorization"]
        if not authorizations and _anthropic_client(scope):
            authorizations = [b"Bearer " + v for k, v in scope["headers"] if k == b"x-api-key"]
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
        try:
            token = _query_token(scope)
        except _TokenQueryError:
            message = "send the read token once, as '?token=…' (its name not percent-encoded)"
            return _error(scope, 400, "invalid_token_parameter", message, {})
        if token is not None:
            return self._token_caller(scope, token)
        return _unauthorized(
            scope,
            "missing_api_key",
            "an API key is required: send 'Authorization: Bearer <key>'",
        )

    def _token_caller(self, scope: Scope, token: str) -> Caller | Response:
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


# -- the bind check ----------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve to anything


def bind_refusal(settings: Settings) -> str | None:
    """Why ``ssegate serve`` must not listen as configured, or ``None`` if it may."""
    security, host = settings.security, settings.server.host
    has_keys = bool(security.api_keys or security.api_keys_file)
    if has_keys or security.insecure or _is_loopback(host):
        return None
    return (
        f"refusing to listen on {host} without API keys: anyone who can reach that "
        "address could run generations on your LLM account and read every stream. Set "
        "SSEGATE_API_KEYS or --api-keys-file, or listen on 127.0.0.1, or pass --insecure if "
        "something in front of ssegate checks who may use it."
    )


@dataclass(frozen=True, slots=True)
class GatewaySecurity:
    """The access and limit objects of one app, made by ``create_app`` from its settings.

    ``keys``/``tokens`` are ``None`` on an open gateway; ``limiter`` (per key) and
    ``token_limiter`` (per stream, for read tokens) are ``None`` without a rate limit.
    """

    keys: KeyRing | None
    tokens: ReadTokens | None
    limiter: RateLimiter | None
    token_limiter: RateLimiter | None
    quota: StreamQuota
    event_streams: EventStreamTracker
    stream_log: StreamLog
    content_log: ContentLog | None


def security_of(conn: HTTPConnection) -> GatewaySecurity:
    """The :class:`GatewaySecurity` of the app serving ``conn``."""
    security: GatewaySecurity = conn.app.state.ssegate_security
    return security

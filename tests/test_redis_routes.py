"""The streams routes over a Redis store that fails: a fault once the response has started
(counting the subscriber in, following) ends the body with an ``error`` event, never by
cutting it off.

The gateway connects as a Redis user that may read but not write subscriber keys (``P{S}:s``),
so counting a subscriber in (``subscriber()``, the first store call of the response body) is
refused by a real ``redis-server`` while everything before it works.
"""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from gateway_helpers import ask, collect, running_gateway
from instance_helpers import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(scope="module")
def no_subscribers_url(redis_server: RedisServer) -> str:
    """A URL whose user can do all the gateway does but count subscribers in."""
    admin = redis.Redis(port=redis_server.port)
    try:
        admin.execute_command(
            "ACL", "SETUSER", "nosubs", "on", ">pw", "resetkeys",
            "~*:m", "~*:e", "~*:l", "%R~*:s", "resetchannels", "&*", "+@all",
        )  # fmt: skip
    finally:
        admin.close()
    return f"redis://nosubs:pw@127.0.0.1:{redis_server.port}/0"


async def test_a_store_fault_when_the_body_starts_ends_it_with_an_error_event(
    no_subscribers_url: str,
) -> None:
    with running_gateway(store=no_subscribers_url) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            body = ask("hello [[tokens:3]]")
            headers = {"accept": "text/event-stream"}
            async with client.stream("POST", "/v1/streams", json=body, headers=headers) as r:
                assert r.status_code == 200
                events = await collect(r)  # ends cleanly: no RemoteProtocolError
    assert [e.event for e in events] == ["error"]
    error = json.loads(events[0].data)
    assert error["code"] == "store_error"
    assert error["retryable"] is False
    assert "NOPERM" in error["message"] or "permission" in error["message"].lower()
    assert events[0].id is None  # the client's Last-Event-ID stays where it was

"""One gateway on a real Redis under load: 100 streams at once, the upstream at full speed.

Each append used to be one script call on a pooled connection of its own: 100 producers
appending as fast as the mock sends drained the pool (``No connection available``) and some
streams ended with a cut-off body. Now every stream must end with ``done`` and every event in
order, ids ``1, 2, 3, …``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from instance_helpers import GatewayProcess, RedisServer, running_gateways
from ssegate import Decoder
from ssegate.testing import MockUpstream

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

STREAMS = 100
TOKENS = 200


@pytest.mark.timeout(120)
async def test_100_streams_at_full_speed_all_complete_in_order(
    redis_server: RedisServer, mock: MockUpstream
) -> None:
    gateway = GatewayProcess(
        "--provider",
        "openai",
        "--base-url",
        mock.url + "/v1",
        "--model",
        "mock",
        "--store",
        redis_server.url,
    )
    prompt = f"[[tokens:{TOKENS}]] [[interval_ms:0]] [[usage:off]]"
    results: dict[int, list[tuple[int | None, str, Any]]] = {}

    async def one(client: httpx.AsyncClient, n: int) -> None:
        got: list[tuple[int | None, str, Any]] = []
        results[n] = got
        body = {"messages": [{"role": "user", "content": f"{prompt} s{n}"}]}
        headers = {"accept": "text/event-stream"}
        url = gateway.url + "/v1/streams"
        async with client.stream("POST", url, json=body, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            decoder = Decoder()
            try:
                async for chunk in response.aiter_raw():
                    for event in decoder.feed(chunk):
                        got.append(
                            (
                                int(event.id) if event.id else None,
                                event.event or "message",
                                json.loads(event.data or "null"),
                            )
                        )
            except httpx.RemoteProtocolError:  # the body was cut off: the old failure
                got.append((None, "cut off", None))

    with running_gateways(gateway):
        limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=STREAMS)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    for n in range(STREAMS):
                        tg.start_soon(one, client, n)
        log = gateway.log

    assert "No connection available" not in log
    assert "response already started" not in log
    for n in range(STREAMS):
        got = results[n]
        kinds = [kind for _, kind, _ in got]
        assert "error" not in kinds, (n, [e for e in got if e[1] == "error"])
        assert "cut off" not in kinds, (n, got[-3:])
        assert kinds[0] == "start", (n, got[:3])
        assert kinds[-1] == "done", (n, got[-3:])
        assert kinds.count("delta") == TOKENS, n
        assert [event_id for event_id, _, _ in got] == list(range(1, len(got) + 1)), n
        text = "".join(data["text"] for _, kind, data in got if kind == "delta")
        assert text.split() == [f"tok{i}" for i in range(TOKENS)], n

"""The Anthropic door on two gateway processes sharing one Redis: a message streamed from one
instance resumes on the other, and ``DELETE`` on the other stops its generation upstream.

Every gateway is a real ``python -m ssegate serve`` subprocess; the official ``anthropic`` SDK
is the client; the mock upstream runs in this process, so its records show what the instance
that generates did to its upstream connection.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from anthropic import AsyncAnthropic

from instance_helpers import GatewayProcess, RedisServer, running_gateways
from ssegate import Decoder
from ssegate.testing import MockRequest, MockUpstream

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def gateway(mock: MockUpstream, redis_url: str) -> GatewayProcess:
    return GatewayProcess(
        "--provider",
        "anthropic",
        "--base-url",
        mock.url,
        "--model",
        "claude-mock",
        "--store",
        redis_url,
        "--lease-ttl",
        "1.5",
        "--disconnect-grace",
        "0.5",
        "--heartbeat",
        "1",
    )


@pytest.fixture(scope="module")
def pair(
    redis_server: RedisServer, mock_upstream: MockUpstream
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    mock = mock_upstream
    with running_gateways(gateway(mock, redis_server.url), gateway(mock, redis_server.url)) as (
        a,
        b,
    ):
        yield a, b


def nonce() -> str:
    return "n" + secrets.token_hex(4)


def request_with(mock: MockUpstream, word: str) -> MockRequest:
    matches = [r for r in mock.requests if word in json.dumps(r.json)]
    assert len(matches) == 1, [r.json for r in mock.requests]
    return matches[0]


async def test_a_message_streamed_on_a_resumes_on_b(
    pair: tuple[GatewayProcess, GatewayProcess], mock: MockUpstream
) -> None:
    a, b = pair
    word = nonce()
    body = {
        "model": "claude-mock",
        "max_tokens": 64,
        "stream": True,
        "on_disconnect": "continue",
        "messages": [{"role": "user", "content": f"{word} [[tokens:40]] [[interval_ms:10]]"}],
    }
    text = ""
    last_id = ""
    decoder = Decoder()
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", a.url + "/v1/messages", json=body) as response,
    ):
        assert response.status_code == 200
        stream_id = response.headers["x-ssegate-stream-id"]
        async for chunk in response.aiter_raw():
            for event in decoder.feed(chunk):
                data = json.loads(event.data or "{}")
                if event.event == "content_block_delta":
                    text += data["delta"]["text"]
                last_id = event.id or last_id
            if text.count("tok") >= 5:
                break
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream(
            "GET", f"{b.url}/v1/streams/{stream_id}/events", headers={"Last-Event-ID": last_id}
        ) as rest,
    ):
        assert rest.status_code == 200
        resumed = Decoder().feed(await rest.aread())
    ids = [int(e.id or 0) for e in resumed]
    assert ids == list(range(int(last_id) + 1, ids[-1] + 1))  # nothing lost or doubled
    text += "".join(json.loads(e.data or "")["text"] for e in resumed if e.event == "delta")
    assert resumed[-1].event == "done"
    record = request_with(mock, word)
    assert text == record.text
    assert record.tokens_sent == 40


async def test_delete_on_b_stops_the_generation_on_a(
    pair: tuple[GatewayProcess, GatewayProcess], mock: MockUpstream
) -> None:
    a, b = pair
    word = nonce()
    async with (
        AsyncAnthropic(base_url=a.url, api_key="unused", max_retries=0) as client,
        client.messages.with_streaming_response.create(
            model="claude-mock",
            max_tokens=64,
            messages=[{"role": "user", "content": f"{word} [[tokens:1000]] [[interval_ms:10]]"}],
            stream=True,
        ) as response,
    ):
        stream_id = response.headers["x-ssegate-stream-id"]
        events = await response.parse()
        async for event in events:
            if event.type == "content_block_delta":
                break
        async with httpx.AsyncClient(timeout=10) as http:
            asked = time.time()
            stopped = await http.delete(f"{b.url}/v1/streams/{stream_id}")
        assert stopped.json()["status"] == "cancelled"
        with pytest.raises(anthropic.APIStatusError) as raised:
            async for _ in events:
                pass
    assert "cancelled" in raised.value.message
    record = request_with(mock, word)
    closed = await mock.wait_for_close_async(record.index)
    assert closed - asked < 1.0
    assert record.tokens_sent < 1000

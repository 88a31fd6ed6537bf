"""Each of the gateway's limits: its status, its JSON error, and that it holds (real sockets)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai import OpenAI

from gateway_helpers import Gateway, ask, collect, payloads, running_gateway, sse_events
from ssegate.gateway._limits import PromptLimitError, check_prompt
from ssegate.gateway._quota import RateLimiter

ALICE = "sk-alice-4f1c2b9e7d6a5c3b"
BOB = "sk-bob-8e7d6c5b4a392817"
KEYS = (f"alice:{ALICE}", f"bob:{BOB}")
LONG = "[[tokens:2000]] [[interval_ms:20]]"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()["error"]
    return body


# -- request body ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_bodies() -> Iterator[Gateway]:
    with running_gateway(max_body_bytes=2000, max_messages=3, max_prompt_chars=50) as gw:
        yield gw


def test_a_body_over_the_limit_is_413(small_bodies: Gateway) -> None:
    url = small_bodies.url + "/v1/streams"
    assert httpx.post(url, json=ask("x" * 40)).status_code == 201
    response = httpx.post(url, json=ask("x" * 3000))
    assert response.status_code == 413
    assert error(response)["code"] == "payload_too_large"
    assert "2000 bytes" in error(response)["message"]


def test_a_chunked_body_is_cut_off_at_the_limit(small_bodies: Gateway) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(1000):  # 1 MB, unless the server stops us
            sent += 1000
            yield b"x" * 1000
        yield b'"}]}'

    with httpx.Client(timeout=10.0) as client:
        try:
            response = client.post(
                small_bodies.url + "/v1/streams",
                content=body(),
                headers={"Content-Type": "application/json"},
            )
        except httpx.TransportError:
            pytest.fail("the gateway should answer 413, not drop the connection")
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert error(response)["code"] == "payload_too_large"


def test_the_openai_route_answers_413_in_its_shape(small_bodies: Gateway) -> None:
    with OpenAI(base_url=small_bodies.url + "/v1", api_key="x", max_retries=0) as sdk:
        with pytest.raises(openai.APIStatusError) as raised:
            sdk.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "x" * 3000}]
            )
    assert raised.value.status_code == 413
    assert raised.value.code == "payload_too_large"


# -- prompt size -------------------------------------------------------------------------------


def test_too_many_messages_or_characters_is_422(small_bodies: Gateway) -> None:
    url = small_bodies.url + "/v1/streams"
    four = {"messages": [{"role": "user", "content": "a"}] * 4}
    response = httpx.post(url, json=four)
    assert response.status_code == 422
    assert error(response)["code"] == "too_many_messages"
    assert "4 (the limit is 3)" in error(response)["message"]
    response = httpx.post(url, json=ask("y" * 51))
    assert response.status_code == 422
    assert error(response)["code"] == "prompt_too_long"
    parts = [{"type": "text", "text": "z" * 30}, {"type": "text", "text": "z" * 30}]
    response = httpx.post(url, json={"messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 422
    assert error(response)["code"] == "prompt_too_long"
    assert httpx.post(url, json=ask("y" * 50)).status_code == 201


def test_the_openai_route_answers_prompt_limits_with_400(small_bodies: Gateway) -> None:
    with OpenAI(base_url=small_bodies.url + "/v1", api_key="x", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "a"}] * 4
            )
        assert raised.value.code == "too_many_messages"
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "y" * 51}]
            )
        assert raised.value.code == "prompt_too_long"


def test_check_prompt_counts_text_and_tool_arguments() -> None:
    check_prompt([{"content": "a" * 10}] * 3, max_messages=3, max_chars=30)
    check_prompt([{"content": "a" * 10}] * 9, max_messages=0, max_chars=0)
    with pytest.raises(PromptLimitError, match="too many messages"):
        check_prompt([{"content": ""}] * 4, max_messages=3, max_chars=0)
    call = {"function": {"name": "f", "arguments": "b" * 25}}
    with pytest.raises(PromptLimitError, match="more than 30 characters"):
        check_prompt([{"content": "a" * 10, "tool_calls": [call]}], max_messages=0, max_chars=30)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 999}}
    check_prompt(
        [{"content": [image, {"type": "text", "text": "hi"}]}], max_messages=0, max_chars=5
    )


def test_a_body_declared_as_something_else_than_json_is_415(small_bodies: Gateway) -> None:
    url = small_bodies.url + "/v1/streams"
    body = b'{"messages": [{"role": "user", "content": "hi"}]}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = httpx.post(url, content=body, headers={"Content-Type": content_type})
        assert response.status_code == 415, content_type
        assert error(response)["code"] == "unsupported_media_type"
        assert "application/json" in error(response)["message"]
    response = httpx.post(url, content=body)
    assert response.status_code == 415  # no Content-Type: FastAPI would not read it as JSON
    for content_type in ("application/json", "application/json; charset=utf-8"):
        response = httpx.post(url, content=body, headers={"Content-Type": content_type})
        assert response.status_code == 201


# -- per key: request rate and running streams ---------------------------------------------------


def test_the_request_rate_per_key_is_429_with_retry_after() -> None:
    with running_gateway(api_keys=KEYS, rate_limit=0.5, rate_burst=3) as gw:
        with httpx.Client(base_url=gw.url) as client:
            for _ in range(3):
                assert client.get("/v1/models", headers=auth(ALICE)).status_code == 200
            limited = client.get("/v1/streams/st_x", headers=auth(ALICE))
            assert limited.status_code == 429
            assert error(limited)["code"] == "rate_limited"
            assert limited.headers["retry-after"] == "2"
            # Another key has its own bucket.
            assert client.get("/v1/models", headers=auth(BOB)).status_code == 200
        with OpenAI(base_url=gw.url + "/v1", api_key=ALICE, max_retries=0) as sdk:
            with pytest.raises(openai.RateLimitError) as raised:
                sdk.models.list()
            assert raised.value.code == "rate_limited"


def test_the_rate_limiter_refills_and_stays_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 4, max_identities=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(4)] == [0.0] * 4
    assert limiter.acquire("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0
    now[0] += 100
    assert [limiter.acquire("a") for _ in range(4)] == [0.0] * 4  # refilled, never above burst
    assert limiter.acquire("a") > 0
    for name in "bcdefg":
        limiter.acquire(name)
    assert len(limiter) == 3
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0, 1)


def test_running_streams_per_key_are_limited() -> None:
    with (
        running_gateway(api_keys=KEYS, max_streams_per_key=2, rate_limit=0, drain_timeout=0) as gw,
        httpx.Client(base_url=gw.url) as client,
    ):
        body = ask(LONG, on_disconnect="continue")
        running = [
            client.post("/v1/streams", json=body, headers=auth(ALICE)).json()["id"]
            for _ in range(2)
        ]
        refused = client.post("/v1/streams", json=body, headers=auth(ALICE))
        assert refused.status_code == 429
        assert error(refused)["code"] == "too_many_streams"
        assert int(refused.headers["retry-after"]) >= 1
        with OpenAI(base_url=gw.url + "/v1", api_key=ALICE, max_retries=0) as sdk:
            with pytest.raises(openai.RateLimitError) as raised:
                sdk.chat.completions.create(
                    model="mock", messages=[{"role": "user", "content": "x"}]
                )
            assert raised.value.code == "too_many_streams"
        assert client.post("/v1/streams", json=body, headers=auth(BOB)).status_code == 201
        # One ends: there is room again.
        stopped = client.delete(f"/v1/streams/{running[0]}", headers=auth(ALICE))
        assert stopped.json()["status"] == "cancelled"
        assert client.post("/v1/streams", json=body, headers=auth(ALICE)).status_code == 201


# -- per stream: subscribers and duration --------------------------------------------------------


@pytest.mark.anyio
async def test_subscribers_per_stream_are_limited() -> None:
    with running_gateway(max_subscribers=2, drain_timeout=0) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            created = (await client.post("/v1/streams", json=ask(LONG))).json()
            url = created["events_url"]
            async with (
                client.stream("GET", url) as first,
                client.stream("GET", url) as second,
            ):
                readers = [sse_events(first), sse_events(second)]  # held: not closed by GC
                for response, reader in zip((first, second), readers, strict=True):
                    assert response.status_code == 200
                    assert (await anext(reader)).event == "start"  # subscribed by now
                status = (await client.get(created["status_url"])).json()
                assert status["subscribers"] == 2
                third = await client.get(url)
                assert third.status_code == 429
                assert error(third)["code"] == "too_many_subscribers"
                assert third.headers["retry-after"]
            await client.delete(created["status_url"])


@pytest.mark.anyio
async def test_a_stream_longer_than_its_limit_ends_with_a_timeout_error() -> None:
    with running_gateway(max_stream_duration=0.5) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            headers = {"Accept": "text/event-stream"}
            with anyio.fail_after(10):
                async with client.stream(
                    "POST", "/v1/streams", json=ask(LONG), headers=headers
                ) as response:
                    events = payloads(await collect(response))
    assert events[-1][1] == "error"
    assert events[-1][2]["code"] == "timeout"
    assert 3 < len(events) < 100

"""The Responses API door on two gateway instances sharing one real Redis: a response started
on one is resumed after any sequence number, retrieved and cancelled on the other."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from instance_helpers import RedisServer
from ssegate.gateway import Settings, create_app
from ssegate.testing import MockUpstream, RunningServer, run_server

pytestmark = pytest.mark.redis


@pytest.fixture
def pair(
    redis_server: RedisServer, redis_prefix: str, mock: MockUpstream
) -> Iterator[tuple[OpenAI, OpenAI]]:
    settings = Settings.from_options(
        provider="openai",
        base_url=mock.url + "/v1",
        model="mock",
        store=redis_server.url,
        redis_prefix=redis_prefix,
        disconnect_grace=30,
    )
    with (
        run_server(create_app(settings)) as a,
        run_server(create_app(settings)) as b,
        client(a) as on_a,
        client(b) as on_b,
    ):
        yield on_a, on_b


def client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="sk-caller", max_retries=0)


def dumped(events: Any) -> list[dict[str, Any]]:
    return [e.model_dump() for e in events]


def test_a_response_from_one_instance_resumes_exactly_on_the_other(
    pair: tuple[OpenAI, OpenAI], mock: MockUpstream
) -> None:
    a, b = pair
    word = secrets.token_hex(4)
    seen: list[Any] = []
    with a.responses.create(
        model="mock", input=f"{word} [[tokens:30]] [[interval_ms:10]]", stream=True
    ) as stream:
        for event in stream:
            seen.append(event)
            if len(seen) == 6:
                break  # A's client drops; the generation runs on (on_disconnect grace)
    rest = list(b.responses.retrieve(seen[0].response.id, stream=True, starting_after=5))
    whole = seen + rest
    assert [e.sequence_number for e in whole] == list(range(len(whole)))
    assert whole[-1].type == "response.completed"
    text = "".join(e.delta for e in whole if e.type == "response.output_text.delta")
    assert text == next(r for r in mock.requests if word in str(r.json)).text
    response_id = whole[-1].response.id
    # Every other resume point, on either instance, gives exactly the rest.
    for n in range(0, len(whole), 3):
        on = (a, b)[n % 2]
        events = on.responses.retrieve(response_id, stream=True, starting_after=n)
        assert dumped(events) == dumped(whole[n + 1 :]), n
    assert b.responses.retrieve(response_id).output_text == text


def test_cancel_on_the_other_instance_stops_the_upstream_request(
    pair: tuple[OpenAI, OpenAI], mock: MockUpstream
) -> None:
    a, b = pair
    word = secrets.token_hex(4)
    index = len(mock.requests)
    started = a.responses.create(
        model="mock", input=f"{word} [[tokens:1000]] [[interval_ms:20]]", background=True
    )
    with b.responses.retrieve(started.id, stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break
    asked = time.time()
    cancelled = b.responses.cancel(started.id)
    closed_at = mock.wait_for_close(index, timeout=5)
    assert closed_at - asked < 0.5
    assert cancelled.status == "cancelled"
    assert a.responses.retrieve(started.id).status == "cancelled"

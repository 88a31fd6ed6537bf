"""OpenAI's Responses API door, driven by the official ``openai`` SDK against a real gateway on
loopback, with the real mock upstream behind it (an OpenAI-compatible model, ``mock``, and an
Anthropic one, ``claude``). Every event on the wire is checked against the SDK's own
``ResponseStreamEvent`` type in strict mode."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from ssegate.codec import Decoder
from ssegate.gateway import Settings, create_app
from ssegate.testing import MockRequest, MockUpstream, run_server

EVENT = TypeAdapter(ResponseStreamEvent)
TOOL_ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@dataclass
class Gateway:
    url: str
    mock: MockUpstream

    def client(self, **options: Any) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key="sk-caller", max_retries=0, **options)

    def record(self, marker: str) -> MockRequest:
        """The upstream request whose body holds ``marker``."""
        for rec in reversed(self.mock.requests):
            if marker in json.dumps(rec.json, ensure_ascii=False):
                return rec
        raise AssertionError(f"no upstream request with {marker!r}")

    def status(self, stream_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/streams/{stream_id}")
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result

    def raw_events(self, method: str, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        """The SSE body's events, each validated strictly as a ``ResponseStreamEvent`` and
        its ``event:`` field checked against its ``type``."""
        decoder = Decoder()
        out: list[dict[str, Any]] = []
        with httpx.stream(method, self.url + path, timeout=30, **kwargs) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            for data in response.iter_raw():
                for event in decoder.feed(data):
                    EVENT.validate_json(event.data, strict=True)
                    parsed = json.loads(event.data)
                    assert event.event == parsed["type"]
                    out.append(parsed)
        return out


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with MockUpstream() as mock:
        model_map = tmp_path_factory.mktemp("responses") / "models.json"
        model_map.write_text(
            json.dumps(
                {
                    "mock": {"provider": "openai", "base_url": mock.url + "/v1"},
                    "claude": {"provider": "anthropic", "base_url": mock.url, "model": "c-up"},
                }
            ),
            encoding="utf-8",
        )
        settings = Settings.from_options(
            model_map=str(model_map), disconnect_grace=0.3, upstream_idle_timeout=1.0
        )
        with run_server(create_app(settings)) as server:
            yield Gateway(server.url, mock)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[OpenAI]:
    with gateway.client() as sdk:
        yield sdk


def strict(stream: Iterable[Any]) -> list[Any]:
    """The SDK's events, each checked strictly against ``ResponseStreamEvent`` as it was sent
    (``exclude_unset``: the fields on the wire)."""
    out = list(stream)
    for event in out:
        EVENT.validate_python(event.model_dump(mode="json", exclude_unset=True), strict=True)
    return out


def texts(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# -- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mock", "claude"])
def test_a_streamed_response_is_the_sdks_typed_events_in_order(
    gateway: Gateway, client: OpenAI, model: str
) -> None:
    marker = f"s1{model} "
    events = strict(
        client.responses.create(
            model=model, input=marker + "[[tokens:6]] [[lang:mixed]]", stream=True
        )
    )
    rec = gateway.record(marker)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:4]] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert [e.type for e in events[-4:]] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert texts(events) == rec.text
    assert "中文·🚀" in rec.text
    done = events[-4]
    assert done.type == "response.output_text.done"
    assert done.text == rec.text
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.status == "completed"
    assert final.response.output_text == rec.text
    assert final.response.model == model
    assert final.response.usage is not None
    assert final.response.usage.output_tokens == 6
    assert final.response.usage.total_tokens == final.response.usage.input_tokens + 6
    assert {e.response.id for e in events if hasattr(e, "response")} == {final.response.id}
    assert gateway.status(final.response.id)["status"] == "done"


@pytest.mark.parametrize("model", ["mock", "claude"])
def test_every_event_on_the_wire_validates_strictly(gateway: Gateway, model: str) -> None:
    body = {"model": model, "input": "w1 [[tokens:3]] [[reasoning:2]]", "stream": True}
    events = gateway.raw_events("POST", "/v1/responses", json=body)
    kinds = [e["type"] for e in events]
    assert kinds[2:9] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    assert events[-1]["response"]["output"][0]["summary"] == [
        {"type": "summary_text", "text": "think0 think1 "}
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_the_stream_helpers_final_response_equals_the_streamed_text(
    gateway: Gateway, client: OpenAI
) -> None:
    deltas: list[str] = []
    with client.responses.stream(model="mock", input="h1 [[tokens:12]]") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) == gateway.record("h1 ").text
    assert len(deltas) == 12


def test_a_non_streamed_response_has_status_output_and_usage(
    gateway: Gateway, client: OpenAI
) -> None:
    raw = client.responses.with_raw_response.create(
        model="mock",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "n1 [[tokens:4]]"}]}],
        instructions="be brief",
        max_output_tokens=50,
        temperature=0.5,
        top_p=0.9,
        metadata={"ticket": "42"},
    )
    response = raw.parse()
    rec = gateway.record("n1 ")
    assert raw.headers["x-ssegate-stream-id"] == response.id
    assert response.status == "completed"
    assert response.output_text == rec.text
    assert response.metadata == {"ticket": "42"}
    assert (response.instructions, response.max_output_tokens) == ("be brief", 50)
    assert response.usage is not None
    assert response.usage.output_tokens == 4
    assert rec.json["messages"][0] == {"role": "system", "content": "be brief"}
    assert (rec.json["max_tokens"], rec.json["temperature"], rec.json["top_p"]) == (50, 0.5, 0.9)
    assert client.responses.retrieve(response.id).output_text == rec.text


# -- background, retrieve and resume ---------------------------------------------------------


def test_background_then_resume_after_every_sequence_number(
    gateway: Gateway, client: OpenAI
) -> None:
    started = client.responses.create(
        model="mock", input="b1 [[tokens:50]] [[interval_ms:15]]", background=True
    )
    assert started.status == "in_progress"
    assert started.background
    # While it runs: reconnect after every few events, from the last one seen.
    seen: list[Any] = []  # checked strictly below, with every resume
    while not seen or seen[-1].type != "response.completed":
        after = seen[-1].sequence_number if seen else None
        extra = {} if after is None else {"starting_after": after}
        with client.responses.retrieve(started.id, stream=True, **extra) as stream:
            for event in stream:
                seen.append(event)
                if len(seen) % 7 == 0:
                    break
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    assert texts(seen) == gateway.record("b1 ").text
    assert len([e for e in seen if e.type == "response.output_text.delta"]) == 50
    whole = [e.model_dump() for e in seen]
    # Finished: every starting_after gives exactly the rest.
    for n in range(len(whole)):
        rest = strict(client.responses.retrieve(started.id, stream=True, starting_after=n))
        assert [e.model_dump() for e in rest] == whole[n + 1 :], n
    retrieved = client.responses.retrieve(started.id)
    assert retrieved.status == "completed"
    assert retrieved.output_text == texts(seen)
    assert retrieved.usage is not None
    assert retrieved.usage.output_tokens == 50


def test_a_response_is_a_gateway_stream(gateway: Gateway, client: OpenAI) -> None:
    started = client.responses.create(model="mock", input="g1 [[tokens:3]]", background=True)
    stream = httpx.get(f"{gateway.url}/v1/streams/{started.id}/events", timeout=10)
    assert stream.status_code == 200
    assert "tok2" in stream.text
    assert gateway.status(started.id)["status"] == "done"


def test_cancel_closes_the_upstream_request_within_half_a_second(
    gateway: Gateway, client: OpenAI
) -> None:
    started = client.responses.create(
        model="mock", input="c1 [[tokens:1000]] [[interval_ms:20]]", background=True
    )
    with client.responses.retrieve(started.id, stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break
    rec = gateway.record("c1 ")
    asked = time.time()
    cancelled = client.responses.cancel(started.id)
    closed_at = gateway.mock.wait_for_close(rec.index, timeout=5)
    assert closed_at - asked < 0.5
    assert rec.cancelled
    assert rec.tokens_sent < 1000
    assert cancelled.status == "cancelled"
    events = strict(client.responses.retrieve(started.id, stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "cancelled"
    assert client.responses.retrieve(started.id).status == "cancelled"


# -- tools -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mock", "claude"])
def test_function_tools_round_trip(gateway: Gateway, client: OpenAI, model: str) -> None:
    marker = f"t1{model} "
    first = client.responses.create(
        model=model, input=marker + "[[tokens:1]] [[tool_call]]", tools=[WEATHER]
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert (call.name, call.arguments) == ("get_weather", TOOL_ARGUMENTS)
    assert call.call_id
    sent = gateway.record(marker).json
    assert "get_weather" in json.dumps(sent["tools"])
    second = client.responses.create(
        model=model,
        input=[
            {"role": "user", "content": marker + "again"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "t2 sunny"},
        ],
        tools=[WEATHER],
    )
    assert second.status == "completed"
    assert second.output_text
    body = json.dumps(gateway.record("t2 sunny").json)
    assert call.call_id in body
    assert "t2 sunny" in body


def test_streamed_tool_call_arguments_arrive_as_deltas(gateway: Gateway) -> None:
    body = {"model": "mock", "input": "t3 [[tokens:0]] [[tool_call]]", "tools": [WEATHER]}
    events = gateway.raw_events("POST", "/v1/responses", json={**body, "stream": True})
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert "".join(deltas) == TOOL_ARGUMENTS
    assert len(deltas) > 1
    assert done[0]["arguments"] == TOOL_ARGUMENTS


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mock", "claude"])
def test_an_upstream_429_raises_rate_limit_error(client: OpenAI, model: str) -> None:
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=model, input="e1 [[fault:http_429]]")
    with pytest.raises(openai.RateLimitError):
        list(client.responses.create(model=model, input="e2 [[fault:http_429]]", stream=True))


def test_an_unknown_model_or_response_raises_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model="nope", input="x")
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("st_unknown")
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("st_unknown")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"temperature": "hot"}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input"),
    ],
)
def test_bad_or_unsupported_fields_are_400_naming_the_param(
    client: OpenAI, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "mock", "input": "x", **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        client.post("/responses", body=body, cast_to=httpx.Response)
    assert raised.value.param is not None
    assert raised.value.param.startswith(param)


@pytest.mark.parametrize(
    ("directives", "status"),
    [
        ("[[fault:http_500]]", 503),
        ("[[fault:stall]]", 504),
        ("[[fault:stall]] [[after:3]]", None),
        ("[[fault:drop]]", None),
        ("[[fault:malformed]]", None),
        ("[[fault:stream_error]]", None),
    ],
)
@pytest.mark.parametrize("model", ["mock", "claude"])
def test_upstream_faults_end_in_an_error_never_a_hang(
    client: OpenAI, directives: str, status: int | None, model: str
) -> None:
    """Before the first token, an HTTP error the SDK raises; after it, ``response.failed``
    (the upstream idle timeout is 1 s, so a stall ends in about a second)."""
    request = {"model": model, "input": f"f1 [[tokens:20]] {directives}", "stream": True}
    if status is not None:
        with pytest.raises(openai.InternalServerError) as raised:
            list(client.responses.create(**request, timeout=10))
        assert raised.value.status_code == status
        return
    events = strict(client.responses.create(**request, timeout=10))
    assert texts(events)  # some text came before the fault
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error is not None
    assert events[-1].response.error.code == "server_error"


def test_a_fault_is_response_failed_on_the_wire_too(gateway: Gateway) -> None:
    body = {"model": "mock", "input": "f2 [[tokens:20]] [[fault:drop]]", "stream": True}
    events = gateway.raw_events("POST", "/v1/responses", json=body)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"


def test_the_stream_helper_resumes_an_existing_response(gateway: Gateway, client: OpenAI) -> None:
    started = client.responses.create(model="mock", input="r1 [[tokens:8]]", background=True)
    with client.responses.stream(response_id=started.id, starting_after=5) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[0].sequence_number == 6
    assert final.output_text == gateway.record("r1 ").text


def test_a_response_belongs_to_the_key_that_made_it(gateway: Gateway) -> None:
    settings = Settings.from_options(
        provider="openai",
        base_url=gateway.mock.url + "/v1",
        model="mock",
        api_keys=("alice:sk-alice-0123456789", "bob:sk-bob-0123456789"),
    )

    def sdk(url: str, key: str) -> OpenAI:
        return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)

    with (
        run_server(create_app(settings)) as server,
        sdk(server.url, "sk-alice-0123456789") as alice,
        sdk(server.url, "sk-bob-0123456789") as bob,
        sdk(server.url, "sk-nobody") as nobody,
    ):
        started = alice.responses.create(model="mock", input="k1 [[tokens:2]]", background=True)
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(started.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.cancel(started.id)
        with pytest.raises(openai.NotFoundError):
            list(bob.responses.retrieve(started.id, stream=True))
        assert alice.responses.retrieve(started.id).id == started.id
        with pytest.raises(openai.AuthenticationError):
            nobody.responses.create(model="mock", input="x")


@pytest.mark.anyio
async def test_the_async_client_streams_and_resumes(gateway: Gateway) -> None:
    async with AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key="sk-caller", max_retries=0
    ) as client:
        stream = await client.responses.create(model="mock", input="a1 [[tokens:5]]", stream=True)
        events = strict([event async for event in stream])
        rest = await client.responses.retrieve(events[0].response.id, stream=True, starting_after=3)
        resumed = strict([event async for event in rest])
    assert [e.model_dump() for e in resumed] == [e.model_dump() for e in events[4:]]
    assert texts(events) == gateway.record("a1 ").text

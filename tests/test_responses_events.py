"""The Responses event translator on its own: stored gateway events in, Responses events out.
The SSE fast path (``wire``) sends exactly what ``translate`` says, numbered the same, and
resuming after any number gives exactly the rest."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from ssegate.codec import Decoder
from ssegate.gateway.routes._oai_responses_events import ResponseEvents
from ssegate.store import StoredEvent

EVENT = TypeAdapter(ResponseStreamEvent)


def stored(*events: tuple[str, dict[str, Any]]) -> list[StoredEvent]:
    return [
        StoredEvent.build(i, kind, orjson.dumps(data).decode())
        for i, (kind, data) in enumerate(events, 1)
    ]


START = ("start", {"stream_id": "st_x", "model": "m", "created": 1, "responses": {}})
STREAMS = {
    "text": stored(
        START,
        ("delta", {"text": "a"}),
        ("delta", {"text": 'b\n"c"'}),
        ("usage", {"prompt_tokens": 2, "completion_tokens": 2}),
        ("done", {"finish_reason": "stop"}),
    ),
    "mixed": stored(
        START,
        ("reasoning", {"text": "hmm"}),
        ("delta", {"text": "x"}),
        ("refusal", {"text": "no"}),
        ("delta", {"text": "y"}),
        ("tool_call", {"index": 0, "id": "c1", "name": "f", "arguments": "{"}),
        ("tool_call", {"index": 0, "arguments": "}"}),
        ("tool_call", {"index": 1, "id": "c2", "name": "g", "arguments": "{}"}),
        ("delta", {"text": "z"}),
        ("done", {"finish_reason": "length"}),
    ),
    "failed": stored(
        START,
        ("delta", {"text": "x"}),
        ("error", {"code": "upstream_rate_limited", "message": "slow down", "retryable": True}),
    ),
    "cancelled": stored(START, ("delta", {"text": "x"}), ("cancelled", {"cause": "client"})),
}


def wire(events: list[StoredEvent], after: int) -> list[dict[str, Any]]:
    translator = ResponseEvents("st_x")
    decoder = Decoder()
    out = []
    for event in events:
        for sse in decoder.feed(translator.wire(event, after)):
            EVENT.validate_json(sse.data, strict=True)
            data = json.loads(sse.data)
            assert sse.event == data["type"]
            out.append(data)
    return out


@pytest.mark.parametrize("name", list(STREAMS))
def test_the_fast_path_sends_what_translate_says_and_resumes_exactly(name: str) -> None:
    events = STREAMS[name]
    translator = ResponseEvents("st_x")
    expected = [e for event in events for e in translator.translate(event)]
    assert [e["sequence_number"] for e in expected] == list(range(len(expected)))
    assert wire(events, -1) == expected
    for n in range(len(expected)):
        assert wire(events, n) == expected[n + 1 :]


def test_the_final_response_gathers_every_item() -> None:
    translator = ResponseEvents("st_x")
    last = [e for event in STREAMS["mixed"] for e in translator.translate(event)][-1]
    assert last["type"] == "response.incomplete"
    response = last["response"]
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    kinds = [item["type"] for item in response["output"]]
    assert kinds == ["reasoning", "message", "function_call", "function_call", "message"]
    message = response["output"][1]
    assert [p["type"] for p in message["content"]] == ["output_text", "refusal", "output_text"]
    calls = response["output"][2:4]
    assert [(c["call_id"], c["name"], c["arguments"]) for c in calls] == [
        ("c1", "f", "{}"),
        ("c2", "g", "{}"),
    ]
    assert translator.output_text() == "xyz"


def test_a_failure_names_the_sdks_error_code() -> None:
    translator = ResponseEvents("st_x")
    last = [e for event in STREAMS["failed"] for e in translator.translate(event)][-1]
    assert last["type"] == "response.failed"
    assert last["response"]["error"]["code"] == "rate_limit_exceeded"
    assert last["response"]["output"][0]["status"] == "incomplete"

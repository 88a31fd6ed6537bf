"""The streams API over real sockets: gateway on uvicorn, the mock upstream behind it."""

from __future__ import annotations

import logging
import re
import time

import anyio
import httpx
import pytest

from gateway_helpers import answer_text, ask, collect, payloads, running_gateway, sse_events
from ssegate.testing import MockUpstream

pytestmark = pytest.mark.anyio

SSE = {"Accept": "text/event-stream"}


async def test_post_returns_201_with_urls_and_the_stream_replays_everything() -> None:
    with running_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            created = await client.post("/v1/streams", json=ask("hello [[tokens:5]]"))
            assert created.status_code == 201
            body = created.json()
            assert body["id"].startswith("st_")
            assert body["events_url"] == f"/v1/streams/{body['id']}/events"
            assert created.headers["location"] == f"/v1/streams/{body['id']}"
            async with client.stream("GET", body["events_url"]) as response:
                assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-accel-buffering"] == "no"
                events = payloads(await collect(response))
        ids = [e[0] for e in events]
        assert ids == list(range(1, len(events) + 1))
        types = [e[1] for e in events]
        assert types == ["start"] + ["delta"] * 5 + ["usage", "done"]
        assert events[0][2]["stream_id"] == body["id"]
        assert events[0][2]["model"] == "mock"
        assert "".join(e[2]["text"] for e in events if e[1] == "delta") == gw.mock.requests[0].text
        assert events[-2][2] == gw.mock.requests[0].usage
        assert events[-1][2] == {"finish_reason": "stop"}


async def test_one_request_streaming_carries_the_stream_id() -> None:
    with running_gateway() as gw:
        async with (
            httpx.AsyncClient(base_url=gw.url) as client,
            client.stream("POST", "/v1/streams", json=ask("你好 [[lang:zh]]"), headers=SSE) as r,
        ):
            assert r.status_code == 200
            events = await collect(r)
        assert events[0].event == "start"
        stream_id = r.headers["x-ssegate-stream-id"]
        assert payloads(events)[0][2]["stream_id"] == stream_id
        assert answer_text(events) == gw.mock.requests[0].text
        assert "第0个词" in answer_text(events)
        async with httpx.AsyncClient(base_url=gw.url) as client:
            status = (await client.get(f"/v1/streams/{stream_id}")).json()
        assert status["status"] == "done"
        assert status["last_event_id"] == len(events)
        assert status["usage"] == gw.mock.requests[0].usage


async def test_resume_after_a_cut_at_every_position_of_a_live_200_event_stream() -> None:
    # 197 tokens + start + usage + done = 200 events, generated while we cut and resume.
    with running_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            created = (
                await client.post("/v1/streams", json=ask("[[tokens:197]] [[interval_ms:2]]"))
            ).json()
            url = created["events_url"]
            got: list[tuple[int, str, dict[str, object]]] = []
            while not got or got[-1][1] not in ("done", "error", "cancelled"):
                headers = {"Last-Event-ID": str(got[-1][0])} if got else {}
                async with client.stream("GET", url, headers=headers) as response:
                    assert response.status_code == 200
                    async for event in sse_events(response):
                        got += payloads([event])
                        break  # cut the connection after exactly one event
            assert len(got) == 200
            assert [e[0] for e in got] == list(range(1, 201))
            async with client.stream("GET", url) as response:
                full = payloads(await collect(response))
            assert got == full
            # And from every position of the finished stream: exactly the rest.
            for k in range(200):
                async with client.stream("GET", url, params={"last_event_id": k}) as response:
                    assert payloads(await collect(response)) == full[k:]
            finished = await client.get(url, headers={"Last-Event-ID": "200"})
            assert finished.status_code == 204


async def test_many_subscribers_each_get_every_event_once_in_order() -> None:
    with running_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            created = (
                await client.post("/v1/streams", json=ask("[[tokens:60]] [[interval_ms:3]]"))
            ).json()
            results: list[list[tuple[int, str, dict[str, object]]]] = []

            async def follow() -> None:
                async with client.stream("GET", created["events_url"]) as response:
                    results.append(payloads(await collect(response)))

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(follow)
        assert len(results) == 8
        assert all(r == results[0] for r in results)
        assert [e[0] for e in results[0]] == list(range(1, 64))


@pytest.mark.parametrize(
    ("value", "status"),
    [("abc", 400), ("-1", 400), ("1.5", 400), ("99", 409), ("", 200), ("0", 200)],
)
async def test_last_event_id_is_validated(value: str, status: int) -> None:
    with running_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            created = (await client.post("/v1/streams", json=ask("[[tokens:3]]"))).json()
            response = await client.get(
                created["events_url"], headers={"Last-Event-ID": value}, timeout=10
            )
            assert response.status_code == status
            if status >= 400:
                assert response.json()["error"]["code"] == "invalid_last_event_id"


async def test_the_last_event_id_header_wins_over_the_query() -> None:
    # An EventSource reconnects to its URL, `?last_event_id=` included, with the header set to
    # where it is: the header says where the client is, the query where it first started.
    with running_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            created = (await client.post("/v1/streams", json=ask("[[tokens:3]]"))).json()
            async with client.stream("GET", created["events_url"]) as response:
                last = len(await collect(response))
            url = f"{created['events_url']}?last_event_id=2"
            finished = await client.get(url, headers={"Last-Event-ID": str(last)})
            assert finished.status_code == 204
            async with client.stream("GET", url, headers={"Last-Event-ID": "4"}) as response:
                ids = [e[0] for e in payloads(await collect(response))]
            assert ids == list(range(5, last + 1))
            async with client.stream("GET", url, headers={"Last-Event-ID": ""}) as response:
                ids = [e[0] for e in payloads(await collect(response))]
            assert ids == list(range(3, last + 1))  # an empty header says nothing


async def test_unknown_and_expired_streams_are_404() -> None:
    with running_gateway(stream_ttl=0.2) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            for path in ("/v1/streams/st_nope", "/v1/streams/st_nope/events"):
                response = await client.get(path)
                assert response.status_code == 404
                assert response.json()["error"]["code"] == "not_found"
            assert (await client.delete("/v1/streams/st_nope")).status_code == 404
            async with client.stream(
                "POST", "/v1/streams", json=ask("[[tokens:2]]"), headers=SSE
            ) as r:
                await collect(r)
            stream_id = r.headers["x-ssegate-stream-id"]
            assert (await client.get(f"/v1/streams/{stream_id}")).status_code == 200
            await anyio.sleep(0.4)  # the TTL is what is under test: let it pass
            assert (await client.get(f"/v1/streams/{stream_id}")).status_code == 404


async def test_heartbeat_flows_before_the_first_token() -> None:
    with running_gateway(heartbeat=0.1) as gw:
        async with (
            httpx.AsyncClient(base_url=gw.url) as client,
            client.stream(
                "POST", "/v1/streams", json=ask("[[tokens:2]] [[delay_ms:600]]"), headers=SSE
            ) as response,
        ):
            raw = b""
            async for chunk in response.aiter_raw():
                raw += chunk
                if b"event: delta" in raw:
                    break
        before_first_token = raw.split(b"event: delta")[0]
        assert b": ping\n" in before_first_token


async def test_delete_stops_the_upstream_within_500ms() -> None:
    with running_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            async with client.stream(
                "POST", "/v1/streams", json=ask("[[tokens:1000]] [[interval_ms:20]]"), headers=SSE
            ) as response:
                stream_id = response.headers["x-ssegate-stream-id"]
                events = []
                async for event in sse_events(response):
                    events.append(event)
                    if len(events) == 4:
                        deleted_at = time.time()
                        deleted = await client.delete(f"/v1/streams/{stream_id}")
                        assert deleted.status_code == 200
                        assert deleted.json()["status"] == "cancelled"
                # The subscriber still gets the rest, ending with `cancelled`.
            assert events[-1].event == "cancelled"
            closed_at = await gw.mock.wait_for_close_async(0)
            assert closed_at - deleted_at < 0.5
            assert gw.mock.requests[0].cancelled
            status = (await client.get(f"/v1/streams/{stream_id}")).json()
            assert status["status"] == "cancelled"
            assert status["cause"] == "client"


async def test_disconnect_cancels_only_after_the_grace_period() -> None:
    grace = 0.6
    with running_gateway(disconnect_grace=grace) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            async with client.stream(
                "POST", "/v1/streams", json=ask("[[tokens:1000]] [[interval_ms:20]]"), headers=SSE
            ) as response:
                stream_id = response.headers["x-ssegate-stream-id"]
                async for event in sse_events(response):
                    if event.event == "delta":
                        break
            left_at = time.time()
            with anyio.fail_after(5):
                closed_at = await gw.mock.wait_for_close_async(0)
            assert closed_at - left_at >= grace * 0.9  # never before the grace period ends
            assert closed_at - left_at < grace + 0.5  # and within 500 ms after it
            status = (await client.get(f"/v1/streams/{stream_id}")).json()
            assert status["status"] == "cancelled"
            assert status["cause"] == "disconnect"


async def test_reconnect_within_the_grace_period_keeps_the_stream() -> None:
    with running_gateway(disconnect_grace=0.5) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            async with client.stream(
                "POST", "/v1/streams", json=ask("[[tokens:60]] [[interval_ms:20]]"), headers=SSE
            ) as response:
                stream_id = response.headers["x-ssegate-stream-id"]
                first = []
                async for event in sse_events(response):
                    first.append(event)
                    if len(first) == 3:
                        break
            async with client.stream(
                "GET",
                f"/v1/streams/{stream_id}/events",
                headers={"Last-Event-ID": first[-1].id or ""},
            ) as response:
                rest = await collect(response)
        assert rest[-1].event == "done"
        assert answer_text(first + rest) == gw.mock.requests[0].text
        assert not gw.mock.requests[0].cancelled


async def test_continue_policy_keeps_generating_with_nobody_listening() -> None:
    grace = 0.1
    with running_gateway(disconnect_grace=grace) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            body = ask("[[tokens:40]] [[interval_ms:20]]", on_disconnect="continue")
            async with client.stream("POST", "/v1/streams", json=body, headers=SSE) as response:
                stream_id = response.headers["x-ssegate-stream-id"]
                async for _ in sse_events(response):
                    break
            # Nobody listens for several grace periods (the condition under test).
            await anyio.sleep(grace * 4)
            assert (await client.get(f"/v1/streams/{stream_id}")).json()["status"] == "running"
            async with client.stream("GET", f"/v1/streams/{stream_id}/events") as response:
                events = await collect(response)
            assert events[-1].event == "done"
            assert answer_text(events) == gw.mock.requests[0].text
            assert not gw.mock.requests[0].cancelled
            status = (await client.get(f"/v1/streams/{stream_id}")).json()
            assert status["usage"] == gw.mock.requests[0].usage


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("not json", 400, "invalid_json"),
        ("{}", 422, "invalid_request"),
        ('{"messages": []}', 422, "invalid_request"),
        ('{"messages": "hi"}', 422, "invalid_request"),
        ('{"messages": [{"role": "wizard", "content": "x"}]}', 422, "invalid_request"),
        (
            '{"messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            422,
            "invalid_request",
        ),
        ('{"messages": [{"role": "user", "content": "x"}], "bogus": 1}', 422, "invalid_request"),
        (
            '{"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}',
            404,
            "model_not_found",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}], "on_disconnect": "x"}',
            422,
            "invalid_request",
        ),
        # Strict types: no coercion of true to 1, or of a numeric string to a number.
        (
            '{"messages": [{"role": "user", "content": "x"}], "max_tokens": true}',
            422,
            "invalid_request",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}], "temperature": "0.5"}',
            422,
            "invalid_request",
        ),
    ],
)
async def test_bad_requests_get_a_clear_json_error(body: str, status: int, code: str) -> None:
    with running_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            response = await client.post(
                "/v1/streams", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == status
            error = response.json()["error"]
            assert error["code"] == code
            assert error["message"]
            assert not gw.mock.requests  # nothing reached the upstream


def _fault_cases() -> list[tuple[str, str, bool]]:
    return [
        ("[[fault:http_401]]", "upstream_auth", False),
        ("[[fault:http_403]]", "upstream_auth", False),
        ("[[fault:http_404]]", "upstream_not_found", False),
        ("[[fault:http_429]]", "upstream_rate_limited", True),
        ("[[fault:http_500]]", "upstream_unavailable", True),
        ("[[fault:http_503]]", "upstream_unavailable", True),
        ("[[fault:stall]] [[after:2]]", "upstream_timeout", True),
        ("[[fault:drop]]", "upstream_protocol", True),
        ("[[fault:malformed]]", "upstream_protocol", True),
        ("[[fault:unknown_shape]]", "upstream_protocol", True),
        ("[[fault:no_end]]", "upstream_protocol", True),
    ]


@pytest.mark.parametrize(("directive", "code", "retryable"), _fault_cases())
async def test_upstream_faults_become_an_error_event_and_the_server_keeps_serving(
    directive: str, code: str, retryable: bool
) -> None:
    with (
        MockUpstream(api_key="secret-upstream-key") as mock,
        running_gateway(mock, api_key="secret-upstream-key", upstream_idle_timeout=0.5) as gw,
    ):
        async with httpx.AsyncClient(base_url=gw.url) as client:
            async with client.stream(
                "POST", "/v1/streams", json=ask(f"[[tokens:5]] {directive}"), headers=SSE
            ) as response:
                assert response.status_code == 200
                raw = b""
                async for chunk in response.aiter_raw():
                    raw += chunk
            stream_id = response.headers["x-ssegate-stream-id"]
            assert b"secret-upstream-key" not in raw
            from ssegate import Decoder

            events = payloads(Decoder().feed(raw))
            kind, error = events[-1][1], events[-1][2]
            assert kind == "error"
            assert error["code"] == code
            assert error["retryable"] is retryable
            assert error["message"]
            status = (await client.get(f"/v1/streams/{stream_id}")).json()
            assert status["status"] == "error"
            assert status["error"]["code"] == code
            # The gateway keeps serving: the next stream works.
            async with client.stream(
                "POST", "/v1/streams", json=ask("[[tokens:3]]"), headers=SSE
            ) as response:
                assert (await collect(response))[-1].event == "done"
            assert (await client.get("/healthz")).status_code == 200


# What a client must never read in an error: an address, or a lower layer's exception name.
_INTERNALS = re.compile(r"127\.0\.0\.1|localhost|:\d{2,5}\b|\b[A-Z]\w*(?:Error|Exception)\b|httpx")


@pytest.mark.parametrize(
    ("directive", "code"),
    [
        ("[[fault:http_401]]", "upstream_auth"),
        ("[[fault:http_418]]", "upstream_error"),
        ("[[fault:http_500]]", "upstream_unavailable"),
        ("[[fault:drop]]", "upstream_protocol"),
        ("[[fault:reset]]", "upstream_protocol"),
        ("[[fault:hangup]]", "upstream_protocol"),
        ("[[fault:no_end]]", "upstream_protocol"),
        (None, "upstream_unreachable"),
    ],
)
async def test_upstream_errors_tell_clients_the_code_and_the_log_the_upstream(
    directive: str | None, code: str, caplog: pytest.LogCaptureFixture, mock: MockUpstream
) -> None:
    from ssegate.testing import closed_port_url

    caplog.set_level(logging.INFO, logger="ssegate")
    base_url = mock.url if directive else closed_port_url()
    where = base_url.removeprefix("http://")
    with running_gateway(mock, base_url=base_url + "/v1") as gw:
        async with (
            httpx.AsyncClient(base_url=gw.url) as client,
            client.stream(
                "POST", "/v1/streams", json=ask(f"[[tokens:3]] {directive}"), headers=SSE
            ) as response,
        ):
            events = payloads(await collect(response))
            stream_id = response.headers["x-ssegate-stream-id"]
            status = (await client.get(f"/v1/streams/{stream_id}")).json()
    kind, error = events[-1][1], events[-1][2]
    assert (kind, error["code"]) == ("error", code)
    for told in (error["message"], status["error"]["message"]):
        assert told
        assert not _INTERNALS.search(told), told
    # The log keeps the detail, with the stream id.
    logged = [r.getMessage() for r in caplog.records if stream_id in r.getMessage()]
    assert any(where in line and code in line for line in logged), logged


def test_every_code_an_upstream_status_gives_has_a_row_in_the_protocol_docs() -> None:
    from pathlib import Path

    from ssegate.providers import UpstreamHTTPError

    table = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text("utf-8")
    rows = set(re.findall(r"^\| `([a-z_<>]+)` \|", table, re.MULTILINE))
    codes = {UpstreamHTTPError("x", status=s).code for s in range(100, 600) if s // 100 != 2}
    assert codes - rows == set()


async def test_unreachable_upstream_is_an_error_event() -> None:
    from ssegate.testing import closed_port_url

    with running_gateway(base_url=closed_port_url() + "/v1") as gw:
        async with (
            httpx.AsyncClient(base_url=gw.url) as client,
            client.stream("POST", "/v1/streams", json=ask("hi"), headers=SSE) as response,
        ):
            events = payloads(await collect(response))
        assert events[-1][1] == "error"
        assert events[-1][2]["code"] == "upstream_unreachable"
        assert events[-1][2]["retryable"] is True


async def test_connect_timeout_is_an_error_event() -> None:
    from ssegate.testing import blackhole_url

    with (
        blackhole_url() as url,
        running_gateway(base_url=url + "/v1", upstream_connect_timeout=0.3) as gw,
    ):
        async with (
            httpx.AsyncClient(base_url=gw.url) as client,
            client.stream("POST", "/v1/streams", json=ask("hi"), headers=SSE) as response,
        ):
            events = payloads(await collect(response))
        assert events[-1][1] == "error"
        assert events[-1][2]["code"] in ("upstream_unreachable", "upstream_connect_timeout")


async def test_readyz_and_healthz() -> None:
    with running_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["status"] == "ready"

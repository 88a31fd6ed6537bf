"""The mock upstream: each wire format as the official SDKs read it, directives, faults,
records, disconnect detection, and running it by hand."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import anthropic
import anyio
import httpx
import openai
import pytest
import trustme

from ssegate.codec import Decoder
from ssegate.testing import (
    MockUpstream,
    Scenario,
    blackhole_url,
    closed_port_url,
)

pytestmark = pytest.mark.mock_defaults(tokens=4)


def _chat(content: str, model: str = "mock-model", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": content}]}
    return {**body, "stream": True, **extra}


@pytest.mark.anyio
async def test_openai_sdk_reads_the_openai_stream(mock: MockUpstream) -> None:
    client = openai.AsyncOpenAI(base_url=mock.url + "/v1", api_key="sk-k", max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-mock",
        messages=[{"role": "user", "content": "hi [[reasoning:1]][[tool_call]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, reasoning, arguments, finish, usage = "", "", "", None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            for call in choice.delta.tool_calls or []:
                arguments += call.function.arguments or "" if call.function else ""
            finish = choice.finish_reason or finish
    models = await client.models.list()
    await client.close()
    assert text == "tok0 tok1 tok2 tok3 "
    assert reasoning == "think0 "
    assert json.loads(arguments) == {"city": "Paris", "unit": "celsius"}
    assert finish == "tool_calls"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 6)
    assert "mock-model" in [m.id for m in models.data]


@pytest.mark.anyio
async def test_openai_sdk_non_streaming_completion(mock: MockUpstream) -> None:
    client = openai.AsyncOpenAI(base_url=mock.url + "/v1", api_key="sk-k", max_retries=0)
    completion = await client.chat.completions.create(
        model="gpt-mock", messages=[{"role": "user", "content": "[[tokens:2]]"}]
    )
    await client.close()
    assert completion.choices[0].message.content == "tok0 tok1 "
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2


@pytest.mark.anyio
async def test_anthropic_sdk_reads_the_anthropic_stream(mock: MockUpstream) -> None:
    client = anthropic.AsyncAnthropic(base_url=mock.url, api_key="sk-ant-k", max_retries=0)
    async with client.messages.stream(
        model="claude-mock",
        max_tokens=100,
        messages=[{"role": "user", "content": "hi [[reasoning:2]][[tool_call:lookup]]"}],
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        message = await stream.get_final_message()
    await client.close()
    assert text == "tok0 tok1 tok2 tok3 "
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text", "tool_use"]
    tool = message.content[2]
    assert tool.type == "tool_use"
    assert (tool.name, tool.input) == ("lookup", {"city": "Paris", "unit": "celsius"})
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 7


@pytest.mark.anyio
async def test_anthropic_sdk_sees_errors_in_the_format(mock: MockUpstream) -> None:
    client = anthropic.AsyncAnthropic(base_url=mock.url, api_key="sk-ant-k", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(
            model="claude-mock",
            max_tokens=10,
            messages=[{"role": "user", "content": "[[fault:http_429]]"}],
            stream=True,
        )
    await client.close()
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


@pytest.mark.anyio
async def test_ollama_ndjson_stream(mock: MockUpstream) -> None:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        response = await client.post("/api/chat", json=_chat("你好 [[lang:emoji]]"))
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.headers["content-type"] == "application/x-ndjson"
    assert "".join(line["message"]["content"] for line in lines) == "🚀0 🚀1 🚀2 🚀3 "
    assert lines[-1]["done"] is True
    assert lines[-1]["done_reason"] == "stop"
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (2, 4)
    assert all(line["done"] is False for line in lines[:-1])


def test_directive_sources_and_precedence() -> None:
    with MockUpstream(tokens=9, lang="zh") as mock:
        headers = {"x-mock": "[[tokens:3]][[interval_ms:1]]"}
        body = _chat("[[tokens:2]]", model="m[[tokens:5]][[lang:en]]")
        httpx.post(mock.url + "/v1/chat/completions", json=body, headers=headers)
        httpx.post(mock.url + "/v1/chat/completions", json=_chat("x", model="m[[tokens:5]]"))
        mock.defaults = Scenario(tokens=1)
        httpx.post(mock.url + "/v1/chat/completions", json=_chat("x"))
        first, second, third = mock.requests
    assert first.scenario == Scenario(tokens=2, lang="en", interval_ms=1.0)
    assert first.text == "tok0 tok1 "
    assert second.text == "第0个词 第1个词 第2个词 第3个词 第4个词 "
    assert third.text == "tok0 "


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/chat/completions", "error.message"),
        ("/v1/messages", "error.message"),
        ("/api/chat", "error"),
    ],
)
def test_unknown_directive_is_a_400_in_the_format(
    mock: MockUpstream, path: str, field: str
) -> None:
    response = httpx.post(mock.url + path, json=_chat("[[tokns:3]]"))
    assert response.status_code == 400
    value = response.json()
    for part in field.split("."):
        value = value[part]
    assert "unknown mock directive [[tokns]]" in value


def test_text_directive_and_stamps(mock: MockUpstream) -> None:
    response = httpx.post(mock.url + "/api/chat", json=_chat("[[text:Hello, 世界! 🌍 ok]]"))
    texts = [json.loads(line)["message"]["content"] for line in response.text.splitlines()]
    assert texts[:-1] == ["Hello, ", "世界! ", "🌍 ", "ok"]
    before = time.time_ns()
    body = _chat("[[stamp]][[tokens:5]][[interval_ms:5]]")
    response = httpx.post(mock.url + "/api/chat", json=body)
    stamps = [json.loads(line)["message"]["content"] for line in response.text.splitlines()][:-1]
    seqs = [int(s.split(":")[0]) for s in stamps]
    times = [int(s.split(":")[1]) for s in stamps]
    assert seqs == [0, 1, 2, 3, 4]
    assert all(s.endswith(" ") for s in stamps)
    assert before <= times[0] <= times[-1] <= time.time_ns()
    # The interval separates the send times (loosely: loop timers may fire a little early).
    assert times[-1] - times[0] >= 4 * 5_000_000 * 0.7


def test_records_and_http_listing(mock: MockUpstream) -> None:
    start = len(mock.requests)
    httpx.post(
        mock.url + "/v1/chat/completions",
        json=_chat("[[tokens:2]][[reasoning:1]]", stream_options={"include_usage": True}),
        headers={"authorization": "Bearer sk-abc"},
    )
    record = mock.wait_for_request(start)
    assert (record.method, record.path, record.format, record.status) == (
        "POST",
        "/v1/chat/completions",
        "openai",
        200,
    )
    assert record.headers["authorization"] == "Bearer sk-abc"
    assert record.json["messages"][0]["content"] == "[[tokens:2]][[reasoning:1]]"
    assert (record.text, record.reasoning, record.tokens_sent) == ("tok0 tok1 ", "think0 ", 3)
    assert record.started_at <= (record.ended_at or 0) <= time.time()
    listed = httpx.get(mock.url + f"/_mock/requests?since={start}").json()
    assert len(listed) == 1  # the listing itself is not recorded
    assert listed[0]["text"] == "tok0 tok1 "
    assert listed[0]["usage"] == {"prompt_tokens": 1, "completion_tokens": 3}
    assert listed[0]["scenario"]["tokens"] == 2


@pytest.mark.anyio
async def test_client_disconnect_is_seen_at_once(mock: MockUpstream) -> None:
    index = len(mock.requests)
    body = _chat("[[tokens:500]][[interval_ms:10]]")
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", mock.url + "/v1/chat/completions", json=body) as response:
            decoder = Decoder()
            async for chunk in response.aiter_raw():
                if decoder.feed(chunk):
                    break
            # leaving the block with the body unread closes the connection
            left = time.time()
    with anyio.fail_after(5):
        closed = await mock.wait_for_close_async(index)
    record = mock.requests[index]
    assert record.cancelled
    assert record.ended_at is None
    assert 0 <= closed - left < 0.1


def test_disconnect_during_a_stall_and_server_side_drop(mock: MockUpstream) -> None:
    index = len(mock.requests)
    with socket.create_connection(("127.0.0.1", mock.port)) as sock:
        payload = json.dumps(_chat("[[fault:stall]]")).encode()
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )
        assert sock.recv(1000).startswith(b"HTTP/1.1 200 OK")
        mock.wait_for_request(index)
        with pytest.raises(TimeoutError):
            mock.wait_for_close(index, timeout=0.1)
        closing = time.time()
    assert mock.wait_for_close(index) - closing < 0.1
    httpx_error = None
    try:
        httpx.post(mock.url + "/v1/messages", json=_chat("[[fault:drop]][[after:1]]"))
    except httpx.RemoteProtocolError as exc:
        httpx_error = exc
    assert httpx_error is not None
    dropped = mock.requests[index + 1]
    assert dropped.server_closed
    assert not dropped.cancelled
    assert dropped.text == "tok0 "


def test_keep_alive_chunked_bodies_and_expect_continue(mock: MockUpstream) -> None:
    start = len(mock.requests)
    with httpx.Client() as client:
        pieces = [b'{"model": "m", ', b'"messages": [{"role": "user", "content": "[[tokens:1]]"}]}']
        first = client.post(mock.url + "/v1/chat/completions", content=iter(pieces))
        second = client.get(mock.url + "/v1/models")
    assert first.json()["choices"][0]["message"]["content"] == "tok0 "  # chunked request body
    assert second.status_code == 200
    one, two = mock.requests[start : start + 2]
    assert one.connection == two.connection
    with socket.create_connection(("127.0.0.1", mock.port)) as sock:
        payload = json.dumps(_chat("[[tokens:1]]")).encode()
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(payload)
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert b'"done":true' in received
    assert received.endswith(b"0\r\n\r\n")


def test_api_key_is_checked_when_configured() -> None:
    with MockUpstream(api_key="right-key") as mock:
        wrong = httpx.post(
            mock.url + "/v1/messages", json=_chat("x"), headers={"x-api-key": "wrong-key"}
        )
        right = httpx.post(
            mock.url + "/v1/messages", json=_chat("x"), headers={"x-api-key": "right-key"}
        )
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert right.status_code == 200


def test_interval_paces_the_stream() -> None:
    with MockUpstream(tokens=6, interval_ms=20, delay_ms=30) as mock:
        httpx.post(mock.url + "/api/chat", json=_chat("x"))
        record = mock.requests[0]
    assert record.ended_at is not None
    assert record.ended_at - record.started_at >= (0.030 + 5 * 0.020) * 0.8


def test_bad_requests_and_unknown_routes(mock: MockUpstream) -> None:
    assert httpx.get(mock.url + "/nope").status_code == 404
    assert httpx.post(mock.url + "/v1/chat/completions", content=b"{").status_code == 400
    anthropic_plain = httpx.post(mock.url + "/v1/messages", json=_chat("x", stream=False))
    assert anthropic_plain.status_code == 400
    with socket.create_connection(("127.0.0.1", mock.port)) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")


def test_max_records_bounds_the_log() -> None:
    with MockUpstream(max_records=2) as mock:
        for _ in range(4):
            assert httpx.get(mock.url + "/v1/models").status_code == 200
        assert len(mock.requests) == 2
        mock.clear()
        assert mock.requests == []


def test_stop_ends_open_connections_and_waits() -> None:
    mock = MockUpstream().start()
    with socket.create_connection(("127.0.0.1", mock.port)) as sock:
        payload = json.dumps(_chat("[[fault:stall]]")).encode()
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        mock.wait_for_request(0)
        mock.stop()
        sock.settimeout(5)
        while sock.recv(65536):
            pass  # the server closed its end
    assert mock.requests[0].closed_at is not None
    with pytest.raises(RuntimeError, match="stopped"):
        mock.wait_for_request(1, timeout=5)


def test_connect_failures_helpers() -> None:
    with pytest.raises(ConnectionRefusedError), socket.socket() as sock:
        sock.connect(("127.0.0.1", int(closed_port_url().rsplit(":", 1)[1])))
    with blackhole_url() as url, socket.socket() as sock:
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))


def test_the_mock_serves_https_with_a_certificate_made_at_run_time() -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with MockUpstream(ssl_context=server, tokens=2) as mock:
        assert mock.url.startswith("https://127.0.0.1:")
        body = _chat("x", stream=False)
        answer = httpx.post(mock.url + "/v1/chat/completions", json=body, verify=trusting)
        assert answer.json()["choices"][0]["message"]["content"] == "tok0 tok1 "
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.post(mock.url + "/v1/chat/completions", json=body)  # not trusted by default
        plain = mock.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.post(plain + "/v1/chat/completions", json=body, timeout=2)  # no plain http
        assert len(mock.requests) == 1


def test_run_mock_upstream_by_hand() -> None:
    code = (
        "import sys\n"
        "from ssegate.testing import run_mock_upstream\n"
        "run_mock_upstream('127.0.0.1', 0, tokens=2,"
        " on_ready=lambda url: print(url, flush=True))\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:")
        response = httpx.post(url + "/v1/chat/completions", json=_chat("x", stream=False))
        assert response.json()["choices"][0]["message"]["content"] == "tok0 tok1 "
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

"""The seed's demo, ``/learn/sseChat`` and ``/learn/``, and the ``ssegate`` command line."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from gateway_helpers import running_gateway
from ssegate import Decoder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_sse_chat_streams_start_then_ten_messages_from_a_worker_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ssegate.learn")
    with running_gateway() as gw:
        with httpx.stream("GET", gw.url + "/learn/sseChat?name=xx&interval=0.01") as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            decoder = Decoder()
            events = [e for chunk in response.iter_raw() for e in decoder.feed(chunk)]
        assert [e.event for e in events] == ["message"] * 11
        assert events[0].data == "start"
        thread = re.fullmatch(r"(Thread-\d+): the next index:1", events[1].data or "")
        assert thread, events[1].data
        assert [e.data for e in events[1:]] == [
            f"{thread.group(1)}: the next index:{i}" for i in range(1, 11)
        ]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("sse complete!!!") for m in messages)
    assert f"{thread.group(1)}:10" in messages


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "missing_parameter"),
        ("?name=", "missing_parameter"),
        ("?name=xx&interval=abc", "invalid_parameter"),
        ("?name=xx&interval=-1", "invalid_parameter"),
        ("?name=xx&interval=nan", "invalid_parameter"),
        ("?name=xx&interval=1e9", "invalid_parameter"),
    ],
)
def test_sse_chat_bad_parameters_are_400_json(query: str, code: str) -> None:
    with running_gateway() as gw:
        response = httpx.get(gw.url + "/learn/sseChat" + query)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == code


def test_client_leaving_stops_the_worker_early(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ssegate.learn")
    with running_gateway() as gw:
        with httpx.stream("GET", gw.url + "/learn/sseChat?name=xx&interval=30") as response:
            decoder = Decoder()
            for chunk in response.iter_raw():
                if any(e.data and "index:1" in e.data for e in decoder.feed(chunk)):
                    break
        # The worker was sleeping 30 s between sends; it must end now, not after 5 minutes.
        deadline = time.monotonic() + 5
        while not any("sse complete" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "on_completion never fired"
            time.sleep(0.02)
        messages = [r.getMessage() for r in caplog.records]
        assert not any(m.endswith(":2") for m in messages)


def test_learn_page_is_the_seeds_event_source_page() -> None:
    with running_gateway() as gw:
        page = httpx.get(gw.url + "/learn/")
        assert page.status_code == 200
        assert "new EventSource(" in page.text
        assert "New message: " in page.text
        assert httpx.get(gw.url + "/learn").status_code in (301, 302, 307, 308)


@pytest.mark.parametrize(("origins", "expected"), [((), None), (("*",), "*")])
def test_cors_for_the_demo_is_configurable(origins: tuple[str, ...], expected: str | None) -> None:
    with running_gateway(cors_origin=origins) as gw:
        response = httpx.get(
            gw.url + "/learn/sseChat?name=xx&interval=0",
            headers={"Origin": "http://elsewhere.example"},
        )
        assert response.headers.get("access-control-allow-origin") == expected


def test_serve_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ssegate", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--host", "--port", "--log-level", "--provider", "--base-url", "--model"):
        assert option in out
    assert "SSEGATE_PORT" in out


def test_ssegate_serve_runs_the_seed_demo_and_exits_cleanly_on_sigterm() -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssegate", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "ssegate serve did not start"
            assert proc.poll() is None, "ssegate serve exited early"
            time.sleep(0.05)
        body = httpx.get(url + "/learn/sseChat?name=xx&interval=0.1", timeout=10).content
        events = Decoder().feed(body)
        assert len(events) == 11
        assert events[-1].data
        assert events[-1].data.endswith("the next index:10")
        # The one-request generation of the demo model works too.
        with httpx.stream(
            "POST",
            url + "/v1/streams",
            json={"messages": [{"role": "user", "content": "你好"}]},
            headers={"Accept": "text/event-stream"},
            timeout=30,
        ) as response:
            decoder = Decoder()
            streamed = [e for c in response.iter_raw() for e in decoder.feed(c)]
        assert streamed[0].event == "start"
        assert streamed[-1].event == "done"
        assert sum(e.event == "delta" for e in streamed) > 5
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0

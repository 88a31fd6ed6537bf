"""``ssegate chat``: prints tokens as they come, resumes after a drop, stops on Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading

import httpx

from gateway_helpers import running_gateway
from ssegate._chat_client import run_chat
from ssegate.testing import DroppingProxy, closed_port_url


class _Tap(io.StringIO):
    """Captures output and tells a waiting thread once enough text has arrived."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.seen = threading.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.needle in self.getvalue():
            self.seen.set()
        return n


def test_chat_prints_the_whole_answer() -> None:
    with running_gateway() as gw:
        out = io.StringIO()
        code = run_chat(gw.url, "hello [[tokens:20]] [[reasoning:3]]", out=out)
        assert code == 0
        record = gw.mock.requests[0]
        assert record.text in out.getvalue()
        assert record.reasoning in out.getvalue()
        out2 = io.StringIO()
        assert run_chat(gw.url, "[[tokens:5]]", out=out2, show_reasoning=False) == 0


def test_chat_resumes_after_a_dropped_connection_without_loss_or_repeat() -> None:
    with running_gateway() as gw:
        proxy = DroppingProxy(gw.server.port).start()
        try:
            out = _Tap("tok10 ")
            result: list[int] = []
            worker = threading.Thread(
                target=lambda: result.append(
                    run_chat(proxy.url, "[[tokens:60]] [[interval_ms:15]]", out=out)
                )
            )
            worker.start()
            assert out.seen.wait(10)
            assert proxy.drop_all() > 0
            worker.join(30)
            assert result == [0]
        finally:
            proxy.stop()
        answer = gw.mock.requests[0].text
        assert out.getvalue().strip() == answer.strip()
        assert len(gw.mock.requests) == 1  # resumed the same stream, not asked again
        assert proxy.sent(b"last-event-id:")


def test_ctrl_c_stops_the_stream_on_the_server() -> None:
    with running_gateway() as gw:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ssegate",
                "chat",
                "--url",
                gw.url,
                "[[tokens:2000]] [[interval_ms:10]]",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        with proc:
            try:
                gw.mock.wait_for_request(0, timeout=20)
                assert proc.stdout is not None
                proc.stdout.read(20)  # tokens are arriving
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == 130
        gw.mock.wait_for_close(0, timeout=5)
        assert gw.mock.requests[0].cancelled
        stderr = err.decode()
        stream_id = stderr.split("[stream ", 1)[1].split("]", 1)[0]
        status = httpx.get(f"{gw.url}/v1/streams/{stream_id}").json()
        assert status["status"] == "cancelled"
        assert status["cause"] == "client"


def test_chat_with_no_gateway_says_which_url_failed_and_how_to_point_elsewhere() -> None:
    url = closed_port_url()
    for args, env in (
        (["--url", url], {}),
        ([], {"SSEGATE_URL": url}),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "ssegate", "chat", "hi", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **env},
        )
        assert proc.returncode == 1
        assert url in proc.stderr, proc.stderr
        assert "--url" in proc.stderr
        assert "SSEGATE_URL" in proc.stderr
        assert "Traceback" not in proc.stderr

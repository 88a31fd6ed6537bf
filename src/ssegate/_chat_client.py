"""``ssegate chat``: a terminal client for a running gateway.

It starts a stream with one ``POST /v1/streams`` (``Accept: text/event-stream``), prints text as
it arrives, resumes with ``Last-Event-ID`` when the connection drops (bounded back-off, bounded
attempts), and stops the stream on the server with ``DELETE`` on Ctrl-C.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any, TextIO

import httpx

from .codec import Decoder

__all__ = ["run_chat"]

_MAX_RESUMES = 20
_TERMINAL = {"done", "error", "cancelled"}


class _Printer:
    def __init__(self, out: TextIO, show_reasoning: bool) -> None:
        self.out = out
        self.show_reasoning = show_reasoning
        self.in_reasoning = False
        self.tty = out.isatty()

    def reasoning(self, text: str) -> None:
        if not self.show_reasoning:
            return
        if not self.in_reasoning:
            self.in_reasoning = True
            if self.tty:
                self.out.write("\x1b[2m")
        self.out.write(text)
        self.out.flush()

    def text(self, text: str) -> None:
        if self.in_reasoning:
            self.in_reasoning = False
            self.out.write("\x1b[0m\n\n" if self.tty else "\n\n")
        self.out.write(text)
        self.out.flush()


def _headers(api_key: str | None, last_id: int) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if last_id:
        headers["Last-Event-ID"] = str(last_id)
    return headers


def _unreachable(base: str, exc: httpx.ConnectError) -> str:
    return (
        f"error: no gateway answers at {base} ({exc}).\n"
        "Start one with 'ssegate serve', or point 'ssegate chat' at yours with "
        "--url http://host:port or the SSEGATE_URL variable.\n"
    )


def run_chat(
    url: str,
    question: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    show_reasoning: bool = True,
    out: TextIO | None = None,
) -> int:
    """Ask ``question``; return the process exit code (0 done, 1 error, 130 cancelled)."""
    out = out or sys.stdout
    err = sys.stderr
    printer = _Printer(out, show_reasoning)
    base = url.rstrip("/")
    body: dict[str, Any] = {"messages": [{"role": "user", "content": question}]}
    if model:
        body["model"] = model
    stream_id: str | None = None
    token: str | None = None
    last_id = 0
    resumes = 0
    outcome: str | None = None
    timeout = httpx.Timeout(10.0, read=120.0)
    with httpx.Client(timeout=timeout) as client:
        try:
            while outcome is None:
                try:
                    if stream_id is None:
                        request = client.build_request(
                            "POST", f"{base}/v1/streams", json=body, headers=_headers(api_key, 0)
                        )
                    else:
                        params = {"token": token} if token else None
                        request = client.build_request(
                            "GET",
                            f"{base}/v1/streams/{stream_id}/events",
                            headers=_headers(api_key, last_id),
                            params=params,
                        )
                    response = client.send(request, stream=True)
                    try:
                        if response.status_code == 204:
                            outcome = "done"
                            break
                        if response.status_code >= 400:
                            response.read()
                            err.write(f"\nerror: HTTP {response.status_code}: {response.text}\n")
                            return 1
                        decoder = Decoder()
                        for chunk in response.iter_raw():
                            for event in decoder.feed(chunk):
                                data = json.loads(event.data or "{}")
                                if event.id and event.id.isdigit():
                                    last_id = int(event.id)
                                if event.event == "start":
                                    if stream_id is None:
                                        err.write(f"[stream {data.get('stream_id')}]\n")
                                        err.flush()
                                    stream_id = data.get("stream_id", stream_id)
                                    token = data.get("token", token)
                                elif event.event == "delta":
                                    printer.text(data.get("text", ""))
                                elif event.event == "reasoning":
                                    printer.reasoning(data.get("text", ""))
                                elif event.event == "error":
                                    err.write(
                                        f"\nerror: {data.get('code')}: {data.get('message')}\n"
                                    )
                                elif event.event == "cancelled":
                                    err.write("\n[cancelled]\n")
                                if event.event in _TERMINAL:
                                    outcome = event.event
                    finally:
                        response.close()
                    if outcome is None:
                        raise httpx.RemoteProtocolError("stream ended before its last event")
                except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                    if stream_id is None and isinstance(exc, httpx.ConnectError):
                        err.write(_unreachable(base, exc))
                        return 1
                    if stream_id is None or resumes >= _MAX_RESUMES:
                        err.write(f"\nerror: {exc}\n")
                        return 1
                    resumes += 1
                    delay = min(8.0, 0.25 * 2**resumes) * (0.5 + random.random() / 2)
                    err.write(f"\n[connection lost; resuming after event {last_id}]\n")
                    time.sleep(delay)
        except KeyboardInterrupt:
            if stream_id is not None:
                headers = _headers(api_key, 0)
                headers.pop("Accept")
                try:
                    client.delete(f"{base}/v1/streams/{stream_id}", headers=headers, timeout=5.0)
                except httpx.HTTPError:
                    pass
            err.write("\n[stopped]\n")
            return 130
    out.write("\n")
    return {"done": 0, "cancelled": 130}.get(outcome, 1)

"""A bare ``EventSource`` in real Chromium on a stream URL that carries ``?last_event_id=``.

The browser reconnects to the same URL, query included, with ``Last-Event-ID`` set to the last
id it got: the gateway must read the header, so a finished stream is replayed once and the
reconnect gets ``204``, which closes the ``EventSource`` for good.
"""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import Page

from ssegate.testing import RunningServer

# Opens and messages of one EventSource, once it is CLOSED (or after a bound of 8 s, in which
# a looping source reconnects many times at the gateway's 300 ms retry).
FOLLOW = """async (url) => {
  const source = new EventSource(url);
  const seen = {opens: 0, ids: [], types: []};
  window.__seen = seen;
  source.onopen = () => { seen.opens += 1; };
  for (const type of ['delta', 'usage', 'done']) {
    source.addEventListener(type, (event) => {
      seen.ids.push(Number(event.lastEventId));
      seen.types.push(type);
    });
  }
  const closed = new Promise((resolve) => {
    source.onerror = () => { if (source.readyState === EventSource.CLOSED) resolve(); };
  });
  await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 8000))]);
  seen.closed = source.readyState === EventSource.CLOSED;
  source.close();
  return seen;
}"""


def _finished_stream(gateway: RunningServer) -> tuple[str, int]:
    """A stream that has ended: its id and last event id."""
    created = httpx.post(
        gateway.url + "/v1/streams",
        json={"messages": [{"role": "user", "content": "[[tokens:6]]"}]},
    ).json()
    with httpx.stream("GET", f"{gateway.url}/v1/streams/{created['id']}/events") as response:
        response.read()  # the body ends with the stream
    info = httpx.get(f"{gateway.url}/v1/streams/{created['id']}").json()
    assert info["status"] == "done"
    return created["id"], int(info["last_event_id"])


def test_a_query_resume_on_a_finished_stream_replays_once_and_stops(
    page: Page, gateway: RunningServer
) -> None:
    stream_id, last = _finished_stream(gateway)
    start = last - 3  # the last three events: a delta or two, usage, done
    page.goto(gateway.url + "/healthz")
    url = f"/v1/streams/{stream_id}/events?last_event_id={start}"
    seen: dict[str, Any] = page.evaluate(FOLLOW, url)
    # One connection replayed the events after `start`; the reconnect (header = `last`) got
    # 204, which closed the source. Reading the query first, it would replay them again and
    # again.
    assert seen["closed"], seen
    assert seen["opens"] == 1, seen
    assert seen["ids"] == list(range(start + 1, last + 1)), seen
    assert seen["types"][-1] == "done"

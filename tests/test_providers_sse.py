"""The providers' fast event-stream reader reports exactly what the WHATWG decoder does."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ssegate import Decoder, SseProtocolError
from ssegate.providers import UpstreamProtocolError
from ssegate.providers._sse import UpstreamEvents

_FRAGMENTS = [
    b"data",
    b"data: ",
    b"event",
    b"event: error",
    b"id: 7",
    b"retry: 10",
    b":",
    b": comment",
    b" ",
    b"\n",
    b"\n\n",
    b"\r",
    b"\r\n",
    b"x",
    b'{"a": 1}',
    b"[DONE]",
    "é€".encode(),
    b"\xc3",
    b"\xe2\x82",
    b"\xff",
    b"\xef\xbb\xbf",
]

_streams = st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map(b"".join)


def _cuts(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)] or [b""]


def _both(feeds: list[bytes], size: int) -> tuple[list[object], list[object]]:
    """Per feed, what each reader returned (events as (type, text)) or ``"error"``."""
    decoder = Decoder(max_line_size=size, max_event_size=size)
    fast = UpstreamEvents(max_line_size=size, max_event_size=size)
    want: list[object] = []
    got: list[object] = []
    for feed in feeds:
        try:
            want.append([(e.event, e.data) for e in decoder.feed(feed)])
        except SseProtocolError:
            want.append("error")
        try:
            events = fast.feed(feed)
            got.append([(kind, data.decode("utf-8", "replace")) for kind, data in events])
        except UpstreamProtocolError:
            got.append("error")
        if want[-1] == "error":
            break
    return want, got


@settings(max_examples=600, deadline=None)
@given(data=_streams, points=st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
@example(data=b"data: a\n\n\ndata: b\n\n", points=[])
@example(data=b"\xef\xbb\xbfdata: a\n\n", points=[1])
@example(data=b"data: x\n\r", points=[8])
def test_same_events_from_the_same_feeds_as_the_decoder(data: bytes, points: list[int]) -> None:
    want, got = _both(_cuts(data, points), 1 << 20)
    assert got == want


@settings(max_examples=400, deadline=None)
@given(
    data=_streams,
    points=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    size=st.integers(min_value=3, max_value=40),
)
def test_same_bounds_as_the_decoder(data: bytes, points: list[int], size: int) -> None:
    want, got = _both(_cuts(data, points), size)
    assert got == want


def test_the_usual_stream_takes_the_fast_path() -> None:
    events = UpstreamEvents(max_line_size=1000, max_event_size=1000)
    chunk = b'data: {"n": 1}\n\ndata: {"n": 2}\n\nevent: error\ndata: {"e": 1}\n\ndata: [DO'
    assert events.feed(chunk) == [
        ("message", b'{"n": 1}'),
        ("message", b'{"n": 2}'),
        ("error", b'{"e": 1}'),
    ]
    assert events.feed(b"NE]\n\n") == [("message", b"[DONE]")]
    assert events._decoder is None  # never needed the full decoder


def test_a_carriage_return_hands_the_rest_to_the_decoder() -> None:
    events = UpstreamEvents(max_line_size=1000, max_event_size=1000)
    assert events.feed(b"data: a\n\ndata: b") == [("message", b"a")]
    assert events.feed(b"\r\n\r\ndata: c\r\r") == [("message", b"b"), ("message", b"c")]
    assert events._decoder is not None


def test_an_event_past_the_bound_raises() -> None:
    events = UpstreamEvents(max_line_size=100, max_event_size=100)
    with pytest.raises(UpstreamProtocolError, match="bound"):
        events.feed(b"data: " + b"x" * 200 + b"\n\n")

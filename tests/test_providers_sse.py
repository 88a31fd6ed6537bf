"""The providers read an upstream's event stream with the codec's WHATWG decoder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ssegate.providers import Delta, ProviderConfig, TextDelta, UpstreamProtocolError
from ssegate.providers._parsing import SseParser


class _Recorder(SseParser):
    """Records each event it is handed; ``stop`` ends the stream."""

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.seen: list[tuple[str, str]] = []

    def on_event(self, event: str, data: str) -> Iterator[Delta]:
        self.seen.append((event, data))
        if data == "stop":
            self.done = True
        yield TextDelta(data)

    def final(self) -> Iterator[Delta]:
        return iter(())


def test_events_reach_the_parser_as_type_and_text() -> None:
    parser = _Recorder(ProviderConfig(kind="openai"))
    chunk = 'data: {"n": 1}\n\nevent: error\ndata: a\ndata: b\n\ndata: é'.encode()
    assert list(parser.feed(chunk)) == [TextDelta('{"n": 1}'), TextDelta("a\nb")]
    assert list(parser.feed(b"\xe2\x82")) == []  # a character cut across reads waits
    assert list(parser.feed(b"\xac\r\n\r\n")) == [TextDelta("é€")]
    assert parser.seen == [("message", '{"n": 1}'), ("error", "a\nb"), ("message", "é€")]


def test_nothing_after_the_end_marker_is_read() -> None:
    parser = _Recorder(ProviderConfig(kind="openai"))
    assert list(parser.feed(b"data: stop\n\ndata: late\n\n")) == [TextDelta("stop")]
    assert parser.seen == [("message", "stop")]


def test_an_event_past_the_bound_is_an_upstream_protocol_error() -> None:
    parser = _Recorder(ProviderConfig(kind="openai", max_event_size=100))
    assert list(parser.feed(b"data: ok\n\n")) == [TextDelta("ok")]
    with pytest.raises(UpstreamProtocolError, match="bound"):
        list(parser.feed(b"data: " + b"x" * 200 + b"\n\n"))

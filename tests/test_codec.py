"""The SSE codec against the WHATWG "Interpreting an event stream" rules."""

from __future__ import annotations

import codecs
import copy
import itertools
import pickle
import re
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ssegate import Decoder, ServerSentEvent, SseProtocolError, encode, encode_comment
from ssegate.codec import encode_fields
from ssegate.codec._encode import frame_fields


def decode_all(data: bytes) -> list[ServerSentEvent]:
    return Decoder().feed(data)


def decode_bytewise(data: bytes) -> list[ServerSentEvent]:
    decoder = Decoder()
    out: list[ServerSentEvent] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    return out


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_a_line_ending(eol: bytes) -> None:
    data = b"data: a" + eol + b"data: b" + eol + eol
    for decode in (decode_all, decode_bytewise):
        assert decode(data) == [ServerSentEvent(data="a\nb", event="message")]


def test_mixed_line_endings_and_crlf_split_across_feeds() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: one\r") == []
    # The LF completes the CRLF of the line above; it is not a blank line.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: two\n\r") == [ServerSentEvent(data="one\ntwo", event="message")]
    assert decoder.feed(b"\ndata: three\r\r") == [ServerSentEvent(data="three", event="message")]


def test_cr_then_lf_in_next_feed_is_one_line_ending_not_a_blank_line() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [ServerSentEvent(data="x", event="message")]


def test_event_is_dispatched_by_the_feed_that_completes_its_blank_line() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: x\n") == []
    # A lone CR completes the blank line; nothing is held back waiting for a possible LF.
    assert decoder.feed(b"\r") == [ServerSentEvent(data="x", event="message")]


def test_bom_is_stripped_only_at_stream_start() -> None:
    assert decode_all(b"\xef\xbb\xbfdata: a\n\n") == [ServerSentEvent(data="a", event="message")]
    assert decode_bytewise(b"\xef\xbb\xbfdata: a\n\n") == [
        ServerSentEvent(data="a", event="message")
    ]
    # A second BOM is part of the data; a BOM in the middle is a field name character.
    assert decode_all(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []
    assert decode_all(b"data: \xef\xbb\xbfa\n\n") == [
        ServerSentEvent(data="\ufeffa", event="message")
    ]


def test_multibyte_characters_split_across_feeds() -> None:
    payload = "你好，世界 👋🏽 émoji".encode()
    data = b"data: " + payload + b"\n\n"
    assert decode_bytewise(data) == [ServerSentEvent(data="你好，世界 👋🏽 émoji", event="message")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert decode_all(b"data: a\xffb\xc3\n\n") == [
        ServerSentEvent(data="a\ufffdb\ufffd", event="message")
    ]


def test_field_parsing_rules() -> None:
    data = (
        b": a comment\n"
        b"data\n"  # no colon: field name is the whole line, value empty
        b"data:no-space\n"
        b"data:  two-spaces\n"  # only one leading space is removed
        b"unknown: ignored\n"
        b"event: custom\n"
        b"\n"
    )
    assert decode_all(data) == [ServerSentEvent(data="\nno-space\n two-spaces", event="custom")]


def test_empty_data_buffer_dispatches_nothing_and_type_resets() -> None:
    decoder = Decoder()
    assert decoder.feed(b"event: x\n\n") == []
    assert decoder.feed(b"data: y\n\n") == [ServerSentEvent(data="y", event="message")]


def test_data_field_with_empty_value_dispatches_empty_string() -> None:
    assert decode_all(b"data\n\n") == [ServerSentEvent(data="", event="message")]
    assert decode_all(b"data:\n\n") == [ServerSentEvent(data="", event="message")]


def test_last_event_id_persists_and_nul_ids_are_ignored() -> None:
    decoder = Decoder()
    events = decoder.feed(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x003\ndata: c\n\n")
    assert [e.id for e in events] == ["1", "1", "1"]
    assert decoder.last_event_id == "1"
    # A blank line with no data still sets the last event id.
    assert decoder.feed(b"id: 7\n\n") == []
    assert decoder.last_event_id == "7"
    # An empty id resets it.
    assert decoder.feed(b"id\ndata: d\n\n") == [ServerSentEvent(data="d", event="message")]
    assert decoder.last_event_id == ""


def test_retry_only_when_all_ascii_digits() -> None:
    decoder = Decoder()
    decoder.feed(b"retry: 1500\n\n")
    assert decoder.retry == 1500
    for bad in (b"retry: 15x\n\n", b"retry: -1\n\n", b"retry:\n\n", b"retry: \xd9\xa3\n\n"):
        decoder.feed(bad)
        assert decoder.retry == 1500
    assert decoder.feed(b"retry: 20\ndata: z\n\n") == [
        ServerSentEvent(data="z", event="message", retry=20)
    ]


def test_unterminated_last_event_is_never_dispatched() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: complete\n\ndata: incomplete\n") == [
        ServerSentEvent(data="complete", event="message")
    ]
    assert decoder.feed(b"") == []


def test_line_and_event_sizes_are_bounded() -> None:
    decoder = Decoder(max_line_size=100)
    for _ in range(10):
        decoder.feed(b"x" * 10)
    with pytest.raises(SseProtocolError):
        decoder.feed(b"x" * 10)
    decoder = Decoder(max_event_size=100)
    with pytest.raises(SseProtocolError):
        decoder.feed(b"data: 0123456789\n" * 20)


def test_default_bounds_take_a_one_mebibyte_event() -> None:
    payload = "x" * (1024 * 1024)
    assert decode_all(encode(ServerSentEvent(data=payload))) == [
        ServerSentEvent(data=payload, event="message")
    ]


# --- encoding ---------------------------------------------------------------------------------


def test_encode_fields_in_order() -> None:
    event = ServerSentEvent(data="hi", event="delta", id="3", retry=1000, comment="c")
    assert encode(event) == b": c\nid: 3\nevent: delta\nretry: 1000\ndata: hi\n\n"


@pytest.mark.parametrize("text", ["a\nb", "a\r\nb", "a\rb", "a\n\nb\n"])
def test_multiline_data_is_split_on_every_line_ending(text: str) -> None:
    encoded = encode(ServerSentEvent(data=text))
    assert b"\r" not in encoded
    assert encoded.count(b"\n\n") == 1
    assert encoded.endswith(b"\n\n")
    expected = re.sub(r"\r\n|\r", "\n", text)
    assert decode_all(encoded) == [ServerSentEvent(data=expected, event="message")]


def test_data_cannot_inject_another_event() -> None:
    hostile = "x\n\nevent: evil\ndata: injected\r\rid: 9"
    assert [e.data for e in decode_all(encode(ServerSentEvent(data=hostile)))] == [
        "x\n\nevent: evil\ndata: injected\n\nid: 9"
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event": "a\nb"},
        {"event": "a\rb"},
        {"id": "1\n2"},
        {"id": "1\r"},
        {"id": "1\x002"},
        {"retry": -1},
        {"retry": 1.5},
        {"retry": True},
        {"retry": "10"},
    ],
)
def test_illegal_events_cannot_be_built(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        ServerSentEvent(data="x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": b"x"},
        {"event": ["a"]},
        {"event": 5},
        {"id": 5},
        {"id": b"1"},
        {"comment": 1},
    ],
)
def test_fields_of_the_wrong_type_are_refused(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"data": "x", "event": "delta", "id": "1"}
    with pytest.raises(TypeError, match="must be str"):
        ServerSentEvent(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_comment_and_heartbeat() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert encode(ServerSentEvent(comment="a\nb")) == b": a\n: b\n\n"
    assert decode_all(encode_comment("ping") + encode(ServerSentEvent(data="x"))) == [
        ServerSentEvent(data="x", event="message")
    ]


def test_codec_is_sans_io() -> None:
    # Statically: the codec imports only the standard library, itself and the error tree,
    # and the error tree imports nothing at all.
    import ast
    from pathlib import Path

    import ssegate.codec

    codec_dir = Path(ssegate.codec.__file__).parent
    allowed_relative = {"_decoder", "_encode", "_event", "_errors"}
    for path in [*codec_dir.glob("*.py"), codec_dir.parent / "_errors.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert (node.module or "").split(".")[-1] in allowed_relative, path
                    continue
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            for name in names:
                assert name in sys.stdlib_module_names or name == "__future__", (path, name)
                assert name not in ("asyncio", "socket", "selectors", "threading"), (path, name)


# --- properties -------------------------------------------------------------------------------

_field_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=20
)
_events = st.builds(
    ServerSentEvent,
    data=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60),
    event=st.one_of(st.none(), _field_text.filter(bool)),
    id=st.one_of(st.none(), _field_text.filter(lambda s: bool(s) and "\0" not in s)),
    retry=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
    comment=st.one_of(st.none(), st.text(max_size=10, alphabet="ab\n: ")),
)


def _expected(event: ServerSentEvent, last_id: str | None) -> ServerSentEvent:
    assert event.data is not None
    return ServerSentEvent(
        data=re.sub(r"\r\n|\r", "\n", event.data),
        event=event.event or "message",
        id=event.id if event.id is not None else last_id,
        retry=event.retry,
    )


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_events, max_size=8), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_events_round_trip_under_any_split(
    events: list[ServerSentEvent], cuts: list[int]
) -> None:
    data = b"".join(encode(e) for e in events)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    decoder = Decoder()
    decoded: list[ServerSentEvent] = []
    for start, end in itertools.pairwise(points):
        decoded += decoder.feed(data[start:end])
    expected = []
    last_id: str | None = None
    for e in events:
        if e.id is not None:
            last_id = e.id
        expected.append(_expected(e, last_id))
    assert decoded == expected


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_never_raise_and_split_does_not_matter(
    data: bytes, cuts: list[int]
) -> None:
    whole = Decoder()
    expected = whole.feed(data)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    split = Decoder()
    got: list[ServerSentEvent] = []
    for start, end in itertools.pairwise(points):
        got += split.feed(data[start:end])
    assert got == expected
    assert split.last_event_id == whole.last_event_id
    assert split.retry == whole.retry


def test_lone_surrogates_are_written_as_replacement_characters() -> None:
    encoded = encode(ServerSentEvent(data="a\ud800b", id="\udfff"))
    assert decode_all(encoded) == [ServerSentEvent(data="a\ufffdb", event="message", id="\ufffd")]


# --- the one framing path -----------------------------------------------------------------

_any_text = st.text(alphabet=st.sampled_from("ab\r\n\0 é\ud800:"), max_size=6)


@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(st.none(), _any_text),
    event=st.one_of(st.none(), _any_text),
    id=st.one_of(st.none(), _any_text),
    retry=st.one_of(st.none(), st.integers(min_value=0, max_value=99)),
    comment=st.one_of(st.none(), _any_text),
)
def test_the_usual_events_framing_is_the_general_framing(
    data: str | None, event: str | None, id: str | None, retry: int | None, comment: str | None
) -> None:
    # Whatever shape takes the fast path at construction: the same refusals as checking each
    # field, the same bytes as the general path.
    illegal = (event is not None and ("\r" in event or "\n" in event)) or (
        id is not None and ("\r" in id or "\n" in id or "\0" in id)
    )
    if illegal:
        with pytest.raises(ValueError, match="must not contain"):
            ServerSentEvent(data=data, event=event, id=id, retry=retry, comment=comment)
        return
    built = ServerSentEvent(data=data, event=event, id=id, retry=retry, comment=comment)
    assert (built.data, built.event, built.id, built.retry, built.comment) == (
        data,
        event,
        id,
        retry,
        comment,
    )
    assert encode(built) == frame_fields(data, event, id, retry, comment)


@settings(max_examples=300, deadline=None)
@given(
    data=_any_text,
    event=st.one_of(st.none(), _any_text),
    id=st.one_of(st.none(), _any_text, st.integers(min_value=0, max_value=10**12)),
)
def test_encode_fields_is_encode_of_the_event(
    data: str, event: str | None, id: str | int | None
) -> None:
    event_id = None if id is None else str(id)
    try:
        want = encode(ServerSentEvent(data=data, event=event, id=event_id))
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)):
            encode_fields(data, event=event, id=id)
    else:
        assert encode_fields(data, event=event, id=id) == want


def test_encode_fields_writes_the_usual_event() -> None:
    assert (
        encode_fields('{"a":1}', event="delta", id=7) == b'id: 7\nevent: delta\ndata: {"a":1}\n\n'
    )
    assert encode_fields("x") == b"data: x\n\n"
    assert encode_fields("a\nb", id="1") == b"id: 1\ndata: a\ndata: b\n\n"
    assert encode_fields("\ud800") == "data: \ufffd\n\n".encode()
    for bad in ({"event": "a\nb"}, {"id": "1\r"}, {"id": "1\x00"}):
        with pytest.raises(ValueError, match="must not contain"):
            encode_fields("x", **bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data must be str"):
        encode_fields(b"x")  # type: ignore[arg-type]


def test_an_event_is_an_immutable_value() -> None:
    event = ServerSentEvent(data="x", event="delta", id="1")
    same = ServerSentEvent("x", "delta", "1")
    other = ServerSentEvent(data="x", event="delta", id="2")
    assert event == same
    assert hash(event) == hash(same)
    assert event != other
    assert event != ("x", "delta", "1", None, None)
    assert len({event, same, other}) == 2
    assert repr(event) == (
        "ServerSentEvent(data='x', event='delta', id='1', retry=None, comment=None)"
    )
    for name in ("data", "event", "id", "retry", "comment", "anything"):
        with pytest.raises(AttributeError):
            setattr(event, name, "y")
    with pytest.raises(AttributeError):
        del event.data
    assert copy.copy(event) == event
    assert copy.deepcopy(event) == event
    assert pickle.loads(pickle.dumps(event)) == event
    assert encode(pickle.loads(pickle.dumps(event))) == encode(event)
    match event:
        case ServerSentEvent(data, "delta"):
            assert data == "x"
        case _:
            pytest.fail("no match")


# --- the decoder's fast path against the spec, one character at a time ------------------------


class SpecDecoder:
    """HTML §9.2.6 "Interpreting an event stream" transcribed one character at a time, with
    the decoder's bounds: the oracle for :class:`Decoder`, whose fast path takes whole events.

    ``feed`` returns the events (as field tuples) that the bytes complete, or raises
    ``SseProtocolError`` in the feed where a line or an event passes its bound.
    """

    def __init__(self, max_line: int, max_event: int) -> None:
        self.max_line, self.max_event = max_line, max_event
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.started = self.after_cr = False
        self.line = ""
        self.data: list[str] = []
        self.data_size = 0
        self.event_type = ""
        self.event_retry: int | None = None
        self.id_buffer = self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[tuple[object, ...]]:
        out: list[tuple[object, ...]] = []
        for char in self.utf8.decode(data):
            if not self.started:
                self.started = True
                if char == "\ufeff":
                    continue
            if self.after_cr:
                self.after_cr = False
                if char == "\n":
                    continue  # the LF of a CRLF
            if char in "\r\n":
                self.after_cr = char == "\r"
                self.process(self.line, out)
                self.line = ""
                continue
            self.line += char
            if len(self.line) > self.max_line:
                raise SseProtocolError("line")
        return out

    def process(self, line: str, out: list[tuple[object, ...]]) -> None:
        if not line:
            self.last_event_id = self.id_buffer
            if self.data:
                event = self.event_type or "message"
                out.append(("\n".join(self.data), event, self.id_buffer or None, self.event_retry))
            self.data, self.data_size, self.event_type, self.event_retry = [], 0, "", None
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.data_size += len(value) + 1
            if self.data_size > self.max_event:
                raise SseProtocolError("event")
            self.data.append(value)
        elif name == "event":
            self.event_type = value
        elif name == "id" and "\0" not in value:
            self.id_buffer = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            self.retry = self.event_retry = int(value)


_STREAM_FRAGMENTS = [
    b"data",
    b"data: ",
    b"data:",
    b"event",
    b"event: error",
    b"id: 7",
    b"id: 8",
    b"id",
    b"id: \x00",
    b"retry: 10",
    b"retry: x",
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
# Mostly the usual shape (data lines and blank lines), so that the fast path runs often.
_upstream_streams = st.lists(
    st.one_of(
        st.sampled_from(_STREAM_FRAGMENTS),
        st.sampled_from([b"data: ", b"\n\n", b"data: [DONE]\n\n", b'data: {"n": 1}\n\n']),
        st.integers(min_value=0, max_value=16).map(lambda n: b"data: " + b"x" * n + b"\n\n"),
    ),
    max_size=40,
).map(b"".join)


def _cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)] or [b""]


def _per_feed(
    feeds: list[bytes], line: int = 1 << 20, event: int = 1 << 20
) -> tuple[list[object], list[object]]:
    """Per feed, what the decoder and the spec returned (event field tuples, or "error"),
    then their last event id and reconnection time."""
    decoder = Decoder(max_line_size=line, max_event_size=event)
    spec = SpecDecoder(line, event)
    got: list[object] = []
    want: list[object] = []
    for feed in feeds:
        try:
            want.append(spec.feed(feed))
        except SseProtocolError:
            want.append("error")
        try:
            got.append([(e.data, e.event, e.id, e.retry) for e in decoder.feed(feed)])
        except SseProtocolError:
            got.append("error")
        if want[-1] == "error":
            break
    else:
        want.append((spec.last_event_id, spec.retry))
        got.append((decoder.last_event_id, decoder.retry))
    return got, want


@settings(max_examples=800, deadline=None)
@given(
    data=_upstream_streams, points=st.lists(st.integers(min_value=0, max_value=2000), max_size=8)
)
@example(data=b"data: a\n\n\ndata: b\n\n", points=[])
@example(data=b"\xef\xbb\xbfdata: a\n\n", points=[1])
@example(data=b"data: x\n\r", points=[8])
@example(data=b"data: a\n\nid: 7\n\ndata: b\n\n", points=[9])
@example(data=b"data: a\n\nid: 7\ndata: b\n\n\n\n\n", points=[9])
@example(data=b"data: a\n\ndata: b\r\rdata: c\n\n", points=[9])
def test_decoder_reports_what_the_spec_does_under_any_split(data: bytes, points: list[int]) -> None:
    got, want = _per_feed(_cut(data, points))
    assert got == want


@settings(max_examples=500, deadline=None)
@given(
    data=_upstream_streams,
    points=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    line=st.integers(min_value=3, max_value=24),
    event=st.integers(min_value=3, max_value=24),
)
def test_decoder_bounds_are_the_specs_plus_bounds_under_any_split(
    data: bytes, points: list[int], line: int, event: int
) -> None:
    got, want = _per_feed(_cut(data, points), line, event)
    assert got == want


@pytest.mark.parametrize("after", [b"", b"data: a\n\n"])  # the general path, the fast one
@pytest.mark.parametrize("before", [b"", b"event: e\n"])  # a one-line event, a longer one
def test_bounds_are_exact_on_both_paths(after: bytes, before: bytes) -> None:
    # A line of max_line_size characters passes, one more fails; likewise an event's data
    # (counted with one LF per line).
    for line, event, size, ok in [
        (10, 100, 10, True),
        (10, 100, 11, False),
        (100, 10, 15, True),  # "data: " and 9 characters: 10 with the LF
        (100, 10, 16, False),
    ]:
        decoder = Decoder(max_line_size=line, max_event_size=event)
        decoder.feed(after)
        chunk = before + b"data: " + b"x" * (size - 6) + b"\n\n"
        if ok:
            assert len(decoder.feed(chunk)) == 1
        else:
            with pytest.raises(SseProtocolError):
                decoder.feed(chunk)


def test_the_usual_stream_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = Decoder()
    assert decoder.feed(b"id: 1\ndata: first\n\n") == [
        ServerSentEvent(data="first", event="message", id="1")
    ]

    def general_path(self: Decoder, text: str, events: list[ServerSentEvent]) -> None:
        raise AssertionError(f"the general path read {text!r}")

    monkeypatch.setattr(Decoder, "_text", general_path)
    chunk = b'data: {"n": 1}\n\ndata: {"n": 2}\n\nevent: error\ndata: {"e": 1}\n\n'
    assert decoder.feed(chunk) == [
        ServerSentEvent(data='{"n": 1}', event="message", id="1"),
        ServerSentEvent(data='{"n": 2}', event="message", id="1"),
        ServerSentEvent(data='{"e": 1}', event="error", id="1"),
    ]
    monkeypatch.undo()
    # The rest of an event the fast path can't finish goes the general way, and back.
    assert decoder.feed(b"data: [DO") == []
    assert decoder.feed(b"NE]\n\n") == [ServerSentEvent(data="[DONE]", event="message", id="1")]
    monkeypatch.setattr(Decoder, "_text", general_path)
    assert decoder.feed(b"data: x\n\n") == [ServerSentEvent(data="x", event="message", id="1")]


def test_a_read_that_ends_inside_an_event_costs_the_general_path_only_that_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An upstream that is ahead of us fills each read, so most reads end inside an event:
    # only the rest of that event is read the general way, the whole events after it the fast.
    decoder = Decoder()
    assert decoder.feed(b"data: a\n\ndata: [DO") == [ServerSentEvent(data="a", event="message")]
    general = Decoder._text
    read: list[str] = []

    def recording(self: Decoder, text: str, events: list[ServerSentEvent]) -> None:
        read.append(text)
        general(self, text, events)

    monkeypatch.setattr(Decoder, "_text", recording)
    assert decoder.feed(b'NE]\n\ndata: {"n": 1}\n\nid: 4\ndata: {"n": 2}\n\ndata: x') == [
        ServerSentEvent(data="[DONE]", event="message"),
        ServerSentEvent(data='{"n": 1}', event="message"),
        ServerSentEvent(data='{"n": 2}', event="message", id="4"),
    ]
    assert read == ["NE]\n\n", "data: x"]
    assert decoder.feed(b"\n\n") == [ServerSentEvent(data="x", event="message", id="4")]

"""The stream status state machine: every (state, input) pair, and random walks through it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssegate.store import (
    TERMINAL_EVENTS,
    TRANSITIONS,
    IllegalTransitionError,
    StoreError,
    StreamInput,
    StreamStatus,
    transition,
)

# What the design says, written out independently of the table under test.
EXPECTED = {
    (StreamStatus.RUNNING, StreamInput.APPEND): StreamStatus.RUNNING,
    (StreamStatus.RUNNING, StreamInput.DONE): StreamStatus.DONE,
    (StreamStatus.RUNNING, StreamInput.ERROR): StreamStatus.ERROR,
    (StreamStatus.RUNNING, StreamInput.CANCEL): StreamStatus.CANCELLED,
}


@given(st.sampled_from(StreamStatus), st.sampled_from(StreamInput))
def test_every_pair_is_legal_exactly_as_designed(
    status: StreamStatus, stream_input: StreamInput
) -> None:
    if (status, stream_input) in EXPECTED:
        assert transition(status, stream_input) is EXPECTED[(status, stream_input)]
        assert status.apply(stream_input) is EXPECTED[(status, stream_input)]
    else:
        with pytest.raises(IllegalTransitionError) as info:
            transition(status, stream_input)
        assert isinstance(info.value, StoreError)
        assert info.value.code == "illegal_transition"
        with pytest.raises(IllegalTransitionError):
            status.apply(stream_input)


def test_table_is_exactly_the_design() -> None:
    assert dict(TRANSITIONS) == EXPECTED


@given(st.lists(st.sampled_from(StreamInput), max_size=30))
def test_walks_end_at_most_once_and_terminal_states_are_final(
    inputs: list[StreamInput],
) -> None:
    status = StreamStatus.RUNNING
    for stream_input in inputs:
        try:
            new = transition(status, stream_input)
        except IllegalTransitionError:
            # Only a finished stream refuses input, and it stays as it was.
            assert status.is_terminal
            continue
        assert not status.is_terminal
        assert new.is_terminal == (stream_input is not StreamInput.APPEND)
        status = new
    # The status a walk ends in is the first finishing input, or still running.
    finishing = [i for i in inputs if i is not StreamInput.APPEND]
    if finishing:
        assert status is EXPECTED[(StreamStatus.RUNNING, finishing[0])]
    else:
        assert status is StreamStatus.RUNNING


def test_terminal_event_names_are_the_terminal_statuses() -> None:
    assert {s.value for s in StreamStatus if s.is_terminal} == TERMINAL_EVENTS
    assert TERMINAL_EVENTS == {"done", "error", "cancelled"}
    assert not StreamStatus.RUNNING.is_terminal
    assert StreamStatus("cancelled") is StreamStatus.CANCELLED

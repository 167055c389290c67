"""The SSE decoder against every way a stream can be split on the wire."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigate.errors import UpstreamError
from trigate.sse import MAX_LINE_BYTES, ServerSentEvent, SSEDecoder


def decode(pieces: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.flush()


# A realistic OpenAI stream: multi-byte UTF-8, CRLF endings, comments and keep-alives.
REAL_STREAM = (
    ": keep-alive\n\n"
    'data: {"choices":[{"delta":{"content":"Grüße 👋"}}]}\r\n\r\n'
    "event: message\n"
    'data: {"choices":[{"delta":{"content":"日本語"}}]}\n\n'
    ":\n"
    "data: line one\n"
    "data: line two\r\n\r\n"
    "data:no-space\r\r"
    "data: [DONE]"
).encode()

EXPECTED = [
    ServerSentEvent("message", '{"choices":[{"delta":{"content":"Grüße 👋"}}]}'),
    ServerSentEvent("message", '{"choices":[{"delta":{"content":"日本語"}}]}'),
    ServerSentEvent("message", "line one\nline two"),
    ServerSentEvent("message", "no-space"),
    ServerSentEvent("message", "[DONE]"),
]


def test_whole_stream() -> None:
    assert decode([REAL_STREAM]) == EXPECTED


def test_byte_by_byte() -> None:
    assert decode([REAL_STREAM[i : i + 1] for i in range(len(REAL_STREAM))]) == EXPECTED


def test_crlf_split_between_reads_is_one_line_ending() -> None:
    assert decode([b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == [
        ServerSentEvent("message", "a"),
        ServerSentEvent("message", "b"),
    ]


def test_last_event_without_blank_line() -> None:
    assert decode([b"data: tail"]) == [ServerSentEvent("message", "tail")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert decode([b": ping\n\nid: 7\nretry: 10\n\n"]) == []


def test_named_events() -> None:
    assert decode([b"event: content_block_delta\ndata: {}\n\n"]) == [
        ServerSentEvent("content_block_delta", "{}")
    ]


@given(st.lists(st.integers(min_value=0, max_value=len(REAL_STREAM)), max_size=40))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [
        REAL_STREAM[a:b] for a, b in zip([0, *points], [*points, len(REAL_STREAM)], strict=False)
    ]
    assert decode(pieces) == EXPECTED


def test_a_lone_cr_ends_its_event_even_before_the_next_line_ends() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []  # the second CR may yet be half a CRLF
    assert decoder.feed(b"data: b") == [ServerSentEvent("message", "a")]
    assert decoder.flush() == [ServerSentEvent("message", "b")]


def test_a_long_line_in_many_pieces_is_one_line() -> None:
    piece = b"x" * 65536
    pieces = [b"data: ", *[piece] * 128, b"\n\n"]  # 8 MiB, under the cap
    [event] = decode(pieces)
    assert len(event.data) == 128 * 65536 and set(event.data) == {"x"}


def test_a_line_past_the_cap_fails_the_stream() -> None:
    decoder = SSEDecoder()
    piece = b"x" * 2**20
    for _ in range(MAX_LINE_BYTES // len(piece)):
        assert decoder.feed(piece) == []
    with pytest.raises(UpstreamError, match="longer than 16 MiB"):
        decoder.feed(b"x")


def test_an_event_of_many_lines_past_the_cap_fails_the_stream() -> None:
    line = b"data: " + b"x" * 2**20 + b"\n"
    decoder = SSEDecoder()
    with pytest.raises(UpstreamError, match="event longer than"):
        for _ in range(MAX_LINE_BYTES // 2**20 + 1):
            decoder.feed(line)


def test_whether_any_event_was_seen() -> None:
    decoder = SSEDecoder()
    decoder.feed(b": keep-alive\n\nevent: ping\n\n")
    decoder.flush()
    assert not decoder.seen_event
    decoder.feed(b"data: x\n\n")
    assert decoder.seen_event

"""trigate's reader of a request head (`trigate.request_head`) against h11's own: the
same `Request`, or the same error, for any head, well formed or not."""

from __future__ import annotations

import h11
import h11._readers
import pytest
from h11._receivebuffer import ReceiveBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from trigate.request_head import read_request_head

# A name's bytes: h11's token characters, and each separator and control byte the
# grammar refuses in a name (RFC 9110's delimiters, space, tab, DEL, bytes past ASCII).
_NAME_BYTES = list(b"aZ09-!#$%&'*+.^_`|~" + b'@/(),;=?{}"[]\\<>' + b" \t\x00\x0b\x7f\x80\xff")
_NAMES = st.one_of(
    st.sampled_from(
        [b"Host", b"host", b"Content-Length", b"content-length", b"Transfer-Encoding",
         b"Connection", b"Authorization", b"x-stainless-os", b"Accept", b"bad name", b"",
         b"X-\xff", b"a:b"]
    ),
    st.lists(st.sampled_from(_NAME_BYTES), max_size=6).map(bytes),
)  # fmt: skip
# A value's bytes: those the grammar refuses (NUL, CR, and the whitespace other than space
# and tab that a bytes pattern's `\s` holds: VT, FF) and near misses it lets through (the
# \x1c-\x1f, NEL and NBSP that a str pattern's `\s` would hold, DEL, bytes past ASCII).
_VALUE_BYTES = list(b"a0 \t,\x00\r\x0b\x0c\x1c\x1f\x85\xa0\x7f\x80\xff")
_VALUES = st.one_of(
    st.sampled_from(
        [b"", b"80", b"0", b"080", b"80, 80", b"80,81", b" 12 ", b"chunked", b"Chunked",
         b"gzip", b"keep-alive", b"Bearer sk-1234", b"a\x00b", b"a\tb", b"a  b ",
         b"1" * 21, b"\xff\xfe", b"x\ry"]
    ),
    st.binary(max_size=12),
    st.lists(st.sampled_from(_VALUE_BYTES), max_size=8).map(bytes),
)  # fmt: skip
_LINE_ENDS = st.sampled_from([b"\r\n", b"\n", b"\r\r\n"])
_REQUEST_LINES = st.sampled_from(
    [b"POST /v1/chat/completions HTTP/1.1", b"GET / HTTP/1.0", b"GET /x HTTP/1.1",
     b"G@T / HTTP/1.1", b"GET  / HTTP/1.1", b"GET / HTTP/2", b"", b"GET /\x7f HTTP/1.1"]
)  # fmt: skip


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    lines = [draw(_REQUEST_LINES)]
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from([b" folded", b"\tfolded", b"no colon"])))
            continue
        space = draw(st.sampled_from([b"", b" ", b"\t", b"  "]))
        trailing = draw(st.sampled_from([b"", b" "]))
        lines.append(draw(_NAMES) + b":" + space + draw(_VALUES) + trailing)
    ends = [draw(_LINE_ENDS) for _ in lines]
    return b"".join(line + end for line, end in zip(lines, ends, strict=True)) + b"\r\n"


def _read(reader: object, head: bytes) -> tuple[object, ...]:
    buffer = ReceiveBuffer()
    buffer += head
    try:
        request = reader(buffer)  # type: ignore[operator]
    except h11.LocalProtocolError as error:
        return ("error", str(error), error.error_status_hint)
    if request is None:
        return ("incomplete",)
    assert isinstance(request, h11.Request)
    return (
        request.method,
        request.target,
        request.http_version,
        request.headers._full_items,
        bytes(buffer),
    )


@settings(max_examples=1000, deadline=None)
@given(heads())
def test_any_head_reads_as_h11_reads_it(head: bytes) -> None:
    assert _read(read_request_head, head) == _read(h11._readers.maybe_read_from_IDLE_client, head)


# Where one byte goes in a field line: at the start, in the middle and at the end of its
# name, then of its value (whose ends are stripped of spaces and tabs, so a byte there is
# read differently from one in the middle).
_PLACES = [b"%sx-b: v", b"x-%sb: v", b"x-b%s: v", b"x-b: %sab", b"x-b: a%sb", b"x-b: ab%s"]


@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
@pytest.mark.parametrize("place", _PLACES)
def test_each_byte_in_each_place_of_a_field_line_reads_as_h11_reads_it(
    place: bytes, end: bytes
) -> None:
    """Every byte, not a sample: the translation tables that check names and values
    decide per byte, so one wrong entry shows only where that very byte is sent."""
    differing = []
    for byte in range(256):
        line = place.replace(b"%s", bytes([byte])) + end
        for head in (
            b"GET / HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n",
            b"GET / HTTP/1.1" + end + line + b"Host: a\r\n\r\n",
        ):
            ours = _read(read_request_head, head)
            if ours != _read(h11._readers.maybe_read_from_IDLE_client, head):
                differing.append((byte, head, ours))
    assert differing == []


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-length: 2\r\n\r\n{}",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: a\r\n  folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\nbad line\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 1, 2\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\n",
        b"\x16\x03\x01\x02\x00\x01",
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: " + b"1" * 20 + b"\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: " + b"1" * 21 + b"\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: a\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length:\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\nx-a: b\r\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost:\ta \t\r\nX-Empty:\r\n\r\n",
    ],
)
def test_heads_that_take_each_path_read_as_h11_reads_them(head: bytes) -> None:
    assert _read(read_request_head, head) == _read(h11._readers.maybe_read_from_IDLE_client, head)


def test_the_served_reader_is_installed() -> None:
    from trigate.request_head import read_request_heads

    read_request_heads()
    assert h11._readers.READERS[h11.CLIENT, h11.IDLE] is read_request_head

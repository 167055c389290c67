"""h11's reader of a request head, with the field lines checked in one pass.

h11 reads a request's field lines one at a time: a generator step, a regular
expression and a `groupdict` per line, then a second loop as its `Request` lowers each
name and reads the framing fields. The OpenAI SDK sends some eighteen fields with
every request, and that reading cost more than any other single step of taking a
request in (about 30 µs).

`read_request_head` takes the head from h11's buffer as h11's reader does and gives
the same `Request`, or raises the same `LocalProtocolError`: each field line is split
at its first colon and its value stripped of spaces and tabs, then all the names are
checked at once against h11's `token`, and all the values against its `field_value`,
by a pass of C each (`_NAME_TABLE`, `_VALUE_TABLE`), where one `findall` of h11's own
`header_field` expression over the lines cost some 4 thousand instructions a field.
Whatever that path does not decide
exactly as h11 would (a folded line, a line the grammar refuses, a Transfer-Encoding,
a Content-Length that is not one plain number) goes through h11's own functions.
`read_request_heads` installs it in h11's table of readers for this process, as
`serving.bound_chunk_sizes` installs the chunked-body reader; the h11 upper bound in
pyproject.toml and tests/test_hypercorn_overrides.py guard both.

A search of bytes on the request path is `find(...) >= 0`, not `in`: Python 3.11's
`bytes.__contains__` first tries its operand as an integer (a byte's value), and a bytes
operand fails that with a formatted `TypeError`, raised and cleared: some 2,400
instructions a search where `find` costs 1,300 (eight such searches a request).
"""

from __future__ import annotations

import re
from typing import Any, cast

import h11
import h11._readers
from h11._headers import Headers, normalize_and_validate
from h11._receivebuffer import ReceiveBuffer
from h11._util import validate

# h11's `token` (a field name's bytes), each kept as itself, as is the newline that joins
# the names; any other byte becomes NUL.
_TOKEN_BYTES = b"-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAME_TABLE = bytes(byte if byte in _TOKEN_BYTES + b"\n" else 0 for byte in range(256))
# What h11's `field_value` refuses in a value stripped of spaces and tabs at its ends: NUL
# and the whitespace that is neither a space nor a tab (`[^\x00\s]` between `[ \t]+`),
# each made NUL. A newline only joins the values.
_VALUE_TABLE = bytes(0 if byte in b"\x00\r\x0b\x0c" else byte for byte in range(256))
# h11's `_headers.CONTENT_LENGTH_MAX_DIGITS` and `_content_length_re`, in one expression.
_PLAIN_LENGTH = re.compile(rb"[0-9]{1,20}")
# The same tables and expression, for the lean path's reading (`trigate.http1`): the
# name table that also lower-cases, as h11 keeps names, one pass for both.
LOWERED_NAME_TABLE = _NAME_TABLE.lower()
VALUE_TABLE = _VALUE_TABLE
PLAIN_LENGTH = _PLAIN_LENGTH


def read_request_head(buf: ReceiveBuffer) -> h11.Request | None:
    """h11's `maybe_read_from_IDLE_client`: the request whose head `buf` holds whole,
    None while it holds only part of one."""
    lines = buf.maybe_extract_lines()
    if lines is None:
        if buf.is_next_line_obviously_invalid_request_line():
            raise h11.LocalProtocolError("illegal request line")
        return None
    if not lines:
        raise h11.LocalProtocolError("no request line received")
    # h11 reads its lines as bytearrays, and names them so in its errors (its types say bytes).
    line = cast(bytes, lines[0])
    matches = validate(h11._readers.request_line_re, line, "illegal request line: {!r}", line)
    return h11.Request(headers=_headers(lines[1:]), _parsed=True, **matches)


def _headers(lines: list[bytearray]) -> Headers:
    """The head's fields as h11 reads and normalizes them."""
    if not lines:
        return Headers([])
    items = []
    # The lines as bytes (h11 keeps bytearrays); none holds a newline, which split them.
    for line in b"\n".join(lines).split(b"\n"):
        name, colon, value = line.partition(b":")
        if not name or not colon:
            return _as_h11_reads(lines)  # folded onto the line before, or no field
        items.append((name, name.lower(), value.strip(b" \t")))
    names = b"\n".join([name for name, _, _ in items])
    values = b"\n".join([value for _, _, value in items])
    if (
        names.translate(_NAME_TABLE).find(b"\x00") >= 0
        or values.translate(_VALUE_TABLE).find(b"\x00") >= 0
    ):
        # A line the grammar refuses: h11's own reading raises the error it raises.
        return _as_h11_reads(lines)
    lengths = [value for _, lowered, value in items if lowered == b"content-length"]
    if (
        len(lengths) > 1
        or (lengths and _PLAIN_LENGTH.fullmatch(lengths[0]) is None)
        or any(lowered == b"transfer-encoding" for _, lowered, _ in items)
    ):
        return normalize_and_validate([(name, value) for name, _, value in items], _parsed=True)
    return Headers(items)


def _as_h11_reads(lines: list[bytearray]) -> Headers:
    decoded = list(h11._readers._decode_header_lines(cast("list[bytes]", lines)))
    return normalize_and_validate(decoded, _parsed=True)


def read_request_heads() -> None:
    """Make h11 read every request head, in this process, with `read_request_head`."""
    readers = cast("dict[Any, Any]", h11._readers.READERS)
    readers[h11.CLIENT, h11.IDLE] = read_request_head

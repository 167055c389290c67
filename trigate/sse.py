"""An incremental decoder for server-sent events.

Upstream bytes arrive split at arbitrary points: mid-line, mid-`\\r\\n`, even in
the middle of a multi-byte UTF-8 character. The decoder only ever decodes
complete lines, so none of these splits can corrupt an event.

A line still incomplete is kept as a list of the pieces that hold it, joined
once when its end arrives, so a long line costs time linear in its length
however finely it is split. A line or an event longer than `MAX_LINE_BYTES`
fails the stream: an upstream that never ends a line must not hold a stream's
memory without bound.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

from trigate.errors import UpstreamError

# Room for the largest real events (a base64 image inline in one Gemini event is a few
# MiB), while bounding what one stream may make the gateway hold.
MAX_LINE_BYTES = 16 * 1024 * 1024


# A read that holds whole events only, each a single `data: {...}` line and its blank line
# (LF only, no comments, names or ids), perhaps ending with OpenAI's `data: [DONE]`: what
# OpenAI-compatible upstreams send. Group 1 is the events before `[DONE]`; group 2 is
# `[DONE]`'s, if there.
_PLAIN_EVENTS = re.compile(rb"((?:data: \{[^\r\n]*\}\n\n)*)(data: \[DONE\]\n\n)?")
_PLAIN_PREFIX = len(b"data: ")


class ServerSentEvent(NamedTuple):
    event: str
    data: str


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events completed so far."""

    __slots__ = ("_data", "_data_size", "_event", "_held_cr", "_pending", "_size", "seen_event")

    def __init__(self) -> None:
        # The pieces of the line in progress, `_size` bytes in all.
        self._pending: list[bytes] = []
        self._size = 0
        # The last piece ended with a CR that may be the first half of a CRLF.
        self._held_cr = False
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        # Whether any event has been completed: a stream that had none said nothing.
        self.seen_event = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if not self._held_cr and b"\n" not in chunk and b"\r" not in chunk:
            self._hold(chunk)
            return []
        buffer = b"".join([*self._pending, chunk]) if self._pending else chunk
        self._pending, self._size, self._held_cr = [], 0, False
        held = buffer.endswith(b"\r")
        if held:
            buffer = buffer[:-1]
        lines = _normalized(buffer).split(b"\n")
        self._hold(lines.pop())
        if held:
            self._pending.append(b"\r")
            self._held_cr = True
        return self._process(lines)

    def plain(self, chunk: bytes) -> re.Match[bytes] | None:
        """`chunk` as plain events (`_PLAIN_EVENTS`), when it holds only those and no event
        is in progress; None otherwise, and `feed` must then take it. One match in C, where
        `feed` takes each line apart in Python: a relay can pass such a read on as it came."""
        if self._pending or self._data or self._event:
            return None
        match = _PLAIN_EVENTS.fullmatch(chunk)
        if match is not None and chunk:
            self.seen_event = True
        return match

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: a last event without its blank line still counts."""
        rest = b"".join(self._pending)
        self._pending, self._size, self._held_cr = [], 0, False
        lines = _normalized(rest).split(b"\n") if rest else []
        return self._process([*lines, b""])

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        self._size += len(piece)
        if self._size > MAX_LINE_BYTES:
            raise _too_long("line")
        self._pending.append(piece)

    def _process(self, lines: list[bytes]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(ServerSentEvent(self._event or "message", "\n".join(self._data)))
                    self.seen_event = True
                self._data, self._data_size = [], 0
                self._event = ""
            elif line[0] != 0x3A:  # lines starting with ":" are comments and keep-alives
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_size += len(value)
            if self._data_size > MAX_LINE_BYTES:
                raise _too_long("event")
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")


def plain_payloads(events: bytes) -> Iterator[bytes]:
    """The `data` of each plain event (`SSEDecoder.plain`'s group 1): a JSON object each."""
    for event in events.split(b"\n\n"):
        if event:
            yield event[_PLAIN_PREFIX:]


def _normalized(buffer: bytes) -> bytes:
    """CRLF and lone CR line endings as LF."""
    if b"\r" not in buffer:
        return buffer
    return buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _too_long(what: str) -> UpstreamError:
    return UpstreamError(
        f"The upstream sent a stream {what} longer than {MAX_LINE_BYTES // 2**20} MiB."
    )

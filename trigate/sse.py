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

from collections.abc import Iterator
from typing import NamedTuple

from trigate.errors import UpstreamError

# Room for the largest real events (a base64 image inline in one Gemini event is a few
# MiB), while bounding what one stream may make the gateway hold.
MAX_LINE_BYTES = 16 * 1024 * 1024


# OpenAI's last event, which says the stream is complete.
DONE_EVENT = b"data: [DONE]\n\n"
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
        # `find`, not `in`: see `trigate.request_head`.
        if not self._held_cr and chunk.find(b"\n") < 0 and chunk.find(b"\r") < 0:
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

    def plain(self, chunk: bytes) -> tuple[int, bool] | None:
        """How much of `chunk` is plain events, when no event is in progress: whole events,
        each a single `data: {...}` line and its blank line (LF only, no comments, names
        or ids), what OpenAI-compatible upstreams send. Returns (end, done): `chunk[:end]`
        is plain events, and `done` says OpenAI's `data: [DONE]` follows them; what else
        follows must go to `feed`. None when `chunk` starts with no plain event.

        A relay can pass plain events on as they came. The checks are a few searches of
        the bytes in C, where `feed` takes each line apart in Python."""
        if self._pending or self._data or self._event:
            return None
        end = len(chunk)
        done = False
        if not chunk.endswith(b"}\n\n"):
            done = chunk.endswith(DONE_EVENT)
            end = end - len(DONE_EVENT) if done else chunk.rfind(b"}\n\n") + 3
        if end > 0 and not is_plain(chunk, end):
            return None
        if end < 3 and not done:
            return None
        self.seen_event = True
        return end, done

    def whole_plain(self, chunk: bytes) -> bool:
        """Whether `chunk` is plain events (`plain`) and nothing else, `[DONE]` included:
        the common read of a stream, checked with the fewest calls."""
        if is_plain(chunk, len(chunk)) and not (self._pending or self._data or self._event):
            self.seen_event = True
            return True
        return False

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


def is_plain(chunk: bytes, end: int) -> bool:
    """Whether `chunk[:end]` is whole plain events: it starts with `data: {`, ends with `}`
    and a blank line, and has no line breaks (`\\r` is one too) but the blank lines after
    each event, every one between a `}` and the next `data: {`."""
    if not (chunk.startswith(b"data: {") and chunk.endswith(b"}\n\n", 0, end)):
        return False
    breaks = chunk.count(b"\n", 0, end)
    # Two breaks are one event's (a read of one event, as a paced stream's are): no
    # search for the boundaries between events.
    return (breaks == 2 or breaks == 2 * chunk.count(b"}\n\ndata: {", 0, end) + 2) and chunk.find(
        b"\r"
    ) < 0


def plain_payloads(events: bytes) -> Iterator[bytes]:
    """The `data` of each of plain events (`SSEDecoder.plain`): a JSON object each."""
    for event in events.split(b"\n\n"):
        if event:
            yield event[_PLAIN_PREFIX:]


def plain_array(events: bytes) -> bytes:
    """Plain events' objects as one JSON array, to be read in one call: each event is one
    `data: {...}` line, so `}`, a blank line and `data: {` is always between two."""
    return b"[" + events[_PLAIN_PREFIX:-2].replace(b"}\n\ndata: {", b"},{") + b"]"


def _normalized(buffer: bytes) -> bytes:
    """CRLF and lone CR line endings as LF."""
    if buffer.find(b"\r") < 0:
        return buffer
    return buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _too_long(what: str) -> UpstreamError:
    return UpstreamError(
        f"The upstream sent a stream {what} longer than {MAX_LINE_BYTES // 2**20} MiB."
    )

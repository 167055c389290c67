"""A cache entry as kept (bytes in the local LRU or in Redis) and as read.

An entry is a whole answer in OpenAI's shape (which serves both kinds of request), an
answer in the client's own API (a native whole answer, or a native stream's events, each
serving its own kind only), or one embeddings item. It is kept as its fields in JSON on
one line, then, for a whole answer, the answer's JSON as it was encoded when kept: a hit
sends those bytes as they are (`Completion.raw`), with no encoding of its own. orjson
writes no raw newline, so the first one ends the fields.

A whole answer in OpenAI's shape also has its usage and id on the fields' line, read
from its bytes when kept: what a hit reads of it (its metrics, its spend row, its
headers), so that the answer itself is parsed only when something reads more (a hook, a
stream's replay, another surface's rendering: `KeptCompletion`). Parsing it was a hit's
largest piece of work of its own. With them goes the bytes' CRC-32: bytes that do not
match it (damaged, or kept by another writer) are parsed as before, never sent unread.
An entry without these fields (a gateway's from before them) is parsed at once, as then;
one with them is read alike by such a gateway (it parses the answer and ignores them).
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from trigate.cache.shapes import native_events, replay_chunks
from trigate.clock import wall_time
from trigate.providers import Completion
from trigate.usage import Usage, upstream_usage

# Entries of another version (an older gateway's) are misses, then kept anew. A whole
# answer's usage, id and CRC-32 are optional fields of this version: gateways with and
# without them share entries (Redis, a fleet in a rolling deploy) and serve them alike.
ENTRY_VERSION = 2
# The fields that hold a whole answer, kept after the line of the other fields.
_BODIES = ("answer", "native")


class Replay:
    """A cached answer as a stream: its chunks in one batch, then the end; a native
    stream's events as they came."""

    def __init__(self, answer: dict[str, Any] | None, events: list[Any] | None = None) -> None:
        self.native = events is not None
        self.first: list[Any] = native_events(events) if events is not None else []
        if answer is not None:
            self.first = list(replay_chunks(answer))

    def __aiter__(self) -> Replay:
        return self

    async def __anext__(self) -> list[Any]:
        raise StopAsyncIteration

    def waits_next(self) -> bool:
        return False

    async def aclose(self) -> None:
        pass


class KeptCompletion(Completion):
    """A whole answer in OpenAI's shape served from its entry: its bytes go to the client
    as they are (`raw`), its usage and id come from the entry's fields, and its body is
    parsed from the bytes only once something reads it."""

    __slots__ = ("_parsed", "_usage", "answer_id", "billed")

    def __init__(
        self,
        raw: bytes,
        usage: dict[str, Any] | None,
        answer_id: str | None,
        billed: Usage | None,
    ) -> None:
        self._parsed: dict[str, Any] | None = None
        self._usage = usage
        self.answer_id = answer_id
        # The usage billed, as the upstream reported it (`usage`), found once per entry;
        # None: the meter settles it (the entry's usage lacks a count).
        self.billed = billed
        self.raw = raw
        self.native = False
        self.native_usage = None
        self.media_type = None

    @property
    def body(self) -> dict[str, Any]:
        parsed = self._parsed
        if parsed is None:
            assert self.raw is not None, "kept with its bytes"
            parsed = self._parsed = _answer_of(self.raw)
        return parsed

    @body.setter
    def body(self, value: dict[str, Any]) -> None:
        self._parsed = value

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage if self._parsed is None else super().usage

    @property
    def unread(self) -> bool:
        """Its body not parsed yet: nothing read it, so nothing changed it."""
        return self._parsed is None


def _answer_of(raw: bytes) -> dict[str, Any]:
    """A kept answer's body; `decode` let in unread only the bytes `encode` kept, which
    it had read as a JSON object (others are read as an empty answer)."""
    answer = _json_object(raw)
    return answer if answer is not None else {}


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """`raw` read as JSON, if it is an object."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class Entry:
    """An entry as read, from its fields (`encode`'s) and, for a whole answer, the
    answer's own bytes (`unread` while they are not parsed: `KeptCompletion`)."""

    __slots__ = (
        "_tokens", "answer", "answer_id", "at", "billed", "events", "item", "native", "raw",
        "unread", "usage",
    )  # fmt: skip

    def __init__(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        at = data.get("at")
        # When it was kept (0: unknown, as old as can be), for a request's `max_age`.
        self.at = float(at) if isinstance(at, int | float) else 0.0
        answer, native, events = data.get("answer"), data.get("native"), data.get("events")
        self.answer = answer if isinstance(answer, dict) else None
        self.native = native if isinstance(native, dict) else None
        self.events = events if isinstance(events, list) else None
        usage, item = data.get("usage"), data.get("item")
        self.usage = usage if isinstance(usage, dict) else None
        self.item = item if isinstance(item, dict) else None
        self.raw = raw
        self.unread = False
        self.answer_id: str | None = None
        self._tokens = -1
        # A whole answer's usage as billed, when its entry is read unparsed (`_whole_answer`).
        self.billed: Usage | None = None

    def serve(self, stream: bool) -> Completion | Replay | None:
        if self.unread:
            assert self.raw is not None, "an unread answer is its bytes"
            if stream:
                return Replay(_answer_of(self.raw))
            # Its own usage: an entry may serve many hits (`ResponseCache`'s decoded
            # entries), and nothing one does to its answer may reach the next.
            usage = dict(self.usage) if self.usage is not None else None
            return KeptCompletion(self.raw, usage, self.answer_id, self.billed)
        if self.answer is not None:
            return Replay(self.answer) if stream else Completion(self.answer, self.raw)
        if stream:
            return Replay(None, self.events) if self.events is not None else None
        if self.native is not None:
            return Completion(self.native, self.raw, native=True, native_usage=self.usage)
        return None

    def fresh(self, max_age: float | None) -> bool:
        """Whether it is no older than `max_age` seconds (any age, for None)."""
        return max_age is None or wall_time() - self.at <= max_age

    @property
    def shareable(self) -> bool:
        """Whether it may serve many hits as it is: a whole answer left unread, whose every
        hit serves its own `KeptCompletion` of its bytes. A parsed answer is a dict a hook
        may change in place, so each hit reads its own."""
        return self.unread

    def held_bytes(self) -> int:
        """Bytes it holds apart from the value it was read from: its answer's, a copy."""
        return len(self.raw) if self.raw is not None else 0

    def tokens(self) -> int:
        """The tokens its answer says it took; found once, for an entry the worker's
        memory keeps serves many hits (its usage is never changed: `serve` copies it)."""
        found = self._tokens
        if found < 0:
            usage = self.usage or (self.answer or {}).get("usage")
            total = usage.get("total_tokens") if isinstance(usage, dict) else None
            found = self._tokens = total if isinstance(total, int) and total > 0 else 0
        return found


def encode(fields: dict[str, Any], raw: bytes | None = None) -> bytes:
    """An entry of `fields` (`Entry`'s), as kept now; a whole answer's `raw` bytes, when
    given (the upstream's own, of that very answer), are kept as they are, not encoded
    again: a hit then sends what the miss sent."""
    body = next((name for name in _BODIES if name in fields), None)
    head: dict[str, Any] = {"v": ENTRY_VERSION, "at": wall_time()}
    head.update((name, value) for name, value in fields.items() if name != body)
    if body is None:
        return orjson.dumps(head)
    head["body"] = body
    if body == "answer":
        raw = _kept_answer(head, fields[body], raw)
    return orjson.dumps(head) + b"\n" + (raw if raw is not None else orjson.dumps(fields[body]))


def _kept_answer(head: dict[str, Any], answer: Any, raw: bytes | None) -> bytes | None:
    """A whole answer's bytes as kept (its `raw` bytes, else None: its own encoding), with
    what a hit reads of them put in `head`: their usage and id (the spend row's
    `response_id`) and CRC-32. Read from the bytes kept, not from `answer`: a hook may
    have changed the body in place without saying so while the client got `raw`, which
    a hit sends again, so it must report what they say. Bytes that are no JSON object
    (none the upstream sent: it was read as one) are not kept: the body's encoding is."""
    if raw is not None:
        sent = _json_object(raw)
        answer, raw = (sent, raw) if sent is not None else (answer, None)
    if not isinstance(answer, dict):
        return raw
    kept = raw if raw is not None else orjson.dumps(answer)
    usage, found = answer.get("usage"), answer.get("id")
    if isinstance(usage, dict):
        head["usage"] = usage
    if isinstance(found, str) and found:
        head["id"] = found
    head["crc"] = zlib.crc32(kept)
    return kept


def decode(value: bytes | None, max_age: float | None) -> Entry | None:
    """The entry kept as `value`, unless it is absent, older than `max_age` seconds, of
    another version, or not an entry at all."""
    if value is None:
        return None
    line, _, rest = value.partition(b"\n")
    try:
        head = orjson.loads(line)
        if not isinstance(head, dict) or head.get("v") != ENTRY_VERSION:
            return None
        body = head.get("body")
        if body == "native":
            head[body] = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None
    if max_age is not None and wall_time() - _kept_at(head) > max_age:
        return None
    if body == "answer":
        return _whole_answer(head, rest)
    return Entry(head, rest if body in _BODIES else None)


def _kept_at(head: dict[str, Any]) -> float:
    at = head.get("at")
    return float(at) if isinstance(at, int | float) else 0.0


def _whole_answer(head: dict[str, Any], raw: bytes) -> Entry | None:
    """The entry of a whole answer in OpenAI's shape, what most hits read: `Entry`'s
    fields set straight, for a hit costs what its reading does, and its answer left
    unparsed, when its bytes are those `encode` kept (their CRC-32 is the one it wrote
    beside them: a JSON object, as it read them, and whitespace about them kept as the
    upstream sent it). Other bytes are parsed, as a gateway without these fields did."""
    if head.get("crc") != zlib.crc32(raw):
        return _parsed_answer(raw, head)
    entry = Entry.__new__(Entry)
    entry.answer = entry.native = entry.events = entry.item = None
    usage, found = head.get("usage"), head.get("id")
    entry.usage = usage if isinstance(usage, dict) else None
    entry.answer_id = found if isinstance(found, str) and found else None
    entry.at = _kept_at(head)
    entry.raw = raw
    entry.unread = True
    entry._tokens = -1
    # Found once per entry read: the worker's memory keeps it for every hit it serves.
    entry.billed = upstream_usage(entry.usage) if entry.usage is not None else None
    return entry


def _parsed_answer(raw: bytes, head: dict[str, Any]) -> Entry | None:
    """A whole answer's entry read from its bytes alone (an older gateway's, or bytes
    that are not what the writer kept, whose fields would not be theirs) and when it was
    kept (`at`, which every version wrote, for a request's `s-maxage`): no JSON object,
    no answer, a miss."""
    answer = _json_object(raw)
    return Entry({"answer": answer, "at": head.get("at")}, raw) if answer is not None else None

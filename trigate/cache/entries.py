"""A cache entry as kept (bytes in the local LRU or in Redis) and as read.

An entry is a whole answer in OpenAI's shape (which serves both kinds of request), an
answer in the client's own API (a native whole answer, or a native stream's events, each
serving its own kind only), or one embeddings item. It is kept as its fields in JSON on
one line, then, for a whole answer, the answer's JSON as it was encoded when kept: a hit
sends those bytes as they are (`Completion.raw`), with no encoding of its own. orjson
writes no raw newline, so the first one ends the fields.
"""

from __future__ import annotations

from typing import Any

import orjson

from trigate.cache.shapes import native_events, replay_chunks
from trigate.clock import wall_time
from trigate.providers import Completion

# Entries of another version (an older gateway's) are misses, then kept anew.
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


class Entry:
    """An entry as read, from its fields (`encode`'s) and, for a whole answer, the
    answer's own bytes."""

    __slots__ = ("answer", "events", "item", "native", "raw", "usage")

    def __init__(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        answer, native, events = data.get("answer"), data.get("native"), data.get("events")
        self.answer = answer if isinstance(answer, dict) else None
        self.native = native if isinstance(native, dict) else None
        self.events = events if isinstance(events, list) else None
        usage, item = data.get("usage"), data.get("item")
        self.usage = usage if isinstance(usage, dict) else None
        self.item = item if isinstance(item, dict) else None
        self.raw = raw

    def serve(self, stream: bool) -> Completion | Replay | None:
        if self.answer is not None:
            return Replay(self.answer) if stream else Completion(self.answer, self.raw)
        if stream:
            return Replay(None, self.events) if self.events is not None else None
        if self.native is not None:
            return Completion(self.native, self.raw, native=True, native_usage=self.usage)
        return None

    def tokens(self) -> int:
        usage = self.usage or (self.answer or {}).get("usage")
        total = usage.get("total_tokens") if isinstance(usage, dict) else None
        return total if isinstance(total, int) and total > 0 else 0


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
    return orjson.dumps(head) + b"\n" + (raw if raw is not None else orjson.dumps(fields[body]))


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
        if body in _BODIES:
            head[body] = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None
    if max_age is not None and wall_time() - float(head.get("at", 0)) > max_age:
        return None
    if body == "answer":
        return _whole_answer(head, rest)
    return Entry(head, rest if body in _BODIES else None)


def _whole_answer(head: dict[str, Any], raw: bytes) -> Entry:
    """The entry of a whole answer in OpenAI's shape, what most hits read: `Entry`'s
    fields set straight, for a hit costs what its reading does (an answer kept that is
    not a JSON object is none at all, as `Entry` reads it)."""
    entry = Entry.__new__(Entry)
    answer = head["answer"]
    entry.answer = answer if isinstance(answer, dict) else None
    entry.native = entry.events = entry.item = None
    usage = head.get("usage")
    entry.usage = usage if isinstance(usage, dict) else None
    entry.raw = raw
    return entry

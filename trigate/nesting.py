"""How deeply a JSON value nests, checked without recursion.

orjson reads at most 1024 levels and writes at most 254, and Python's stack holds about
1000 frames: a value a client sent (and orjson read) may still be one that no answer,
row or hash can be written from, and that a recursive walk (a guardrail's, a token
count's, a translation's, a cache key's) cannot finish. So every JSON value a client
sends is bounded where it is decoded, at `MAX_NESTING` levels a field (a request body's
every field, tool-call arguments in their strings), and everything after may walk it.
"""

from __future__ import annotations

from typing import Any

import orjson

# The deepest a client's field may nest: far past any real request's (a tool's JSON
# schema, the deepest in practice, is a dozen levels), far short of the limits above.
MAX_NESTING = 64


class TooDeep(orjson.JSONDecodeError):
    """JSON text nested deeper than its bound: to its reader, JSON it cannot take, as
    orjson's own errors are (each `except orjson.JSONDecodeError` handles it too)."""


def deeper_than(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether `value` nests lists and objects more than `limit` deep; iterative, so that
    no value can exhaust the check's own stack."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        if children and depth > limit:
            return True
        # Only containers are pushed: a request's many strings and numbers cost no turn.
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def may_nest_deeper(text: bytes | bytearray | str, limit: int) -> bool:
    """Whether JSON `text` may nest more than `limit` deep: each level opens a bracket,
    so text with no more brackets than that cannot (one in a string is counted too,
    which errs only toward a walk). Two counts in C, where a walk of the parsed value
    would visit each of its containers: a chat request's body has a few dozen brackets."""
    if isinstance(text, str):
        return text.count("[") + text.count("{") > limit
    return text.count(b"[") + text.count(b"{") > limit


def too_deep_field(body: dict[str, Any], text: bytes | bytearray | str) -> str | None:
    """The first field of `body` (decoded from `text`) nested more than `MAX_NESTING`
    levels deep, if any."""
    if not may_nest_deeper(text, MAX_NESTING + 1):
        return None
    return next((name for name, value in body.items() if deeper_than(value)), None)


def loads_bounded(text: bytes | bytearray | str, limit: int = MAX_NESTING) -> Any:
    """JSON a client sent in a string (tool-call arguments, a tool's result), decoded as
    orjson does, or TooDeep when it nests more than `limit` deep: a body's bound
    (`trigate.api.jsonio`) cannot see into its strings."""
    value = orjson.loads(text)
    if may_nest_deeper(text, limit) and deeper_than(value, limit):
        raise TooDeep(f"nested more than {limit} levels deep", "", 0)
    return value

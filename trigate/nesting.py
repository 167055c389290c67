"""How deeply a JSON value nests, checked without recursion.

orjson writes at most 254 levels and reads at most 1024, so a value a client sent
(and orjson read) may still be one no answer, row or hash can be written from. What
the gateway keeps or echoes is bounded well below that, before anything is done with it.
"""

from __future__ import annotations

from typing import Any

# The deepest nesting the gateway keeps or echoes: far past any real request's.
MAX_NESTING = 64


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

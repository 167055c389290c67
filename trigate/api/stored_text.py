"""What the admin API stores or looks up as text holds no NUL character.

PostgreSQL's text holds none: a NUL in a key's alias, a team's id or a `?key_alias=`
filter would fail the statement, a 500 for the client's input. So a Quart route's JSON
body, query string and path (the admin API, files and batches, stored responses, the
web UI's forms) are refused with a 400 naming the field when any text in them holds
one, on every database alike. The model routes forward what they are sent; what of it
the gateway stores is made storable where it is written (the spend ledger's
`storable_text`), and what it looks up by (a customer's id, a stored response's) is found
to match nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from trigate.errors import InvalidRequest

NUL = "\x00"
# How a NUL appears in JSON text: orjson refuses a raw one in a string.
_ESCAPED_NUL = b"\\u0000"


def check_body(body: dict[str, Any], raw: bytes | bytearray) -> None:
    """No string of a JSON body (its keys included) holds a NUL; a body whose text holds
    no escaped NUL is passed without a walk."""
    if _ESCAPED_NUL not in raw:
        return
    for name, value in body.items():
        if _holds_nul(name) or _holds_nul(value):
            _refuse(name)


def check_parameters(named: Iterable[tuple[str, Any]]) -> None:
    """No query parameter or path segment (name, value) holds a NUL."""
    for name, value in named:
        if NUL in name or (isinstance(value, str) and NUL in value):
            _refuse(name)


def _holds_nul(value: Any) -> bool:
    """Whether any string in a JSON value holds a NUL; iterative (see trigate.nesting)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _refuse(name: str) -> None:
    shown = name.replace(NUL, "\\u0000")
    raise InvalidRequest(
        f"`{shown}` holds a NUL character (\\u0000), which no stored text may hold.",
        param=shown,
    )

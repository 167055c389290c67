"""The checks a translator makes of the client's fields before it reads them.

A translator reads the client's request to rebuild it in another API's shapes. Each
field it reads is checked here first, so a field of the wrong shape is the client's
400 naming it, and any other exception out of a translator is a bug of the gateway's,
answered as a logged 500 with its traceback, never passed off as the client's error.
"""

from __future__ import annotations

from typing import Any

from trigate.errors import InvalidRequest


def malformed(where: str, expected: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"`{where}` must be {expected}.", param=param)


def an_object(value: Any, where: str, param: str = "messages") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise malformed(where, "an object", param)
    return value


def a_list(value: Any, where: str, param: str = "messages") -> list[Any]:
    if not isinstance(value, list):
        raise malformed(where, "an array", param)
    return value


def objects(value: Any, where: str, param: str = "messages") -> list[dict[str, Any]]:
    """A list whose every entry is an object; None is an empty list."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise malformed(where, "an array of objects", param)
    return value


def a_string(value: Any, where: str, param: str = "messages") -> str:
    if not isinstance(value, str):
        raise malformed(where, "a string", param)
    return value


def optional_string(value: Any, where: str, param: str = "messages") -> str | None:
    if value is not None and not isinstance(value, str):
        raise malformed(where, "a string", param)
    return value


def requested_format(response_format: Any) -> tuple[Any, Any]:
    """OpenAI's `response_format` as a translator reads it: its `type`, and for a
    `json_schema` one the schema it holds (None where it holds none)."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind != "json_schema":
        return kind, None
    spec = response_format.get("json_schema")
    return kind, spec.get("schema") if isinstance(spec, dict) else None


def strings(value: Any, where: str, param: str) -> list[str]:
    """A string or a list of strings, as a list (OpenAI's `stop`)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise malformed(where, "a string or an array of strings", param)
    return value

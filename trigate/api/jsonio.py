"""JSON bodies in and out: the Quart routes' responses and request bodies, and the
parser the model API shares, so that every route rejects a bad body with the same 400:
one that is no JSON object, or one with a field nested deeper than `MAX_NESTING`
(trigate.nesting), which no walk of it after need then guard against."""

from __future__ import annotations

from typing import Any

import orjson
from quart import Response, request

from trigate.api.stored_text import check_body
from trigate.errors import InvalidRequest
from trigate.nesting import MAX_NESTING, deeper_than, may_nest_deeper, too_deep_field

JSON = "application/json"


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type=JSON)


async def json_body() -> dict[str, Any]:
    """The body of the request Quart is serving, as a JSON object whose text holds no
    NUL (`trigate.api.stored_text`): what a Quart route reads of it, it stores or looks
    up by."""
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    body = parse_json_object(raw)
    check_body(body, raw)
    return body


def parse_json_object(raw: bytes | bytearray) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 that says what is wrong with it."""
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"The request body is not valid JSON: {error}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(body).__name__}.")
    check_nesting(body, raw)
    return body


def check_nesting(body: Any, raw: bytes | bytearray | str) -> None:
    """No field of `body` (decoded from `raw`) nests more than `MAX_NESTING` levels; a
    body that is no object (a pass-through's may be anything) no more than one more."""
    if not isinstance(body, dict):
        if may_nest_deeper(raw, MAX_NESTING + 1) and deeper_than(body, MAX_NESTING + 1):
            raise InvalidRequest(f"The request body is nested more than {MAX_NESTING} levels deep.")
        return
    field = too_deep_field(body, raw)
    if field is not None:
        raise InvalidRequest(
            f"`{field}` is nested more than {MAX_NESTING} levels deep.", param=field
        )

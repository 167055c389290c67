"""JSON bodies in and out: the Quart routes' responses and request bodies, and the
parser the model API shares, so that every route rejects a bad body with the same 400."""

from __future__ import annotations

from typing import Any

import orjson
from quart import Response, request

from trigate.errors import InvalidRequest

JSON = "application/json"


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type=JSON)


async def json_body() -> dict[str, Any]:
    """The body of the request Quart is serving, as a JSON object."""
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    return parse_json_object(raw)


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
    return body

"""Quart routes observed as the model API's are (trigate.exchanges): a route wrapped by
`observed` is handed its request's `Exchange` first, and however it ends (an answer, an
error in its envelope, a bug's 500, its client gone) the exchange is told, once.

The route's pattern (`/v1/files/<file_id>`) labels its metrics, never the path a
client sent, which would make a series of every id.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Response, request
from werkzeug.exceptions import HTTPException

from trigate.api.context import current_request
from trigate.api.model_api import from_http_exception
from trigate.errors import GatewayError
from trigate.exchanges import CLIENT_CLOSED, Exchange
from trigate.gateway import Gateway

# A route handler that takes its exchange before the route's own arguments.
ObservedHandler = Callable[..., Awaitable[Response]]


def observed(
    gateway: Gateway, operation: str
) -> Callable[[ObservedHandler], Callable[..., Awaitable[Response]]]:
    def wrap(handler: ObservedHandler) -> Callable[..., Awaitable[Response]]:
        @functools.wraps(handler)
        async def route(**arguments: Any) -> Response:
            rule = request.url_rule
            pattern = rule.rule if rule is not None else request.path
            exchange = Exchange(gateway.telemetry, current_request.get(), pattern, operation)
            try:
                response = await handler(exchange, **arguments)
            except GatewayError as error:
                exchange.finished(error.status, error)
                raise
            except HTTPException as error:  # Quart's own (a body over the size cap: 413)
                failure = from_http_exception(error)
                exchange.finished(failure.status, failure)
                raise
            except Exception:
                exchange.finished(500, None)  # the app's handler logs it, and answers 500
                raise
            except BaseException:
                exchange.finished(CLIENT_CLOSED, None, cancelled=True)
                raise
            exchange.finished(response.status_code, None)
            return response

        return route

    return wrap

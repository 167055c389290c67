"""The HTTP surface: a Quart-Trio app over one worker's `Gateway`, with the model API
(`model_api`) served in front of it.

Routes come in two conventions, on purpose, one for each server, and `routes` lists
them all. The model routes (chat, completions, embeddings, Messages, `POST
/v1/responses`) are the hot path: each is a surface on the one pipeline (`pipeline`),
served on raw ASGI by `ModelAPI` without Quart's per-request machinery. Every other
route needs Quart's request and URL map, and its module's `register(app, gateway)` adds
it to the app.
"""

from __future__ import annotations

import logging

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trigate.api.context import RequestScope
from trigate.api.mcp_endpoint import MCPEndpoint
from trigate.api.model_api import ModelAPI, error_reply, from_http_exception, unexpected_failure
from trigate.api.passthrough_routes import PassThrough
from trigate.api.pipeline import Pipeline
from trigate.api.routes import QUART_ROUTES, model_routes, websocket_routes
from trigate.api.stored_text import check_parameters
from trigate.api.url_rules import LazyBuilderRule
from trigate.errors import GatewayError, InvalidRequest
from trigate.gateway import Gateway
from trigate.store import Conflict, Refused

logger = logging.getLogger("trigate.api")


def create_app(gateway: Gateway) -> QuartTrio:
    """The ASGI app serving `gateway`; its lifespan starts and stops the gateway."""
    app = QuartTrio("trigate")
    app.url_rule_class = LazyBuilderRule
    settings = gateway.config.general_settings
    app.config.update(
        MAX_CONTENT_LENGTH=gateway.config.max_request_bytes,
        BODY_TIMEOUT=settings.request_body_timeout,
        RESPONSE_TIMEOUT=settings.response_timeout,
    )
    app.before_serving(gateway.start)
    app.after_serving(gateway.stop)

    @app.before_serving
    async def start_background_tasks() -> None:
        # In the lifespan's nursery; `gateway.stop` cancels them before the store closes.
        await app.nursery.start(gateway.run_background)

    # Quart's routes, then the model API's in front of them: two conventions, see above.
    for register in QUART_ROUTES:
        register(app, gateway)
    _register_error_handlers(app)
    app.before_request(_no_nul_in_parameters)
    pipeline = Pipeline(gateway)
    passthrough = PassThrough(
        app.asgi_app,
        gateway,
        max_body_bytes=gateway.config.max_request_bytes,
        body_timeout=settings.request_body_timeout,
    )
    # The MCP endpoint (`/mcp`, `/mcp/{server}`: trigate.mcp_gateway) behind the model API,
    # whose routes it never shares: a model call passes through one app less (some 2
    # thousand instructions).
    mcp = MCPEndpoint(passthrough, gateway, _rendered)
    model_api = ModelAPI(
        mcp,
        model_routes(pipeline, gateway),
        pipeline.authenticate,
        max_body_bytes=gateway.config.max_request_bytes,
        body_timeout=settings.request_body_timeout,
        response_timeout=settings.response_timeout,
        forward_client_headers=settings.forward_client_headers_to_llm_api,
        unaccounted=gateway.telemetry.unaccounted,
        websockets=websocket_routes(gateway),
    )
    in_flight = gateway.telemetry.metrics.in_flight
    # Replacing the method is Quart's documented way to wrap its app in ASGI middleware.
    app.asgi_app = RequestScope(model_api, in_flight)  # type: ignore[method-assign]
    return app


def _rendered(error: GatewayError) -> tuple[int, dict[str, str], bytes]:
    """An error as the MCP endpoint sends it: `error_reply`'s status, headers and body."""
    reply = error_reply(error)
    assert isinstance(reply.body, bytes)
    return reply.status, dict(reply.headers), reply.body


async def _no_nul_in_parameters() -> None:
    """A Quart route's query string, path and form hold no NUL (`stored_text`): each is
    something it stores or looks up by."""
    check_parameters(request.args.items(multi=True))
    check_parameters((request.view_args or {}).items())
    if request.mimetype == "application/x-www-form-urlencoded":
        check_parameters((await request.form).items(multi=True))


def _register_error_handlers(app: QuartTrio) -> None:
    """Quart's routes answer errors as the model API's do, by its `error_reply`."""

    @app.errorhandler(GatewayError)
    async def gateway_error(error: GatewayError) -> Response:
        return _error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return _error_response(from_http_exception(error))

    @app.errorhandler(Conflict)
    async def conflict(error: Conflict) -> Response:
        # Two admin calls racing for one alias or id both pass the route's own check.
        return _error_response(
            InvalidRequest("That conflicts with an existing entry: an alias or id is taken.")
        )

    @app.errorhandler(Refused)
    async def refused(error: Refused) -> Response:
        # A value this request would store, which the database refuses at every try (an
        # alias past PostgreSQL's index entry limit, a number out of its column's range):
        # the client's to change, not an outage to retry. Logged, in case it is ours.
        logger.warning("%s %s: the database refuses a value (%s)", request.method,
                       request.path, error)  # fmt: skip
        return _error_response(
            InvalidRequest(
                f"The database refuses a value this request would store ({error}): "
                "a text too long, or a number out of range."
            )
        )

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        return _error_response(unexpected_failure(error))


def _error_response(error: GatewayError) -> Response:
    reply = error_reply(error)
    return Response(reply.body, status=reply.status, headers=dict(reply.headers))

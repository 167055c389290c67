"""Health: unauthenticated liveness and readiness probes, as orchestrators expect, and
the authenticated readiness details (LiteLLM's) and per-deployment report."""

from __future__ import annotations

import datetime
from functools import partial

from quart import Response, request
from quart_trio import QuartTrio

from trigate import __version__
from trigate.api.jsonio import json_response
from trigate.gateway import Gateway
from trigate.limits import allows_model
from trigate.roles import reads_all
from trigate.router.health import health_report
from trigate.store import StoreUnavailable


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/health/liveliness")
    @app.get("/health/liveness")
    async def liveliness() -> Response:
        return json_response("I'm alive!")

    @app.get("/health/readiness")
    async def readiness() -> Response:
        return json_response(
            {
                "status": "draining" if gateway.draining else "healthy",
                "version": __version__,
                "model_groups": len(gateway.groups.names),
                # Redis going away degrades limits to local shares; it never fails readiness.
                "fleet": gateway.fleet.status(),
            },
            status=503 if gateway.draining else 200,
        )

    @app.get("/health/readiness/details")
    async def readiness_details() -> Response:
        """LiteLLM's authenticated readiness diagnostics: the database, the cache, the
        version and the callbacks; 503 while draining or while the database does not
        answer (key checks and spend need it)."""
        await gateway.auth.authenticate(request.headers)
        db = await _database_state(gateway)
        status = "healthy" if db == "connected" else "unhealthy"
        if gateway.draining:
            status = "draining"
        settings = gateway.config.litellm_settings
        callbacks = [
            *(settings.get("callbacks") or []),
            *(settings.get("success_callback") or []),
        ]
        return json_response(
            {
                "status": status,
                "db": db,
                "cache": "redis" if gateway.fleet.configured else None,
                "litellm_version": __version__,
                "trigate_version": __version__,
                "success_callbacks": [str(callback) for callback in callbacks],
                "last_updated": datetime.datetime.now(datetime.UTC).isoformat(),
                "model_groups": len(gateway.groups.names),
                "fleet": gateway.fleet.status(),
                "spend_log_queued": gateway.ledger.queued,
            },
            status=200 if status == "healthy" else 503,
        )

    @app.get("/health")
    async def deployments_health() -> Response:
        """The master key sees every deployment; a virtual key, only those of the models
        it may use, and not where they are."""
        caller = await gateway.auth.authenticate(request.headers)
        if reads_all(caller.role):
            return json_response(health_report(gateway.router))
        covering = gateway.groups.access.covering
        may_see = partial(allows_model, caller, covering=covering)
        return json_response(health_report(gateway.router, may_see))


async def _database_state(gateway: Gateway) -> str:
    """LiteLLM's words for the database: `connected`, or `disconnected`."""
    try:
        await gateway.store.models_version()
    except StoreUnavailable:
        return "disconnected"
    return "connected"

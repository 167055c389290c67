"""Health: unauthenticated liveness and readiness probes, as orchestrators expect, and
the authenticated per-deployment report."""

from __future__ import annotations

from functools import partial

from quart import Response, request
from quart_trio import QuartTrio

from trigate import __version__
from trigate.api.jsonio import json_response
from trigate.gateway import Gateway
from trigate.limits import allows_model
from trigate.roles import reads_all
from trigate.router.health import health_report


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

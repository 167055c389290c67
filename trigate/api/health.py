"""Health: unauthenticated liveness and readiness probes, as orchestrators expect, and
the authenticated per-deployment report."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from trigate import __version__
from trigate.api.responses import json_response
from trigate.gateway import Gateway
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
            },
            status=503 if gateway.draining else 200,
        )

    @app.get("/health")
    async def deployments_health() -> Response:
        await gateway.auth.authenticate(request.headers)
        return json_response(health_report(gateway.router))

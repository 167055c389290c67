"""`GET /metrics`: Prometheus's text format, open to scrapers unless the config says
otherwise (LiteLLM's `general_settings.require_auth_for_metrics_endpoint`; then any
valid key, virtual or master, may scrape)."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from trigate.gateway import Gateway
from trigate.metrics import CONTENT_TYPE


def register(app: QuartTrio, gateway: Gateway) -> None:
    extra = gateway.config.general_settings.model_extra or {}
    require_auth = extra.get("require_auth_for_metrics_endpoint") is True

    @app.get("/metrics")
    async def metrics() -> Response:
        if require_auth:
            await gateway.auth.authenticate(request.headers)
        # This worker's sampled state is fresh; the others' is at most a few seconds old.
        gateway.sample_state()
        body = await gateway.telemetry.metrics.render()
        return Response(body, content_type=CONTENT_TYPE)

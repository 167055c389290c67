"""`GET /metrics`: Prometheus's text format, open to scrapers unless the config says
otherwise (LiteLLM's `require_auth_for_metrics_endpoint`). Then only the master key
may scrape: the series name every deployment's `api_base` and every key's alias,
hash and team, which no virtual key may read of another tenant."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import authorized
from trigate.gateway import Gateway
from trigate.metrics import CONTENT_TYPE


def register(app: QuartTrio, gateway: Gateway) -> None:
    require_auth = gateway.config.general_settings.require_auth_for_metrics_endpoint

    @app.get("/metrics")
    async def metrics() -> Response:
        if require_auth:
            await authorized(gateway)
        # This worker's sampled state is fresh; the others' is at most a few seconds old.
        gateway.sample_state()
        body = await gateway.telemetry.metrics.render()
        return Response(body, content_type=CONTENT_TYPE)

"""`GET /routes`: every path the gateway serves, with its methods, as LiteLLM lists
them. Public, as LiteLLM's is: it tells which endpoints exist, nothing about them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from quart import Response
from quart_trio import QuartTrio

from trigate.api.jsonio import json_response
from trigate.gateway import Gateway

# The model API's paths, which Quart does not serve (`trigate.api.routes`).
ModelPaths = Callable[[Gateway], Iterable[str]]


def register(app: QuartTrio, gateway: Gateway, *, model_paths: ModelPaths) -> None:
    @app.get("/routes")
    async def routes() -> Response:
        listed = [
            {"path": path, "methods": ["POST"], "name": path, "endpoint": "model_api"}
            for path in model_paths(gateway)
        ]
        for rule in app.url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
            listed.append(
                {"path": rule.rule, "methods": methods, "name": rule.endpoint,
                 "endpoint": rule.endpoint}
            )  # fmt: skip
        return json_response({"routes": sorted(listed, key=lambda route: route["path"])})

"""LiteLLM's cache admin routes: `GET /cache/ping`, `POST /cache/delete` (`{"keys":
[...]}`, the keys clients saw in `x-litellm-cache-key`) and `POST /cache/flushall`,
which deletes the response cache's entries only (the fleet's limits may share its
Redis). An admin's, by `trigate.roles.ROUTES`; without a cache each answers 503, as
LiteLLM's do."""

from __future__ import annotations

import coredis
from pydantic import BaseModel, ConfigDict, Field
from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import admin_body, require_master
from trigate.api.jsonio import json_response
from trigate.cache import ResponseCache
from trigate.errors import GatewayError
from trigate.gateway import Gateway


class CacheKeys(BaseModel):
    model_config = ConfigDict(extra="ignore")

    keys: list[str] = Field(min_length=1)


class CacheUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "cache_unavailable"


def _cache(gateway: Gateway) -> ResponseCache:
    if gateway.cache is None:
        raise CacheUnavailable("Cache not initialized: litellm_settings.cache is not set.")
    return gateway.cache


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/cache/ping")
    async def cache_ping() -> Response:
        await require_master(gateway)
        answer = await _cache(gateway).ping()
        return json_response(answer, status=200 if answer["ping_response"] else 503)

    @app.post("/cache/delete")
    async def cache_delete() -> Response:
        body = await admin_body(gateway, CacheKeys)
        try:
            deleted = await _cache(gateway).delete(body.keys)
        except (coredis.exceptions.RedisError, OSError) as error:
            raise CacheUnavailable(f"The cache's Redis failed: {error}") from None
        return json_response({"status": "success", "deleted": deleted})

    @app.post("/cache/flushall")
    async def cache_flushall() -> Response:
        await require_master(gateway)
        try:
            await _cache(gateway).flush()
        except (coredis.exceptions.RedisError, OSError) as error:
            raise CacheUnavailable(f"The cache's Redis failed: {error}") from None
        return json_response({"status": "success"})

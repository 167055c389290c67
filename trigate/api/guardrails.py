"""`GET /guardrails/list` and `GET /v2/guardrails/list`: the configured guardrails, in
LiteLLM's shapes, for any key (as LiteLLM lists them to any key). The first lists each
one's name, type, mode and `default_on` and its `guardrail_info`; the second its whole
`litellm_params`, every credential-like setting redacted, and where it is defined."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import authorized
from trigate.api.jsonio import json_response
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.guardrails.config import GuardrailConfig
from trigate.store import Row

_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "authorization")


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/guardrails/list")
    async def list_guardrails() -> Response:
        await authorized(gateway)
        return json_response({"guardrails": [_v1(config) for config in _configs(gateway)]})

    @app.get("/v2/guardrails/list")
    async def list_guardrails_v2() -> Response:
        await authorized(gateway)
        return json_response({"guardrails": [_v2(config) for config in _configs(gateway)]})


def set_guardrails(
    gateway: Gateway, names: list[str] | None, fields: Row, current: Row | None
) -> None:
    """A key's or team's `guardrails` (LiteLLM's `/key/generate|update`, `/team/new|update`
    field), kept where LiteLLM keeps them, in its `metadata`; each must be configured."""
    if names is None:
        return
    configured = {config.name for config in _configs(gateway)}
    unknown = [name for name in names if name not in configured]
    if unknown:
        raise InvalidRequest(
            f"No guardrail named {', '.join(f'`{n}`' for n in unknown)} is configured.",
            param="guardrails",
        )
    base = fields.get("metadata")
    if base is None:
        base = (current or {}).get("metadata") or {}
    fields["metadata"] = {**base, "guardrails": names}


def _configs(gateway: Gateway) -> tuple[GuardrailConfig, ...]:
    guardrails = gateway.guardrails
    return () if guardrails is None else guardrails.configs


def _v1(config: GuardrailConfig) -> dict[str, Any]:
    raw = config.raw.get("litellm_params") or {}
    return {
        "guardrail_name": config.name,
        "litellm_params": {
            "guardrail": config.type,
            "mode": raw.get("mode"),
            "default_on": config.default_on,
        },
        "guardrail_info": config.raw.get("guardrail_info"),
    }


def _v2(config: GuardrailConfig) -> dict[str, Any]:
    return {
        "guardrail_id": config.name,
        "guardrail_name": config.name,
        "litellm_params": _redacted(config.raw.get("litellm_params") or {}),
        "guardrail_info": config.raw.get("guardrail_info"),
        "created_at": None,
        "updated_at": None,
        "guardrail_definition_location": "config",
    }


def _redacted(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: "[redacted]"
        if any(word in name.lower() for word in _SECRET_WORDS) and value is not None
        else value
        for name, value in params.items()
    }

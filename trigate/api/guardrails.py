"""`GET /guardrails/list` and `GET /v2/guardrails/list`: the configured guardrails, in
LiteLLM's shapes, for any key (as LiteLLM lists them to any key). The first lists each
one's name, type, mode and `default_on` and its `guardrail_info`. The second shows a key
the same public fields (and `guardrail_info.description`): a guardrail's settings hold
its service's URL, headers and credentials, and what it looks for, which are no key
holder's to read. An admin or admin viewer gets its whole `litellm_params`, every
credential in it redacted however deep (trigate/redaction.py: fields named as one, the
values of `headers`, a URL's password and query values), and where it is defined."""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import authorized
from trigate.api.jsonio import json_response
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.guardrails.config import GuardrailConfig
from trigate.redaction import without_secrets
from trigate.roles import reads_all
from trigate.store import Row

# Settings that are, or whose values may each carry, a credential beyond the names
# trigate/redaction.py knows.
_HEADERS = frozenset({"headers", "extra_headers", "default_headers", "token", "key"})


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/guardrails/list")
    async def list_guardrails() -> Response:
        await authorized(gateway)
        return json_response({"guardrails": [_v1(config) for config in _configs(gateway)]})

    @app.get("/v2/guardrails/list")
    async def list_guardrails_v2() -> Response:
        caller = await authorized(gateway)
        shown = _v2 if reads_all(caller.role) else _v2_public
        return json_response({"guardrails": [shown(config) for config in _configs(gateway)]})


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


def _public_params(config: GuardrailConfig) -> dict[str, Any]:
    """LiteLLM's public fields of a guardrail's `litellm_params`."""
    raw = config.raw.get("litellm_params") or {}
    return {"guardrail": config.type, "mode": raw.get("mode"), "default_on": config.default_on}


def _v1(config: GuardrailConfig) -> dict[str, Any]:
    return {
        "guardrail_name": config.name,
        "litellm_params": _public_params(config),
        "guardrail_info": config.raw.get("guardrail_info"),
    }


def _v2_public(config: GuardrailConfig) -> dict[str, Any]:
    info = config.raw.get("guardrail_info")
    description = info.get("description") if isinstance(info, dict) else None
    return {
        "guardrail_id": config.name,
        "guardrail_name": config.name,
        "litellm_params": _public_params(config),
        "guardrail_info": {"description": description} if description is not None else None,
    }


def _v2(config: GuardrailConfig) -> dict[str, Any]:
    return {
        "guardrail_id": config.name,
        "guardrail_name": config.name,
        "litellm_params": without_secrets(
            config.raw.get("litellm_params") or {}, _HEADERS, urls=True
        ),
        "guardrail_info": without_secrets(config.raw.get("guardrail_info"), urls=True),
        "created_at": None,
        "updated_at": None,
        "guardrail_definition_location": "config",
    }

"""`/v2/guardrails/list` (trigate/api/guardrails.py): a key is shown LiteLLM's public
fields of each guardrail and nothing of its settings; an admin its settings, every
credential in them redacted however deep."""

from __future__ import annotations

import orjson
import trio
from fakes import FakeUpstream
from helpers import openai_config, start_gateway

SERVICE_SECRET = "guard-service-secret-7f3a"
URL_SECRET = "url-secret-91bd"
USER_PASSWORD = "user-password-5c2e"


def generic_guardrail() -> dict[str, object]:
    """A guardrail whose settings hold credentials in nested headers and in its URL."""
    return {
        "guardrail_name": "vendor",
        "litellm_params": {
            "guardrail": "generic_guardrail_api",
            "mode": "pre_call",
            "default_on": False,
            "api_base": f"https://guard:{USER_PASSWORD}@guard.example/check?token={URL_SECRET}",
            "additional_provider_specific_params": {
                "headers": {"X-Vendor-Token": SERVICE_SECRET},
                "vendor": {"session": {"bearer_token": SERVICE_SECRET}},
                "threshold": 0.8,
            },
        },
        "guardrail_info": {"description": "The vendor's checks"},
    }


async def test_a_key_sees_the_public_fields_and_an_admin_every_nested_credential_redacted(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    config = {**openai_config(upstream), "guardrails": [generic_guardrail()]}
    running = await start_gateway(nursery, config)
    async with running.client() as admin:
        key = (await admin.post("/key/generate", json={})).json()["key"]
        whole = (await admin.get("/v2/guardrails/list")).json()
    async with running.client(key=key) as client:
        shown = (await client.get("/v2/guardrails/list")).json()
    assert shown == {
        "guardrails": [
            {
                "guardrail_id": "vendor",
                "guardrail_name": "vendor",
                "litellm_params": {
                    "guardrail": "generic_guardrail_api",
                    "mode": "pre_call",
                    "default_on": False,
                },
                "guardrail_info": {"description": "The vendor's checks"},
            }
        ]
    }
    [params] = [g["litellm_params"] for g in whole["guardrails"]]
    assert params["api_base"] == ("https://guard:[redacted]@guard.example/check?token=[redacted]")
    nested = params["additional_provider_specific_params"]
    assert nested == {
        "headers": "[redacted]",
        "vendor": {"session": {"bearer_token": "[redacted]"}},
        "threshold": 0.8,
    }
    text = orjson.dumps(whole).decode()
    for secret in (SERVICE_SECRET, URL_SECRET, USER_PASSWORD):
        assert secret not in text
    await running.stop()

"""The admin model answers (`/model/info`, `/model_group/info`, `/model/new`) keep
credentials out by field, and by a key's shape, never by rewriting a credential's text
inside a longer word: the placeholder keys local servers use (`fake`, `none`, `EMPTY`,
`dummy`) left model names such as `openai/fake-4` as `openai/[redacted]-4` when every
substring equal to a key was replaced."""

from __future__ import annotations

from typing import Any

import trio
from fakes import FakeUpstream, JSONReply
from helpers import MESSAGES, start_gateway

PLACEHOLDERS = ("fake", "none", "EMPTY", "dummy")
INFO_SECRET = "sk-kept-in-model-info-0123456789"


def _config(upstream: FakeUpstream) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": f"{placeholder}-model-4",
                "litellm_params": {
                    "model": f"openai/{placeholder}-upstream-4",
                    "api_base": upstream.base_url,
                    "api_key": placeholder,
                },
                "model_info": {
                    "id": f"{placeholder}-id",
                    "description": f"serves {placeholder}-upstream-4",
                    "api_key": INFO_SECRET,
                    "vertex_credentials": {"private_key": "nested"},
                },
            }
            for placeholder in PLACEHOLDERS
        ],
        "router_settings": {"num_retries": 0},
    }


async def test_model_info_never_alters_a_name_that_contains_a_placeholder_key(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    async with gateway.client() as client:
        info = await client.get("/model/info")
        groups = await client.get("/model_group/info")
    assert info.status_code == 200 and groups.status_code == 200
    assert "[redacted]-" not in info.text and "[redacted]-" not in groups.text
    rows = {row["model_info"]["id"]: row for row in info.json()["data"]}
    for placeholder in PLACEHOLDERS:
        row = rows[f"{placeholder}-id"]
        assert row["model_name"] == f"{placeholder}-model-4"
        assert row["litellm_params"]["model"] == f"openai/{placeholder}-upstream-4"
        assert "api_key" not in row["litellm_params"]
        model_info = row["model_info"]
        assert model_info["key"] == f"{placeholder}-upstream-4"
        assert model_info["description"] == f"serves {placeholder}-upstream-4"
        # The secret's own fields are redacted, however deep.
        assert model_info["api_key"] == "[redacted]"
        assert model_info["vertex_credentials"] == "[redacted]"
    assert INFO_SECRET not in info.text and "nested" not in info.text
    names = {group["model_group"] for group in groups.json()["data"]}
    assert names == {f"{placeholder}-model-4" for placeholder in PLACEHOLDERS}
    await gateway.stop()


async def test_a_credential_written_whole_into_another_field_is_still_redacted(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A field not named as a credential that holds one, whole, is redacted too: the
    scrubber compares values, it does not search inside them."""
    config = _config(upstream)
    upstream_key = "sk-upstream-held-in-a-note-0123456789"
    entry = config["model_list"][0]
    entry["litellm_params"]["api_key"] = upstream_key
    entry["model_info"]["note"] = upstream_key
    gateway = await start_gateway(nursery, config)
    async with gateway.client() as client:
        reply = await client.get("/model/info", params={"litellm_model_id": "fake-id"})
    assert reply.status_code == 200
    assert upstream_key not in reply.text
    assert reply.json()["data"][0]["model_info"]["note"] == "[redacted]"
    await gateway.stop()


async def test_error_bodies_redact_a_placeholder_key_only_where_it_stands_alone(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Error messages are free text, scrubbed by value: a credential is redacted where it
    stands alone, never inside a model name that contains it."""
    upstream.handler = lambda request: JSONReply(
        {
            "error": {
                "message": "Incorrect API key provided: fake. Model fake-upstream-4 refused.",
                "type": "invalid_request_error",
            }
        },
        status=401,
    )
    gateway = await start_gateway(nursery, _config(upstream))
    async with gateway.client() as client:
        refused = await client.post(
            "/v1/chat/completions", json={"model": "fake-model-4", "messages": MESSAGES}
        )
        missing = await client.post(
            "/v1/chat/completions", json={"model": "openai/fake", "messages": MESSAGES}
        )
    message = refused.json()["error"]["message"]
    assert "provided: [redacted]." in message and "fake-upstream-4" in message
    assert "openai/fake" in missing.json()["error"]["message"]
    await gateway.stop()


async def test_key_shaped_text_and_dashed_credential_names_are_redacted(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Redacting by field name must not stop redacting what is shaped like a key: one
    pasted into a description, or under a header name (`x-api-key`) in `extra_body`."""
    config = {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "api_base": upstream.base_url,
                    "api_key": "realkey-123456",
                    "extra_body": {"x-api-key": "sk-ant-leakedleaked1234"},
                },
                "model_info": {
                    "description": "auth with sk-proj-leakedsecret99 please",
                    "x-api-key": "sk-ant-other-leak-12345",
                },
            }
        ],
    }
    gateway = await start_gateway(nursery, config)
    async with gateway.client() as client:
        made = await client.post("/key/generate", json={"models": ["m"]})
    async with gateway.client(made.json()["key"]) as client:
        info = await client.get("/model/info")
    assert info.status_code == 200
    assert "leaked" not in info.text and "leak-" not in info.text, info.text
    assert "auth with [redacted] please" in info.text

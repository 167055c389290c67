"""Stored response ids are unique per owner (the key that made the response): an
upstream that answers two keys with one id (a mock, a local server) loses neither
key's response, and is no error (issue 21; the per-owner key came with migration 6).
One key's repeat replaces its own older response, and says so in the log: the older
can no longer be read or continued, which must not pass in silence."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from fakes import FakeUpstream, JSONReply
from helpers import UPSTREAM_KEY, RunningGateway, sdk, start_gateway


def _response(text: str) -> dict[str, Any]:
    return {
        "id": "resp_reused",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "model": "upstream-model",
        "output": [
            {
                "type": "message",
                "id": "msg_reused",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }


async def _key(gateway: RunningGateway) -> str:
    async with gateway.client() as client:
        reply = await client.post("/key/generate", json={})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["key"])


async def test_a_reused_response_id_is_neither_an_error_nor_a_silent_loss(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    texts = iter(["alice one", "bob one", "alice two"])
    upstream.handler = lambda request: JSONReply(_response(next(texts)))
    params = {"model": "openai/upstream-model", "api_base": upstream.base_url}
    config = {
        "model_list": [
            {"model_name": "gpt-test", "litellm_params": {**params, "api_key": UPSTREAM_KEY}}
        ],
        "general_settings": {"database_url": database_url},
    }
    gateway = await start_gateway(nursery, config)
    alice, bob = await _key(gateway), await _key(gateway)
    caplog.set_level(logging.WARNING, logger="trigate")
    async with sdk(gateway, alice) as client:
        first = await client.responses.create(model="gpt-test", input="one")
        assert getattr(first, "store", None) is not False
    async with sdk(gateway, bob) as client:
        second = await client.responses.create(model="gpt-test", input="two")
        assert second.id == first.id and getattr(second, "store", None) is not False
        assert (await client.responses.retrieve(second.id)).output_text == "bob one"
    assert not [r for r in caplog.records if "resp_reused" in r.getMessage()]
    async with sdk(gateway, alice) as client:
        assert (await client.responses.retrieve(first.id)).output_text == "alice one"
        await client.responses.create(model="gpt-test", input="three")
        assert (await client.responses.retrieve(first.id)).output_text == "alice two"
    [replaced] = [r for r in caplog.records if "resp_reused" in r.getMessage()]
    assert "replaces" in replaced.getMessage()
    await gateway.stop()

"""`POST /v1/responses/input_tokens` (the openai SDK's `responses.input_tokens.count`)
and `POST /v1/responses/compact` (`responses.compact`, Codex CLI's remote compaction),
with the openai SDK against the gateway and a fake upstream on a real socket. Both
answered 405 before: the paths fell to the stored-response routes."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import trio
from fakes import FakeUpstream, JSONReply
from helpers import UPSTREAM_KEY, new_key, sdk, start_gateway

COMPACTION = {
    "id": "resp_compaction_0001",
    "object": "response.compaction",
    "created_at": 1700000000,
    "output": [
        {
            "type": "message",
            "id": "msg_kept_0001",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_text", "text": "Plan the trip."}],
        },
        {"type": "compaction", "id": "cmp_0001", "encrypted_content": "opaque-summary"},
    ],
    "usage": {
        "input_tokens": 120,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 150,
    },
}


def _config(upstream: FakeUpstream) -> dict[str, Any]:
    params = {"model": "openai/upstream-model", "api_base": upstream.base_url}
    return {
        "model_list": [
            {"model_name": "gpt-test", "litellm_params": {**params, "api_key": UPSTREAM_KEY}},
            {
                "model_name": "chat-only",
                "litellm_params": {**params, "model": "hosted_vllm/local", "api_key": "none"},
            },
            {"model_name": "mock", "litellm_params": {"model": "mock/gpt-4o"}},
        ],
        "router_settings": {"num_retries": 0},
    }


async def test_input_tokens_counts_the_input_and_its_stored_conversation(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    async with sdk(gateway) as client:
        short = await client.responses.input_tokens.count(model="mock", input="Hi")
        assert short.object == "response.input_tokens"
        longer = await client.responses.input_tokens.count(
            model="mock",
            input="Hi, and tell me about the weather in Paris this week, please.",
            instructions="Answer in French.",
        )
        assert 0 < short.input_tokens < longer.input_tokens
        first = await client.responses.create(model="mock", input="Remember the number 42.")
        follow_up = await client.responses.input_tokens.count(
            model="mock", input="Hi", previous_response_id=first.id
        )
        assert follow_up.input_tokens > short.input_tokens
        with pytest.raises(openai.NotFoundError):
            await client.responses.input_tokens.count(
                model="mock", input="Hi", previous_response_id="resp_nobody_made"
            )
        with pytest.raises(openai.BadRequestError) as missing:
            await client.responses.input_tokens.count(input="Hi")
        assert missing.value.body["param"] == "model"  # type: ignore[index]
    # A key limited to another model may not count on this one; nothing went upstream.
    async with sdk(gateway, await new_key(gateway, models=["gpt-test"])) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.responses.input_tokens.count(model="mock", input="Hi")
        counted = await client.responses.input_tokens.count(model="gpt-test", input="Hi")
        assert counted.input_tokens == short.input_tokens
    assert upstream.requests == []
    await gateway.stop()


async def test_compact_passes_through_to_an_upstream_that_speaks_the_responses_api(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(COMPACTION)
    gateway = await start_gateway(nursery, _config(upstream))
    body: dict[str, Any] = {
        "input": [{"role": "user", "content": "Plan the trip."}],
        "instructions": "You are Codex.",
    }
    async with sdk(gateway) as client:
        compacted = await client.responses.compact(model="gpt-test", **body)
    assert compacted.object == "response.compaction"
    assert compacted.id == COMPACTION["id"]
    assert [item.type for item in compacted.output] == ["message", "compaction"]
    [received] = upstream.requests
    assert received.target == "/v1/responses/compact"
    assert received.json == {**body, "model": "upstream-model"}
    [record] = await gateway.records.wait_for(1)
    assert record.status == 200 and record.model_group == "gpt-test"
    assert (record.prompt_tokens, record.completion_tokens) == (120, 30)
    await gateway.stop()


async def test_compact_is_a_clear_400_where_no_deployment_can_do_it(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    async with sdk(gateway) as client:
        for model in ("mock", "chat-only"):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.responses.compact(model=model, input="Plan the trip.")
            error = refused.value.body
            assert isinstance(error, dict)
            assert error["param"] == "model" and error["code"] == "unsupported_operation"
            assert "Responses API" in error["message"]
    assert upstream.requests == []
    await gateway.stop()


async def test_compact_sends_a_conversation_the_upstream_does_not_hold(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A `previous_response_id` another deployment made (here the gateway's own mock)
    goes to the compacting upstream as the conversation it continues."""
    upstream.handler = lambda request: JSONReply(COMPACTION)
    gateway = await start_gateway(nursery, _config(upstream))
    async with sdk(gateway) as client:
        first = await client.responses.create(model="mock", input="Remember the number 42.")
        await client.responses.compact(
            model="gpt-test", input="And now?", previous_response_id=first.id
        )
    [received] = upstream.requests
    assert "previous_response_id" not in received.json
    texts = str(received.json["input"])
    assert "Remember the number 42." in texts and "And now?" in texts
    await gateway.stop()


async def test_a_bad_field_is_the_clients_400_on_both(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Checked as a response's fields are: a `previous_response_id` that is no string was
    a 500 (a TypeError echoing it) on `input_tokens`."""
    gateway = await start_gateway(nursery, _config(upstream))
    body = {"model": "gpt-test", "input": "hi", "previous_response_id": 5}
    async with gateway.client() as client:
        for path in ("/v1/responses/input_tokens", "/v1/responses/compact"):
            reply = await client.post(path, json=body)
            assert reply.status_code == 400, (path, reply.text)
            assert reply.json()["error"]["param"] == "previous_response_id"
    assert upstream.requests == []
    await gateway.stop()

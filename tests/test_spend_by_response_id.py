"""`/spend/logs?request_id=` finds a request's row by the id its client's answer
carried, as LiteLLM's users look rows up (its e2e `test_spend_logs` passes
`response["id"]`): a chat completion's `chatcmpl-...`, a stream's, a Message's `msg_...`,
a Response's `resp_...`, native or made by the gateway. The gateway's own id finds the
row too, and an upstream that reuses an id merges no rows."""

from __future__ import annotations

import itertools
from typing import Any, cast

import anthropic
import trio
from fakes import FakeUpstream, JSONReply, StreamReply, chat_completion, chunk
from helpers import MASTER_KEY, MESSAGES, UPSTREAM_KEY, RunningGateway, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)

CHAT_IDS = (f"chatcmpl-upstream-{n}" for n in itertools.count())


def _answer(request: Any) -> JSONReply | StreamReply:
    if request.target.endswith("/responses"):
        return JSONReply(
            {
                "id": "resp_upstream_7",
                "object": "response",
                "created_at": 1700000000,
                "status": "completed",
                "model": "upstream-model",
                "output": [],
                "usage": {"input_tokens": 3, "output_tokens": 0, "total_tokens": 3},
            }
        )
    if request.json.get("stream"):
        return StreamReply([chunk("Hi", id="chatcmpl-streamed-1"), b"data: [DONE]\n\n"])
    if request.json.get("messages", [{}])[-1].get("content") == "again":
        return JSONReply({**chat_completion(), "id": "chatcmpl-reused"})
    return JSONReply({**chat_completion(), "id": next(CHAT_IDS)})


def _config(upstream: FakeUpstream, database_url: str) -> dict[str, Any]:
    params = {"model": "openai/upstream-model", "api_base": upstream.base_url}
    return {
        "model_list": [
            {"model_name": "gpt-test", "litellm_params": {**params, "api_key": UPSTREAM_KEY}},
            {"model_name": "mock", "litellm_params": {"model": "mock/gpt-4o"}},
        ],
        "general_settings": {"database_url": database_url},
        "router_settings": {"num_retries": 0},
    }


async def _rows(gateway: RunningGateway, request_id: str) -> list[dict[str, Any]]:
    async with gateway.client() as client:
        reply = await client.get("/spend/logs", params={"request_id": request_id})
    assert reply.status_code == 200, reply.text
    rows: list[dict[str, Any]] = reply.json()
    return rows


async def test_spend_rows_are_found_by_the_id_the_client_received(
    nursery: trio.Nursery, upstream: FakeUpstream, database_url: str
) -> None:
    upstream.handler = _answer
    gateway = await start_gateway(nursery, _config(upstream, database_url))
    seen: dict[str, str] = {}
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(model="gpt-test", messages=CHAT)
        seen[completion.id] = "gpt-test"
        stream = await client.chat.completions.create(model="gpt-test", messages=CHAT, stream=True)
        streamed = [part async for part in stream]
        seen[streamed[0].id] = "gpt-test"
        native = await client.responses.create(model="gpt-test", input="hi")
        seen[native.id] = "gpt-test"
        translated = await client.responses.create(model="mock", input="hi")
        seen[translated.id] = "mock"
        translated_stream = await client.responses.create(model="mock", input="hi", stream=True)
        events = [event async for event in translated_stream]
        first = events[0]
        assert first.type == "response.created"
        seen[first.response.id] = "mock"
        reused = [
            await client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=[{"role": "user", "content": "again"}]
            )
            for _ in range(2)
        ]
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=MASTER_KEY, max_retries=0
    ) as claude:
        message = await claude.messages.create(
            model="mock", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        seen[message.id] = "mock"
    assert len(seen) == 6, seen
    await gateway.records.wait_for(8)
    assert await gateway.gateway.ledger.flush()

    for answer_id, group in seen.items():
        [row] = await _rows(gateway, answer_id)
        assert row["response_id"] == answer_id and row["model_group"] == group
        # The gateway's own id still finds the same row.
        assert await _rows(gateway, row["request_id"]) == [row]
    # An upstream that answers two requests with one id: two rows, both found.
    rows = await _rows(gateway, "chatcmpl-reused")
    own_ids = {reply.headers["x-trigate-request-id"] for reply in reused}
    assert {row["request_id"] for row in rows} == own_ids and len(own_ids) == 2
    assert await _rows(gateway, "chatcmpl-unknown") == []
    await gateway.stop()

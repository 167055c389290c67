"""Guardrails (issue 23): LiteLLM's `guardrails:` config, the embedded content filter in
each mode, on each surface, streamed and not, failing closed."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest
import trio
from fakes import DONE, FakeUpstream, JSONReply, StreamReply, chat_completion, chunk, usage_chunk
from helpers import MASTER_KEY, RunningGateway, openai_config, sdk, start_gateway
from test_api import assert_envelope

EMAIL = "ada@example.com"
CARD = "4111 1111 1111 1111"


def guarded(upstream: FakeUpstream, *guardrails: dict[str, Any]) -> dict[str, Any]:
    return {**openai_config(upstream), "guardrails": list(guardrails)}


def content_filter(
    name: str, mode: Any, *, default_on: bool = True, **settings: Any
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "guardrail": "litellm_content_filter",
        "mode": mode,
        "default_on": default_on,
        "patterns": [
            {"pattern_type": "prebuilt", "pattern_name": "email", "action": "MASK"},
            {"pattern_type": "prebuilt", "pattern_name": "credit_card", "action": "BLOCK"},
        ],
        "blocked_words": [{"keyword": "forbidden", "action": "BLOCK"}],
        **settings,
    }
    return {"guardrail_name": name, "litellm_params": params}


async def test_pre_call_masks_and_blocks_on_chat(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("ok"))
    running = await start_gateway(nursery, guarded(upstream, content_filter("cf", "pre_call")))
    client = sdk(running)
    answer = await client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": f"mail {EMAIL} please"}]
    )
    assert answer.headers["x-litellm-applied-guardrails"] == "cf"
    [sent] = upstream.requests
    assert sent.json["messages"][0]["content"] == "mail [EMAIL_REDACTED] please"
    with pytest.raises(openai.BadRequestError) as blocked:
        await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": f"card {CARD}"}]
        )
    assert "cf" in blocked.value.message and "credit_card" in blocked.value.message
    assert len(upstream.requests) == 1
    records = await running.records.wait_for(2)
    info = records[1].metadata["guardrail_information"]
    assert [(i["guardrail_name"], i["guardrail_status"]) for i in info] == [
        ("cf", "guardrail_intervened")
    ]
    assert CARD not in orjson.dumps(info).decode()
    await running.stop()

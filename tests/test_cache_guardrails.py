"""The response cache beside guardrails: an answer a guardrail makes the caller's own
(Presidio's `output_parse_pii` puts back what it masked) is neither cached nor shared,
since the cache sees only the placeholders every caller's masked prompt shares."""

from __future__ import annotations

from typing import Any

import fake_guardrails
import orjson
import pytest
import trio
from fakes import (
    DONE,
    FakeUpstream,
    JSONReply,
    ReceivedRequest,
    StreamReply,
    chat_completion,
    chunk,
    sse_lines,
)
from helpers import RunningGateway, openai_config, start_gateway


async def _gateway(nursery: trio.Nursery, upstream: FakeUpstream, unmasks: bool) -> RunningGateway:
    presidio = FakeUpstream(fake_guardrails.presidio)
    await presidio.start(nursery)
    base = f"http://127.0.0.1:{presidio.port}"
    config = openai_config(upstream)
    settings = {
        "default_on": True,
        "guardrail": "presidio",
        "mode": "pre_call",
        "presidio_analyzer_api_base": base,
        "presidio_anonymizer_api_base": base,
        "output_parse_pii": unmasks,
        "pii_entities_config": {"EMAIL_ADDRESS": "MASK"},
    }
    config["guardrails"] = [{"guardrail_name": "pii", "litellm_params": settings}]
    config["litellm_settings"] = {"cache": True, "cache_params": {"type": "local"}}
    return await start_gateway(nursery, config)


def _echo_last_word(request: ReceivedRequest) -> JSONReply | StreamReply:
    """The upstream answers with the prompt's last word: the (masked) address."""
    word = request.json["messages"][0]["content"].split()[-1]
    if request.json.get("stream"):
        return StreamReply([chunk("Your address is "), chunk(word), chunk(finish="stop"), DONE])
    return JSONReply(chat_completion("Your address is " + word))


async def _ask(running: RunningGateway, key: str, email: str, stream: bool) -> tuple[str, Any]:
    model = "gpt-test"
    body = {"model": model, "messages": [{"role": "user", "content": f"my email is {email}"}]}
    async with running.client(key=key) as client:
        if not stream:
            answer = await client.post("/v1/chat/completions", json=body)
            return answer.json()["choices"][0]["message"]["content"], answer.headers
        text = ""
        async with client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}
        ) as answer:
            async for data in sse_lines(answer):
                if data != "[DONE]":
                    for choice in orjson.loads(data)["choices"]:
                        text += choice["delta"].get("content") or ""
            return text, answer.headers


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_unmasked_answer_is_never_served_to_another_caller(
    nursery: trio.Nursery, upstream: FakeUpstream, stream: bool
) -> None:
    upstream.handler = _echo_last_word
    running = await _gateway(nursery, upstream, unmasks=True)
    async with running.client() as admin:
        first = (await admin.post("/key/generate", json={})).json()["key"]
        second = (await admin.post("/key/generate", json={})).json()["key"]
    ada, _ = await _ask(running, first, "ada@example.com", stream)
    bob, headers = await _ask(running, second, "bob@other.org", stream)
    assert ada == "Your address is ada@example.com"
    assert bob == "Your address is bob@other.org"
    assert headers.get("x-trigate-cache") != "hit"
    assert len(upstream.requests) == 2
    await running.stop()


async def test_a_masked_answer_that_stays_masked_is_still_cached(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Without unmasking, both callers get the placeholders, which hold nothing of
    either: the cache serves the second from the first's answer."""
    upstream.handler = _echo_last_word
    running = await _gateway(nursery, upstream, unmasks=False)
    async with running.client() as admin:
        first = (await admin.post("/key/generate", json={})).json()["key"]
        second = (await admin.post("/key/generate", json={})).json()["key"]
    ada, _ = await _ask(running, first, "ada@example.com", False)
    bob, headers = await _ask(running, second, "bob@other.org", False)
    assert ada == bob and "ada@" not in bob and "bob@" not in bob
    assert headers.get("x-trigate-cache") == "hit"
    assert len(upstream.requests) == 1
    await running.stop()

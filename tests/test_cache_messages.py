"""The response cache's key for Anthropic's Messages API: a request is keyed on the
client's own request beside its chat form while an `anthropic/` deployment may be
sent it as it came, since the translation lacks some of it (an image by file, `top_k`,
a tool result's `is_error`); once a hook (a guardrail) rewrote the chat form, which
every deployment is then sent alone, that is the key, and masked prompts two callers
share still share an answer."""

from __future__ import annotations

from typing import Any

import fake_guardrails
import trio
from fake_anthropic import anthropic_config, message
from fakes import FakeUpstream, JSONReply, ReceivedRequest, chat_completion
from helpers import MASTER_KEY, RunningGateway, openai_config, start_gateway

CACHE = {"cache": True, "cache_params": {"type": "local"}}


def _numbered(upstream: FakeUpstream, *, anthropic: bool) -> None:
    """Each upstream call's answer is numbered, so a test tells which call made it."""
    calls: list[ReceivedRequest] = []

    def handle(request: ReceivedRequest) -> JSONReply:
        calls.append(request)
        text = f"answer #{len(calls)}"
        if anthropic:
            return JSONReply(message([{"type": "text", "text": text}]))
        return JSONReply(chat_completion(text))

    upstream.handler = handle


async def _claude(nursery: trio.Nursery, upstream: FakeUpstream) -> RunningGateway:
    _numbered(upstream, anthropic=True)
    config = anthropic_config(upstream)
    config["litellm_settings"] = CACHE
    return await start_gateway(nursery, config)


async def _ask(
    running: RunningGateway, body: dict[str, Any], key: str = MASTER_KEY
) -> tuple[str, str, str]:
    """The cache's state, the key and the answer's text for one request."""
    async with running.client(key=key) as client:
        answer = await client.post("/v1/messages", json=body)
    assert answer.status_code == 200, answer.text
    text = answer.json()["content"][0]["text"]
    return answer.headers["x-trigate-cache"], answer.headers["x-litellm-cache-key"], text


def _ask_about_file(system: str) -> dict[str, Any]:
    """A request with no chat form: its image is an uploaded file's."""
    image = {"type": "image", "source": {"type": "file", "file_id": "file_1"}}
    content = [image, {"type": "text", "text": "What is this?"}]
    return {"model": "claude", "max_tokens": 50, "system": system,
            "messages": [{"role": "user", "content": content}]}  # fmt: skip


async def test_requests_without_a_chat_form_each_get_their_own_answer(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await _claude(nursery, upstream)
    english = await _ask(running, _ask_about_file("Answer in English."))
    french = await _ask(running, _ask_about_file("Answer in French."))
    assert (english[0], english[2], french[0], french[2]) == (
        "miss",
        "answer #1",
        "miss",
        "answer #2",
    )
    assert await _ask(running, _ask_about_file("Answer in English.")) == (
        "hit", english[1], "answer #1"
    )  # fmt: skip
    assert len(upstream.requests) == 2
    await running.stop()


def _tool_turns(is_error: bool) -> dict[str, Any]:
    call = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42",
              "is_error": is_error}  # fmt: skip
    tool = {"name": "lookup", "description": "Looks up.", "input_schema": {"type": "object"}}
    return {"model": "claude", "max_tokens": 50, "tools": [tool], "messages": [
        {"role": "user", "content": "Look it up."},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]}  # fmt: skip


async def test_what_the_translation_drops_still_tells_requests_apart(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await _claude(nursery, upstream)
    hello = {"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    narrow = await _ask(running, {**hello, "top_k": 1})
    wide = await _ask(running, {**hello, "top_k": 50})
    assert (narrow[0], narrow[2], wide[0], wide[2]) == ("miss", "answer #1", "miss", "answer #2")
    failed = await _ask(running, _tool_turns(is_error=True))
    fine = await _ask(running, _tool_turns(is_error=False))
    assert (failed[0], failed[2], fine[0], fine[2]) == ("miss", "answer #3", "miss", "answer #4")
    # Still cached; `metadata` and `stream` still do not tell requests apart.
    again = await _ask(running, {**hello, "top_k": 50, "metadata": {"user_id": "u-2"}})
    assert again == ("hit", wide[1], "answer #2")
    assert len(upstream.requests) == 4
    await running.stop()


async def test_masked_prompts_two_callers_share_still_share_an_answer(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A guardrail masks the chat form, which every deployment is then sent: that is the
    key, not each caller's own address."""
    presidio = FakeUpstream(fake_guardrails.presidio)
    await presidio.start(nursery)
    base = f"http://127.0.0.1:{presidio.port}"
    _numbered(upstream, anthropic=False)
    config = openai_config(upstream)
    config["guardrails"] = [{"guardrail_name": "pii", "litellm_params": {
        "default_on": True, "guardrail": "presidio", "mode": "pre_call",
        "presidio_analyzer_api_base": base, "presidio_anonymizer_api_base": base,
        "pii_entities_config": {"EMAIL_ADDRESS": "MASK"},
    }}]  # fmt: skip
    config["litellm_settings"] = CACHE
    running = await start_gateway(nursery, config)
    async with running.client() as admin:
        keys = [(await admin.post("/key/generate", json={})).json()["key"] for _ in range(2)]
    answers = []
    for key, email in zip(keys, ("ada@example.com", "bob@other.org"), strict=True):
        body = {"model": "gpt-test", "max_tokens": 50,
                "messages": [{"role": "user", "content": f"my email is {email}"}]}  # fmt: skip
        answers.append(await _ask(running, body, key))
    assert answers[0][0] == "miss" and answers[1] == ("hit", answers[0][1], "answer #1")
    assert len(upstream.requests) == 1
    await running.stop()

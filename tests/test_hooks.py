"""The pipeline's hook points, loaded by dotted path from `litellm_settings.callbacks`:
before routing (refuse, answer), on each streamed chunk (rewrite, end), after the
answer (refuse), and a LiteLLM `CustomLogger`'s proxy hooks adapted onto them."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, cast

import anthropic
import hook_examples
import pytest
import trio
import yaml
from fake_anthropic import anthropic_config, message
from fakes import DONE, FakeUpstream, JSONReply, StreamReply, chunk, stream_of, usage_chunk
from helpers import MASTER_KEY, MESSAGES, RunningGateway, openai_config, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam
from test_api import assert_envelope

from trigate.hooks import Hooks, load_hooks

# helpers.MESSAGES as each SDK types it (helpers keeps plain dicts, for every SDK).
CHAT_MESSAGES = cast(list[ChatCompletionMessageParam], MESSAGES)
CLAUDE_MESSAGES = cast(list[anthropic.types.MessageParam], MESSAGES)


def _with_hooks(upstream: FakeUpstream, *names: str) -> dict[str, Any]:
    return {
        **openai_config(upstream),
        "litellm_settings": {"callbacks": [*(f"hook_examples.{n}" for n in names)]},
    }


async def _chat(gateway: RunningGateway, text: str, **extra: Any) -> Any:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": text}], **extra}
    async with gateway.client() as client:
        return await client.post("/v1/chat/completions", json=body)


async def _stream_text(gateway: RunningGateway) -> str:
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    async with (
        gateway.client() as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        return (await response.aread()).decode()


async def test_a_hook_that_refuses_answers_4xx_in_each_envelope_and_never_calls_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await start_gateway(nursery, _with_hooks(upstream, "refuse_secrets"))
    response = await _chat(running, "tell me the secret")
    error = assert_envelope(response, 400, "invalid_request_error")
    assert error["code"] == "guardrail_blocked"
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=MASTER_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(
            model="gpt-test", max_tokens=10, messages=[{"role": "user", "content": "a secret"}]
        )
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["error"]["message"] == "Blocked by the secrets guardrail."
    assert upstream.requests == []
    records = await running.records.wait_for(2)
    assert [record.status for record in records] == [400, 400]
    # A request the hook lets through goes on as before.
    assert (await _chat(running, "hello")).status_code == 200
    assert len(upstream.requests) == 1
    await running.stop()


async def test_a_hook_that_answers_serves_without_upstream_and_records_spend(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await start_gateway(nursery, _with_hooks(upstream, "canned_answer"))
    answer = await sdk(running).chat.completions.create(model="gpt-test", messages=CHAT_MESSAGES)
    assert answer.choices[0].message.content == "From the cache."
    text = await _stream_text(running)
    assert "From the cache." in text and text.endswith("data: [DONE]\n\n")
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=MASTER_KEY, max_retries=0)
    message = await client.messages.create(
        model="gpt-test", max_tokens=10, messages=CLAUDE_MESSAGES
    )
    first_block = message.content[0]
    assert first_block.type == "text" and first_block.text == "From the cache."
    assert upstream.requests == []
    records = await running.records.wait_for(3)
    assert [(r.status, r.deployment, r.cost) for r in records] == [(200, None, 0.0)] * 3
    assert records[0].prompt_tokens == 7 and records[0].completion_tokens == 4
    await running.stop()


async def test_a_chunk_hook_rewrites_each_chunk(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["Hello", " there"])
    running = await start_gateway(nursery, _with_hooks(upstream, "shout"))
    text = await _stream_text(running)
    assert '"content":"HELLO"' in text and '"content":" THERE"' in text
    assert "Hello" not in text
    await running.stop()


async def test_a_chunk_hook_that_ends_the_stream_closes_the_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The upstream would stream forever; the hook's end closes its connection."""
    upstream.handler = lambda request: StreamReply(
        [chunk("one"), chunk(" two"), chunk(" STOP")], tail=chunk(" more")
    )
    running = await start_gateway(nursery, _with_hooks(upstream, "stop_at_stop"))
    text = await _stream_text(running)
    assert '"content":" two"' in text and "STOP" not in text and "more" not in text
    assert text.endswith("data: [DONE]\n\n")
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await running.records.wait_for(1)
    assert record.status == 200
    await running.stop()


@pytest.mark.parametrize("in_one_read", [False, True], ids=["chunk by chunk", "in one read"])
async def test_a_chunk_hook_that_fails_ends_the_stream_with_an_error_and_logs_it(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    in_one_read: bool,
) -> None:
    """The chunks the hook passed before its failure reach the client, however the
    upstream's reads grouped them (in one read, they were lost with the failure)."""
    hook_examples.broken_on_chunk.seen = 0
    reply = stream_of(["one", " two", " three"])
    if in_one_read:
        reply = StreamReply([b"".join(f for f in reply.frames if isinstance(f, bytes))])
    upstream.handler = lambda request: reply
    running = await start_gateway(nursery, _with_hooks(upstream, "broken_on_chunk"))
    text = await _stream_text(running)
    assert '"content":"one"' in text and "two" not in text
    assert '"type":"api_error"' in text
    assert any(r.exc_info and "chunk hook failed" in r.getMessage() for r in caplog.records)
    [record] = await running.records.wait_for(1)
    assert record.status == 500
    await running.stop()


async def test_a_hook_refuses_an_answer_before_the_client_sees_it(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await start_gateway(nursery, _with_hooks(upstream, "refuse_long_answers"))
    response = await _chat(running, "hi")
    assert_envelope(response, 403, "invalid_request_error")
    assert "Hello" not in response.text
    assert len(upstream.requests) == 1
    [record] = await running.records.wait_for(1)
    assert record.status == 403
    # The hook saw the final usage, as the upstream reported it.
    usage = hook_examples.refuse_long_answers.usages[-1]
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        record.prompt_tokens,
        record.completion_tokens,
    )
    await running.stop()


async def test_a_stream_hands_its_final_usage_to_after_answer(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: StreamReply([chunk("Hi"), usage_chunk(5, 1), DONE])
    running = await start_gateway(nursery, _with_hooks(upstream, "refuse_long_answers"))
    await _stream_text(running)
    await running.records.wait_for(1)
    usage = hook_examples.refuse_long_answers.usages[-1]
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 1)
    await running.stop()


async def test_a_litellm_custom_logger_loaded_from_a_config_file(
    nursery: trio.Nursery, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """LiteLLM's `callbacks: module.instance`, with its `async_pre_call_hook` (change the
    body, answer with a string, refuse with an HTTPException) and its success hook."""
    path = tmp_path / "config.yaml"
    config = _with_hooks(upstream, "litellm_style")
    path.write_text(yaml.safe_dump(config))
    running = await start_gateway(nursery, yaml.safe_load(path.read_text()))
    hook = hook_examples.litellm_style
    assert (await _chat(running, "hello")).status_code == 200
    assert upstream.requests[-1].json["metadata"] == {"tagged": "by-hook"}
    assert hook.call_types[-1] == "completion"
    assert hook.answers[-1]["choices"][0]["message"]["content"] == "Hello!"
    canned = await _chat(running, "a canned question")
    assert canned.json()["choices"][0]["message"]["content"] == "A canned reply."
    refused = await _chat(running, "a forbidden topic")
    error = assert_envelope(refused, 403, "invalid_request_error")
    assert error["message"] == "forbidden topic"
    assert len(upstream.requests) == 1
    await running.stop()


def test_no_hook_configured_is_no_hooks() -> None:
    """What the pipeline tests on every request: no hooks are None, and the relay is
    given no chunk callback when no hook reads chunks."""
    assert load_hooks(["otel"]) is None
    assert load_hooks(None) is None
    hooks = Hooks([hook_examples.refuse_secrets])
    # No hook reads chunks, so the request is never looked at: None stands in for one.
    assert hooks.chunk_hook(None) is None  # type: ignore[arg-type]


def test_a_callback_that_cannot_be_loaded_stops_the_start() -> None:
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_hooks(["hook_examples.no_such_hook"])
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_hooks(["no_such_module.hook"])
    # One dotted path as a bare string, as LiteLLM's docs write it, is loaded too.
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_hooks("no_such_module.hook")
    # LiteLLM's own integrations, by name: not hooks (the start-up warning names them,
    # tests/test_litellm_keys.py).
    assert load_hooks(["langfuse"]) is None


async def test_a_client_leaving_while_a_hook_runs_is_recorded_and_frees_its_slot(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Admitted, then gone during a slow guardrail: without a record, the key's only
    parallel slot stayed taken for the worker's life (every later request a 429)."""
    running = await start_gateway(nursery, _with_hooks(upstream, "slow_guardrail"))
    async with running.client() as admin:
        key = (await admin.post("/key/generate", json={"max_parallel_requests": 1})).json()["key"]
    body = {"model": "gpt-test", "messages": MESSAGES}
    entered = hook_examples.SlowGuardrail.entered
    async with running.client(key=key) as client, trio.open_nursery() as asking:
        asking.start_soon(partial(client.post, "/v1/chat/completions", json=body))
        # Left once the guardrail has it (a fixed wait could end before admission on a
        # loaded machine, and test a different departure).
        with trio.fail_after(30):
            while hook_examples.SlowGuardrail.entered == entered:  # noqa: ASYNC110 - no event
                await trio.sleep(0.01)
        asking.cancel_scope.cancel()
    with trio.fail_after(10):
        [left] = await running.records.wait_for(1)
    assert (left.status, left.cancelled_by_client) == (499, True)
    async with running.client(key=key) as client:
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200


async def test_a_stream_whose_after_answer_hook_fails_is_still_recorded(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["one", " two"])
    running = await start_gateway(nursery, _with_hooks(upstream, "broken_after_answer"))
    assert "one" in await _stream_text(running)
    [record] = await running.records.wait_for(1)
    assert record.status == 500
    assert record.completion_tokens > 0


async def test_a_bug_in_a_litellm_hook_is_a_500_that_does_not_echo_it(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await start_gateway(nursery, _with_hooks(upstream, "litellm_buggy_pre"))
    response = await _chat(running, "hi")
    error = assert_envelope(response, 500, "api_error")
    assert "no_such_key" not in error["message"]
    assert upstream.requests == []


async def test_a_hooks_rewrite_reaches_a_native_deployment(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A masking guardrail rewrites the request in OpenAI's shapes; a deployment that
    speaks the client's own API (Anthropic's, here) must be sent the rewrite, never the
    client's original body."""
    upstream.handler = lambda request: JSONReply(message([{"type": "text", "text": "ok"}]))
    config = {
        **anthropic_config(upstream),
        "litellm_settings": {"callbacks": ["hook_examples.litellm_redact"]},
    }
    running = await start_gateway(nursery, config)
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=MASTER_KEY, max_retries=0)
    await client.messages.create(
        model="claude",
        max_tokens=16,
        messages=[{"role": "user", "content": "my card is 4111-1111-1111-1111"}],
    )
    [received] = upstream.requests
    assert b"4111-1111-1111-1111" not in received.body
    assert b"[card]" in received.body


async def test_a_hooks_string_answer_takes_each_apis_own_shape(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await start_gateway(nursery, _with_hooks(upstream, "litellm_reject_string"))
    client = sdk(running)
    completion = await client.completions.create(model="gpt-test", prompt="hi")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Blocked by policy."
    async with running.client() as raw:
        response = await raw.post("/v1/embeddings", json={"model": "gpt-test", "input": "hi"})
    assert assert_envelope(response, 400, "invalid_request_error")["message"] == (
        "Blocked by policy."
    )
    assert upstream.requests == []


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize(
    ("in_place", "content"), [(True, "rewritten in place"), (False, "rewritten copy")]
)
async def test_a_litellm_success_hooks_change_is_what_the_client_gets(
    nursery: trio.Nursery, upstream: FakeUpstream, in_place: bool, content: str, cached: bool
) -> None:
    """LiteLLM sends the answer its `async_post_call_success_hook` changed, in place or
    returned; with a response cache on, the upstream's own bytes were sent instead of the
    change (they are kept for the cache's hits)."""
    config = _with_hooks(upstream, "litellm_rewrite")
    if cached:
        config["litellm_settings"] |= {"cache": True, "cache_params": {"type": "local"}}
    running = await start_gateway(nursery, config)
    for _ in range(2):  # with the cache, a miss and then a hit
        answer = await _chat(running, "change it in place" if in_place else "change a copy")
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == content

"""Guardrails (issue 23): LiteLLM's `guardrails:` config, the embedded content filter in
each mode, on each surface, streamed and not, failing closed."""

from __future__ import annotations

from functools import partial
from typing import Any

import anthropic
import openai
import orjson
import pytest
import trio
from anthropic.types import TextBlockParam
from fake_anthropic import (
    PING,
    anthropic_config,
    message_end,
    message_start,
    serve,
    text_block,
    tool_block,
)
from fakes import DONE, FakeUpstream, JSONReply, StreamReply, chat_completion, chunk, usage_chunk
from helpers import MASTER_KEY, openai_config, sdk, start_gateway, streamed_events
from openai.types.chat import ChatCompletionMessageParam
from test_api import assert_envelope

from trigate.config import ConfigError, parse_config
from trigate.gateway import Gateway
from trigate.store import SpendFilter

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
    metadata = records[1].metadata
    assert metadata is not None
    info = metadata["guardrail_information"]
    assert [(i["guardrail_name"], i["guardrail_status"]) for i in info] == [
        ("cf", "guardrail_intervened")
    ]
    assert CARD not in orjson.dumps(info).decode()
    await running.stop()


WORDS = [f" w{i}" for i in range(1, 6)]


async def test_a_stream_blocked_after_its_fifth_chunk(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Checked chunk by chunk (a window of 1 character): the client gets the 5 chunks
    that passed and one error event, the upstream (which would stream on) sees its
    connection close, and the spend row bills the 5 chunks."""
    frames: list[bytes | float | trio.Event] = [chunk(word) for word in WORDS]
    frames.append(chunk(" forbidden"))
    upstream.handler = lambda request: StreamReply(frames, tail=chunk(" more"))
    guard = content_filter("cf", "post_call", stream_window=1)
    running = await start_gateway(nursery, guarded(upstream, guard))
    messages = [{"role": "user", "content": "hi"}]
    events = await streamed_events(running, "gpt-test", messages)
    chunks = [orjson.loads(e) for e in events if e != "[DONE]"]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if "choices" in c]
    assert contents == WORDS
    [error] = [c for c in chunks if "error" in c]
    assert "forbidden" in error["error"]["message"] and error["error"]["code"] == "400"
    assert "forbidden" not in "".join(contents)
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [blocked] = await running.records.wait_for(1)
    assert blocked.status == 400
    # The same five chunks, streamed whole, are billed the same.
    upstream.handler = lambda request: StreamReply([*map(chunk, WORDS), DONE])
    await streamed_events(running, "gpt-test", messages)
    [_, whole] = await running.records.wait_for(2)
    assert blocked.completion_tokens == whole.completion_tokens > 0
    await running.stop()


async def test_a_stream_is_masked_window_by_window(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """An email split across chunks, and across a window's edge, is masked: every chunk
    the client gets was checked (a window of 10 characters, the last 9 held until more
    came, and the stream's end)."""
    pieces = ["Write to ", "ada@exa", "mple.com", " today", ", thanks"]
    upstream.handler = lambda request: StreamReply(
        [*map(chunk, pieces), chunk(finish="stop"), usage_chunk(5, 9), DONE]
    )
    running = await start_gateway(
        nursery, guarded(upstream, content_filter("cf", "post_call", stream_window=10))
    )
    stream = await sdk(running).chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    async for part in stream:
        if part.choices and part.choices[0].delta.content:
            text += part.choices[0].delta.content
        usage = part.usage or usage
    assert text == "Write to [EMAIL_REDACTED] today, thanks"
    assert usage is not None and usage.completion_tokens == 9
    await running.stop()


async def test_post_call_on_a_whole_answer_masks_and_blocks(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await start_gateway(nursery, guarded(upstream, content_filter("cf", "post_call")))
    upstream.handler = lambda request: JSONReply(chat_completion(f"Mail {EMAIL}."))
    answer = await sdk(running).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": f"I am {EMAIL}"}]
    )
    # post_call reads the answer, not the request (that is pre_call's).
    assert upstream.requests[0].json["messages"][0]["content"] == f"I am {EMAIL}"
    assert answer.choices[0].message.content == "Mail [EMAIL_REDACTED]."
    upstream.handler = lambda request: JSONReply(chat_completion(f"Card {CARD}"))
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=MASTER_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as blocked:
        await claude.messages.create(
            model="gpt-test", max_tokens=10, messages=[{"role": "user", "content": "card?"}]
        )
    body = blocked.value.body
    assert isinstance(body, dict) and "credit_card" in body["error"]["message"]
    upstream.handler = lambda request: JSONReply(chat_completion(f"Mail {EMAIL}."))
    message = await claude.messages.create(
        model="gpt-test", max_tokens=10, messages=[{"role": "user", "content": "mail?"}]
    )
    block = message.content[0]
    assert block.type == "text" and block.text == "Mail [EMAIL_REDACTED]."
    await running.stop()


def custom(name: str, path: str, mode: Any = "pre_call", **params: Any) -> dict[str, Any]:
    return {
        "guardrail_name": name,
        "litellm_params": {"guardrail": f"guardrail_examples.{path}", "mode": mode,
                           "default_on": True, **params},
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["Broken", "Slow", "Garbage"])
async def test_a_guardrail_that_fails_blocks_every_time_unless_it_fails_open(
    nursery: trio.Nursery, upstream: FakeUpstream, kind: str
) -> None:
    closed = custom("closed", kind, timeout=0.2)
    running = await start_gateway(nursery, guarded(upstream, closed))
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as refused:
            await sdk(running).chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.status_code == 503
        assert "closed" in refused.value.message and "fails closed" in refused.value.message
    assert upstream.requests == []
    async with running.client() as client:
        metrics = (await client.get("/metrics")).text
    assert 'litellm_guardrail_errors_total{error_type="' in metrics
    assert 'guardrail_name="closed",hook_type="pre_call",status="guardrail_failed_to_respond"' in (
        metrics
    )
    await running.stop()
    opened = custom("opened", kind, timeout=0.2, fail_open=True)
    running = await start_gateway(nursery, guarded(upstream, opened))
    answer = await sdk(running).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content
    [record] = await running.records.wait_for(1)
    assert record.metadata is not None
    [info] = record.metadata["guardrail_information"]
    assert info["guardrail_status"] == "guardrail_failed_to_respond"
    await running.stop()


async def test_a_litellm_style_custom_guardrail(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("ok"))
    guard = custom("words", "NoPasswords", ["pre_call", "post_call"], word="secret")
    running = await start_gateway(nursery, guarded(upstream, guard))
    await sdk(running).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "my secret is 42"}]
    )
    assert upstream.requests[0].json["messages"][0]["content"] == "my ****** is 42"
    with pytest.raises(openai.BadRequestError) as blocked:
        await sdk(running).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "open sesame"}]
        )
    assert "No magic words." in blocked.value.message
    await running.stop()


async def test_each_mode_runs_once_across_retries_and_fallbacks(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    failing = {"n": 0}

    def flaky(request: Any) -> JSONReply:
        failing["n"] += 1
        if failing["n"] < 3:
            return JSONReply({"error": {"message": "busy"}}, status=500)
        return JSONReply(chat_completion("ok"))

    upstream.handler = flaky
    config = guarded(
        upstream, custom("count", "Counting", ["pre_call", "during_call", "post_call"])
    )
    config["router_settings"] = {"num_retries": 3, "retry_after": 0}
    guardrail_examples_runs().clear()
    running = await start_gateway(nursery, config)
    await sdk(running).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert len(upstream.requests) == 3
    assert sorted(guardrail_examples_runs()) == ["during_call", "post_call", "pre_call"]
    await running.stop()


def guardrail_examples_runs() -> list[str]:
    import guardrail_examples

    return guardrail_examples.Counting.runs


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_during_call_blocks_and_cancels_the_upstream_call(
    nursery: trio.Nursery, upstream: FakeUpstream, stream: bool
) -> None:
    """The upstream holds its answer; the guardrail beside it blocks without waiting for
    it, and the upstream sees its connection close. A request that passes waits for both.
    (Held until the test says, never here: a deadline raced against an upstream's delay
    could be lost on a loaded machine.)"""
    held = trio.Event()
    if stream:
        upstream.handler = lambda request: StreamReply([held, chunk("late"), DONE])
    else:
        upstream.handler = lambda request: JSONReply(chat_completion("late"), gate=held)
    guard = custom("moderation", "SlowBlock", "during_call", delay=0.3)
    running = await start_gateway(nursery, guarded(upstream, guard))
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": f"card {CARD}"}]}
    async with running.client(timeout=30) as client:
        with trio.fail_after(30):  # against a hang: answered, the upstream still holding
            response = await client.post("/v1/chat/completions", json={**body, "stream": stream})
    assert_envelope(response, 400, "invalid_request_error")
    with trio.fail_after(30):  # against a hang, not a timing assertion
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await running.records.wait_for(1)
    assert record.status == 400
    if stream:
        upstream.handler = lambda request: StreamReply([chunk("fine"), DONE])
    else:
        upstream.handler = lambda request: JSONReply(chat_completion("fine"))
    async with running.client() as client:
        passed = await client.post(
            "/v1/chat/completions",
            json={**body, "messages": [{"role": "user", "content": "hi"}], "stream": stream},
        )
    assert passed.status_code == 200 and "fine" in passed.text
    await running.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_client_leaving_while_a_during_call_guardrail_checks_releases_the_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream, stream: bool
) -> None:
    """The upstream has answered (a stream its head and first chunk, a whole answer all of
    it) while the guardrail beside it is still checking, and the client leaves: the
    upstream's connection is closed, not left in the pool half-read or open, and the
    deployment no longer counts the request as in flight."""
    if stream:
        upstream.handler = lambda request: StreamReply([chunk("first"), 30.0, chunk("late"), DONE])
    else:
        upstream.handler = lambda request: JSONReply(chat_completion("fine"))
    # Checking for longer than the test runs: the client leaves while it does.
    guard = custom("moderation", "SlowBlock", "during_call", delay=600.0)
    running = await start_gateway(nursery, guarded(upstream, guard))
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with running.client() as client, trio.open_nursery() as asking:
        asking.start_soon(partial(client.post, "/v1/chat/completions", json=body))
        with trio.fail_after(30):  # the upstream has the call (a fixed wait could end first)
            await upstream.wait_for(lambda: len(upstream.requests) == 1)
        await trio.sleep(0.5)  # its answer (or first chunk) arrives; no assert hangs on it
        asking.cancel_scope.cancel()
    [deployment] = running.gateway.groups.deployments("gpt-test")
    with trio.fail_after(30):  # against a hang, not a timing assertion
        if stream:
            await upstream.wait_for(lambda: upstream.aborted == 1)
        while deployment.state.in_flight:  # noqa: ASYNC110 - no event to wait for
            await trio.sleep(0.05)
    await running.stop()


async def test_logging_only_masks_what_is_logged_stored_and_exported_only(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = FakeUpstream(lambda request: JSONReply({}))
    await collector.start(nursery)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    caplog.set_level("DEBUG")
    upstream.handler = lambda request: JSONReply(chat_completion(f"Noted, {EMAIL}."))
    config = guarded(upstream, content_filter("log-mask", "logging_only"))
    config["general_settings"] = {"database_url": database_url}
    running = await start_gateway(nursery, config)
    answer = await sdk(running).chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": f"I am {EMAIL}"}],
        extra_body={"metadata": {"note": f"from {EMAIL}"}},
    )
    # What is sent and answered is untouched.
    assert answer.choices[0].message.content == f"Noted, {EMAIL}."
    assert EMAIL in upstream.requests[0].body.decode()
    [record] = await running.records.wait_for(1)
    assert await running.gateway.ledger.flush()
    async with running.client() as client:
        rows = (await client.get("/spend/logs", params={"request_id": record.request_id})).json()
    stored = await running.gateway.store.spend_logs(SpendFilter(request_id=record.request_id))
    await running.stop()
    assert rows and rows[0]["metadata"]["note"] == "from [EMAIL_REDACTED]"
    assert rows[0]["metadata"]["guardrail_information"][0]["guardrail_mode"] == "logging_only"
    assert stored and EMAIL not in repr(stored) and EMAIL not in repr(rows)
    exported = b"".join(request.body for request in collector.requests)
    assert b"[EMAIL_REDACTED]" in exported and EMAIL.encode() not in exported
    assert b"guardrail log-mask" in exported  # a span per guardrail run
    assert EMAIL not in caplog.text and EMAIL not in repr(record)


async def test_a_native_messages_stream_is_masked_in_text_and_tool_use(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Anthropic to Anthropic, events relayed as they came: a post_call mask rewrites
    the text and tool-input deltas it finds, and their frames."""
    frames: list[bytes | float | trio.Event] = [
        message_start(),
        *text_block(0, "Mail ada@exa", "mple.com now"),
        *tool_block(1, "toolu_1", "send", '{"to": "ada@', 'example.com"}'),
        *message_end("tool_use", output_tokens=9),
    ]
    serve(upstream, lambda body: StreamReply(frames))
    config = {
        **anthropic_config(upstream),
        "guardrails": [content_filter("cf", "post_call", stream_window=1000)],
    }
    running = await start_gateway(nursery, config)
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=MASTER_KEY, max_retries=0)
    hello: list[TextBlockParam] = [{"type": "text", "text": "hi"}]
    async with claude.messages.stream(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": hello}]
    ) as stream:
        final = await stream.get_final_message()
    block = final.content[0]
    assert block.type == "text" and block.text == "Mail [EMAIL_REDACTED] now"
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.input == {"to": "[EMAIL_REDACTED]"}
    await running.stop()


async def test_pre_call_masks_tool_calls_and_tool_results_in_every_shape(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Chat tool calls and tool results, a completion's prompt, embeddings' input, a
    Responses request's function call and its output, and a Messages request's system,
    tool use and tool result: each masked where it is, as JSON where it was JSON."""

    def answer(request: Any) -> JSONReply:
        if request.target.endswith("/embeddings"):
            return JSONReply({"object": "list", "data": [{"object": "embedding", "index": 0,
                              "embedding": [0.1]}], "model": "m",
                              "usage": {"prompt_tokens": 1, "total_tokens": 1}})  # fmt: skip
        if request.target.endswith("/completions") and "prompt" in request.json:
            return JSONReply({"id": "cmpl-1", "object": "text_completion", "created": 1,
                              "model": "m", "choices": [{"index": 0, "text": "ok",
                              "finish_reason": "stop"}]})  # fmt: skip
        return JSONReply(chat_completion("ok"))

    upstream.handler = answer
    config = guarded(upstream, content_filter("cf", "pre_call"))
    config["model_list"][0]["litellm_params"]["model"] = "hosted_vllm/upstream-model"
    running = await start_gateway(nursery, config)
    client = sdk(running)
    args = orjson.dumps({"to": EMAIL, "cc": [EMAIL], "n": 1}).decode()
    await client.chat.completions.create(
        model="gpt-test",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": f"write {EMAIL}"}]},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "send", "arguments": args},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": f"sent to {EMAIL}"},
        ],
    )
    await client.completions.create(model="gpt-test", prompt=[f"to {EMAIL}"])
    await client.embeddings.create(model="gpt-test", input=f"to {EMAIL}")
    await client.responses.create(
        model="gpt-test",
        input=[
            {"role": "user", "content": f"mail {EMAIL}"},
            {"type": "function_call", "call_id": "c2", "name": "send", "arguments": args},
            {"type": "function_call_output", "call_id": "c2", "output": f"sent {EMAIL}"},
        ],
    )
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=MASTER_KEY, max_retries=0)
    await claude.messages.create(
        model="gpt-test",
        max_tokens=10,
        system=f"The user is {EMAIL}",
        messages=[
            {"role": "user", "content": "send it"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "send", "input": {"to": EMAIL}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": f"sent {EMAIL}"}
                ],
            },
        ],
    )
    assert len(upstream.requests) == 5
    for sent in upstream.requests:
        assert EMAIL not in sent.body.decode(), sent.body
        assert b"[EMAIL_REDACTED]" in sent.body
    first = upstream.requests[0].json["messages"]
    assert orjson.loads(first[1]["tool_calls"][0]["function"]["arguments"]) == {
        "to": "[EMAIL_REDACTED]",
        "cc": ["[EMAIL_REDACTED]"],
        "n": 1,
    }
    assert first[2]["content"] == "sent to [EMAIL_REDACTED]"
    await running.stop()


async def test_post_call_on_a_native_responses_answer(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    response = {
        "id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
        "model": "upstream-model",
        "output": [
            {"type": "message", "id": "m1", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": f"Mail {EMAIL}", "annotations": []}]},
            {"type": "function_call", "id": "f1", "call_id": "c1", "name": "send",
             "arguments": orjson.dumps({"to": EMAIL}).decode(), "status": "completed"},
        ],
        "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
    }  # fmt: skip
    upstream.handler = lambda request: JSONReply(response)
    running = await start_gateway(nursery, guarded(upstream, content_filter("cf", "post_call")))
    answer = await sdk(running).responses.create(model="gpt-test", input="hi")
    assert upstream.requests[0].target.endswith("/responses")
    assert answer.output_text == "Mail [EMAIL_REDACTED]"
    call = answer.output[1]
    assert call.type == "function_call"
    assert orjson.loads(call.arguments) == {"to": "[EMAIL_REDACTED]"}
    await running.stop()


async def test_guardrails_by_request_key_and_team_and_the_lists(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Not `default_on`: a guardrail runs where the request, its key or its team names
    it; an unknown name is refused; both lists show it in LiteLLM's shapes."""
    upstream.handler = lambda request: JSONReply(chat_completion("ok"))
    optional = content_filter("optional", "pre_call", default_on=False, api_key="sk-guard-secret")
    optional["guardrail_info"] = {"params": [{"name": "pii", "type": "boolean"}]}
    running = await start_gateway(nursery, guarded(upstream, optional))
    card: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"card {CARD}"}]
    assert (await sdk(running).chat.completions.create(model="gpt-test", messages=card)).id
    for extra in ({"guardrails": ["optional"]}, {"metadata": {"guardrails": ["optional"]}}):
        with pytest.raises(openai.BadRequestError):
            await sdk(running).chat.completions.create(
                model="gpt-test", messages=card, extra_body=extra
            )
    with pytest.raises(openai.BadRequestError) as unknown:
        await sdk(running).chat.completions.create(
            model="gpt-test", messages=card, extra_body={"guardrails": ["nope"]}
        )
    assert "nope" in unknown.value.message
    async with running.client() as admin:
        refused = await admin.post("/key/generate", json={"guardrails": ["nope"]})
        assert refused.status_code == 400
        key = (await admin.post("/key/generate", json={"guardrails": ["optional"]})).json()
        team = (await admin.post("/team/new", json={"guardrails": ["optional"]})).json()
        team_key = (await admin.post("/key/generate", json={"team_id": team["team_id"]})).json()
        plain = (await admin.post("/key/generate", json={"metadata": {"note": "x"}})).json()
        changed = await admin.post(
            "/key/update", json={"key": plain["key"], "guardrails": ["optional"]}
        )
        assert changed.json()["metadata"] == {"note": "x", "guardrails": ["optional"]}
    for named in (key["key"], team_key["key"], plain["key"]):
        with pytest.raises(openai.BadRequestError):
            await sdk(running, named).chat.completions.create(model="gpt-test", messages=card)
    async with running.client(key=key["key"]) as client:
        v1 = (await client.get("/guardrails/list")).json()
        v2 = (await client.get("/v2/guardrails/list")).json()
    assert v1 == {
        "guardrails": [
            {
                "guardrail_name": "optional",
                "litellm_params": {
                    "guardrail": "litellm_content_filter",
                    "mode": "pre_call",
                    "default_on": False,
                },
                "guardrail_info": {"params": [{"name": "pii", "type": "boolean"}]},
            }
        ]
    }
    [listed] = v2["guardrails"]
    assert listed["litellm_params"] == v1["guardrails"][0]["litellm_params"]
    async with running.client() as admin:
        whole = (await admin.get("/v2/guardrails/list")).json()
    [listed] = whole["guardrails"]
    assert listed["guardrail_definition_location"] == "config"
    assert listed["litellm_params"]["api_key"] == "[redacted]"
    assert "sk-guard-secret" not in orjson.dumps(whole).decode()
    await running.stop()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"guardrail": "aporia", "mode": "pre_call"}, "type `aporia`"),
        ({"guardrail": "litellm_content_filter", "mode": "sometimes"}, "`mode`"),
        ({"guardrail": "litellm_content_filter", "mode": "pre_call", "categories": []},
         "`categories`"),
        ({"guardrail": "litellm_content_filter", "mode": "pre_call",
          "patterns": [{"pattern_name": "zodiac"}]}, "zodiac"),
        ({"guardrail": "no_such_module.Guard", "mode": "pre_call"}, "cannot be loaded"),
    ],
)  # fmt: skip
def test_what_trigate_cannot_run_stops_the_start_by_name(
    params: dict[str, Any], named: str
) -> None:
    config = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "mock/gpt-4o"}}],
        "guardrails": [{"guardrail_name": "g1", "litellm_params": params}],
        "general_settings": {"database_url": "sqlite://:memory:"},
    }
    with pytest.raises(ConfigError) as stopped:
        Gateway(parse_config(config, {}), MASTER_KEY)
    assert "g1" in str(stopped.value) and named in str(stopped.value)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/rerank", {"model": "rerank", "query": "a forbidden word", "documents": ["a"]}),
        ("/v1/rerank", {"model": "rerank", "query": "q", "documents": ["one", "forbidden"]}),
        ("/v1/rerank", {"model": "rerank", "query": "q", "documents": [{"text": "forbidden"}]}),
        ("/v1/images/generations", {"model": "gpt-test", "prompt": "a forbidden cat"}),
        ("/v1/moderations", {"model": "gpt-test", "input": ["fine", "forbidden"]}),
        ("/v1/audio/speech", {"model": "gpt-test", "input": "forbidden", "voice": "alloy"}),
    ],
    ids=["rerank query", "rerank document", "rerank document object", "image", "mod", "speech"],
)
async def test_pre_call_reads_every_surfaces_text(
    nursery: trio.Nursery, upstream: FakeUpstream, path: str, body: dict[str, Any]
) -> None:
    """Every text a client sends passes the pre_call guardrails, whatever the surface:
    a blocked word is refused before any upstream call."""
    config = guarded(upstream, content_filter("cf", "pre_call"))
    rerank = {"model": "cohere/rerank-v3.5", "api_base": upstream.base_url, "api_key": "k"}
    config["model_list"].append({"model_name": "rerank", "litellm_params": rerank})
    running = await start_gateway(nursery, config)
    async with running.client() as client:
        refused = await client.post(path, json=body)
    assert refused.status_code == 400, refused.text
    assert "forbidden" not in refused.text or "cf" in refused.text
    assert upstream.requests == []
    await running.stop()


async def test_a_native_messages_stream_blocked_mid_way_ends_with_anthropics_error_event(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    frames: list[bytes | float | trio.Event] = [
        message_start(),
        *text_block(0, "one ", "two ", "forbidden ", "three"),
        *message_end("end_turn", output_tokens=4),
    ]
    serve(upstream, lambda body: StreamReply(frames, tail=PING))
    config = {
        **anthropic_config(upstream),
        "guardrails": [content_filter("cf", "post_call", stream_window=1)],
    }
    running = await start_gateway(nursery, config)
    hello = [{"type": "text", "text": "hi"}]
    body = {"model": "claude", "max_tokens": 20, "stream": True, "messages": [
        {"role": "user", "content": hello}]}  # fmt: skip
    async with (
        running.client() as client,
        client.stream("POST", "/v1/messages", json=body) as response,
    ):
        text = (await response.aread()).decode()
    events = [line[7:] for line in text.split("\n") if line.startswith("event: ")]
    assert events[-1] == "error" and events.count("error") == 1
    assert '"text":"one "' in text and '"text":"two "' in text
    assert "forbidden" in text.split("event: error", 1)[1]  # named in the error only
    assert '"text":"forbidden ' not in text and "three" not in text
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await running.records.wait_for(1)
    assert record.status == 400
    await running.stop()

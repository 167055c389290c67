"""Guardrails on `POST /v1/responses` served by an upstream that speaks only the
Responses API (issue 23; Codex CLI on a `gpt-5-codex`-like model): a guardrail's mask is
written into the request in the Responses API's own shapes (instructions, messages,
function calls and their output, reasoning summaries) and the request goes natively,
never as a chat completion such an upstream cannot take; what the guardrail minted is
given back in the native answer, whole and streamed. A hook that rewrites the chat form
alone still sends every deployment the rewrite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fake_guardrails
import orjson
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest, StreamReply
from helpers import RunningGateway, openai_config, sdk, start_gateway

EMAIL = "ada@example.com"
OTHER = "bob@example.org"
ITEM_ID = "msg_upstream_1"

Reply = JSONReply | StreamReply


def responses_only(answer: Callable[[dict[str, Any]], str]) -> Callable[[ReceivedRequest], Reply]:
    """An upstream that speaks only OpenAI's Responses API: `POST /v1/responses` answered
    with `answer(request)`'s text (a Response, or its events when streamed), anything
    else a 404 in OpenAI's error shape, as a Responses-only model's deployment answers
    `/v1/chat/completions`."""

    def handle(request: ReceivedRequest) -> Reply:
        if request.target != "/v1/responses":
            error = {"message": "This model is only supported in v1/responses.",
                     "type": "invalid_request_error", "param": "model", "code": None}  # fmt: skip
            return JSONReply({"error": error}, status=404)
        text = answer(request.json)
        return response_events(text) if request.json.get("stream") else JSONReply(response(text))

    return handle


def message_item(text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if text else []
    return {"type": "message", "id": ITEM_ID, "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def response(text: str, status: str = "completed") -> dict[str, Any]:
    """A Response as OpenAI's API reference gives one."""
    return {
        "id": "resp_upstream_1", "object": "response", "created_at": 1700000000,
        "status": status, "model": "upstream-model",
        "output": [message_item(text)] if text else [],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 29} if status == "completed" else None,
    }  # fmt: skip


def response_events(text: str) -> StreamReply:
    """The Responses API's stream for one message, its text in three deltas (a
    placeholder cut between them), each closing event repeating it whole."""
    third = len(text) // 3
    deltas = [text[:third], text[third : 2 * third], text[2 * third :]]
    at = {"item_id": ITEM_ID, "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    payloads: list[dict[str, Any]] = [
        {"type": "response.created", "response": response("", "in_progress")},
        {"type": "response.in_progress", "response": response("", "in_progress")},
        {"type": "response.output_item.added", "output_index": 0,
         "item": message_item("", "in_progress")},
        {"type": "response.content_part.added", **at, "part": part},
        *({"type": "response.output_text.delta", **at, "delta": delta, "logprobs": []}
          for delta in deltas),
        {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": message_item(text)},
        {"type": "response.completed", "response": response(text)},
    ]  # fmt: skip
    return StreamReply(
        [
            b"event: %s\ndata: %s\n\n"
            % (p["type"].encode(), orjson.dumps({**p, "sequence_number": n}))
            for n, p in enumerate(payloads)
        ]
    )


def user_text(request: dict[str, Any]) -> str:
    """The text of the request's last user message, as the upstream received it."""
    [*_, said] = [item for item in request["input"] if item.get("role") == "user"]
    return str(said["content"][0]["text"])


ARGUMENTS = orjson.dumps({"who": EMAIL}).decode()
# A Codex-shaped request: instructions, a developer message, the user's, a function call
# and its output, and a reasoning item (which a chat completion has no place for).
REQUEST: dict[str, Any] = {
    "model": "gpt-test",
    "instructions": f"You help {EMAIL} today",
    "input": [
        {"type": "message", "role": "developer",
         "content": [{"type": "input_text", "text": "Answer briefly."}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": f"look up {EMAIL}"}]},
        {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAAB-opaque",
         "summary": [{"type": "summary_text", "text": f"I will look up {EMAIL} now"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": ARGUMENTS},
        {"type": "function_call_output", "call_id": "c1", "output": f"found {EMAIL}"},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": f"say hi to {EMAIL}"}]},
    ],
    "tools": [{"type": "function", "name": "lookup", "description": "Find a person.",
               "parameters": {"type": "object", "properties": {"who": {"type": "string"}}}}],
    "store": False,
}  # fmt: skip


async def guarded_gateway(
    nursery: trio.Nursery, upstream: FakeUpstream, guardrail: dict[str, Any]
) -> RunningGateway:
    """`gpt-test` on an `openai/` deployment (whose upstream speaks the Responses API),
    with one guardrail on every request."""
    config = openai_config(upstream)
    config["guardrails"] = [{"guardrail_name": "guard", "litellm_params": guardrail}]
    return await start_gateway(nursery, config)


def content_filter() -> dict[str, Any]:
    return {
        "guardrail": "litellm_content_filter", "mode": ["pre_call", "post_call"],
        "default_on": True,
        "patterns": [{"pattern_type": "prebuilt", "pattern_name": "email", "action": "MASK"}],
    }  # fmt: skip


def assert_masked_natively(received: ReceivedRequest, mask: str) -> None:
    """The upstream was sent the Responses request, every email in it masked where it was,
    in the API's own shapes, and the rest as the client sent it."""
    assert received.target == "/v1/responses"
    assert EMAIL not in received.body.decode()
    sent = received.json
    assert sent["model"] == "upstream-model"
    assert sent["instructions"] == f"You help {mask} today"
    developer, looked, reasoning, call, output, said = sent["input"]
    assert developer == REQUEST["input"][0]
    assert looked["content"] == [{"type": "input_text", "text": f"look up {mask}"}]
    assert reasoning["encrypted_content"] == "gAAAAB-opaque"
    assert reasoning["summary"] == [{"type": "summary_text", "text": f"I will look up {mask} now"}]
    assert {**call, "arguments": None} == {**REQUEST["input"][3], "arguments": None}
    assert orjson.loads(call["arguments"]) == {"who": mask}
    assert output == {"type": "function_call_output", "call_id": "c1", "output": f"found {mask}"}
    assert said["content"] == [{"type": "input_text", "text": f"say hi to {mask}"}]
    assert sent["tools"] == REQUEST["tools"]


async def test_a_content_filters_masks_go_to_a_responses_only_upstream_in_its_shapes(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Masked before the call in the Responses request itself, sent to `/v1/responses`
    alone, and the answer's emails (the one the upstream was sent back, another of its
    own) masked after it, whole and streamed."""
    upstream.handler = responses_only(lambda request: f"Hi, {user_text(request)}; cc {OTHER}")
    running = await guarded_gateway(nursery, upstream, content_filter())
    client = sdk(running)
    answer = await client.responses.create(**REQUEST)
    masked = "Hi, say hi to [EMAIL_REDACTED]; cc [EMAIL_REDACTED]"
    assert answer.output_text == masked
    stream = await client.responses.create(**REQUEST, stream=True)
    events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    [final] = [e.response for e in events if e.type == "response.completed"]
    assert "".join(deltas) == masked and final.output_text == masked
    assert [received.json.get("stream", False) for received in upstream.requests] == [False, True]
    for received in upstream.requests:
        assert_masked_natively(received, "[EMAIL_REDACTED]")
    await running.stop()


async def test_presidio_placeholders_go_natively_and_come_back_in_the_native_answer(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Presidio's `output_parse_pii`: the Responses request is sent with a placeholder for
    the email, and the upstream's answer, which repeats it, reaches the client with the
    email given back: whole, and streamed with the placeholder cut between deltas (the
    deltas, each closing event and the final Response alike)."""
    presidio = FakeUpstream(fake_guardrails.presidio)
    await presidio.start(nursery)
    base = f"http://127.0.0.1:{presidio.port}"
    guardrail = {
        "guardrail": "presidio", "mode": "pre_call", "default_on": True,
        "presidio_analyzer_api_base": base, "presidio_anonymizer_api_base": base,
        "pii_entities_config": {"EMAIL_ADDRESS": "MASK"}, "output_parse_pii": True,
    }  # fmt: skip
    upstream.handler = responses_only(lambda request: f"Noted: {user_text(request)}!")
    running = await guarded_gateway(nursery, upstream, guardrail)
    client = sdk(running)
    answer = await client.responses.create(**REQUEST)
    assert answer.output_text == f"Noted: say hi to {EMAIL}!"
    stream = await client.responses.create(**REQUEST, stream=True)
    events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == f"Noted: say hi to {EMAIL}!"
    [done] = [e.text for e in events if e.type == "response.output_text.done"]
    [item] = [e.item for e in events if e.type == "response.output_item.done"]
    [final] = [e.response for e in events if e.type == "response.completed"]
    assert done == final.output_text == f"Noted: say hi to {EMAIL}!"
    assert item.content[0].text == done  # type: ignore[union-attr]
    assert len(upstream.requests) == 2
    for received in upstream.requests:
        assert_masked_natively(received, "<EMAIL_ADDRESS_1>")
    # Each text both forms of the request hold was analysed once, not once per form.
    analysed = [r.json["text"] for r in presidio.requests if r.target == "/analyze"]
    assert analysed.count(f"say hi to {EMAIL}") == 2
    await running.stop()


async def test_a_request_with_no_chat_form_is_masked_before_it_goes_natively(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """An uploaded image (`file_id`) has no chat form, so only a deployment that speaks
    the Responses API can take the request: the guardrail still reads its text, and the
    upstream is sent it masked."""
    upstream.handler = responses_only(lambda request: "ok")
    running = await guarded_gateway(nursery, upstream, content_filter())
    content = [
        {"type": "input_text", "text": f"who is {EMAIL}?"},
        {"type": "input_image", "file_id": "file-abc"},
    ]
    answer = await sdk(running).responses.create(
        model="gpt-test", input=[{"role": "user", "content": content}], store=False
    )
    assert answer.output_text == "ok"
    [received] = upstream.requests
    assert received.target == "/v1/responses"
    assert received.json["input"][0]["content"] == [
        {"type": "input_text", "text": "who is [EMAIL_REDACTED]?"},
        {"type": "input_image", "file_id": "file-abc"},
    ]
    await running.stop()


async def test_follow_ups_send_their_masked_conversation_natively(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A follow-up of a response a chat deployment made is sent with its conversation
    rebuilt, the stored turn (kept as the client sent it) masked too; a follow-up of the
    upstream's own response is sent its id and its own input, masked."""
    upstream.handler = responses_only(lambda request: f"Noted: {user_text(request)}")
    chat = FakeUpstream()
    await chat.start(nursery)
    config = openai_config(upstream)
    config["model_list"].append(
        {"model_name": "chat", "litellm_params": {"model": "hosted_vllm/chat-model",
                                                  "api_base": chat.base_url}}
    )  # fmt: skip
    config["guardrails"] = [{"guardrail_name": "guard", "litellm_params": content_filter()}]
    running = await start_gateway(nursery, config)
    client = sdk(running)
    first = await client.responses.create(model="chat", input=f"I am {EMAIL}")
    items = await client.responses.input_items.list(first.id)
    assert items.data[0].content[0].text == f"I am {EMAIL}"  # type: ignore[union-attr]
    second = await client.responses.create(
        model="gpt-test", input=f"and {OTHER}", previous_response_id=first.id
    )
    assert second.output_text == "Noted: and [EMAIL_REDACTED]"
    await client.responses.create(
        model="gpt-test", input=f"or {EMAIL}", previous_response_id=second.id
    )
    rebuilt, by_id = upstream.requests
    assert rebuilt.target == by_id.target == "/v1/responses"
    assert "previous_response_id" not in rebuilt.json
    texts = [item["content"][0]["text"] for item in rebuilt.json["input"]]
    assert texts == ["I am [EMAIL_REDACTED]", "Hello!", "and [EMAIL_REDACTED]"]
    assert by_id.json["previous_response_id"] == second.id
    assert [item["content"][0]["text"] for item in by_id.json["input"]] == ["or [EMAIL_REDACTED]"]
    for received in (*upstream.requests, *chat.requests):
        assert EMAIL not in received.body.decode() and OTHER not in received.body.decode()
    await running.stop()


async def test_a_hook_that_rewrites_the_chat_form_alone_sends_the_rewrite(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A hook of the user's rewrites `messages` only: the Responses request it did not
    change cannot go natively past it, so the upstream is sent the rewrite (a chat
    completion), and a Responses-only upstream refuses it rather than being sent the
    card number. (The hook rewrites string contents: the instructions' system message.)"""
    upstream.handler = responses_only(lambda request: "ok")
    config = {
        **openai_config(upstream),
        "litellm_settings": {"callbacks": ["hook_examples.litellm_redact"]},
    }
    running = await start_gateway(nursery, config)
    async with running.client() as client:
        card = {"model": "gpt-test", "instructions": "card 4111-1111-1111-1111", "input": "hi"}
        refused = await client.post("/v1/responses", json=card)
    assert refused.status_code == 404
    [received] = upstream.requests
    assert received.target == "/v1/chat/completions"
    assert b"4111-1111-1111-1111" not in received.body
    assert received.json["messages"][0]["content"] == "card [card]"
    await running.stop()


async def test_a_mask_the_native_request_cannot_hold_alike_sends_only_the_masked_chat_form(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """An assistant turn's two parts hold an email only when joined, as its chat form
    joins them: masked there, and the parts, each read alone, not. The Responses request
    is then not the masked one's like, so it is not sent: the chat form is, masked, and
    the Responses-only upstream refuses it. No upstream is sent the email."""
    upstream.handler = responses_only(lambda request: "ok")
    running = await guarded_gateway(nursery, upstream, content_filter())
    split = [{"type": "output_text", "text": "write to ada"},
             {"type": "output_text", "text": "@example.com"}]  # fmt: skip
    body = {
        "model": "gpt-test",
        "input": [
            {"type": "message", "role": "assistant", "content": split},
            {"type": "message", "role": "user", "content": "done?"},
        ],
    }
    async with running.client() as client:
        refused = await client.post("/v1/responses", json=body)
    assert refused.status_code == 404
    [received] = upstream.requests
    assert received.target == "/v1/chat/completions"
    assert received.json["messages"][0]["content"] == "write to [EMAIL_REDACTED]"
    await running.stop()


async def test_a_compaction_is_sent_masked_and_its_kept_turns_come_back_unmasked(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Codex's remote compaction (`/v1/responses/compact`) has no form but the Responses
    API's: it is sent with Presidio's placeholders, and the turns the upstream keeps come
    back to the client with the email given back."""
    presidio = FakeUpstream(fake_guardrails.presidio)
    await presidio.start(nursery)
    base = f"http://127.0.0.1:{presidio.port}"
    guardrail = {
        "guardrail": "presidio", "mode": "pre_call", "default_on": True,
        "presidio_analyzer_api_base": base, "presidio_anonymizer_api_base": base,
        "pii_entities_config": {"EMAIL_ADDRESS": "MASK"}, "output_parse_pii": True,
    }  # fmt: skip

    def compact(request: ReceivedRequest) -> JSONReply:
        kept = [
            {**item, "id": "msg_kept_1", "status": "completed"} for item in request.json["input"]
        ]
        compaction = {"type": "compaction", "id": "cmp_1", "encrypted_content": "opaque"}
        usage = {"input_tokens": 50, "output_tokens": 10, "total_tokens": 60}
        return JSONReply({"id": "resp_compaction_1", "object": "response.compaction",
                          "created_at": 1700000000, "output": [*kept, compaction],
                          "usage": usage})  # fmt: skip

    upstream.handler = compact
    running = await guarded_gateway(nursery, upstream, guardrail)
    said = [{"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": f"mail {EMAIL} today"}]}]  # fmt: skip
    compacted = await sdk(running).responses.compact(
        model="gpt-test", input=said, instructions=f"You help {EMAIL} now"
    )
    [received] = upstream.requests
    assert received.target == "/v1/responses/compact"
    assert received.json["instructions"] == "You help <EMAIL_ADDRESS_1> now"
    assert received.json["input"][0]["content"][0]["text"] == "mail <EMAIL_ADDRESS_1> today"
    kept = compacted.output[0]
    assert kept.content[0].text == f"mail {EMAIL} today"  # type: ignore[union-attr]
    await running.stop()


async def test_a_during_call_guardrail_reads_a_request_with_no_chat_form(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Beside the call, a guardrail that would mask what was sent blocks: it reads the
    Responses request a native upstream was sent, even one with no chat form."""
    upstream.handler = responses_only(lambda request: "ok")
    running = await guarded_gateway(nursery, upstream, {**content_filter(), "mode": "during_call"})
    content = [
        {"type": "input_text", "text": f"who is {EMAIL}?"},
        {"type": "input_image", "file_id": "file-abc"},
    ]
    async with running.client() as client:
        refused = await client.post(
            "/v1/responses",
            json={"model": "gpt-test", "input": [{"role": "user", "content": content}]},
        )
    assert refused.status_code == 400
    assert "guard" in refused.json()["error"]["message"]
    await running.stop()

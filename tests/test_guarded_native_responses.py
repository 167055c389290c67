"""Guardrails on `POST /v1/responses` served by an upstream that speaks only the
Responses API (issue 23; Codex CLI on a `gpt-5-codex`-like model): a guardrail's mask is
written into the request in the Responses API's own shapes (instructions, messages,
function calls and their output, reasoning summaries) and the request goes natively,
never as a chat completion such an upstream cannot take; what the guardrail minted is
given back in the native answer, whole and streamed. A hook that rewrites the chat form
alone still sends every deployment the rewrite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import fake_guardrails
import orjson
import pytest
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest, StreamReply
from helpers import RunningGateway, openai_config, sdk, start_gateway
from openai.types.responses import (
    ResponseInputMessageContentListParam,
    ResponseInputParam,
    ResponseInputText,
)

from trigate.api import responses

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


async def presidio_masking(nursery: trio.Nursery) -> tuple[FakeUpstream, dict[str, Any]]:
    """A fake Presidio on a real socket, and the guardrail that masks emails through it
    before the call and gives them back in the answer (`output_parse_pii`)."""
    presidio = FakeUpstream(fake_guardrails.presidio)
    await presidio.start(nursery)
    base = f"http://127.0.0.1:{presidio.port}"
    return presidio, {
        "guardrail": "presidio", "mode": "pre_call", "default_on": True,
        "presidio_analyzer_api_base": base, "presidio_anonymizer_api_base": base,
        "pii_entities_config": {"EMAIL_ADDRESS": "MASK"}, "output_parse_pii": True,
    }  # fmt: skip


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
    presidio, guardrail = await presidio_masking(nursery)
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
    assert item.content[0].text == done
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
    # Cast: the image part leaves out `detail`, which the SDK's type requires; the guard
    # reads the parts as a client sent them.
    content = cast(
        "ResponseInputMessageContentListParam",
        [
            {"type": "input_text", "text": f"who is {EMAIL}?"},
            {"type": "input_image", "file_id": "file-abc"},
        ],
    )
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
    said = items.data[0]
    assert said.type == "message" and said.content is not None
    part = said.content[0]
    assert part.type == "input_text" and part.text == f"I am {EMAIL}"
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
    _, guardrail = await presidio_masking(nursery)

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
    said: ResponseInputParam = [{"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": f"mail {EMAIL} today"}]}]  # fmt: skip
    compacted = await sdk(running).responses.compact(
        model="gpt-test", input=said, instructions=f"You help {EMAIL} now"
    )
    [received] = upstream.requests
    assert received.target == "/v1/responses/compact"
    assert received.json["instructions"] == "You help <EMAIL_ADDRESS_1> now"
    assert received.json["input"][0]["content"][0]["text"] == "mail <EMAIL_ADDRESS_1> today"
    kept = compacted.output[0]
    assert kept.type == "message"
    # Cast: the kept turn is the client's own message, its part input_text, where the SDK
    # types an output message's parts as output_text or refusal.
    part = cast("ResponseInputText", kept.content[0])
    assert part.type == "input_text"
    assert part.text == f"mail {EMAIL} today"
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


def echoing(answer: Callable[[dict[str, Any]], str]) -> Callable[[ReceivedRequest], Reply]:
    """`responses_only`, its Response echoing the request's `instructions` and `metadata`
    as OpenAI's does (what it was sent: masked, when a guardrail masked them)."""
    plain = responses_only(answer)

    def handle(request: ReceivedRequest) -> Reply:
        reply = plain(request)
        if isinstance(reply, JSONReply) and reply.status == 200:
            echo = {key: request.json.get(key) for key in ("instructions", "metadata")}
            return JSONReply({**reply.body, **echo})
        return reply

    return handle


async def test_every_text_of_a_native_request_is_read_before_it_goes(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """What a chat request has no place for goes natively as the client sent it, so the
    guardrail reads it too: metadata, a custom tool's description (Codex's apply_patch
    has one), an annotation's title, a file's name and URL, an item of a kind the
    gateway does not know. Binary data (a file's base64, an image's data URL) is not
    text and goes as it came; the Response echoes the client's own values, not the
    masks the upstream was sent."""
    upstream.handler = echoing(lambda request: "ok")
    running = await guarded_gateway(nursery, upstream, content_filter())
    file_data = "data:application/pdf;base64," + "JVBERi0xLjQK" * 40
    image = "data:image/png;base64,iVBORw0KGgo="
    annotation = {
        "type": "url_citation",
        "url": "https://example.net/a",
        "title": f"Written by {EMAIL}",
        "start_index": 0,
        "end_index": 2,
    }
    body: dict[str, Any] = {
        "model": "gpt-test", "store": False,
        "instructions": f"Help {EMAIL}",
        "metadata": {"owner": EMAIL, "name": f"{EMAIL} too"},
        "input": [
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "read these"},
                {"type": "input_file", "filename": "notes.pdf", "file_data": file_data},
                {"type": "input_file", "file_url": f"https://files.example.net/{EMAIL}"},
                {"type": "input_image", "image_url": image}]},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "ok", "annotations": [annotation]}]},
            {"type": "tool_search_output", "call_id": "t1", "tools": [{"note": EMAIL}]},
        ],
        "tools": [{"type": "custom", "name": "apply_patch",
                   "description": f"Patches files; questions to {EMAIL}"}],
    }  # fmt: skip
    async with running.client() as client:
        reply = await client.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["instructions"] == f"Help {EMAIL}"
    assert reply.json()["metadata"] == body["metadata"]
    [received] = upstream.requests
    assert received.target == "/v1/responses"
    assert EMAIL not in received.body.decode()
    sent = received.json
    mask = "[EMAIL_REDACTED]"
    assert sent["metadata"] == {"owner": mask, "name": f"{mask} too"}
    assert sent["tools"] == [{"type": "custom", "name": "apply_patch",
                              "description": f"Patches files; questions to {mask}"}]  # fmt: skip
    said, answered, unknown = sent["input"]
    assert said["content"][1] == body["input"][0]["content"][1]
    assert said["content"][2]["file_url"] == f"https://files.example.net/{mask}"
    assert said["content"][3] == {"type": "input_image", "image_url": image}
    assert answered["content"][0]["annotations"][0]["title"] == f"Written by {mask}"
    assert unknown == {"type": "tool_search_output", "call_id": "t1", "tools": [{"note": mask}]}
    await running.stop()


def tool_events(text: str) -> StreamReply:
    """A Responses stream of a custom tool's call (its input in two deltas), a code
    interpreter's code, an MCP call's arguments and a delta of a kind the gateway does
    not know, each with its closing event repeating it, each holding `text`."""
    half = len(text) // 2
    item = {
        "type": "custom_tool_call",
        "id": "ctc_1",
        "call_id": "c1",
        "name": "apply_patch",
        "status": "completed",
        "input": text,
    }
    final = response("")
    final["output"] = [item]
    at = {"item_id": "ctc_1", "output_index": 0}
    code = {"item_id": "ci_1", "output_index": 1}
    mcp = {"item_id": "mcp_1", "output_index": 2}
    arguments = orjson.dumps({"q": text}).decode()
    payloads: list[dict[str, Any]] = [
        {"type": "response.created", "response": response("", "in_progress")},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "input": "", "status": "in_progress"}},
        {"type": "response.custom_tool_call_input.delta", **at, "delta": text[:half]},
        {"type": "response.custom_tool_call_input.delta", **at, "delta": text[half:]},
        {"type": "response.custom_tool_call_input.done", **at, "input": text},
        {"type": "response.code_interpreter_call_code.delta", **code, "delta": f"print({text!r})"},
        {"type": "response.code_interpreter_call_code.done", **code, "code": f"print({text!r})"},
        {"type": "response.mcp_call_arguments.delta", **mcp, "delta": arguments},
        {"type": "response.mcp_call_arguments.done", **mcp, "arguments": arguments},
        {"type": "response.future_text.delta", **mcp, "delta": f"later {text}"},
        {"type": "response.future_text.done", **mcp, "text": f"later {text}"},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": final},
    ]  # fmt: skip
    return StreamReply(
        [
            b"event: %s\ndata: %s\n\n"
            % (p["type"].encode(), orjson.dumps({**p, "sequence_number": n}))
            for n, p in enumerate(payloads)
        ]
    )


def tools_streamed(repeat: Callable[[str], str]) -> Callable[[ReceivedRequest], Reply]:
    """A Responses-only upstream whose stream (`tool_events`) holds `repeat` of what the
    user said."""

    def handle(request: ReceivedRequest) -> Reply:
        if request.target != "/v1/responses":
            return JSONReply({"error": {"message": "only v1/responses"}}, status=404)
        return tool_events(repeat(str(request.json["input"])))

    return handle


def streamed_texts(text: str) -> list[str]:
    """Every tool text and delta a client got of a stream, by event."""
    keys = ("delta", "input", "code", "arguments", "text")
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith("data:"):
            data = orjson.loads(line[5:])
            found.extend(f"{data['type']}: {data[key]}" for key in keys if key in data)
    return found


async def test_a_native_streams_tool_texts_are_masked(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A custom tool's input, a code interpreter's code, an MCP call's arguments and a
    delta of a kind the gateway does not know are read in a native stream: an email the
    upstream wrote in any of them (deltas and their closing events) is masked."""
    upstream.handler = tools_streamed(lambda said: f"*** patch for {EMAIL} ***")
    running = await guarded_gateway(nursery, upstream, content_filter())
    async with running.client() as client:
        reply = await client.post("/v1/responses", json={
            "model": "gpt-test", "input": "patch it", "stream": True, "store": False})  # fmt: skip
    assert reply.status_code == 200
    assert EMAIL not in reply.text
    texts = streamed_texts(reply.text)
    for kind in ("custom_tool_call_input", "code_interpreter_call_code", "mcp_call_arguments",
                 "future_text"):  # fmt: skip
        for end in ("delta", "done"):
            assert any(t.startswith(f"response.{kind}.{end}: ") for t in texts), (kind, end)
    # Each but the custom tool's second delta, which the mask's end falls before.
    assert sum("[EMAIL_REDACTED]" in t for t in texts) == 8
    await running.stop()


async def test_presidio_placeholders_in_a_native_streams_tool_texts_come_back(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The placeholder a request was sent with, repeated by the upstream in a custom
    tool's input, code, an MCP call's arguments or a newer delta, reaches the client as
    the email it stands for."""
    _, guardrail = await presidio_masking(nursery)
    upstream.handler = tools_streamed(lambda said: f"*** patch for {said} ***")
    running = await guarded_gateway(nursery, upstream, guardrail)
    async with running.client() as client:
        said = {"model": "gpt-test", "input": f"mail {EMAIL}", "stream": True, "store": False}
        reply = await client.post("/v1/responses", json=said)
    assert reply.status_code == 200
    [received] = upstream.requests
    assert received.json["input"] == "mail <EMAIL_ADDRESS_1>"
    assert "<EMAIL_ADDRESS" not in reply.text
    texts = streamed_texts(reply.text)
    assert sum(EMAIL in t for t in texts) == 8
    await running.stop()


async def test_a_streamed_native_response_echoes_the_clients_own_instructions(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The Response a native stream opens and closes with echoes the client's own
    instructions, not the masked ones the upstream was sent."""

    def handle(request: ReceivedRequest) -> Reply:
        stream = response_events("ok")
        echo = b'"instructions":' + orjson.dumps(request.json["instructions"]) + b","
        return StreamReply(
            [
                f.replace(b'"model":', echo + b'"model":')
                for f in stream.frames
                if isinstance(f, bytes)
            ]
        )

    upstream.handler = handle
    running = await guarded_gateway(nursery, upstream, content_filter())
    events = [
        event
        async for event in await sdk(running).responses.create(
            model="gpt-test", instructions=f"Help {EMAIL}", input="hi", stream=True, store=False
        )
    ]
    responses = [e.response for e in events if e.type in ("response.created", "response.completed")]
    assert [r.instructions for r in responses] == [f"Help {EMAIL}"] * 2
    [received] = upstream.requests
    assert received.json["instructions"] == "Help [EMAIL_REDACTED]"
    await running.stop()


async def test_a_conversation_read_after_hooks_ran_is_never_sent(
    nursery: trio.Nursery, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hardening: with hooks, the conversation is read before they run. Were it not (a
    bug, forced here), a fallback that must be sent the conversation would get a fresh
    translation no guardrail read, its masks undone: it is refused, a logged 500, and
    the fallback is sent nothing."""
    from test_responses import fallback_config, native_chain, numbered_responses

    monkeypatch.setattr(responses, "_hooked", lambda gateway: False)
    made: list[str] = []
    upstream.handler = numbered_responses(made)
    translated = FakeUpstream()
    await translated.start(nursery)
    translated.handler = lambda request: JSONReply({"error": {"message": "not to be called"}})
    config = fallback_config(upstream, translated)
    config["guardrails"] = [{"guardrail_name": "guard", "litellm_params": content_filter()}]
    running = await start_gateway(nursery, config)
    async with running.client() as client:
        head = await native_chain(client, 2)
        upstream.handler = lambda request: JSONReply({"error": {"message": "down"}}, status=500)
        body = {"model": "gpt-test", "input": f"mail {EMAIL}", "previous_response_id": head}
        reply = await client.post("/v1/responses", json=body)
    assert reply.status_code == 500, reply.text[:300]
    assert translated.requests == []
    assert all(EMAIL not in r.body.decode() for r in upstream.requests)
    await running.stop()

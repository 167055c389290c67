"""What the guardrails read of a pass-through call, in every field a provider keeps text
in (tests/test_passthrough_guardrails.py has the routes and modes): a model's thinking
and reasoning, code and its output, documents' titles, MCP and shell items, a stored
prompt's variables, a completion's suffix; and, failing closed, a part, block or item of
a kind the guardrails do not know: refused before the call (a 400 in the provider's
envelope naming it), or, in an answer, never the client's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import trio
from fake_anthropic import event, message, message_start
from fake_gemini import answer
from fakes import DONE, FakeUpstream, JSONReply, StreamReply, chat_completion, delta_frame
from helpers import MASTER_KEY, RunningGateway, start_gateway
from test_guardrails import EMAIL, content_filter
from test_passthrough_guardrails import _response, config
from test_passthrough_routes import CLAUDE, GEMINI

MASKED = "[EMAIL_REDACTED]"
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture
async def start(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[Any]:
    """The gateway with the pass-through tests' models and the guardrails given."""
    running: list[RunningGateway] = []

    async def started(*guardrails: dict[str, Any]) -> RunningGateway:
        running.append(await start_gateway(nursery, config(upstream, *guardrails)))
        return running[-1]

    yield started
    for gateway in running:
        await gateway.stop()


async def _post(gateway: RunningGateway, path: str, body: Any) -> Any:
    async with gateway.client() as client:
        return await client.post(path, json=body, headers=AUTH)


def _pieces(text: str) -> list[str]:
    """`text` cut in three, an email split across the cuts."""
    return [text[:9], text[9:14], text[14:]]


# --- requests ---------------------------------------------------------------------------


async def test_anthropic_documents_thinking_and_mcp_results_are_read(
    start: Any, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(message([{"type": "text", "text": "ok"}]))
    gateway = await start(content_filter("in", "pre_call"))
    source = {"type": "text", "media_type": "text/plain", "data": "plain"}
    content = [
        {"type": "document", "source": source, "title": f"From {EMAIL}", "context": EMAIL},
        {"type": "mcp_tool_result", "tool_use_id": "m1", "content": [
            {"type": "text", "text": f"owner {EMAIL}"}]},
    ]  # fmt: skip
    thinking = {"type": "thinking", "thinking": f"mail {EMAIL}", "signature": "c2ln"}
    body = {"model": CLAUDE, "max_tokens": 5, "messages": [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [thinking, {"type": "text", "text": "hm"}]},
        {"role": "user", "content": "go on"},
    ]}  # fmt: skip
    assert (await _post(gateway, "/anthropic/v1/messages", body)).status_code == 200
    sent = upstream.requests[0].body.decode()
    assert EMAIL not in sent and sent.count(MASKED) == 4


async def test_responses_variables_shell_and_mcp_items_are_read(
    start: Any, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(_response("ok"))
    gateway = await start(content_filter("in", "pre_call"))
    body = {
        "model": "gpt-4o",
        "prompt": {"id": "pmpt_1", "variables": {"who": EMAIL,
                                                 "note": {"type": "input_text", "text": EMAIL}}},
        "input": [
            {"type": "local_shell_call", "id": "ls1", "call_id": "c1", "status": "completed",
             "action": {"type": "exec", "command": ["mail", EMAIL], "env": {}}},
            {"type": "local_shell_call_output", "id": "c1", "output": f"sent to {EMAIL}"},
            {"type": "mcp_call", "id": "mcp1", "server_label": "crm", "name": "find",
             "arguments": orjson.dumps({"q": EMAIL}).decode(), "output": f"found {EMAIL}"},
            {"type": "reasoning", "id": "rs1", "summary": [
                {"type": "summary_text", "text": f"ask {EMAIL}"}]},
        ],
    }  # fmt: skip
    assert (await _post(gateway, "/openai/v1/responses", body)).status_code == 200
    sent = upstream.requests[0].body.decode()
    assert EMAIL not in sent and sent.count(MASKED) == 7


async def test_responses_instructions_given_as_items_are_read(
    start: Any, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(_response("ok"))
    gateway = await start(content_filter("in", "pre_call"))
    instructions = [{"type": "message", "role": "developer", "content": [
        {"type": "input_text", "text": f"Write to {EMAIL}"}]}]  # fmt: skip
    body = {"model": "gpt-4o", "input": "hi", "instructions": instructions}
    assert (await _post(gateway, "/openai/v1/responses", body)).status_code == 200
    sent = upstream.requests[0].body.decode()
    assert EMAIL not in sent and sent.count(MASKED) == 1


async def test_gemini_thoughts_code_and_its_output_and_a_completions_suffix_are_read(
    start: Any, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(answer([{"text": "ok"}]))
    gateway = await start(content_filter("in", "pre_call"))
    parts = [
        {"text": f"plan: mail {EMAIL}", "thought": True},
        {"executableCode": {"language": "PYTHON", "code": f"send('{EMAIL}')"}},
        {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": f"sent {EMAIL}"}},
    ]
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]},
                         {"role": "model", "parts": parts}]}  # fmt: skip
    path = f"/gemini/v1beta/models/{GEMINI}:generateContent"
    assert (await _post(gateway, path, body)).status_code == 200
    upstream.handler = lambda request: JSONReply(chat_completion("ok"))
    completion = {"model": "gpt-4o", "prompt": "def f():", "suffix": f"# by {EMAIL}"}
    assert (await _post(gateway, "/openai/v1/completions", completion)).status_code == 200
    gemini_sent, completion_sent = (request.body.decode() for request in upstream.requests)
    assert EMAIL not in gemini_sent and gemini_sent.count(MASKED) == 3
    assert orjson.loads(completion_sent)["suffix"] == f"# by {MASKED}"


async def test_a_request_holding_a_kind_the_guardrails_do_not_know_is_refused(
    start: Any, upstream: FakeUpstream
) -> None:
    """Each in its provider's envelope, a 400 naming the kind; none reaches the provider."""
    gateway = await start(content_filter("in", "pre_call"))
    anthropic = {"model": CLAUDE, "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "new_block", "payload": EMAIL}]}]}  # fmt: skip
    responses = {"model": "gpt-4o", "input": [{"type": "new_item", "data": EMAIL}]}
    gemini = {"contents": [{"parts": [{"toolCall": {"args": EMAIL}}]}]}
    chat = {"model": "gpt-4o", "messages": [
        {"role": "user", "content": [{"type": "new_part", "data": EMAIL}]}]}  # fmt: skip
    refused = [
        await _post(gateway, "/anthropic/v1/messages", anthropic),
        await _post(gateway, "/openai/v1/responses", responses),
        await _post(gateway, f"/gemini/v1beta/models/{GEMINI}:generateContent", gemini),
        await _post(gateway, "/openai/v1/chat/completions", chat),
    ]
    assert [reply.status_code for reply in refused] == [400] * 4
    anthropic_, responses_, gemini_, chat_ = (reply.json() for reply in refused)
    assert anthropic_["type"] == "error" and "`new_block`" in anthropic_["error"]["message"]
    assert "`new_item`" in responses_["error"]["message"]
    assert gemini_["error"]["status"] == "INVALID_ARGUMENT"
    assert "`toolCall`" in gemini_["error"]["message"]
    assert chat_["error"]["code"] == "pass_through_unread_content"
    assert "`new_part`" in chat_["error"]["message"]
    assert upstream.requests == []


# --- answers ----------------------------------------------------------------------------


def _named(payload: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (payload["type"].encode(), orjson.dumps(payload))


async def test_anthropic_thinking_is_read_whole_and_streamed(
    start: Any, upstream: FakeUpstream
) -> None:
    thinking = {"type": "thinking", "thinking": f"reply to {EMAIL}", "signature": "c2ln"}
    upstream.handler = lambda request: JSONReply(
        message([thinking, {"type": "text", "text": "ok"}])
    )
    gateway = await start(content_filter("out", "post_call", stream_window=8))
    body = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    whole = await _post(gateway, "/anthropic/v1/messages", body)
    assert whole.json()["content"][0]["thinking"] == f"reply to {MASKED}"
    start_block = {"type": "thinking", "thinking": "", "signature": ""}
    frames: list[bytes | float | trio.Event] = [
        message_start(),
        event({"type": "content_block_start", "index": 0, "content_block": start_block}),
        *[event({"type": "content_block_delta", "index": 0,
                 "delta": {"type": "thinking_delta", "thinking": piece}})
          for piece in _pieces(f"reply to {EMAIL} now")],
        event({"type": "content_block_stop", "index": 0}),
    ]  # fmt: skip
    upstream.handler = lambda request: StreamReply(frames)
    streamed = (await _post(gateway, "/anthropic/v1/messages", {**body, "stream": True})).text
    assert "ada@" not in streamed and MASKED in streamed
    # A delta of a kind the guardrails do not know ends the stream with an error event.
    unknown = {"type": "content_block_delta", "index": 0,
               "delta": {"type": "new_delta", "data": EMAIL}}  # fmt: skip
    upstream.handler = lambda request: StreamReply([message_start(), _named(unknown)])
    ended = (await _post(gateway, "/anthropic/v1/messages", {**body, "stream": True})).text
    assert EMAIL not in ended and "event: error" in ended and "`new_delta`" in ended


async def test_chat_reasoning_and_list_content_are_read(start: Any, upstream: FakeUpstream) -> None:
    reply = chat_completion("ok")
    reply["choices"][0]["message"]["reasoning_content"] = f"mail {EMAIL}"
    upstream.handler = lambda request: JSONReply(reply)
    gateway = await start(content_filter("out", "post_call", stream_window=8))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    whole = (await _post(gateway, "/openai/v1/chat/completions", body)).json()
    assert whole["choices"][0]["message"]["reasoning_content"] == f"mail {MASKED}"
    pieces = _pieces(f"mail {EMAIL} now")
    frames: list[bytes | float | trio.Event] = [
        *[delta_frame({"reasoning_content": piece}) for piece in pieces],
        *[delta_frame({"content": [{"type": "text", "text": piece}]}) for piece in pieces],
        delta_frame({}, "stop"), DONE,
    ]  # fmt: skip
    upstream.handler = lambda request: StreamReply(frames)
    streamed = await _post(gateway, "/openai/v1/chat/completions", {**body, "stream": True})
    assert "ada@" not in streamed.text and streamed.text.count(MASKED) == 2
    # A content part of a kind the guardrails do not know: the stream's error ends it.
    unknown = delta_frame({"content": [{"type": "new_part", "data": EMAIL}]})
    upstream.handler = lambda request: StreamReply([unknown, DONE])
    ended = (await _post(gateway, "/openai/v1/chat/completions", {**body, "stream": True})).text
    assert EMAIL not in ended and "`new_part`" in ended and ended.endswith("[DONE]\n\n")


def _responses_stream(*payloads: dict[str, Any]) -> StreamReply:
    return StreamReply(
        [_named({**payload, "sequence_number": i}) for i, payload in enumerate(payloads)]
    )


async def test_responses_reasoning_summaries_and_custom_tool_input_masked_where_repeated(
    start: Any, upstream: FakeUpstream
) -> None:
    """The deltas masked as they pass, and every event that repeats their text whole."""
    text = f"mail {EMAIL} now"
    summary = {"item_id": "rs1", "output_index": 0, "summary_index": 0}
    reasoning = {"type": "reasoning", "id": "rs1",
                 "summary": [{"type": "summary_text", "text": text}]}  # fmt: skip
    tool = {"type": "custom_tool_call", "id": "ct1", "call_id": "c1", "name": "patch",
            "input": text}  # fmt: skip
    final = {**_response(""), "output": [reasoning, tool]}
    upstream.handler = lambda request: _responses_stream(
        *[{"type": "response.reasoning_summary_text.delta", **summary, "delta": piece}
          for piece in _pieces(text)],
        {"type": "response.reasoning_summary_text.done", **summary, "text": text},
        {"type": "response.reasoning_summary_part.done", **summary,
         "part": {"type": "summary_text", "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
        *[{"type": "response.custom_tool_call_input.delta", "item_id": "ct1",
           "output_index": 1, "delta": piece} for piece in _pieces(text)],
        {"type": "response.custom_tool_call_input.done", "item_id": "ct1", "output_index": 1,
         "input": text},
        {"type": "response.output_item.done", "output_index": 1, "item": tool},
        {"type": "response.completed", "response": final},
    )  # fmt: skip
    gateway = await start(content_filter("out", "post_call", stream_window=8))
    body = {"model": "gpt-4o", "input": "hi", "stream": True}
    streamed = (await _post(gateway, "/openai/v1/responses", body)).text
    assert "ada@" not in streamed and streamed.count(MASKED) == 9
    upstream.handler = lambda request: _responses_stream(
        {"type": "response.new_thing.delta", "item_id": "x", "delta": EMAIL}
    )
    ended = (await _post(gateway, "/openai/v1/responses", body)).text
    assert EMAIL not in ended and "event: error" in ended and "response.new_thing.delta" in ended


async def test_responses_text_sent_only_in_closing_events_is_read(
    start: Any, upstream: FakeUpstream
) -> None:
    """An upstream may send a part's or an item's text whole, in the events that close
    them, with no delta before: the guardrails read it there too."""
    text = f"mail {EMAIL} now"
    part = {"type": "output_text", "text": text, "annotations": []}
    message = {"type": "message", "id": "m1", "role": "assistant", "status": "completed",
               "content": [part]}  # fmt: skip
    at = {"item_id": "m1", "output_index": 0, "content_index": 0}
    upstream.handler = lambda request: _responses_stream(
        {"type": "response.output_text.done", **at, "text": text},
        {"type": "response.content_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": {**_response(""), "output": [message]}},
    )
    gateway = await start(content_filter("out", "post_call"))
    body = {"model": "gpt-4o", "input": "hi", "stream": True}
    streamed = (await _post(gateway, "/openai/v1/responses", body)).text
    assert "ada@" not in streamed and streamed.count(MASKED) == 4


async def test_a_whole_answer_holding_an_unknown_kind_is_never_the_clients(
    start: Any, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(
        {**_response("ok"), "output": [{"type": "new_item", "id": "n1", "data": EMAIL}]}
    )
    gateway = await start(content_filter("out", "post_call"))
    reply = await _post(gateway, "/openai/v1/responses", {"model": "gpt-4o", "input": "hi"})
    assert reply.status_code == 502 and EMAIL not in reply.text
    assert reply.json()["error"]["code"] == "pass_through_unreadable_answer"
    assert "`new_item`" in reply.json()["error"]["message"]
    with trio.fail_after(5):
        [record] = await gateway.records.wait_for(1)
    assert record.status == 502


async def test_the_text_anthropic_citations_quote_is_read(
    start: Any, upstream: FakeUpstream
) -> None:
    citation = {"type": "char_location", "cited_text": f"write to {EMAIL}",
                "document_index": 0, "document_title": "notes",
                "start_char_index": 0, "end_char_index": 24}  # fmt: skip
    block = {"type": "text", "text": "As noted.", "citations": [citation]}
    upstream.handler = lambda request: JSONReply(message([block]))
    gateway = await start(content_filter("out", "post_call", stream_window=8))
    body = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    whole = (await _post(gateway, "/anthropic/v1/messages", body)).json()
    assert whole["content"][0]["citations"][0]["cited_text"] == f"write to {MASKED}"
    frames: list[bytes | float | trio.Event] = [
        message_start(),
        event({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": "", "citations": []}}),
        event({"type": "content_block_delta", "index": 0,
               "delta": {"type": "citations_delta", "citation": citation}}),
        event({"type": "content_block_stop", "index": 0}),
    ]  # fmt: skip
    upstream.handler = lambda request: StreamReply(frames)
    streamed = (await _post(gateway, "/anthropic/v1/messages", {**body, "stream": True})).text
    assert EMAIL not in streamed and MASKED in streamed

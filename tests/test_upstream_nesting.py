"""An upstream's answer nested deeper than trigate can write back is the upstream's fault.

orjson reads 1024 levels of JSON but writes only 254, and an answer is written again (to
the client, a stored response, a spend row, a cache entry). An answer nested 300 deep
was read, then failed to be written: a 500 of ours, logged as our bug. It is now the
upstream's error where the answer is read (`trigate.providers.base.upstream_json`): a
502 in the client's envelope, or the stream's error event; an answer nested less deep
than the bound passes as it came.
"""

from __future__ import annotations

from typing import Any, cast

import openai
import orjson
import pytest
import trio
from fake_anthropic import anthropic_config
from fakes import FakeUpstream, JSONReply, ReceivedRequest, Reply, StreamReply, chat_completion
from helpers import MESSAGES, openai_config, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam

from trigate.providers.base import UPSTREAM_NESTING

# Read by orjson (1024 levels), never written by it (254).
TOO_DEEP = 300


def nested_lists(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"{}" + b"}" * depth


def with_field(answer: dict[str, Any], name: str, value: bytes) -> bytes:
    """`answer` as JSON with `name` set to the JSON text `value`, which orjson may not
    be able to write."""
    return orjson.dumps({**answer, name: "PLACE"}).replace(b'"PLACE"', value)


def chunk_frame(extra: bytes) -> bytes:
    chunk = {
        "id": "chatcmpl-deep",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
    return b"data: " + with_field(chunk, "extra", extra) + b"\n\n"


def answers_nested(depth: int) -> Any:
    def handle(request: ReceivedRequest) -> Reply:
        if request.json.get("stream"):
            return StreamReply([chunk_frame(nested_lists(depth)), b"data: [DONE]\n\n"])
        return JSONReply(with_field(chat_completion(), "extra", nested_lists(depth)))

    return handle


async def test_an_answer_nested_too_deep_is_the_upstreams_502(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = answers_nested(TOO_DEEP)
    gateway = await start_gateway(nursery, openai_config(upstream))
    async with gateway.client() as client:
        for path, body in (
            ("/v1/chat/completions", {"model": "gpt-test", "messages": MESSAGES}),
            ("/v1/responses", {"model": "gpt-test", "input": "Say hello"}),
        ):
            answer = await client.post(path, json=body)
            assert answer.status_code == 502, (path, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "upstream_error"
            assert f"nested more than {UPSTREAM_NESTING} levels" in error["message"]


async def test_an_answer_nested_within_the_bound_passes_as_it_came(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    depth = UPSTREAM_NESTING - 8  # the answer's own levels: the field sits in the object
    upstream.handler = answers_nested(depth)
    gateway = await start_gateway(nursery, openai_config(upstream))
    async with gateway.client() as client:
        answer = await client.post(
            "/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES}
        )
    assert answer.status_code == 200
    assert orjson.dumps(answer.json()["extra"]) == nested_lists(depth)


async def test_a_translated_stream_ends_with_the_upstreams_error_event(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = answers_nested(TOO_DEEP)
    gateway = await start_gateway(nursery, openai_config(upstream))
    body = {"model": "gpt-test", "max_tokens": 16, "stream": True, "messages": MESSAGES}
    async with gateway.client() as client:
        answer = await client.post("/v1/messages", json=body)
    assert answer.status_code == 200
    *_, last = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    error = orjson.loads(last.removeprefix("data: "))
    assert error["type"] == "error"
    assert f"nested more than {UPSTREAM_NESTING} levels" in error["error"]["message"]


async def test_an_anthropic_tool_input_nested_too_deep_is_a_502(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The case that was a 500: a tool_use block's `input` becomes the chat tool call's
    `arguments`, a string orjson had to write from a value it could not."""
    answer = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": 0}],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    }
    raw = orjson.dumps(answer).replace(b'"input":0', b'"input":' + nested_objects(TOO_DEEP))
    upstream.handler = lambda request: JSONReply(raw)
    gateway = await start_gateway(nursery, anthropic_config(upstream))
    messages = cast("list[ChatCompletionMessageParam]", MESSAGES)
    with pytest.raises(openai.APIStatusError) as failed:
        await sdk(gateway).chat.completions.create(model="claude", messages=messages)
    assert failed.value.status_code == 502
    assert f"nested more than {UPSTREAM_NESTING} levels" in failed.value.message

"""The Messages API ingress translation: Anthropic requests in, Anthropic answers out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from trigate.api.anthropic_format import (
    AnthropicFrames,
    anthropic_usage,
    to_chat_request,
    to_message,
)
from trigate.api.envelopes import anthropic_error_body as error_body
from trigate.errors import GatewayError, InvalidRequest, NoDeploymentAvailable


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of Anthropic SSE bytes, checking name and `type` agree."""
    result = []
    for block in data.decode().strip().split("\n\n"):
        name, payload = block.split("\n")
        parsed = orjson.loads(payload.removeprefix("data: "))
        assert name == f"event: {parsed['type']}"
        result.append((parsed["type"], parsed))
    return result


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_request_translation_covers_every_field() -> None:
    body = {
        "model": "claude",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Calling."},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "42"}],
                    },
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "stop_sequences": ["X"],
        "temperature": 0.5,
        "top_p": 0.9,
        "metadata": {"user_id": "u"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stream": True,
    }
    assert to_chat_request(body) == {
        "model": "claude",
        "messages": [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Calling.",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a":1}'},
                    }
                ],
                "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}],
            },
            {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": "42"}]},
            {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
        ],
        "max_tokens": 100,
        "temperature": 0.5,
        "top_p": 0.9,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stop": ["X"],
        "user": "u",
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")],
)
def test_tool_choice(choice: dict[str, Any], expected: str) -> None:
    body = {"model": "m", "max_tokens": 1, "messages": [], "tool_choice": choice}
    assert to_chat_request(body)["tool_choice"] == expected


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        to_chat_request({"model": "m", "max_tokens": 1, "messages": [{"role": "system"}]})


def test_completion_becomes_a_message() -> None:
    completion = {
        "id": "chatcmpl-1",
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "reasoning_content": "Thinking.",
                    "content": "Answer.",
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "f", "arguments": '{"x": [1]}'}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }
    assert to_message(completion, "asked-model") == {
        "id": "chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "model": "asked-model",
        "content": [
            {"type": "thinking", "thinking": "Thinking.", "signature": ""},
            {"type": "text", "text": "Answer."},
            {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": [1]}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")],
)
def test_stop_reasons(finish: str, stop: str) -> None:
    completion = {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert to_message(completion, "m")["stop_reason"] == stop


def test_usage_separates_cache_reads_and_writes() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 60},
        "cache_creation_input_tokens": 30,
    }
    assert anthropic_usage(usage) == {
        "input_tokens": 10,
        "output_tokens": 7,
        "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 30,
    }


def test_stream_blocks_open_and_close_by_kind_and_tool_index() -> None:
    frames = AnthropicFrames("asked-model")
    data = b"".join(
        [
            frames.chunk(chunk({"role": "assistant", "content": ""})),
            frames.chunk(chunk({"reasoning_content": "Hm"})),
            frames.chunk(chunk({"content": "Hi"})),
            frames.chunk(
                chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f"}}]})
            ),
            frames.chunk(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})),
            frames.chunk(
                chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g"}}]})
            ),
            frames.chunk(chunk({}, finish="tool_calls")),
            frames.usage({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}),
            frames.end(),
        ]
    )
    parsed = events(data)
    assert [name for name, _ in parsed] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert parsed[0][1]["message"]["model"] == "asked-model"
    starts = [event["content_block"] for name, event in parsed if name == "content_block_start"]
    assert [block["type"] for block in starts] == ["thinking", "text", "tool_use", "tool_use"]
    assert [event["index"] for name, event in parsed if name == "content_block_stop"] == [
        0,
        1,
        2,
        3,
    ]
    assert parsed[8][1]["delta"] == {"type": "input_json_delta", "partial_json": "{}"}
    assert parsed[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert parsed[-2][1]["usage"]["output_tokens"] == 2


def test_stream_error_is_one_error_event_without_stop() -> None:
    frames = AnthropicFrames("m")
    data = frames.chunk(chunk({"content": "x"})) + frames.error(GatewayError("boom")) + frames.end()
    parsed = events(data)
    assert parsed[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "boom"}},
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRequest("x"), "invalid_request_error"),
        (NoDeploymentAvailable("x"), "rate_limit_error"),
        (GatewayError("x", status=503), "overloaded_error"),
        (GatewayError("x", status=504), "api_error"),
    ],
)
def test_error_types_follow_the_status(error: GatewayError, kind: str) -> None:
    assert error_body(error)["error"]["type"] == kind

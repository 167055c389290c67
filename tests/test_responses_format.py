"""The Responses API translation: requests to chat bodies, chat answers to Response
objects, and chat chunks to Responses stream events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from trigate.api.responses_format import (
    ResponsesEvents,
    input_items,
    response_object,
    to_chat_request,
)
from trigate.errors import GatewayError, InvalidRequest

# --- input ---------------------------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    assert input_items({"input": "hi"}) == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    ]


def test_items_with_a_role_and_no_type_are_messages() -> None:
    given = [
        {"role": "user", "content": "hi"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]
    assert input_items({"input": given}) == [
        {"type": "message", "role": "user", "content": "hi"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]


def test_no_input_is_no_items() -> None:
    assert input_items({}) == []


@pytest.mark.parametrize("given", [3, {"role": "user"}, [3], [{"content": "x"}]])
def test_a_malformed_input_is_refused(given: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        input_items({"input": given})
    assert caught.value.param == "input"


# --- request -----------------------------------------------------------------------------


def test_instructions_and_messages_become_chat_messages() -> None:
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {"role": "system", "content": [{"type": "input_text", "text": "Sys."}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look:"},
                    {"type": "input_image", "image_url": "https://x/i.png", "detail": "high"},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "A", "annotations": []}],
            },
        ],
    }
    chat, dropped = to_chat_request(body, [])
    assert dropped == []
    assert chat == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Use tools."},
            {"role": "system", "content": "Sys."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/i.png", "detail": "high"},
                    },
                ],
            },
            {"role": "assistant", "content": "A"},
        ],
    }


def test_function_calls_join_one_assistant_message_and_outputs_are_tool_messages() -> None:
    body = {
        "model": "m",
        "input": [
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
        ],
    }
    chat, _ = to_chat_request(body, [{"type": "message", "role": "user", "content": "go"}])
    assert chat["messages"] == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_tools_flatten_namespaces_and_drop_built_ins() -> None:
    body = {
        "model": "m",
        "input": "hi",
        "tools": [
            {
                "type": "function",
                "name": "f",
                "description": "F.",
                "parameters": {},
                "strict": True,
            },
            {"type": "web_search"},
            {
                "type": "namespace",
                "name": "mcp",
                "tools": [{"type": "function", "name": "g", "parameters": {"type": "object"}}],
            },
            {"type": "web_search"},
            {"type": "local_shell"},
        ],
        "tool_choice": {"type": "function", "name": "f"},
        "parallel_tool_calls": False,
    }
    chat, dropped = to_chat_request(body, [])
    assert dropped == ["web_search", "local_shell"]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "f", "description": "F.", "parameters": {}, "strict": True},
        },
        {"type": "function", "function": {"name": "mcp__g", "parameters": {"type": "object"}}},
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["parallel_tool_calls"] is False


def test_settings_map_to_chat_fields() -> None:
    body = {
        "model": "m",
        "input": "hi",
        "max_output_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u",
        "metadata": {"k": "v"},
        "store": False,
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {}, "strict": True}},
        "stream": True,
    }
    chat, _ = to_chat_request(body, [])
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u",
        "reasoning_effort": "low",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": {}, "strict": True},
        },
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# --- response ----------------------------------------------------------------------------


def test_a_completion_is_a_response_object() -> None:
    request = {
        "model": "alias",
        "input": "hi",
        "tools": [
            {"type": "namespace", "name": "mcp", "tools": [{"type": "function", "name": "g"}]}
        ],
    }
    completion = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Calling.",
                    "reasoning_content": "Think.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "mcp__g", "arguments": "{}"},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }
    response = response_object(completion, response_id="resp_1", request=request, created_at=7.9)
    reasoning, message, call = response["output"]
    assert reasoning["id"].startswith("rs_")
    assert message["id"].startswith("msg_")
    assert call["id"].startswith("fc_")
    assert reasoning == {
        "id": reasoning["id"],
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "Think."}],
        "status": "completed",
    }
    assert message == {
        "id": message["id"],
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Calling.", "annotations": [], "logprobs": []}],
    }
    assert call == {
        "id": call["id"],
        "type": "function_call",
        "call_id": "c1",
        "name": "g",
        "namespace": "mcp",
        "arguments": "{}",
        "status": "completed",
    }
    assert response["status"] == "completed"
    assert response["created_at"] == 7
    assert response["model"] == "alias"
    assert response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
    }


def test_a_length_finish_is_incomplete() -> None:
    completion = {"choices": [{"finish_reason": "length", "message": {"content": "Cut"}}]}
    response = response_object(
        completion, response_id="resp_1", request={"model": "m"}, created_at=1
    )
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


# --- stream ------------------------------------------------------------------------------


def events(frames: bytes) -> list[dict[str, Any]]:
    """The data of each SSE frame, checked against its `event:` line."""
    parsed = []
    for frame in frames.decode().split("\n\n"):
        if not frame:
            continue
        name, data = frame.split("\n")
        payload = orjson.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        parsed.append(payload)
    return parsed


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields}]}


def test_a_text_stream() -> None:
    encoder = ResponsesEvents(response_id="resp_1", request={"model": "m"}, created_at=1)
    frames = encoder.chunk(delta(role="assistant", content="He"))
    frames += encoder.chunk(delta(content="llo"))
    frames += encoder.chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    frames += encoder.usage({"usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    frames += encoder.end()
    got = events(frames)
    assert [event["type"] for event in got] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event["sequence_number"] for event in got] == list(range(len(got)))
    final = got[-1]["response"]
    assert final == encoder.response
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["total_tokens"] == 5


def test_a_failure_is_one_response_failed_and_nothing_after() -> None:
    encoder = ResponsesEvents(response_id="resp_1", request={"model": "m"}, created_at=1)
    frames = encoder.chunk(delta(content="He"))
    frames += encoder.error(GatewayError("upstream broke", status=502))
    frames += encoder.end()
    got = events(frames)
    assert [event["type"] for event in got][-1] == "response.failed"
    assert [event["type"] for event in got].count("response.failed") == 1
    assert got[-1]["response"]["status"] == "failed"
    assert got[-1]["response"]["error"] == {"code": "server_error", "message": "upstream broke"}

"""The Responses API translation: requests to chat bodies, chat answers to Response
objects, and chat chunks to Responses stream events, each event and Response checked
against the `openai` SDK's own types as well as by shape."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from trigate.api.responses_format import (
    MAX_TOOL_NAME,
    ResponsesEvents,
    flat_name,
    input_items,
    response_object,
    to_chat_request,
)
from trigate.errors import GatewayError, InvalidRequest
from trigate.providers import NativeEvent

STREAM_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
NAMESPACE_TOOL = {
    "type": "namespace",
    "name": "mcp",
    "description": "An MCP server's tools.",
    "tools": [
        {
            "type": "function",
            "name": "lookup",
            "description": "Look up.",
            "parameters": {"type": "object"},
            "strict": False,
            "defer_loading": True,
        }
    ],
}


def chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    translated, _ = to_chat_request({"model": "m", **body}, history or [])
    return translated


# --- input ---------------------------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    assert input_items({"input": "hi"}) == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    ]


def test_items_are_kept_and_those_with_a_role_and_no_type_are_messages() -> None:
    given = [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]
    assert input_items({"input": given}) == [
        {"type": "message", "role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]


def test_no_input_is_no_items() -> None:
    assert input_items({"previous_response_id": "resp_1"}) == []


@pytest.mark.parametrize("given", [3, {"role": "user"}, [3], [{"content": "x"}], [{"type": 1}]])
def test_a_malformed_input_is_refused(given: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        input_items({"input": given})
    assert caught.value.param == "input"


# --- request: messages -------------------------------------------------------------------


def test_instructions_then_history_then_input() -> None:
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "two", "annotations": []}],
        },
    ]
    assert chat({"instructions": "Be brief.", "input": "three"}, history)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "one"}]},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "text", "text": "three"}]},
    ]


def test_roles_and_content_parts() -> None:
    given = [
        {"role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
        {"role": "system", "content": "Sys."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Look:"},
                {"type": "input_image", "image_url": "https://x/i.png", "detail": "high"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "auto"},
                {
                    "type": "input_file",
                    "file_data": "data:application/pdf;base64,AA",
                    "filename": "a.pdf",
                },
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "A", "annotations": []},
                {"type": "refusal", "refusal": "B"},
            ],
        },
    ]
    assert chat({"input": given})["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "system", "content": "Sys."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "https://x/i.png", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                {
                    "type": "file",
                    "file": {"file_data": "data:application/pdf;base64,AA", "filename": "a.pdf"},
                },
            ],
        },
        {"role": "assistant", "content": "AB"},
    ]


def test_an_image_by_file_id_is_refused() -> None:
    given = [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]
    with pytest.raises(InvalidRequest) as caught:
        chat({"input": given})
    assert caught.value.param == "input"
    assert "file_id" in caught.value.message


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat({"input": [{"role": "tool", "content": "x"}]})
    assert caught.value.message == (
        "Message `role` must be `user`, `assistant`, `system` or `developer`, not 'tool'."
    )


def test_a_referenced_item_left_unresolved_is_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat({"input": [{"type": "item_reference", "id": "msg_9"}]})
    assert caught.value.code == "item_not_found"


def test_a_malformed_field_is_the_clients_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat({"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}, 4]}]})
    assert caught.value.status == 400


def test_items_another_provider_cannot_use_are_dropped() -> None:
    given = [
        {"role": "user", "content": "go"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "compaction", "encrypted_content": "opaque"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {}},
        {"type": "custom_tool_call", "call_id": "c9", "name": "apply_patch", "input": "x"},
        {"type": "custom_tool_call_output", "call_id": "c9", "output": "done"},
    ]
    assert chat({"input": given})["messages"] == [{"role": "user", "content": "go"}]


# --- request: function calls -------------------------------------------------------------


def test_function_calls_join_the_assistant_turn_and_outputs_are_tool_messages() -> None:
    given = [
        {"role": "user", "content": "go"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "On it."}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
        {
            "type": "function_call",
            "call_id": "c2",
            "name": "lookup",
            "namespace": "mcp",
            "arguments": "",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "two"}],
        },
        {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},
    ]
    assert chat({"input": given})["messages"] == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "On it.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "mcp__lookup", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
    ]


def test_a_function_call_round_trips_through_a_response() -> None:
    """A call the model made, replayed as history, is the chat turn it came from."""
    request = {"model": "m", "input": "go", "tools": [NAMESPACE_TOOL]}
    call = {"id": "c1", "type": "function", "function": {"name": "mcp__lookup", "arguments": "{}"}}
    completion = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": "Looking.", "tool_calls": [call]},
            }
        ]
    }
    response = response_object(completion, response_id="resp_1", request=request, created_at=1)
    follow_up = {
        "model": "m",
        "input": [{"type": "function_call_output", "call_id": "c1", "output": "found"}],
        "tools": [NAMESPACE_TOOL],
    }
    history = [*input_items(request), *response["output"]]
    assert chat(follow_up, history)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "go"}]},
        {"role": "assistant", "content": "Looking.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
    ]


# --- request: tools and settings ---------------------------------------------------------


def test_tools_flatten_namespaces_and_drop_built_ins() -> None:
    body = {
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
            NAMESPACE_TOOL,
            {"type": "web_search"},
            {"type": "local_shell"},
            {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
        ],
        "parallel_tool_calls": False,
    }
    translated, dropped = to_chat_request({"model": "m", **body}, [])
    assert dropped == ["web_search", "local_shell", "custom"]
    assert translated["tools"] == [
        {
            "type": "function",
            "function": {"name": "f", "description": "F.", "parameters": {}, "strict": True},
        },
        {
            "type": "function",
            "function": {
                "name": "mcp__lookup",
                "description": "Look up.",
                "parameters": {"type": "object"},
                "strict": False,
            },
        },
    ]
    assert translated["parallel_tool_calls"] is False


def test_only_built_in_tools_leave_no_tool_fields() -> None:
    body = {"input": "hi", "tools": [{"type": "web_search"}], "tool_choice": "required"}
    translated, dropped = to_chat_request({"model": "m", **body, "parallel_tool_calls": True}, [])
    assert dropped == ["web_search"]
    assert set(translated) == {"model", "messages"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        (
            {"type": "function", "name": "lookup", "namespace": "mcp"},
            {"type": "function", "function": {"name": "mcp__lookup"}},
        ),
        ({"type": "allowed_tools", "mode": "required", "tools": []}, "required"),
        ({"type": "web_search"}, None),
    ],
)
def test_tool_choice(choice: Any, expected: Any) -> None:
    tools = [{"type": "function", "name": "f"}, NAMESPACE_TOOL]
    assert (
        chat({"input": "hi", "tools": tools, "tool_choice": choice}).get("tool_choice") == expected
    )


def test_a_long_namespaced_name_is_cut_to_the_limit_and_maps_back() -> None:
    namespace = {
        "type": "namespace",
        "name": "n" * 40,
        "tools": [{"type": "function", "name": "f" * 40}],
    }
    name = flat_name("n" * 40, "f" * 40)
    assert len(name) == MAX_TOOL_NAME
    assert name != flat_name("n" * 40, "f" * 39 + "g")
    assert chat({"input": "hi", "tools": [namespace]})["tools"][0]["function"]["name"] == name
    call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": "{}"}}
    completion = {"choices": [{"finish_reason": "tool_calls", "message": {"tool_calls": [call]}}]}
    request = {"model": "m", "tools": [namespace]}
    [item] = response_object(completion, response_id="r", request=request, created_at=1)["output"]
    assert (item["namespace"], item["name"]) == ("n" * 40, "f" * 40)


@pytest.mark.parametrize(
    "tools", [{"type": "function"}, [3], [{"type": "namespace", "name": "x", "tools": 1}]]
)
def test_malformed_tools_are_refused(tools: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat({"input": "hi", "tools": tools})
    assert caught.value.param == "tools"


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
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {}, "strict": True}},
        "stream": True,
    }
    translated, dropped = to_chat_request(body, [])
    assert dropped == []
    assert translated == {
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


@pytest.mark.parametrize(
    ("form", "expected"),
    [({"type": "json_object"}, {"type": "json_object"}), ({"type": "text"}, None)],
)
def test_text_formats(form: dict[str, Any], expected: Any) -> None:
    assert chat({"input": "hi", "text": {"format": form}}).get("response_format") == expected


# --- response ----------------------------------------------------------------------------


USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 5,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
RESPONSES_USAGE = {
    "input_tokens": 10,
    "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 15,
}


def test_a_text_completion_is_a_whole_response_object() -> None:
    completion = {
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "Hi."}}],
        "usage": USAGE,
    }
    request = {"model": "alias", "input": "hi", "instructions": "Be brief.", "store": False}
    response = response_object(completion, response_id="resp_1", request=request, created_at=7.9)
    message_id = response["output"][0]["id"]
    assert message_id.startswith("msg_")
    assert response == {
        "id": "resp_1",
        "object": "response",
        "created_at": 7,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": "Be brief.",
        "max_output_tokens": None,
        "model": "alias",
        "output": [
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": "Hi.", "annotations": [], "logprobs": []}
                ],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": RESPONSES_USAGE,
        "user": None,
        "metadata": {},
    }
    Response.model_validate(response)


def test_request_settings_are_echoed() -> None:
    request = {
        "model": "m",
        "input": "hi",
        "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}],
        "tool_choice": "required",
        "temperature": 0.3,
        "top_p": 0.5,
        "max_output_tokens": 9,
        "previous_response_id": "resp_0",
        "metadata": {"k": "v"},
        "parallel_tool_calls": False,
        "reasoning": {"effort": "high"},
    }
    response = response_object({"choices": []}, response_id="r", request=request, created_at=1)
    echoed = (
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "max_output_tokens",
        "previous_response_id",
        "metadata",
        "parallel_tool_calls",
    )
    assert {key: response[key] for key in echoed} == {key: request[key] for key in echoed}
    assert response["reasoning"] == {"effort": "high", "summary": None}
    assert response["output"] == []
    Response.model_validate(response)


def test_reasoning_text_and_calls_are_output_items() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "mcp__lookup", "arguments": "{}"}}
    other = {"id": "c2", "type": "function", "function": {"name": "x__y", "arguments": '{"b":2}'}}
    completion = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Calling.",
                    "reasoning_content": "Think.",
                    "tool_calls": [call, other],
                },
            }
        ],
        "usage": USAGE,
    }
    request = {"model": "m", "input": "hi", "tools": [NAMESPACE_TOOL]}
    response = response_object(completion, response_id="resp_1", request=request, created_at=1)
    reasoning, message, first, second = response["output"]
    assert [reasoning["id"][:3], message["id"][:4], first["id"][:3]] == ["rs_", "msg_", "fc_"]
    assert reasoning == {
        "id": reasoning["id"],
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "Think."}],
        "status": "completed",
    }
    assert message["content"][0]["text"] == "Calling."
    assert first == {
        "id": first["id"],
        "type": "function_call",
        "call_id": "c1",
        "name": "lookup",
        "namespace": "mcp",
        "arguments": "{}",
        "status": "completed",
    }
    # A name that only looks flattened keeps its name: `x` is no namespace of the request.
    assert (second["name"], "namespace" in second, second["arguments"]) == (
        "x__y",
        False,
        '{"b":2}',
    )
    Response.model_validate(response)


@pytest.mark.parametrize(
    ("finish", "status", "details"),
    [
        ("stop", "completed", None),
        ("tool_calls", "completed", None),
        ("length", "incomplete", {"reason": "max_output_tokens"}),
        ("content_filter", "incomplete", {"reason": "content_filter"}),
    ],
)
def test_finish_reasons(finish: str, status: str, details: Any) -> None:
    completion = {"choices": [{"finish_reason": finish, "message": {"content": "Cut"}}]}
    response = response_object(completion, response_id="r", request={"model": "m"}, created_at=1)
    assert (response["status"], response["incomplete_details"]) == (status, details)


def test_usage_mapping() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "cache_creation_input_tokens": 5}
    completion = {"choices": [{"message": {"content": "x"}}], "usage": usage}
    response = response_object(completion, response_id="r", request={"model": "m"}, created_at=1)
    assert response["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 5},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }


# --- stream ------------------------------------------------------------------------------


def events(frames: bytes) -> list[dict[str, Any]]:
    """Each SSE frame's data, checked against its `event:` line and the SDK's types."""
    parsed = []
    for frame in frames.decode().split("\n\n"):
        if not frame:
            continue
        name, data = frame.split("\n")
        payload = orjson.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        STREAM_EVENT.validate_python(payload)
        parsed.append(payload)
    return parsed


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


def encoder(request: dict[str, Any] | None = None) -> ResponsesEvents:
    return ResponsesEvents(
        response_id="resp_1", request=request or {"model": "m", "input": "hi"}, created_at=1.5
    )


def run(encoder: ResponsesEvents, *chunks: dict[str, Any]) -> list[dict[str, Any]]:
    frames = b"".join(encoder.chunk(chunk) for chunk in chunks)
    frames += encoder.usage({"choices": [], "usage": USAGE})
    return events(frames + encoder.end())


def test_a_text_stream() -> None:
    stream = encoder()
    got = run(stream, delta(role="assistant", content="He"), delta(content="llo"), delta("stop"))
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
    created = got[0]["response"]
    assert (created["id"], created["status"], created["output"], created["created_at"]) == (
        "resp_1",
        "in_progress",
        [],
        1,
    )
    item_id = got[2]["item"]["id"]
    assert got[2]["item"] == {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    ids = {"item_id": item_id, "output_index": 0, "content_index": 0}
    assert got[4] == {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        **ids,
        "delta": "He",
        "logprobs": [],
    }
    assert got[6] == {
        "type": "response.output_text.done",
        "sequence_number": 6,
        **ids,
        "text": "Hello",
        "logprobs": [],
    }
    part = {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
    assert got[7]["part"] == part
    done = {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [part],
    }
    assert got[8]["item"] == done
    final = got[-1]["response"]
    assert final == stream.response
    assert (final["status"], final["output"], final["usage"]) == (
        "completed",
        [done],
        RESPONSES_USAGE,
    )
    Response.model_validate(final)


def test_a_tool_call_stream_with_two_calls() -> None:
    stream = encoder({"model": "m", "input": "hi", "tools": [NAMESPACE_TOOL]})
    first = {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "mcp__lookup", "arguments": ""},
    }
    second = {
        "index": 1,
        "id": "c2",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    got = run(
        stream,
        delta(role="assistant", tool_calls=[first]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"q":'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}]),
        delta(tool_calls=[second]),
        delta("tool_calls"),
    )
    assert [event["type"] for event in got] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    item_id = got[2]["item"]["id"]
    assert got[2]["item"] == {
        "id": item_id,
        "type": "function_call",
        "call_id": "c1",
        "name": "lookup",
        "namespace": "mcp",
        "arguments": "",
        "status": "in_progress",
    }
    assert got[3] == {
        "type": "response.function_call_arguments.delta",
        "sequence_number": 3,
        "item_id": item_id,
        "output_index": 0,
        "delta": '{"q":',
    }
    assert got[5] == {
        "type": "response.function_call_arguments.done",
        "sequence_number": 5,
        "item_id": item_id,
        "output_index": 0,
        "arguments": '{"q":1}',
    }
    assert got[6]["item"] == {**got[2]["item"], "arguments": '{"q":1}', "status": "completed"}
    assert (got[7]["output_index"], got[7]["item"]["name"], got[9]["arguments"]) == (1, "f", "{}")
    output = got[-1]["response"]["output"]
    assert [(item["call_id"], item["arguments"]) for item in output] == [
        ("c1", '{"q":1}'),
        ("c2", "{}"),
    ]


def test_reasoning_then_text() -> None:
    got = run(
        encoder(),
        delta(reasoning_content="Th"),
        delta(reasoning_content="ink."),
        delta(content="Hi"),
    )
    assert [event["type"] for event in got] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    reasoning_id = got[2]["item"]["id"]
    assert reasoning_id.startswith("rs_")
    assert got[5] == {
        "type": "response.reasoning_text.done",
        "sequence_number": 5,
        "item_id": reasoning_id,
        "output_index": 0,
        "content_index": 0,
        "text": "Think.",
    }
    assert got[6]["item"] == {
        "id": reasoning_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "Think."}],
        "status": "completed",
    }
    assert got[7]["output_index"] == 1


def test_a_stream_cut_at_the_token_limit_is_incomplete() -> None:
    stream = encoder()
    got = run(stream, delta(content="Cu"), delta("length"))
    assert got[-1]["type"] == "response.incomplete"
    final = got[-1]["response"]
    assert (final["status"], final["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )
    assert stream.response == final


def test_an_open_item_is_closed_at_the_end() -> None:
    """A stream that ends without a finish reason still has every item done."""
    stream = encoder()
    got = events(stream.chunk(delta(content="Hi")) + stream.end())
    assert [event["type"] for event in got][-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert got[-1]["response"]["usage"]["total_tokens"] == 0


def test_a_failure_is_one_response_failed_and_nothing_after() -> None:
    stream = encoder()
    frames = stream.chunk(delta(content="He"))
    frames += stream.error(GatewayError("upstream broke", status=502))
    frames += stream.error(GatewayError("again", status=502))
    frames += stream.end()
    got = events(frames)
    assert [event["type"] for event in got] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.failed",
    ]
    failed = got[-1]
    assert failed["sequence_number"] == 5
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "upstream broke"}
    assert failed["response"]["output"] == []
    assert stream.response == failed["response"]


def test_a_failure_before_any_chunk_still_starts_with_response_created() -> None:
    stream = encoder()
    got = events(stream.error(GatewayError("slow down", status=429)) + stream.end())
    assert [event["type"] for event in got] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    assert got[-1]["response"]["error"] == {"code": "rate_limit_exceeded", "message": "slow down"}


def test_the_response_is_none_until_the_end() -> None:
    stream = encoder()
    stream.chunk(delta(content="Hi"))
    assert stream.response is None


def native(kind: str, sequence: int, **data: Any) -> NativeEvent:
    payload = {"type": kind, "sequence_number": sequence, **data}
    frame = b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
    return NativeEvent(name=kind, data=payload, frame=frame)


def test_native_events_pass_as_they_came() -> None:
    stream = encoder()
    upstream = {"id": "resp_up", "object": "response", "status": "completed", "output": []}
    created = native("response.created", 0, response={**upstream, "status": "in_progress"})
    completed = native("response.completed", 1, response=upstream)
    assert stream.native(created) + stream.native(completed) == created.frame + completed.frame
    assert stream.end() == b""
    assert stream.response == upstream


def test_a_failure_after_native_events_continues_their_numbering() -> None:
    stream = encoder()
    created = native("response.created", 0, response={"id": "resp_up", "status": "in_progress"})
    stream.native(created)
    stream.native(native("response.output_text.delta", 1, delta="x"))
    frame = stream.error(GatewayError("broke", status=502))
    assert frame.startswith(b"event: response.failed\ndata: ")
    failed = orjson.loads(frame.split(b"\n")[1].removeprefix(b"data: "))
    assert (failed["type"], failed["sequence_number"]) == ("response.failed", 2)
    assert failed["response"]["id"] == "resp_up"
    assert stream.end() == b""


def test_the_echo_survives_odd_request_fields() -> None:
    """Fields the translation passed over (a `text` without `format`, a `reasoning` that
    is no object) still give a Response, never a 500."""
    request = {"model": "m", "text": {"verbosity": "low"}, "reasoning": "high"}
    response = response_object({"choices": [{}]}, response_id="r", request=request, created_at=1)
    assert response["text"] == {"format": {"type": "text"}, "verbosity": "low"}
    assert response["reasoning"] == {"effort": None, "summary": None}
    odd = response_object({"choices": ["x"]}, response_id="r", request={"text": 3}, created_at=1)
    assert (odd["output"], odd["text"]) == ([], {"format": {"type": "text"}})


def test_calls_that_share_an_index_but_not_an_id_are_two_items() -> None:
    first = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}
    second = {"index": 0, "id": "c2", "function": {"name": "g", "arguments": "{}"}}
    got = run(encoder(), delta(tool_calls=[first]), delta("tool_calls", tool_calls=[second]))
    output = got[-1]["response"]["output"]
    assert [(item["call_id"], item["name"]) for item in output] == [("c1", "f"), ("c2", "g")]
    assert [event["output_index"] for event in got if "item" in event] == [0, 0, 1, 1]


def test_instructions_given_as_items() -> None:
    """A stored prompt's instructions come as message items, not a string."""
    instructions = [{"role": "developer", "content": [{"type": "input_text", "text": "Rule."}]}]
    assert chat({"instructions": instructions, "input": "hi"})["messages"] == [
        {"role": "system", "content": "Rule."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]

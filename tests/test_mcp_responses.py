"""MCP tools inside the Responses API (trigate/api/mcp_responses.py): the gateway lists
an MCP server's tools, gives them to the model, calls the one the model asks for, and
asks again with the result, on a native and on a translated deployment; with
`require_approval` it hands the client an approval request instead, as OpenAI does."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import trio
from fake_mcp import FakeMCP, start_fake_mcp
from fakes import FakeUpstream, JSONReply, ReceivedRequest, chat_completion
from helpers import UPSTREAM_KEY, RunningGateway, sdk, start_gateway
from openai.types.responses.tool_param import Mcp

USAGE = {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25}
CHAT_USAGE = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
MCP_TOOL: Mcp = {
    "type": "mcp",
    "server_label": "weather",
    "server_url": "litellm_proxy/mcp/weather",
    "require_approval": "never",
}
_ids = itertools.count(1)


def response(output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"resp_upstream_{next(_ids):04d}",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "model": "upstream-model",
        "output": output,
        "tools": [],
        "usage": USAGE,
    }


def message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_1",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


FUNCTION_CALL = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "weather-forecast",
    "arguments": '{"city": "Oslo"}',
    "status": "completed",
}


def native_model(request: ReceivedRequest) -> JSONReply:
    """An upstream speaking the Responses API: it asks for the forecast, then answers
    with what the tool said."""
    outputs = [i for i in request.json["input"] if i.get("type") == "function_call_output"]
    if outputs:
        return JSONReply(response([message(f"Forecast: {outputs[0]['output']}")]))
    return JSONReply(response([FUNCTION_CALL]))


def apologising(call: dict[str, Any]) -> Callable[[ReceivedRequest], JSONReply]:
    """A Responses upstream that makes `call`, then answers "Sorry: " and what the tool
    (or the gateway for it) said."""

    def model(request: ReceivedRequest) -> JSONReply:
        outputs = [i for i in request.json["input"] if i.get("type") == "function_call_output"]
        if outputs:
            return JSONReply(response([message(f"Sorry: {outputs[0]['output']}")]))
        return JSONReply(response([call]))

    return model


def chat_model(request: ReceivedRequest) -> JSONReply:
    """An upstream speaking chat completions, doing the same."""
    results = [m for m in request.json["messages"] if m["role"] == "tool"]
    if results:
        return JSONReply(chat_completion(f"Forecast: {results[0]['content']}", CHAT_USAGE))
    body = chat_completion("", CHAT_USAGE)
    body["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather-forecast", "arguments": '{"city": "Oslo"}'},
        }],
    }  # fmt: skip
    body["choices"][0]["finish_reason"] = "tool_calls"
    return JSONReply(body)


@pytest.fixture
async def weather(nursery: trio.Nursery) -> FakeMCP:
    return await start_fake_mcp(nursery)


async def gateway_for(
    nursery: trio.Nursery, upstream: FakeUpstream, weather: FakeMCP, model: str
) -> RunningGateway:
    params = {"model": model, "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}
    return await start_gateway(
        nursery,
        {
            "model_list": [{"model_name": "gpt-test", "litellm_params": params}],
            "router_settings": {"num_retries": 0},
            "mcp_servers": {"weather": {"url": weather.url, "transport": "http"}},
        },
    )


@pytest.fixture(params=["openai/upstream-model", "hosted_vllm/upstream-model"])
async def running(
    request: pytest.FixtureRequest, nursery: trio.Nursery, upstream: FakeUpstream, weather: FakeMCP
) -> AsyncIterator[RunningGateway]:
    native = request.param.startswith("openai/")
    upstream.handler = native_model if native else chat_model
    gateway = await gateway_for(nursery, upstream, weather, request.param)
    yield gateway
    await gateway.stop()


async def test_the_gateway_runs_the_mcp_tool_the_model_asks_for_and_loops_to_an_answer(
    running: RunningGateway, upstream: FakeUpstream, weather: FakeMCP
) -> None:
    async with sdk(running) as client:
        answer = await client.responses.create(
            model="gpt-test",
            input="Weather in Oslo?",
            tools=[MCP_TOOL],
        )
    assert answer.output_text == "Forecast: sunny in Oslo"
    kinds = [item.type for item in answer.output]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"]
    listed, call = answer.output[0], answer.output[1]
    assert listed.type == "mcp_list_tools" and listed.server_label == "weather"
    assert {t.name for t in listed.tools} == {"weather-forecast", "weather-alerts", "weather-fail"}
    assert call.type == "mcp_call" and call.name == "weather-forecast"
    assert call.output == "sunny in Oslo" and call.error is None
    # The model was given function tools, never the `mcp` tool, and asked twice.
    first, second = upstream.requests
    sent_tools = first.json["tools"]
    assert {t.get("name") or t["function"]["name"] for t in sent_tools} == {
        "weather-forecast", "weather-alerts", "weather-fail",
    }  # fmt: skip
    assert b"litellm_proxy" not in first.body + second.body
    assert len(weather.calls["forecast"]) == 1
    # Two model calls and one tool call, each with its own spend row.
    records = await running.records.wait_for(3)
    assert sorted(r.model_group for r in records) == ["gpt-test", "gpt-test", "weather"]
    assert len({r.request_id for r in records}) == 3
    [tool_row] = [r for r in records if r.model_group == "weather"]
    assert (tool_row.model, tool_row.status) == ("forecast", 200)


async def test_a_tool_the_key_may_not_call_is_not_offered_to_the_model(
    running: RunningGateway, upstream: FakeUpstream, weather: FakeMCP
) -> None:
    async with running.client() as client:
        key = (await client.post(
            "/key/generate",
            json={"object_permission": {"mcp_tool_permissions": {"weather": ["alerts"]}}},
        )).json()["key"]  # fmt: skip
    async with sdk(running, key) as client:
        answer = await client.responses.create(
            model="gpt-test",
            input="Weather in Oslo?",
            tools=[MCP_TOOL],
        )
    # The model asked for the forecast anyway: refused before it reached the server.
    call = answer.output[1]
    assert call.type == "mcp_call"
    # The Responses API's protocol error: the call was answered with a JSON-RPC error.
    assert call.error is not None and call.error.type == "mcp_protocol_error"
    assert call.error.code == -32602 and "not available to this key" in call.error.message
    assert "forecast" not in weather.calls
    sent = upstream.requests[0].json["tools"]
    assert [t.get("name") or t["function"]["name"] for t in sent] == ["weather-alerts"]


async def test_a_tool_that_fails_is_an_execution_error_the_model_is_told_of(
    nursery: trio.Nursery, upstream: FakeUpstream, weather: FakeMCP
) -> None:
    upstream.handler = apologising({**FUNCTION_CALL, "name": "weather-fail", "arguments": "{}"})
    running = await gateway_for(nursery, upstream, weather, "openai/upstream-model")
    async with sdk(running) as client:
        answer = await client.responses.create(
            model="gpt-test", input="Weather in Oslo?", tools=[MCP_TOOL]
        )
    call = answer.output[1]
    assert call.type == "mcp_call" and call.name == "weather-fail"
    # The Responses API's execution error: the tool ran, and its content says why it failed.
    assert call.error is not None and call.error.type == "mcp_tool_execution_error"
    # (The MCP SDK's server says which tool failed, never the exception's own text.)
    assert call.error.content == [{"type": "text", "text": "Error executing tool fail"}]
    assert answer.output_text == "Sorry: Error executing tool fail"
    await running.stop()


async def test_arguments_the_model_wrote_that_are_not_json_are_a_protocol_error(
    nursery: trio.Nursery, upstream: FakeUpstream, weather: FakeMCP
) -> None:
    upstream.handler = apologising({**FUNCTION_CALL, "arguments": '{"city": "Os'})
    running = await gateway_for(nursery, upstream, weather, "openai/upstream-model")
    async with sdk(running) as client:
        answer = await client.responses.create(
            model="gpt-test", input="Weather in Oslo?", tools=[MCP_TOOL]
        )
    call = answer.output[1]
    assert call.type == "mcp_call" and call.error is not None
    assert call.error.type == "mcp_protocol_error" and call.error.code == -32602
    assert answer.output_text == "Sorry: Error: The tool's arguments are not JSON."
    assert "forecast" not in weather.calls
    await running.stop()


async def test_a_call_needing_approval_is_handed_to_the_client_then_made_once_approved(
    running: RunningGateway, upstream: FakeUpstream, weather: FakeMCP
) -> None:
    tool: Mcp = {**MCP_TOOL, "require_approval": "always"}
    async with sdk(running) as client:
        asked = await client.responses.create(
            model="gpt-test",
            input="Weather in Oslo?",
            tools=[tool],
        )
        request = asked.output[-1]
        assert request.type == "mcp_approval_request"
        assert request.name == "weather-forecast" and request.server_label == "weather"
        assert "forecast" not in weather.calls
        approved = await client.responses.create(
            model="gpt-test",
            previous_response_id=asked.id,
            tools=[tool],
            input=[
                {
                    "type": "mcp_approval_response",
                    "approval_request_id": request.id,
                    "approve": True,
                }
            ],
        )
    assert approved.output_text == "Forecast: sunny in Oslo"
    assert len(weather.calls["forecast"]) == 1


async def test_a_server_url_outside_the_gateway_is_refused(
    running: RunningGateway,
) -> None:
    async with running.client() as client:
        reply = await client.post(
            "/v1/responses",
            json={
                "model": "gpt-test",
                "input": "hi",
                "tools": [{**MCP_TOOL, "server_url": "https://mcp.example.com/mcp"}],
            },
        )
    assert reply.status_code == 400
    assert "own servers only" in reply.json()["error"]["message"]
    assert orjson.loads(reply.content)["error"]["param"] == "tools"

"""OpenAI's Responses API end to end: the openai SDK against the gateway, translated to
chat completions for an OpenAI-compatible fake upstream, a fake Anthropic upstream and
the mock provider; stored responses read, listed, deleted and continued."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import openai
import orjson
import pytest
import trio
from fake_anthropic import anthropic_config, message, serve
from fake_azure import DEPLOYMENT, azure_config
from fakes import (
    FakeUpstream,
    JSONReply,
    StreamReply,
    chat_completion,
    chunk,
    stream_of,
    tool_call_completion,
)
from helpers import (
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningGateway,
    deployment_config,
    left_mid_stream,
    mock_config,
    new_key,
    sdk,
    start_gateway,
)
from openai.types.responses import FunctionToolParam

# An OpenAI-compatible deployment that does not speak the Responses API: translated.
# Cast: the tool leaves out `strict`, which the SDK's type requires and clients may omit.
WEATHER = cast(
    "FunctionToolParam",
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
)
USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


@pytest.fixture
async def compat(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    params = {
        "model": "hosted_vllm/upstream-model",
        "api_base": upstream.base_url,
        "api_key": UPSTREAM_KEY,
    }
    running = await start_gateway(nursery, deployment_config("gpt-test", params))
    yield running
    await running.stop()


@pytest.fixture
async def mock(nursery: trio.Nursery) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, mock_config(mock_response="Hello from mock."))
    yield running
    await running.stop()


async def test_create_with_string_input_is_translated_and_accounted(
    compat: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Hi there", USAGE))
    async with sdk(compat) as client:
        raw = await client.responses.with_raw_response.create(
            model="gpt-test", input="Say hello", instructions="Be brief."
        )
    response = raw.parse()
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "Hi there"
    assert response.id.startswith("resp_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 3)
    assert raw.headers["x-trigate-model-group"] == "gpt-test"
    assert "x-trigate-deployment" in raw.headers
    [received] = upstream.requests
    assert received.target == "/v1/chat/completions"
    system, user = received.json["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    assert user["role"] == "user" and "Say hello" in orjson.dumps(user["content"]).decode()
    [record] = await compat.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (11, 3, 200)
    assert record.model_group == "gpt-test"


async def test_items_input_and_dropped_builtin_tools(
    compat: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Fine", USAGE))
    items: Any = [
        {"role": "developer", "content": "Answer in English."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
    ]
    async with sdk(compat) as client:
        raw = await client.responses.with_raw_response.create(
            model="gpt-test", input=items, tools=[WEATHER, {"type": "web_search"}]
        )
    assert raw.parse().output_text == "Fine"
    assert raw.headers["x-trigate-dropped-tools"] == "web_search"
    [received] = upstream.requests
    assert [tool["function"]["name"] for tool in received.json["tools"]] == ["get_weather"]
    assert [m["role"] for m in received.json["messages"]][-1] == "user"


async def test_stream_events_final_response_and_storage(
    compat: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["Hel", "lo"], usage=(9, 2))
    async with sdk(compat) as client:
        async with client.responses.stream(model="gpt-test", input="Say hello") as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        stored = await client.responses.retrieve(final.id)
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert final.output_text == "Hello"
    assert final.usage is not None and final.usage.input_tokens == 9
    assert stored.id == final.id and stored.output_text == "Hello"
    [received] = upstream.requests
    assert received.json["stream"] is True
    assert received.json["stream_options"] == {"include_usage": True}
    [record] = await compat.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.stream) == (9, 2, True)


async def test_stream_sequence_numbers_rise(compat: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: stream_of(["a", "b"])
    body = {"model": "gpt-test", "input": "x", "stream": True}
    async with compat.client() as client:
        response = await client.post("/v1/responses", json=body)
    assert response.status_code == 200
    events = [
        orjson.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")
    ]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert b"[DONE]" not in response.content


async def test_retrieve_input_items_and_delete(mock: RunningGateway) -> None:
    async with sdk(mock) as client:
        created = await client.responses.create(model="mock", input="first words")
        stored = await client.responses.retrieve(created.id)
        items = await client.responses.input_items.list(created.id)
        # The SDK returns nothing (it casts any body to None); the body is checked below.
        await client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)
    assert stored.output_text == "Hello from mock." == created.output_text
    [item] = items.data
    assert item.type == "message" and item.role == "user"


async def test_delete_body_and_input_items_paging(mock: RunningGateway) -> None:
    async with sdk(mock) as client:
        created = await client.responses.create(
            model="mock",
            input=[
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three"},
            ],
        )
    async with mock.client() as http:
        page = (await http.get(f"/v1/responses/{created.id}/input_items?limit=2")).json()
        ascending = (
            await http.get(f"/v1/responses/{created.id}/input_items?order=asc&limit=5")
        ).json()
        bad = await http.get(f"/v1/responses/{created.id}/input_items?limit=0")
        deleted = await http.delete(f"/v1/responses/{created.id}")
    assert page["object"] == "list" and page["has_more"] is True
    assert [item["content"] for item in page["data"]] == ["three", "two"]
    assert (page["first_id"], page["last_id"]) == (page["data"][0]["id"], page["data"][1]["id"])
    assert [item["content"] for item in ascending["data"]] == ["one", "two", "three"]
    assert ascending["has_more"] is False
    assert bad.status_code == 400
    assert deleted.json() == {"id": created.id, "object": "response.deleted", "deleted": True}


async def test_store_false_keeps_nothing(mock: RunningGateway) -> None:
    async with sdk(mock) as client:
        created = await client.responses.create(model="mock", input="hi", store=False)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)


async def test_function_call_round_trip(compat: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.handler = lambda request: JSONReply(tool_call_completion(USAGE))
    async with sdk(compat) as client:
        first = await client.responses.create(
            model="gpt-test", input="Weather in Paris?", tools=[WEATHER]
        )
        [call] = first.output
        assert call.type == "function_call"
        assert (call.call_id, call.name, call.arguments) == (
            "call_1",
            "get_weather",
            '{"city": "Paris"}',
        )
        upstream.handler = lambda request: JSONReply(chat_completion("Sunny.", USAGE))
        second = await client.responses.create(
            model="gpt-test",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}],
            tools=[WEATHER],
        )
    assert second.output_text == "Sunny."
    sent = upstream.requests[1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}


async def test_previous_response_chain_over_anthropic(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    answers = iter(["Hello, Ada.", "Your name is Ada."])
    serve(upstream, lambda body: JSONReply(message([{"type": "text", "text": next(answers)}])))
    claude = await start_gateway(nursery, anthropic_config(upstream))
    async with sdk(claude) as client:
        first = await client.responses.create(model="claude", input="I am Ada.")
        second = await client.responses.create(
            model="claude", input="What is my name?", previous_response_id=first.id
        )
    await claude.stop()
    assert second.output_text == "Your name is Ada."
    sent = upstream.requests[1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert "Hello, Ada." in orjson.dumps(sent[1]).decode()


async def test_another_key_is_refused_a_stored_response(mock: RunningGateway) -> None:
    owner, stranger = await new_key(mock), await new_key(mock)
    async with sdk(mock, owner) as client:
        created = await client.responses.create(model="mock", input="secret")
    async with sdk(mock, stranger) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError) as refused:
            await client.responses.create(
                model="mock", input="more", previous_response_id=created.id
            )
    assert refused.value.code == "previous_response_not_found"
    async with sdk(mock, MASTER_KEY) as client:
        assert (await client.responses.retrieve(created.id)).id == created.id


async def test_a_team_shares_its_stored_responses(mock: RunningGateway) -> None:
    async with mock.client() as admin:
        team = (await admin.post("/team/new", json={})).json()["team_id"]
    first, second = await new_key(mock, team_id=team), await new_key(mock, team_id=team)
    async with sdk(mock, first) as client:
        created = await client.responses.create(model="mock", input="shared")
    async with sdk(mock, second) as client:
        assert (await client.responses.retrieve(created.id)).id == created.id


async def test_unknown_previous_response_is_404(mock: RunningGateway) -> None:
    async with sdk(mock) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.responses.create(
                model="mock", input="hi", previous_response_id="resp_nothing"
            )
    assert missing.value.code == "previous_response_not_found"


async def test_background_is_a_clear_400(mock: RunningGateway) -> None:
    async with sdk(mock) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model="mock", input="hi", background=True)
    assert refused.value.param == "background"


async def test_client_disconnect_mid_stream_closes_the_upstream(
    compat: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: StreamReply([chunk("Once")], tail=chunk(" more"))
    body = {"model": "gpt-test", "input": "Tell a story", "stream": True}
    record = await left_mid_stream(
        compat, upstream, "/v1/responses", body, "response.output_text.delta"
    )
    assert record.cancelled_by_client and record.status == 499


# --- Upstreams that speak the Responses API: passed through ---------------------------

NATIVE_USAGE = {
    "input_tokens": 40,
    "input_tokens_details": {"cached_tokens": 30},
    "output_tokens": 12,
    "output_tokens_details": {"reasoning_tokens": 8},
    "total_tokens": 52,
}


def upstream_response(text: str, status: str = "completed") -> dict[str, Any]:
    """A Response as OpenAI's API answers one, with a field no SDK knows yet."""
    return {
        "id": "resp_upstream_0001",
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "model": "upstream-model",
        "output": [
            {
                "type": "message",
                "id": "msg_upstream_0001",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": NATIVE_USAGE,
        "future_field": {"kept": True},
    }


def response_events(text: str) -> StreamReply:
    created = {**upstream_response(""), "status": "in_progress", "output": [], "usage": None}
    item = {
        "type": "message",
        "id": "msg_upstream_0001",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    part = {"type": "output_text", "text": "", "annotations": []}
    payloads: list[dict[str, Any]] = [
        {"type": "response.created", "response": created},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", "item_id": "msg_upstream_0001",
         "output_index": 0, "content_index": 0, "part": part},
        {"type": "response.output_text.delta", "item_id": "msg_upstream_0001",
         "output_index": 0, "content_index": 0, "delta": text, "logprobs": []},
        {"type": "response.completed", "response": upstream_response(text)},
    ]  # fmt: skip
    frames: list[bytes | float | trio.Event] = [
        b"event: %s\ndata: %s\n\n" % (p["type"].encode(), orjson.dumps({**p, "sequence_number": i}))
        for i, p in enumerate(payloads)
    ]
    return StreamReply(frames)


async def native_gateway(
    nursery: trio.Nursery, upstream: FakeUpstream, model: str, **model_info: Any
) -> RunningGateway:
    params = {"model": model, "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}
    config = deployment_config("gpt-test", params)
    config["model_list"][0]["model_info"] = model_info
    return await start_gateway(nursery, config)


async def test_openai_passes_the_body_and_answer_through(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    answer = orjson.dumps(upstream_response("Native hello"))
    upstream.handler = lambda request: JSONReply(answer)
    running = await native_gateway(nursery, upstream, "openai/upstream-model")
    body = {
        "model": "gpt-test",
        "input": "hi",
        "tools": [{"type": "web_search"}],
        "include": ["reasoning.encrypted_content"],
        "brand_new_option": 1,
    }
    async with running.client() as client:
        response = await client.post("/v1/responses", json=body)
    assert response.status_code == 200
    assert response.content == answer
    assert "x-trigate-dropped-tools" not in response.headers
    [received] = upstream.requests
    assert received.target == "/v1/responses"
    assert received.json == {**body, "model": "upstream-model"}
    [record] = await running.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (40, 12)
    async with sdk(running) as client:
        stored = await client.responses.retrieve("resp_upstream_0001")
    assert stored.output_text == "Native hello"
    await running.stop()


async def test_native_stream_events_come_as_they_came(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: response_events("Streamed")
    running = await native_gateway(
        nursery, upstream, "hosted_vllm/upstream-model", supports_responses_api=True
    )
    async with sdk(running) as client:
        async with client.responses.stream(model="gpt-test", input="hi") as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        stored = await client.responses.retrieve(final.id)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.id == "resp_upstream_0001" and final.output_text == "Streamed"
    assert stored.output_text == "Streamed"
    [received] = upstream.requests
    assert received.target == "/v1/responses" and received.json["stream"] is True
    [record] = await running.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens, record.stream) == (40, 12, True)
    await running.stop()


async def test_model_info_can_turn_native_off(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Translated", USAGE))
    running = await native_gateway(
        nursery, upstream, "openai/upstream-model", supports_responses_api=False
    )
    async with sdk(running) as client:
        response = await client.responses.create(model="gpt-test", input="hi")
    assert response.output_text == "Translated"
    assert upstream.requests[0].target == "/v1/chat/completions"
    await running.stop()


async def test_a_native_follow_up_of_a_translated_response_sends_the_conversation(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    running = await start_gateway(
        nursery,
        {
            "model_list": [
                {
                    "model_name": "mock",
                    "litellm_params": {"model": "mock/m", "mock_response": "Hi Ada."},
                },
                {
                    "model_name": "gpt-test",
                    "litellm_params": {
                        "model": "openai/upstream-model",
                        "api_base": upstream.base_url,
                        "api_key": UPSTREAM_KEY,
                    },
                },
            ]
        },
    )
    upstream.handler = lambda request: JSONReply(upstream_response("Ada."))
    async with sdk(running) as client:
        first = await client.responses.create(model="mock", input="I am Ada.")
        await client.responses.create(
            model="gpt-test", input="My name?", previous_response_id=first.id
        )
    sent = upstream.requests[0].json
    assert "previous_response_id" not in sent
    texts = orjson.dumps(sent["input"]).decode()
    assert "I am Ada." in texts and "Hi Ada." in texts and "My name?" in texts
    assert all("id" not in item for item in sent["input"])
    await running.stop()


async def test_expired_responses_are_not_served_and_are_deleted(mock: RunningGateway) -> None:
    store = mock.gateway.store
    async with sdk(mock) as client:
        created = await client.responses.create(model="mock", input="short-lived")
        later = (await store.response_chain(created.id, 0.0))[0]["expires_at"] + 1
        assert await store.response_chain(created.id, later) == []
        assert await store.delete_expired_responses(later) == 1
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)


async def test_retention_is_configured_in_days(nursery: trio.Nursery) -> None:
    config = mock_config()
    config["general_settings"] = {"responses_retention_days": 2}
    running = await start_gateway(nursery, config)
    async with sdk(running) as client:
        created = await client.responses.create(model="mock", input="hi")
    [row] = await running.gateway.store.response_chain(created.id, 0.0)
    assert row["expires_at"] - row["created_at"] == 2 * 86400
    await running.stop()


async def test_a_native_follow_up_on_the_upstream_that_made_it_keeps_its_id(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(upstream_response("First."))
    running = await native_gateway(nursery, upstream, "openai/upstream-model")
    async with sdk(running) as client:
        first = await client.responses.create(model="gpt-test", input="one")
        await client.responses.create(model="gpt-test", input="two", previous_response_id=first.id)
    assert upstream.requests[1].json == {
        "model": "upstream-model",
        "input": "two",
        "previous_response_id": "resp_upstream_0001",
    }
    await running.stop()


async def test_native_stream_client_disconnect_closes_the_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    created = {**upstream_response(""), "status": "in_progress", "output": [], "usage": None}
    start = b"event: response.created\ndata: %s\n\n" % orjson.dumps(
        {"type": "response.created", "sequence_number": 0, "response": created}
    )
    upstream.handler = lambda request: StreamReply([start], tail=b": keep-alive\n\n")
    running = await native_gateway(nursery, upstream, "openai/upstream-model")
    body = {"model": "gpt-test", "input": "Tell a story", "stream": True}
    record = await left_mid_stream(running, upstream, "/v1/responses", body, "response.created")
    assert record.cancelled_by_client and record.status == 499
    await running.stop()


async def test_a_translated_stream_names_its_dropped_tools(
    compat: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: stream_of(["ok"])
    body = {"model": "gpt-test", "input": "x", "stream": True, "tools": [{"type": "file_search"}]}
    async with compat.client() as client:
        response = await client.post("/v1/responses", json=body)
    assert response.status_code == 200
    assert response.headers["x-trigate-dropped-tools"] == "file_search"
    assert "tools" not in upstream.requests[0].json


async def test_cancel_is_a_clear_400_without_background_responses(mock: RunningGateway) -> None:
    async with sdk(mock) as client:
        created = await client.responses.create(model="mock", input="hi")
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.cancel(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.cancel("resp_nothing")
    assert refused.value.code == "unsupported_operation"


async def test_a_codex_shaped_stream_over_the_mock_provider(mock: RunningGateway) -> None:
    """What Codex CLI sends: a stream, `store: false`, encrypted reasoning asked for,
    developer and user messages, function, namespace and built-in tools."""
    namespace = {
        "type": "namespace",
        "name": "mcp",
        "description": "An MCP server's tools.",
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    }
    body = {
        "model": "mock",
        "instructions": "You are a coding agent.",
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "Sandbox: read-only."}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "say hi"}]},
        ],
        "tools": [WEATHER, namespace, {"type": "web_search"}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "session-1",
    }  # fmt: skip
    async with mock.client() as client:
        response = await client.post("/v1/responses", json=body)
    assert response.status_code == 200
    assert response.headers["x-trigate-dropped-tools"] == "web_search"
    events = [
        orjson.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")
    ]
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Hello from mock."
    async with sdk(mock) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(events[-1]["response"]["id"])


@pytest.mark.parametrize(
    ("configured", "sent"),
    [(None, "2025-04-01-preview"), ("2024-10-21", "2025-04-01-preview"), ("preview", "preview")],
)
async def test_azure_serves_the_responses_api_natively(
    nursery: trio.Nursery, upstream: FakeUpstream, configured: str | None, sent: str
) -> None:
    upstream.handler = lambda request: JSONReply(upstream_response("From Azure."))
    params = {} if configured is None else {"api_version": configured}
    running = await start_gateway(nursery, azure_config(upstream, **params))
    async with sdk(running) as client:
        response = await client.responses.create(model="azure-test", input="hi")
    assert response.output_text == "From Azure."
    [received] = upstream.requests
    assert received.target == f"/openai/responses?api-version={sent}"
    assert received.headers["api-key"] == UPSTREAM_KEY
    assert received.json["model"] == DEPLOYMENT
    await running.stop()


async def test_a_dropped_tool_name_unfit_for_a_header_is_left_out(mock: RunningGateway) -> None:
    tools = [{"type": "web_search"}, {"type": "bad\r\nx-injected: 1"}, {"type": "ünï"}]
    async with mock.client() as client:
        response = await client.post(
            "/v1/responses", json={"model": "mock", "input": "hi", "tools": tools}
        )
    assert response.status_code == 200
    assert response.headers["x-trigate-dropped-tools"] == "web_search"
    assert "x-injected" not in response.headers


async def test_a_native_follow_up_goes_to_the_deployment_holding_its_response(
    nursery: trio.Nursery,
) -> None:
    """Two native deployments in one group: each follow-up of a chain reaches the
    upstream that made the response it continues, named by id, never the other."""
    upstreams = [FakeUpstream(), FakeUpstream()]
    made_by: dict[str, int] = {}

    def answer_from(index: int) -> Any:
        def answer(request: Any) -> JSONReply:
            response_id = f"resp_up_{len(made_by)}"
            made_by[response_id] = index
            return JSONReply(orjson.dumps({**upstream_response("ok"), "id": response_id}))

        return answer

    entries = []
    for index, upstream in enumerate(upstreams):
        await upstream.start(nursery)
        upstream.handler = answer_from(index)
        params = {"model": "openai/m", "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}
        entries.append({"model_name": "gpt-test", "litellm_params": params})
    config = {"model_list": entries, "router_settings": {"routing_strategy": "round-robin"}}
    running = await start_gateway(nursery, config)
    async with sdk(running) as client:
        for _ in range(4):
            response = await client.responses.create(model="gpt-test", input="one")
            for turn in range(3):
                response = await client.responses.create(
                    model="gpt-test", input=f"turn {turn}", previous_response_id=response.id
                )
    follow_ups = [
        (index, request.json)
        for index, upstream in enumerate(upstreams)
        for request in upstream.requests
        if "previous_response_id" in request.json
    ]
    assert len(follow_ups) == 12
    for index, body in follow_ups:
        assert made_by[body["previous_response_id"]] == index
        assert body["input"].startswith("turn"), "sent by id, not as the whole conversation"
    assert all(len(upstream.requests) == 8 for upstream in upstreams)
    await running.stop()


async def test_a_native_stream_cut_before_its_final_event_ends_failed(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The upstream closes after a delta, with no `response.completed`: the client's
    stream ends with one `response.failed`, and nothing is stored as if complete."""
    whole = response_events("Half")
    upstream.handler = lambda request: StreamReply(whole.frames[:-1])
    running = await native_gateway(nursery, upstream, "openai/upstream-model")
    async with (
        sdk(running) as client,
        client.responses.stream(model="gpt-test", input="hi") as stream,
    ):
        events = [event async for event in stream]
    assert events[-1].type == "response.failed"
    assert [e.type for e in events].count("response.failed") == 1
    error = events[-1].response.error
    assert error is not None and "ended before its final event" in error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))
    [record] = await running.records.wait_for(1)
    assert record.status >= 500 and record.prompt_tokens > 0
    assert await running.gateway.store.response_chain("resp_upstream_0001", 0.0) == []
    await running.stop()


async def test_deleting_a_native_response_deletes_the_upstreams_copy_first(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    deleted = b'{"id": "resp_upstream_0001", "object": "response.deleted", "deleted": true}'
    refuse = True

    def handle(request: Any) -> JSONReply:
        if request.method == "DELETE":
            if refuse:
                return JSONReply(b'{"error": {"message": "try later"}}', status=503)
            return JSONReply(deleted)
        return JSONReply(orjson.dumps(upstream_response("Stored upstream.")))

    upstream.handler = handle
    running = await native_gateway(nursery, upstream, "openai/upstream-model")
    async with sdk(running) as client:
        created = await client.responses.create(model="gpt-test", input="hi")
        with pytest.raises(openai.APIStatusError):
            await client.with_options(max_retries=0).responses.delete(created.id)
        # The upstream kept it, so the gateway's copy stays for the client to retry.
        assert (await client.responses.retrieve(created.id)).output_text == "Stored upstream."
        refuse = False
        await client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)
    deletes = [r for r in upstream.requests if r.method == "DELETE"]
    assert [r.target for r in deletes] == ["/v1/responses/resp_upstream_0001"] * 2
    assert all(r.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}" for r in deletes)
    await running.stop()


async def test_a_translated_response_is_deleted_at_the_gateway_only(
    compat: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Translated", USAGE))
    async with sdk(compat) as client:
        created = await client.responses.create(model="gpt-test", input="hi")
        await client.responses.delete(created.id)
    assert [r.method for r in upstream.requests] == ["POST"]


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize("field", ["metadata", "text", "user", "instructions", "reasoning"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_deeply_nested_echoed_field_is_a_400_before_the_upstream(
    compat: RunningGateway, upstream: FakeUpstream, field: str, stream: bool
) -> None:
    """The Response echoes these fields back: one no answer could render is refused
    before anything is sent upstream (or billed), streamed or not."""
    body = {"model": "gpt-test", "input": "hi", field: _nested(254), "stream": stream}
    async with compat.client() as client:
        reply = await client.post("/v1/responses", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == field
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("field", "value"), [("user", {"id": "u1"}), ("metadata", {"n": 1}), ("metadata", "x")]
)
async def test_echoed_fields_in_the_wrong_shape_are_a_400(
    compat: RunningGateway, upstream: FakeUpstream, field: str, value: Any
) -> None:
    async with compat.client() as client:
        reply = await client.post(
            "/v1/responses", json={"model": "gpt-test", "input": "hi", field: value}
        )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == field
    assert upstream.requests == []


async def test_an_unknown_names_error_does_not_echo_it_whole(mock: RunningGateway) -> None:
    """A 100 kB model name, or response id, gives an error of a few hundred bytes."""
    name = "m" * 100_000
    async with mock.client() as client:
        replies = [
            await client.post(
                "/v1/chat/completions",
                json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
            ),
            await client.post("/v1/responses", json={"model": name, "input": "hi"}),
            await client.post(
                "/v1/responses",
                json={"model": "mock", "input": "hi", "previous_response_id": name},
            ),
            await client.get(f"/v1/responses/{name[:8000]}"),
        ]
    for reply in replies:
        assert reply.status_code == 404, reply.text[:200]
        assert len(reply.content) < 1000
        assert "(100000 characters)" in reply.text or "(8000 characters)" in reply.text


async def _a_megabyte_of_conversation(gateway: RunningGateway, model: str) -> str:
    """A conversation of four 300 KB inputs, more than a `max_request_size_mb` of 1 in
    all: its last response's id."""
    previous: str | None = None
    async with gateway.client() as client:
        for _ in range(4):
            body = {"model": model, "input": "x" * 300_000, "previous_response_id": previous}
            reply = await client.post("/v1/responses", json=body)
            assert reply.status_code == 200, reply.text[:300]
            previous = reply.json()["id"]
    assert previous is not None
    return previous


async def test_a_conversation_too_large_to_rebuild_is_a_clear_400(nursery: trio.Nursery) -> None:
    """A chain holding more than `max_request_size_mb` of stored JSON is not loaded to
    be rebuilt: a 400 naming the limit. Another key is told nothing of it (404)."""
    config = mock_config(mock_response="ok")
    config["general_settings"] = {"max_request_size_mb": 1}
    gateway = await start_gateway(nursery, config)
    stranger = await new_key(gateway)
    previous = await _a_megabyte_of_conversation(gateway, "mock")
    follow_up = {"model": "mock", "input": "and?", "previous_response_id": previous}
    async with gateway.client() as client:
        refused = await client.post("/v1/responses", json=follow_up)
    assert refused.status_code == 400, refused.text[:300]
    assert refused.json()["error"]["code"] == "conversation_too_large"
    async with gateway.client(stranger) as client:
        hidden = await client.post("/v1/responses", json=follow_up)
    assert hidden.status_code == 404


async def test_an_upstream_reusing_a_response_id_loses_no_ones_response(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A native upstream answers two keys (and one key twice) with one id: each key reads
    its own response, the repeat replaces its own older one, and nothing is a 404."""
    texts = iter(["For alice.", "For bob.", "For alice again."])
    upstream.handler = lambda request: JSONReply(upstream_response(next(texts, "")))
    running = await native_gateway(nursery, upstream, "openai/upstream-model")
    alice, bob = await new_key(running), await new_key(running)
    async with sdk(running, alice) as client:
        first = await client.responses.create(model="gpt-test", input="one")
    async with sdk(running, bob) as client:
        second = await client.responses.create(model="gpt-test", input="two")
        assert second.id == first.id
        assert (await client.responses.retrieve(second.id)).output_text == "For bob."
    async with sdk(running, alice) as client:
        assert (await client.responses.retrieve(first.id)).output_text == "For alice."
        await client.responses.create(model="gpt-test", input="three")
        assert (await client.responses.retrieve(first.id)).output_text == "For alice again."
        await client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(first.id)
    async with sdk(running, bob) as client:
        assert (await client.responses.retrieve(second.id)).output_text == "For bob."
    await running.stop()


class ChainReads:
    """Wraps a store's `response_chain` to count the stored responses it hands back: what
    a follow-up made the worker hold of its conversation."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.rows: list[int] = []
        store = gateway.gateway.store
        read = store.response_chain

        async def counted(*args: Any, **kwargs: Any) -> Any:
            chain = await read(*args, **kwargs)
            self.rows.append(len(chain))
            return chain

        # Wrapped for the count, on this gateway's store alone (mypy: a method reassigned).
        store.response_chain = counted  # type: ignore[method-assign]


def numbered_responses(made: list[str], text: str = "ok", **usage: int) -> Any:
    """A native upstream's answers, each with a fresh id (kept in `made`)."""

    def answer(request: Any) -> JSONReply:
        response_id = f"resp_up_{len(made)}"
        made.append(response_id)
        response = {**upstream_response(text), "id": response_id}
        if usage:
            response["usage"] = {**NATIVE_USAGE, **usage}
        return JSONReply(orjson.dumps(response))

    return answer


async def native_chain(client: Any, turns: int, model: str = "gpt-test") -> str:
    """A conversation of `turns` responses, each continuing the one before; its last id."""
    previous: str | None = None
    for turn in range(turns):
        body = {"model": model, "input": f"turn {turn}", "previous_response_id": previous}
        reply = await client.post("/v1/responses", json=body)
        assert reply.status_code == 200, reply.text[:300]
        previous = reply.json()["id"]
    assert previous is not None
    return previous


@pytest.mark.parametrize("stream", [False, True])
async def test_a_follow_up_its_native_holder_serves_reads_only_the_head(
    nursery: trio.Nursery, upstream: FakeUpstream, stream: bool
) -> None:
    """Issue 19, item 9: the upstream that made the head holds the conversation, so the
    follow-up reads one stored response, however long the chain; another key's id is
    still a 404 that reaches no upstream."""
    made: list[str] = []
    upstream.handler = numbered_responses(made)
    running = await native_gateway(nursery, upstream, "openai/upstream-model")
    owner, stranger = await new_key(running), await new_key(running)
    async with running.client(owner) as client:
        head = await native_chain(client, 30)
        if stream:
            upstream.handler = lambda request: response_events("Streamed")
        reads = ChainReads(running)
        body = {"model": "gpt-test", "input": "and?", "previous_response_id": head}
        reply = await client.post("/v1/responses", json={**body, "stream": stream})
    assert reply.status_code == 200, reply.text[:300]
    assert ("response.completed" in reply.text) is stream
    assert reads.rows == [1], "only the head is read"
    assert upstream.requests[-1].json == {
        "model": "upstream-model",
        "input": "and?",
        "previous_response_id": head,
        "stream": stream,
    }
    sent = len(upstream.requests)
    async with running.client(stranger) as client:
        hidden = await client.post("/v1/responses", json={**body, "stream": stream})
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "previous_response_not_found"
    assert len(upstream.requests) == sent
    await running.stop()


async def test_its_holder_continues_a_conversation_larger_than_the_gateway_rebuilds(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Past `max_request_size_mb`, a conversation the gateway cannot rebuild is still
    continued by id on the upstream that holds it."""
    made: list[str] = []
    upstream.handler = numbered_responses(made)
    params = {"model": "openai/upstream-model", "api_base": upstream.base_url}
    config = deployment_config("gpt-test", {**params, "api_key": UPSTREAM_KEY})
    config["general_settings"] = {"max_request_size_mb": 1}
    running = await start_gateway(nursery, config)
    previous = await _a_megabyte_of_conversation(running, "gpt-test")
    follow_up = {"model": "gpt-test", "input": "and?", "previous_response_id": previous}
    async with running.client() as client:
        reply = await client.post("/v1/responses", json=follow_up)
    assert reply.status_code == 200, reply.text[:300]
    assert upstream.requests[-1].json["previous_response_id"] == previous
    await running.stop()


def fallback_config(native: FakeUpstream, translated: FakeUpstream) -> dict[str, Any]:
    """`gpt-test` on a native upstream, falling back to `chat` on a translated one."""
    chat = {
        "model": "hosted_vllm/chat-model",
        "api_base": translated.base_url,
        "api_key": UPSTREAM_KEY,
    }
    return deployment_config(
        "gpt-test",
        {"model": "openai/upstream-model", "api_base": native.base_url, "api_key": UPSTREAM_KEY},
        router={"fallbacks": [{"gpt-test": ["chat"]}]},
        others=({"model_name": "chat", "litellm_params": chat},),
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fallback_from_the_holder_to_a_translated_deployment_rebuilds_it(
    nursery: trio.Nursery, upstream: FakeUpstream, stream: bool
) -> None:
    """The holder fails: the fallback, which holds nothing, is sent the whole
    conversation (read then, within the same bound), instructions first and the new
    input last; what it reports is billed."""
    made: list[str] = []
    upstream.handler = numbered_responses(made)
    translated = FakeUpstream()
    await translated.start(nursery)
    if stream:
        translated.handler = lambda request: stream_of(["Fell ", "back."], usage=(77, 5))
    else:
        translated.handler = lambda request: JSONReply(chat_completion("Fell back.", USAGE))
    running = await start_gateway(nursery, fallback_config(upstream, translated))
    async with running.client() as client:
        head = await native_chain(client, 3)
        upstream.handler = lambda request: JSONReply({"error": {"message": "down"}}, status=500)
        reads = ChainReads(running)
        body = {
            "model": "gpt-test",
            "input": "and?",
            "instructions": "Be brief.",
            "previous_response_id": head,
            "stream": stream,
        }
        reply = await client.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text[:300]
    assert "Fell back." in reply.text or "Fell " in reply.text
    assert reads.rows == [1, 3], "the head, then the chain for the fallback"
    assert upstream.requests[-1].json["previous_response_id"] == head, "the holder first"
    [sent] = translated.requests
    messages = sent.json["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    texts = [orjson.dumps(m["content"]).decode() for m in messages[1:]]
    assert ["turn 0" in texts[0], "ok" in texts[1], "turn 2" in texts[4]] == [True] * 3
    assert "and?" in texts[-1] and len(messages) == 8
    records = await running.records.wait_for(4)
    assert (records[-1].prompt_tokens, records[-1].status) == ((77 if stream else 11), 200)
    await running.stop()


async def test_a_retry_on_another_native_deployment_is_sent_the_conversation(
    nursery: trio.Nursery,
) -> None:
    """The holder fails and the retry goes to the group's other native upstream, which
    never saw the conversation: it is sent the items, not an id it would not know."""
    made: list[str] = []
    upstreams = [FakeUpstream(), FakeUpstream()]
    entries = []
    for fake in upstreams:
        await fake.start(nursery)
        fake.handler = numbered_responses(made)
        params = {"model": "openai/m", "api_base": fake.base_url, "api_key": UPSTREAM_KEY}
        entries.append({"model_name": "gpt-test", "litellm_params": params})
    router = {"num_retries": 1, "retry_after": 0}
    running = await start_gateway(nursery, {"model_list": entries, "router_settings": router})
    async with running.client() as client:
        head = await native_chain(client, 2)
        holder, other = sorted(upstreams, key=lambda fake: -len(fake.requests))
        holder.handler = lambda request: JSONReply({"error": {"message": "down"}}, status=500)
        sent_before = len(other.requests)
        body = {"model": "gpt-test", "input": "and?", "previous_response_id": head}
        reply = await client.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text[:300]
    [sent] = other.requests[sent_before:]
    assert "previous_response_id" not in sent.json
    texts = [orjson.dumps(item).decode() for item in sent.json["input"]]
    assert len(texts) == 5 and "turn 0" in texts[0] and "and?" in texts[-1]
    await running.stop()


async def test_the_estimate_counts_the_conversation_its_holder_reported(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Read only by its head, a conversation is counted as its holder reported it (the
    head's input and output tokens): a group whose context window it overflows is
    refused before any upstream is called, as a rebuilt one would be."""
    made: list[str] = []
    upstream.handler = numbered_responses(made, input_tokens=5000, output_tokens=40)
    running = await native_gateway(
        nursery, upstream, "openai/upstream-model", max_input_tokens=1000
    )
    async with running.client() as client:
        head = await native_chain(client, 1)
        body = {"model": "gpt-test", "input": "and?", "previous_response_id": head}
        refused = await client.post("/v1/responses", json=body)
    assert refused.status_code == 400, refused.text[:300]
    counted = int(refused.json()["error"]["message"].split()[3])
    assert 5040 < counted < 5060, "the holder's 5,040 and the new input's few"
    assert len(upstream.requests) == 1
    await running.stop()


async def test_a_fallback_that_cannot_rebuild_the_conversation_is_a_clear_400(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The holder fails, and the fallback would need a conversation larger than the
    gateway rebuilds, or one with no chat form: the client's 400, never a 500."""
    made: list[str] = []
    upstream.handler = numbered_responses(made)
    translated = FakeUpstream()
    await translated.start(nursery)
    config = fallback_config(upstream, translated)
    config["general_settings"] = {"max_request_size_mb": 1}
    running = await start_gateway(nursery, config)
    async with running.client() as client:
        large = await native_chain(client, 1)
        for _ in range(4):
            body: dict[str, Any] = {
                "model": "gpt-test",
                "input": "x" * 300_000,
                "previous_response_id": large,
            }
            large = (await client.post("/v1/responses", json=body)).json()["id"]
        reference = [{"type": "item_reference", "id": "msg_elsewhere"}]
        body = {"model": "gpt-test", "input": reference, "previous_response_id": large}
        unknown = await client.post("/v1/responses", json={**body, "previous_response_id": None})
        unknown_id = unknown.json()["id"]
        upstream.handler = lambda request: JSONReply({"error": {"message": "down"}}, status=500)
        replies = [
            await client.post(
                "/v1/responses", json={"model": "gpt-test", "input": "and?", **previous}
            )
            for previous in ({"previous_response_id": large}, {"previous_response_id": unknown_id})
        ]
    codes = [reply.json()["error"]["code"] for reply in replies]
    assert [reply.status_code for reply in replies] == [400, 400], codes
    assert codes == ["conversation_too_large", "item_not_found"]
    assert translated.requests == []
    await running.stop()


async def test_hooks_see_the_conversation_its_holder_continues(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A gateway with request hooks reads the chain before they run: a guardrail judges,
    and a cache keys on, the conversation, not the new input alone. The holder is still
    sent the id."""
    from hook_examples import sees_messages

    sees_messages.seen.clear()
    made: list[str] = []
    upstream.handler = numbered_responses(made)
    params = {"model": "openai/upstream-model", "api_base": upstream.base_url}
    config = deployment_config("gpt-test", {**params, "api_key": UPSTREAM_KEY})
    config["litellm_settings"] = {"callbacks": ["hook_examples.sees_messages"]}
    running = await start_gateway(nursery, config)
    async with running.client() as client:
        head = await native_chain(client, 3)
        reads = ChainReads(running)
        body = {"model": "gpt-test", "input": "and?", "previous_response_id": head}
        reply = await client.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text[:300]
    assert reads.rows == [1, 3]
    texts = orjson.dumps(sees_messages.seen[-1]).decode()
    assert "turn 0" in texts and "turn 2" in texts and "and?" in texts
    assert upstream.requests[-1].json["previous_response_id"] == head
    await running.stop()

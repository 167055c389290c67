"""LiteLLM's own request fields and headers are the gateway's to act on, never an upstream's:
none reaches an OpenAI upstream that refuses what OpenAI does not document, and each
does what it does in LiteLLM (`trigate.api.litellm_request`)."""

from __future__ import annotations

from typing import Any, cast

import anthropic
import openai
import pytest
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest, StreamReply, chat_completion, chunk
from helpers import MASTER_KEY, MESSAGES, UPSTREAM_KEY, RunningGateway, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam

from trigate.spend import RequestRecord
from trigate.store import SpendFilter

# What OpenAI's API reference documents for each endpoint: anything else is its 400.
_CHAT = {
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop",
    "store", "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
    "top_p", "user", "verbosity", "web_search_options",
}  # fmt: skip
_COMPLETIONS = {
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
    "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
    "suffix", "temperature", "top_p", "user",
}  # fmt: skip
_EMBEDDINGS = {"model", "input", "dimensions", "encoding_format", "user"}
_RESPONSES = {
    "model", "input", "background", "conversation", "include", "instructions",
    "max_output_tokens", "max_tool_calls", "metadata", "parallel_tool_calls",
    "previous_response_id", "prompt", "prompt_cache_key", "reasoning", "safety_identifier",
    "service_tier", "store", "stream", "stream_options", "temperature", "text", "tool_choice",
    "tools", "top_logprobs", "top_p", "truncation", "user",
}  # fmt: skip
# helpers.MESSAGES as the OpenAI SDK types it (helpers keeps plain dicts, for every SDK).
CHAT_MESSAGES = cast(list[ChatCompletionMessageParam], MESSAGES)
DOCUMENTED = {
    "/v1/chat/completions": _CHAT,
    "/v1/completions": _COMPLETIONS,
    "/v1/embeddings": _EMBEDDINGS,
    "/v1/responses": _RESPONSES,
}

# Every LiteLLM field a client may send that asks for something the gateway can do.
LITELLM_FIELDS: dict[str, Any] = {
    "num_retries": 1,
    "max_retries": 1,
    "timeout": 30,
    "request_timeout": 30,
    "stream_timeout": 30,
    "tags": ["ci", "team-a"],
    "litellm_session_id": "session-1",
    "litellm_trace_id": "trace-1",
    "caching": False,
    "cache": {"no-cache": True},
    "guardrails": [],
    "drop_params": True,
    "additional_drop_params": ["logit_bias"],
    "allowed_openai_params": ["tools"],
    "mock_testing_rate_limit_error": False,
    "mock_timeout": False,
    "litellm_call_id": "call-1",
    "fallbacks": [],
}
LITELLM_HEADERS = {
    "x-litellm-tags": "from-header",
    "x-litellm-timeout": "30",
    "x-litellm-num-retries": "1",
    "x-litellm-session-id": "session-2",
    "x-litellm-trace-id": "trace-2",
}
TEXT_COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1,
    "model": "upstream-model",
    "choices": [{"index": 0, "text": "hi", "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
}
EMBEDDING = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "model": "upstream-model",
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1,
    "status": "completed",
    "model": "upstream-model",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hi", "annotations": []}],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {"input_tokens": 2, "output_tokens": 1, "total_tokens": 3},
}
ANSWERS = {
    "/v1/chat/completions": chat_completion("hi"),
    "/v1/completions": TEXT_COMPLETION,
    "/v1/embeddings": EMBEDDING,
    "/v1/responses": RESPONSE,
}


def strict_openai(request: ReceivedRequest) -> JSONReply | StreamReply:
    """OpenAI as it answers a parameter it does not document: a 400 naming it."""
    body = request.json
    unknown = sorted(set(body) - DOCUMENTED[request.target])
    if unknown:
        error = {"message": f"Unrecognized request argument supplied: {unknown[0]}"}
        return JSONReply({"error": {**error, "type": "invalid_request_error"}}, status=400)
    if body.get("stream"):
        return StreamReply([chunk("hi"), chunk(finish="stop"), b"data: [DONE]\n\n"])
    return JSONReply(ANSWERS[request.target])


async def strict_gateway(nursery: trio.Nursery, upstream: FakeUpstream) -> RunningGateway:
    upstream.handler = strict_openai
    params = {"model": "openai/upstream-model", "api_base": upstream.base_url}
    config: dict[str, Any] = {
        "model_list": [{"model_name": "gpt-test", "litellm_params": {**params}}],
        "router_settings": {"num_retries": 0},
        # LiteLLM's `x-litellm-*` headers must stay home even when client headers travel.
        "general_settings": {"forward_client_headers_to_llm_api": True},
    }
    config["model_list"][0]["litellm_params"]["api_key"] = UPSTREAM_KEY
    return await start_gateway(nursery, config)


def assert_nothing_leaked(upstream: FakeUpstream) -> None:
    assert upstream.requests, "the upstream was called"
    for request in upstream.requests:
        assert set(request.json) <= DOCUMENTED[request.target], request.json
        assert not [name for name in request.headers if name.startswith("x-litellm-")]


async def test_no_litellm_field_or_header_reaches_an_openai_upstream(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The openai SDK sends every LiteLLM field and header on every model route, whole
    and streamed; an upstream that refuses what OpenAI does not document serves them all."""
    gateway = await strict_gateway(nursery, upstream)
    client = sdk(gateway)
    extra: dict[str, Any] = {"extra_body": LITELLM_FIELDS, "extra_headers": LITELLM_HEADERS}
    with_metadata = {**LITELLM_FIELDS, "metadata": {"run": "1"}}
    chat = await client.chat.completions.create(
        model="gpt-test",
        messages=CHAT_MESSAGES,
        extra_body=with_metadata,
        extra_headers=LITELLM_HEADERS,
    )
    assert chat.choices[0].message.content == "hi"
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=CHAT_MESSAGES,
        stream=True,
        **extra,
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "hi"
    text = await client.completions.create(model="gpt-test", prompt="hi", **extra)
    assert text.choices[0].text == "hi"
    vectors = await client.embeddings.create(model="gpt-test", input="hi", **extra)
    assert vectors.data[0].embedding == [0.1, 0.2]
    # On the Responses and Messages APIs `metadata` is the API's own, and LiteLLM's is
    # `litellm_metadata`.
    own = {**LITELLM_FIELDS, "litellm_metadata": {"run": "1"}}
    response = await client.responses.create(
        model="gpt-test",
        input="hi",
        metadata={"api": "own"},
        extra_headers=LITELLM_HEADERS,
        extra_body=own,
    )
    assert response.output_text == "hi"
    assert upstream.requests[-1].json["metadata"] == {"api": "own"}
    claude = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=MASTER_KEY, max_retries=0)
    message = await claude.messages.create(
        model="gpt-test",
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers=LITELLM_HEADERS,
        extra_body=own,
    )
    first_block = message.content[0]
    assert first_block.type == "text" and first_block.text == "hi"
    assert_nothing_leaked(upstream)
    assert len(upstream.requests) == 6


@pytest.fixture
async def strict(nursery: trio.Nursery, upstream: FakeUpstream) -> RunningGateway:
    return await strict_gateway(nursery, upstream)


async def post(gateway: RunningGateway, body: dict[str, Any], **headers: str) -> Any:
    async with gateway.client() as client:
        return await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-test", "messages": MESSAGES, **body},
            headers=headers,
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("caching", True),
        ("cache", {"ttl": 60}),
        ("cache", {"namespace": "team-a"}),
        ("guardrails", ["pii-mask"]),
        ("guardrails", {"pii-mask": {}}),
        ("api_key", "sk-client-own"),
        ("api_base", "http://127.0.0.1:1/v1"),
        ("base_url", "http://127.0.0.1:1/v1"),
        ("num_retries", -1),
        ("timeout", 0),
        ("tags", "not-a-list"),
        ("metadata", ["not", "an", "object"]),
        ("mock_response", {"not": "a string"}),
        ("fallbacks", [{"messages": []}]),
    ],
)
async def test_what_cannot_be_done_is_refused_naming_the_field(
    strict: RunningGateway, upstream: FakeUpstream, field: str, value: Any
) -> None:
    reply = await post(strict, {field: value})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == ("api_base" if field == "base_url" else field)
    assert "sk-client-own" not in reply.text
    assert upstream.requests == []


async def test_cache_controls_that_ask_for_no_cache_pass(
    strict: RunningGateway, upstream: FakeUpstream
) -> None:
    for cache in ({"no-cache": True}, {"no-store": True}, {"s-maxage": 10}, {"ttl": 0}):
        assert (await post(strict, {"cache": cache})).status_code == 200
    assert (await post(strict, {"caching": False, "guardrails": []})).status_code == 200
    assert_nothing_leaked(upstream)


# --- mock_response, mock_testing_*, mock_timeout ----------------------------------------------


def two_groups(upstream: FakeUpstream, **router: Any) -> dict[str, Any]:
    params = {"model": "openai/upstream-model", "api_base": upstream.base_url, "api_key": "k"}
    return {
        "model_list": [
            {"model_name": "a", "litellm_params": {**params, "timeout": 2}},
            {"model_name": "b", "litellm_params": {**params, "model": "openai/model-b"}},
        ],
        "router_settings": {"num_retries": 0, **router},
    }


async def test_mock_response_answers_without_the_upstream_whole_and_streamed(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, two_groups(upstream))
    client = sdk(gateway)
    whole = await client.chat.completions.with_raw_response.create(
        model="a",
        messages=CHAT_MESSAGES,
        extra_body={"mock_response": "It's simple to use and easy to get started"},
    )
    assert whole.parse().choices[0].message.content == "It's simple to use and easy to get started"
    assert whole.headers["x-litellm-model-group"] == "a"
    stream = await client.chat.completions.create(
        model="a",
        messages=CHAT_MESSAGES,
        stream=True,
        extra_body={"mock_response": "streamed mock"},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "streamed mock"
    text_completion = await client.completions.create(
        model="a", prompt="hi", extra_body={"mock_response": "as text"}
    )
    assert text_completion.choices[0].text == "as text"
    assert upstream.requests == [], "a mock never calls the upstream"
    records = await gateway.records.wait_for(3)
    assert all(r.status == 200 and r.deployment is not None for r in records)


@pytest.mark.parametrize(
    ("mock", "status"),
    [
        ("litellm.RateLimitError", 429),
        ("litellm.ContextWindowExceededError", 400),
        ("litellm.InternalServerError", 502),
        ("Exception: content_filter_policy", 400),
    ],
)
async def test_mock_errors_fail_as_litellm_raises_them(
    nursery: trio.Nursery, upstream: FakeUpstream, mock: str, status: int
) -> None:
    gateway = await start_gateway(nursery, two_groups(upstream))
    reply = await post_to(gateway, "a", {"mock_response": mock})
    assert reply.status_code == status, reply.text
    assert upstream.requests == []


async def post_to(gateway: RunningGateway, model: str, body: dict[str, Any], **headers: str) -> Any:
    async with gateway.client() as client:
        return await client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": MESSAGES, **body},
            headers=headers,
        )


@pytest.mark.parametrize("stream", [False, True])
async def test_mock_testing_fallbacks_fails_the_group_so_fallbacks_run(
    nursery: trio.Nursery, upstream: FakeUpstream, stream: bool
) -> None:
    upstream.handler = lambda request: (
        StreamReply([chunk("from b"), chunk(finish="stop"), b"data: [DONE]\n\n"])
        if request.json.get("stream")
        else JSONReply(chat_completion("from b"))
    )
    gateway = await start_gateway(nursery, two_groups(upstream))
    body = {"mock_testing_fallbacks": True, "fallbacks": ["b"], "stream": stream}
    reply = await post_to(gateway, "a", body)
    assert reply.status_code == 200, reply.text
    assert "from b" in reply.text
    assert reply.headers["x-litellm-attempted-fallbacks"] == "1"
    assert [r.json["model"] for r in upstream.requests] == ["model-b"], "a is never called"
    alone = await post_to(gateway, "a", {"mock_testing_fallbacks": True})
    assert alone.status_code == 502 and "mock exception" in alone.json()["error"]["message"]
    assert len(upstream.requests) == 1


async def test_a_clients_mock_failures_never_cool_a_deployment(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """Two deployments, so that their breakers are on: a client's mock rate limits, however
    many, leave both available to everyone."""
    config = two_groups(upstream, allowed_fails=0)
    second = config["model_list"][0]["litellm_params"]
    config["model_list"].append(
        {"model_name": "a", "litellm_params": {**second, "model": "openai/a2"}}
    )
    gateway = await start_gateway(nursery, config)
    for _ in range(4):
        reply = await post_to(gateway, "a", {"mock_response": "litellm.RateLimitError"})
        assert reply.status_code == 429
    now = trio.current_time()
    assert all(d.available(now) for d in gateway.gateway.groups.deployments("a"))
    assert (await post_to(gateway, "a", {})).status_code == 200


async def test_mock_rate_limit_is_retried_within_the_routers_retries(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.abc.Clock
) -> None:
    gateway = await start_gateway(nursery, two_groups(upstream, num_retries=3))
    reply = await post_to(gateway, "a", {"mock_testing_rate_limit_error": True})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-litellm-attempted-retries"] == "1"
    assert reply.headers["x-litellm-max-retries"] == "3"


async def test_mock_timeout_waits_the_requests_timeout_and_fails(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.abc.Clock
) -> None:
    gateway = await start_gateway(nursery, two_groups(upstream))
    started = trio.current_time()
    reply = await post_to(gateway, "a", {"mock_timeout": True, "num_retries": 0})
    assert reply.status_code == 504
    assert reply.headers["x-litellm-timeout"] == "2.0", "the deployment's own timeout"
    assert trio.current_time() - started == pytest.approx(2.0, abs=0.1)
    header = await post_to(gateway, "a", {"mock_timeout": True}, **{"x-litellm-timeout": "0.5"})
    assert header.status_code == 504
    assert header.headers["x-litellm-timeout"] == "0.5"
    assert upstream.requests == []


# --- num_retries, timeout ---------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "tries"), [(0, 1), (1, 2), (10, 4)])
async def test_num_retries_bounds_the_request_never_above_the_router(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.abc.Clock, asked: int,
    tries: int,
) -> None:  # fmt: skip
    upstream.handler = lambda request: JSONReply({"error": {"message": "down"}}, status=500)
    gateway = await start_gateway(nursery, two_groups(upstream, num_retries=3))
    reply = await post_to(gateway, "b", {"num_retries": asked})
    assert reply.status_code == 502
    assert len(upstream.requests) == tries
    assert reply.headers["x-litellm-max-retries"] == str(min(asked, 3))
    assert reply.headers["x-litellm-attempted-retries"] == str(tries - 1)


async def test_a_request_timeout_bounds_the_call_never_above_the_deployments(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.abc.Clock
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("late"), delay=1.5)
    gateway = await start_gateway(nursery, two_groups(upstream))
    started = trio.current_time()
    short = await post_to(gateway, "a", {"timeout": 0.5})
    assert short.status_code == 504, short.text
    assert trio.current_time() - started == pytest.approx(0.5, abs=0.1)
    assert short.headers["x-litellm-timeout"] == "0.5"
    # Above the deployment's 2 s, its own bound stands: the answer at 1.5 s is in time.
    long = await post_to(gateway, "a", {"request_timeout": 100})
    assert long.status_code == 200 and long.headers["x-litellm-timeout"] == "2.0"
    now = trio.current_time()
    assert gateway.gateway.groups.deployments("a")[0].available(now)


# --- metadata, tags, session: the spend log ---------------------------------------------------


async def test_metadata_tags_and_session_reach_the_spend_log(
    strict: RunningGateway, upstream: FakeUpstream
) -> None:
    body = {
        "metadata": {"generation_name": "ci-run", "tags": ["from-metadata"]},
        "tags": ["from-body", "ci"],
        "litellm_session_id": "sess-42",
    }
    reply = await post(strict, body, **{"x-litellm-tags": "from-header, ci"})
    assert reply.status_code == 200
    assert_nothing_leaked(upstream)
    records: list[RequestRecord] = await strict.records.wait_for(1)
    assert records[0].request_tags == ["from-body", "ci", "from-metadata", "from-header"]
    assert await strict.gateway.ledger.flush()
    async with strict.client() as admin:
        request_id = reply.headers["x-litellm-call-id"]
        logs = (await admin.get("/spend/logs", params={"request_id": request_id})).json()
    assert len(logs) == 1
    assert logs[0]["request_tags"] == ["from-body", "ci", "from-metadata", "from-header"]
    assert logs[0]["metadata"]["generation_name"] == "ci-run"
    # Beside what the client sent, what LiteLLM writes of the key: the gateway's own.
    assert logs[0]["metadata"]["user_api_key"] == logs[0]["key_hash"]
    assert logs[0]["metadata"]["user_api_key_org_id"] is None
    assert logs[0]["session_id"] == "sess-42"
    plain = await post(strict, {})
    assert plain.status_code == 200
    assert await strict.gateway.ledger.flush()
    rows = await strict.gateway.store.spend_logs(SpendFilter())
    untagged = next(r for r in rows if r["request_id"] == plain.headers["x-litellm-call-id"])
    assert untagged["request_tags"] == [] and untagged["metadata"] == {}


# --- client credentials -------------------------------------------------------------------------


async def test_client_credentials_go_only_where_the_deployment_allows_them(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    other = FakeUpstream()
    await other.start(nursery)
    allowed = [
        "api_key",
        {"api_base": rf"http://127\.0\.0\.1:{other.port}/v1"},
    ]
    params = {"model": "openai/upstream-model", "api_base": upstream.base_url, "api_key": "k"}
    config = {
        "model_list": [
            {
                "model_name": "open",
                "litellm_params": {**params, "configurable_clientside_auth_params": allowed},
            },
            {"model_name": "closed", "litellm_params": params},
        ],
        "router_settings": {"num_retries": 0},
    }
    gateway = await start_gateway(nursery, config)
    own = await post_to(gateway, "open", {"api_key": "sk-client-own-key"})
    assert own.status_code == 200, own.text
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-client-own-key"
    assert "api_key" not in upstream.requests[-1].json
    elsewhere = await post_to(gateway, "open", {"api_base": other.base_url})
    assert elsewhere.status_code == 200, elsewhere.text
    assert len(other.requests) == 1 and other.requests[0].headers["authorization"] == "Bearer k"
    refused = await post_to(gateway, "open", {"api_base": "http://169.254.169.254/v1"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "api_base"
    closed = await post_to(gateway, "closed", {"api_key": "sk-client-own-key"})
    assert closed.status_code == 400 and closed.json()["error"]["param"] == "api_key"
    assert len(upstream.requests) == 1 and len(other.requests) == 1


# --- fallbacks as objects -----------------------------------------------------------------------


async def test_fallback_objects_send_their_own_messages_to_their_model(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, two_groups(upstream))
    custom = [{"role": "user", "content": "This is a custom message"}]
    body = {"mock_testing_fallbacks": True, "fallbacks": [{"model": "b", "messages": custom}]}
    reply = await post_to(gateway, "a", body)
    assert reply.status_code == 200, reply.text
    assert [r.json["messages"] for r in upstream.requests] == [custom]
    assert upstream.requests[0].json["model"] == "model-b"
    # Without the mock, the requested group is served its own messages.
    assert (await post_to(gateway, "a", {"fallbacks": body["fallbacks"]})).status_code == 200
    assert upstream.requests[1].json["messages"] == MESSAGES


async def test_a_fallback_object_may_not_reach_a_model_the_key_may_not_use(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, two_groups(upstream))
    async with gateway.client() as admin:
        key = (await admin.post("/key/generate", json={"models": ["a"]})).json()["key"]
    fallbacks = [{"model": "b", "messages": MESSAGES}]
    async with gateway.client(key) as client:
        reply = await client.post(
            "/v1/chat/completions",
            json={"model": "a", "messages": MESSAGES, "fallbacks": fallbacks,
                  "mock_testing_fallbacks": True},
        )  # fmt: skip
    assert reply.status_code == 403 and reply.json()["error"]["param"] == "fallbacks"
    assert upstream.requests == []


async def test_openai_sdk_errors_name_the_refused_field(strict: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk(strict).chat.completions.create(
            model="gpt-test",
            messages=CHAT_MESSAGES,
            extra_body={"guardrails": ["aporia-pre-guard"]},
        )
    assert raised.value.param == "guardrails"


async def test_litellms_key_header_names_the_gateways_key(
    strict: RunningGateway, upstream: FakeUpstream
) -> None:
    """`x-litellm-api-key` is the gateway's key whatever `Authorization` holds, as in
    LiteLLM; it never travels upstream, not even with client headers forwarded."""
    async with strict.client() as admin:
        key = (await admin.post("/key/generate", json={})).json()["key"]
    body = {"model": "gpt-test", "messages": MESSAGES}
    async with strict.client("sk-someone-elses-provider-key") as client:
        reply = await client.post(
            "/v1/chat/completions", json=body, headers={"x-litellm-api-key": key}
        )
        wrong = await client.post(
            "/v1/chat/completions", json=body, headers={"x-litellm-api-key": "sk-wrong-key-123"}
        )
        repeated = await client.post(
            "/v1/chat/completions",
            json=body,
            headers=[("x-litellm-api-key", key), ("x-litellm-api-key", key)],
        )
    assert reply.status_code == 200, reply.text
    assert wrong.status_code == 401
    assert repeated.status_code == 400
    assert len(upstream.requests) == 1
    assert_nothing_leaked(upstream)
    assert key not in str(upstream.requests[0].headers)
    records = await strict.records.wait_for(1)
    assert records[0].key_hash is not None


async def test_fallback_objects_are_refused_where_hooks_would_not_see_them(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A hook (a guardrail, say) sees and may rewrite the request's own body; a fallback
    object's own messages would reach their model unseen, so they are refused."""
    config = two_groups(upstream)
    config["litellm_settings"] = {"callbacks": ["hook_examples.refuse_secrets"]}
    gateway = await start_gateway(nursery, config)
    secret = [{"role": "user", "content": "the password is hunter2"}]
    body = {"mock_testing_fallbacks": True, "fallbacks": [{"model": "b", "messages": secret}]}
    reply = await post_to(gateway, "a", body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "fallbacks"
    assert upstream.requests == []
    named = await post_to(gateway, "a", {"mock_testing_fallbacks": True, "fallbacks": ["b"]})
    assert named.status_code == 200

"""Generated bodies and query strings against every route: whatever a client sends is
answered, as a 4xx when it is wrong, and never as a 5xx.

Hypothesis generates the inputs (well-formed requests with wrong types in the fields
the gateway and its translators read, odd model names, deep nesting), and one app,
in-process, serves them all: a mock deployment and deployments of each translating
provider family (`anthropic/`, `gemini/`, `bedrock/`, and `openai/`), whose upstreams
answer validly through `httpx.MockTransport`. Starting an app per example would cost
more than the examples, so the examples are drawn first and then sent.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import orjson
import trio
from asgi_driver import chat_request, start_lifespan
from fake_bedrock import metadata, text_events
from fakes import DONE, chat_completion, chunk, usage_chunk
from helpers import MemoryRecords, build_app, start_gateway
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from trigate.providers.bedrock import EVENT_STREAM

CREDENTIALS = {"api_key": "sk-upstream-key-0123456789"}
BEDROCK = {
    "aws_access_key_id": "AKIDEXAMPLE",
    "aws_secret_access_key": "secret-key-0123456789",
    "aws_region_name": "us-east-1",
}
MODELS = {
    "mock": {"model": "mock/gpt-4o"},
    "oai": {"model": "openai/m", "api_base": "http://openai.test/v1", **CREDENTIALS},
    "claude": {"model": "anthropic/claude-m", "api_base": "http://anthropic.test", **CREDENTIALS},
    "gem": {"model": "gemini/gemini-m", "api_base": "http://gemini.test", **CREDENTIALS},
    "bed": {"model": "bedrock/anthropic.claude-m", "api_base": "http://bedrock.test", **BEDROCK},
}
CONFIG = {
    "model_list": [{"model_name": name, "litellm_params": p} for name, p in MODELS.items()],
    "router_settings": {"num_retries": 0, "fallbacks": [{"oai": ["mock"]}]},
}
MODEL_ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
]
# Bodies per route; each example is a request, so the whole test stays within seconds.
EXAMPLES = 150
DEEP = "__deep__"

USAGE = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)


def _anthropic(stream: bool) -> httpx.Response:
    message: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-m",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    if not stream:
        return httpx.Response(200, json=message)
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**message, "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": message["usage"]},
        {"type": "message_stop"},
    ]
    body = b"".join(
        f"event: {e['type']}\n".encode() + b"data: " + orjson.dumps(e) + b"\n\n" for e in events
    )
    return _stream(body)


def _gemini(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path.endswith(":batchEmbedContents"):
        count = len(orjson.loads(request.content).get("requests", []))
        return httpx.Response(200, json={"embeddings": [{"values": [0.5]}] * count})
    answer = {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1},
    }
    if path.endswith(":streamGenerateContent"):
        return _stream(_sse(answer))
    return httpx.Response(200, json=answer)


def _bedrock(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/converse-stream"):
        frames = [*text_events("hi"), metadata(inputTokens=3, outputTokens=1)]
        return _stream(b"".join(frames), EVENT_STREAM)
    answer = {
        "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4},
    }
    return httpx.Response(200, json=answer)


def _responses(stream: bool) -> httpx.Response:
    """A native Responses API answer (the `oai` deployment speaks it)."""
    response = {
        "id": "resp_fuzz",
        "object": "response",
        "status": "completed",
        "model": "m",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "hi", "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
    }
    if not stream:
        return httpx.Response(200, json=response)
    events = [
        {"type": "response.created", "response": {**response, "status": "in_progress"}},
        {"type": "response.completed", "response": response},
    ]
    body = b"".join(
        f"event: {e['type']}\n".encode() + b"data: " + orjson.dumps(e) + b"\n\n" for e in events
    )
    return _stream(body)


def _openai(request: httpx.Request) -> httpx.Response:
    body = orjson.loads(request.content)
    path = request.url.path
    if path.endswith("/responses"):
        return _responses(body.get("stream") is True)
    if path.endswith("/embeddings"):
        return httpx.Response(
            200, json={"data": [{"embedding": [0.5], "index": 0}], "usage": USAGE}
        )
    if not body.get("stream"):
        return httpx.Response(200, json=chat_completion("hi", USAGE))
    return _stream(chunk("hi") + chunk(finish="stop") + usage_chunk(3, 1) + DONE)


def _stream(body: bytes, content_type: str = "text/event-stream") -> httpx.Response:
    return httpx.Response(200, headers={"content-type": content_type}, stream=_Body(body))


class _Body(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> Any:
        yield self._body


async def upstream(request: httpx.Request) -> httpx.Response:
    """Valid answers, by provider family, to whatever the gateway forwards."""
    host = request.url.host
    if host == "anthropic.test":
        return _anthropic(b'"stream":true' in request.content)
    if host == "gemini.test":
        return _gemini(request)
    if host == "bedrock.test":
        return _bedrock(request)
    return _openai(request)


# --- what a client might send ----------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
ODD_TEXT = st.sampled_from(["", "\x00", "a\r\nb", "mock\x00", "é" * 3, " mock", "*", "mock\n"])
# Text with control characters anywhere (CR, LF, NUL, DEL, ESC): what must never reach a
# header, a URL or a log line as it is.
CONTROL_TEXT = st.text(
    alphabet=st.sampled_from(["a", "/", ":", "\r", "\n", "\x00", "\x7f", "\x1b", "\t", "é"]),
    max_size=10,
)
MODEL = st.sampled_from(sorted(MODELS))
# Each field in shapes its API defines, deep inside which generated JSON may turn up:
# the gatekeeping fields stay valid often enough that requests reach the translators.
CONTENT_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "image", "tool_use", "tool_result"]) | JSON},
    optional={"text": st.text(max_size=5) | JSON, "image_url": JSON, "input": JSON, "source": JSON},
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool"]),
        "content": st.text(min_size=1, max_size=8) | st.lists(CONTENT_PART, max_size=2) | JSON,
    },
    optional={
        "tool_calls": st.lists(
            st.fixed_dictionaries({}, optional={"id": JSON, "type": JSON, "function": JSON}),
            max_size=2,
        )
        | JSON,
        "name": JSON,
        "tool_call_id": JSON,
    },
)
FUNCTION = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=5)},
    optional={
        "description": JSON,
        "parameters": st.fixed_dictionaries(
            {"type": st.just("object") | JSON},
            optional={"properties": st.dictionaries(st.text(max_size=4), JSON, max_size=2) | JSON},
        )
        | JSON,
    },
)
TOOL = st.fixed_dictionaries(
    {"type": st.just("function") | JSON},
    optional={"function": FUNCTION | JSON, "name": JSON, "input_schema": JSON},
)
FIELDS = {
    "tools": st.lists(TOOL, max_size=2) | JSON,
    "tool_choice": st.sampled_from(["auto", "none", "required", "any"])
    | st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "tool", "auto", "any"]) | JSON},
        optional={"function": JSON, "name": JSON},
    )
    | JSON,
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": JSON}),
    "fallbacks": st.lists(st.sampled_from(sorted(MODELS)) | ODD_TEXT, max_size=2),
    "system": st.text(max_size=8) | st.lists(CONTENT_PART, max_size=2) | JSON,
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["json_object", "json_schema", "text"]) | JSON},
        optional={"json_schema": st.fixed_dictionaries({}, optional={"schema": JSON}) | JSON},
    )
    | JSON,
    "temperature": JSON,
    "n": JSON,
    "stop": JSON,
    "stop_sequences": JSON,
    "metadata": JSON,
    "reasoning_effort": JSON,
    "thinking": JSON,
    "max_completion_tokens": JSON,
    # The Responses API's own (and what its Response object echoes back).
    "instructions": st.text(max_size=8) | CONTROL_TEXT | JSON,
    "text": st.fixed_dictionaries({}, optional={"format": JSON, "verbosity": JSON}) | JSON,
    "user": CONTROL_TEXT | JSON,
    "reasoning": st.fixed_dictionaries({}, optional={"effort": JSON, "summary": JSON}) | JSON,
    "truncation": JSON,
    "store": st.booleans() | JSON,
    "previous_response_id": CONTROL_TEXT | JSON,
    "max_output_tokens": JSON,
    "parallel_tool_calls": JSON,
    "background": JSON,
}
# Fields whose every value is tried too, the model's and gatekeeping fields' included.
ANY_FIELD = st.sampled_from(
    sorted({*FIELDS, "model", "messages", "prompt", "input", "max_tokens", "stream"})
)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request for every model route, some fields in shapes their APIs define
    (holding anything), and a few fields set to anything at all."""
    body: dict[str, Any] = {
        "model": draw(MODEL),
        "messages": draw(st.lists(MESSAGE, min_size=1, max_size=3)),
        "prompt": "hi",
        "input": "hi",
        "max_tokens": 5,
    }
    body.update(draw(st.fixed_dictionaries({}, optional=FIELDS)))
    body.update(draw(st.dictionaries(ANY_FIELD, JSON | ODD_TEXT, max_size=2)))
    return body


BODY = bodies()
# Deep nesting, placed in one field: some depths the gateway reads, some only orjson's
# limits (254 levels to write, 1024 to read) can stop.
DEPTH = st.none() | st.tuples(st.sampled_from(sorted(FIELDS)), st.integers(1, 1100))


def encoded(body: dict[str, Any], deep: tuple[str, int] | None) -> bytes:
    """The body as JSON; a deep value is spliced in as text, since orjson will not
    write more than 254 levels."""
    if deep is None:
        return orjson.dumps(body)
    field, depth = deep
    raw = orjson.dumps({**body, field: DEEP})
    return raw.replace(orjson.dumps(DEEP), b"[" * depth + b"1" + b"]" * depth, 1)


def drawn(strategy: Any, count: int) -> list[Any]:
    """`count` examples of `strategy`, drawn up front (no shrinking: each failure names
    its input)."""
    examples: list[Any] = []

    # Derandomized: the same examples every run, so CI never fails on a draw it has not
    # seen before; change the strategies (or the count) to explore further.
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        examples.append(example)

    collect()
    return examples


# --- sending them ----------------------------------------------------------------------


async def send(
    nursery: trio.Nursery, app: Any, path: str, raw: bytes | None, query: str = ""
) -> tuple[int, bytes]:
    method = "POST" if raw is not None else "GET"
    exchange = chat_request(nursery, app, raw, path=path, method=method, query=query)
    start = await exchange.start()
    return start["status"], await exchange.read_body()


async def fuzzed_app(nursery: trio.Nursery) -> Any:
    """The app, its lifespan started, with every deployment's upstream answering validly."""
    app, _ = build_app(CONFIG, transport=httpx.MockTransport(upstream), records=MemoryRecords())
    await start_lifespan(nursery, app)
    return app


def no_server_error(status: int, body: bytes, what: Any) -> None:
    assert status < 500, f"{status} for {what!r}: {body[:300]!r}"
    assert status >= 200, what


async def test_model_routes_answer_any_body_without_a_5xx(nursery: trio.Nursery) -> None:
    app = await fuzzed_app(nursery)
    examples = drawn(st.tuples(BODY, DEPTH), EXAMPLES)  # the same for every route
    for path in MODEL_ROUTES:
        for body, deep in examples:
            status, answer = await send(nursery, app, path, encoded(body, deep))
            no_server_error(status, answer, (path, body, deep))


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


# Routes that read every one of these fields (`input_schema`: the Messages API's only):
# there each case is the client's error. Elsewhere a field the route does not read goes
# to the upstream as it is.
READERS = ("/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens")


# Fields inside a tool that the gateway reads only to translate: a Messages request to
# an `anthropic/` deployment goes as it came, and their shape is Anthropic's to judge.
TOOL_SCHEMA_CASES = ("parameters as a list", "an input_schema as a list")


def readers(case: str, model: str) -> tuple[str, ...]:
    """Where `case` must be a 4xx; a body too deep to forward may still be answered by a
    provider that drops the field (`metadata` has no Converse meaning). A Response echoes
    `metadata`, `text` and `user`, so `/v1/responses` must refuse them too deep."""
    if case in ECHOED_CASES:
        return ("/v1/responses",)
    paths = READERS[1:] if "input_schema" in case else READERS
    if model == "claude" and case in TOOL_SCHEMA_CASES:
        return tuple(path for path in paths if path != "/v1/messages")
    return paths


ECHOED_CASES = ("metadata nested 300 deep", "text nested 300 deep", "user nested 300 deep")
# The security review's cases, each through every model route and every family.
NAMED: dict[str, dict[str, Any]] = {
    "tools as a number": {"tools": 5},
    "parameters as a list": {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]
    },
    "tool_choice.type as an object": {"tool_choice": {"type": {"a": 1}}},
    "an input_schema as a list": {"tools": [{"name": "f", "input_schema": [1]}]},
    "messages nested 100 deep": {"messages": [{"role": "user", "content": DEEP}]},
    "metadata nested 300 deep": {"metadata": DEEP},
    "text nested 300 deep": {"text": DEEP},
    "user nested 300 deep": {"user": DEEP},
    "model with NUL": {"model": "mock\x00"},
    "model with CRLF": {"model": "a\r\nb"},
}


async def test_the_named_cases_are_4xx_everywhere(nursery: trio.Nursery) -> None:
    app = await fuzzed_app(nursery)
    for name, fields in NAMED.items():
        for model in sorted(MODELS):
            for path in MODEL_ROUTES:
                for stream in (False, True):
                    body = {
                        "model": model,
                        "messages": [{"role": "user", "content": "hi"}],
                        "prompt": "hi",
                        "input": "hi",
                        "max_tokens": 5,
                        "stream": stream,
                    }
                    raw = orjson.dumps({**body, **fields})
                    depth = 300 if "300" in name else 100
                    raw = raw.replace(orjson.dumps(DEEP), nested(depth))
                    status, answer = await send(nursery, app, path, raw)
                    no_server_error(status, answer, (name, model, path, stream))
                    if path in readers(name, model):
                        assert 400 <= status < 500, (name, model, path, stream, answer[:200])


ADMIN_POSTS = [
    "/key/generate",
    "/key/update",
    "/key/delete",
    "/key/regenerate",
    "/key/block",
    "/key/unblock",
    "/team/new",
    "/team/update",
    "/team/delete",
    "/user/new",
    "/model/new",
    "/model/update",
    "/model/delete",
    "/team/member_add",
    "/team/member_delete",
    "/team/member_update",
    "/user/update",
    "/user/delete",
    # Last: with no config file, a reload serves the built-in default from then on.
    "/config/reload",
]
ADMIN_GETS = [
    "/key/info",
    "/key/list",
    "/team/info",
    "/team/list",
    "/user/info",
    "/spend/logs",
    "/global/spend/report",
    "/model/info",
    "/v1/model/info",
    "/model_group/info",
    "/v1/models",
    "/models",
    "/health",
    "/health/readiness",
]
ADMIN_FIELDS = [
    "key",
    "keys",
    "key_alias",
    "key_aliases",
    "team_id",
    "team_ids",
    "user_id",
    "models",
    "max_budget",
    "soft_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "metadata",
    "blocked",
    "duration",
    "team_alias",
    "user_email",
    "auto_create_key",
    "model_name",
    "litellm_params",
    "model_info",
    "id",
    "member",
    "role",
    "user_ids",
]
QUERY_NAMES = [
    "key",
    "api_key",
    "team_id",
    "user_id",
    "key_alias",
    "limit",
    "start_date",
    "end_date",
    "return_full_object",
    "litellm_model_id",
    "model_group",
]
# A deployment as `/model/new` reads it: each string sent to an upstream (URL, header,
# key) may hold control characters.
LITELLM_PARAMS = st.fixed_dictionaries(
    {"model": st.sampled_from(["openai/m", "anthropic/m", "mock/m"]) | CONTROL_TEXT},
    optional={
        "api_base": st.sampled_from(["http://openai.test/v1", "http://x\r\n", "ftp://x"])
        | CONTROL_TEXT,
        "api_key": CONTROL_TEXT | JSON,
        "api_version": CONTROL_TEXT,
        "extra_headers": st.dictionaries(CONTROL_TEXT, CONTROL_TEXT, max_size=2) | JSON,
        "timeout": JSON,
        "rpm": JSON,
    },
)
MEMBER = st.fixed_dictionaries(
    {},
    optional={
        "user_id": CONTROL_TEXT | JSON,
        "user_email": CONTROL_TEXT | JSON,
        "role": st.sampled_from(["admin", "user"]) | JSON,
    },
)
ADMIN_VALUES: dict[str, Any] = {
    "litellm_params": LITELLM_PARAMS,
    "member": MEMBER | st.lists(MEMBER, max_size=2),
}
# Any fields with any values; the structured ones (`litellm_params`, `member`) in the
# shapes their routes read, holding control characters.
ADMIN_BODY = st.dictionaries(
    st.sampled_from(ADMIN_FIELDS), st.none() | JSON | ODD_TEXT | CONTROL_TEXT, max_size=3
).flatmap(
    lambda body: st.fixed_dictionaries(
        {name: ADMIN_VALUES.get(name, st.just(value)) for name, value in body.items()}
    )
)
ADMIN_DEPTH = st.none() | st.tuples(st.sampled_from(ADMIN_FIELDS), st.integers(1, 1100))
QUERY = st.dictionaries(
    st.sampled_from(QUERY_NAMES),
    st.sampled_from(["9" * 5000, "²", "2024-13-01", "0", "-1", "2024-01-01"])
    | st.text(max_size=12),
    max_size=3,
)


async def test_admin_routes_answer_any_body_and_query_without_a_5xx(
    nursery: trio.Nursery,
) -> None:
    app = await fuzzed_app(nursery)
    bodies = drawn(st.tuples(ADMIN_BODY, ADMIN_DEPTH), 60)  # the same for every route
    for path in ADMIN_POSTS:
        for body, deep in bodies:
            status, answer = await send(nursery, app, path, encoded(body, deep))
            no_server_error(status, answer, (path, body, deep))
    queries = drawn(QUERY, 40)
    for path in ADMIN_GETS:
        for args in queries:
            query = "&".join(f"{quote(k)}={quote(v)}" for k, v in args.items())
            status, answer = await send(nursery, app, path, None, query)
            no_server_error(status, answer, (path, args))


# The security review's admin cases: each a 4xx, and the gateway serves on after them.
NAMED_ADMIN: list[tuple[str, dict[str, Any]]] = [
    *(
        ("/model/new", {"model_name": "x", "litellm_params": params})
        for params in (
            {"model": "openai/m", "api_base": "http://openai.test/v1\r\nx-injected: 1"},
            {"model": "anthropic/m", "api_base": "http://anthropic.test\r\n"},
            {"model": "openai/m", "api_base": "http://openai.test/v1", "api_key": "k\r\nx: y"},
            {"model": "openai/m", "extra_headers": {"x-h": "a\nb"}},
            {"model": "openai/m", "extra_headers": {"x\r\nh": "a"}},
            {"model": "openai/m\r\n"},
            {"model": "openai/m", "api_key": "os.environ/TRIGATE_MASTER_KEY"},
            {"model": "openai/m", "api_base": "http://openai.test/v1", "metadata": DEEP},
        )
    ),
    ("/model/update", {"model_info": {"id": "x\r\n"}, "litellm_params": {"api_base": "\x00"}}),
    ("/team/member_add", {"team_id": "t\x00", "member": {"user_id": DEEP}}),
    ("/team/member_add", {"team_id": "t", "member": [{"user_email": "a\r\nb"}] * 2}),
    ("/team/member_update", {"team_id": DEEP, "user_id": "u"}),
    ("/user/new", {"user_id": "u\r\n", "metadata": DEEP}),
    ("/user/update", {"user_id": "u\x00", "user_email": "e\r\n", "metadata": DEEP}),
    ("/user/delete", {"user_ids": [DEEP]}),
    ("/config/reload", {"anything": DEEP}),
    ("/key/generate", {"metadata": DEEP}),
    ("/team/new", {"metadata": DEEP}),
    ("/user/new", {"metadata": DEEP}),
    ("/team/new", {"model_aliases": {"a": DEEP}}),
]


async def test_the_named_admin_cases_are_4xx_and_the_gateway_serves_on(
    nursery: trio.Nursery,
) -> None:
    app = await fuzzed_app(nursery)
    for index, (path, body) in enumerate(NAMED_ADMIN):
        raw = orjson.dumps(body).replace(orjson.dumps(DEEP), nested(300))
        status, answer = await send(nursery, app, path, raw)
        no_server_error(status, answer, (path, body))
        if index < 8:  # each `/model/new` above stores what could never be served
            assert 400 <= status < 500, (path, body, answer[:300])
    fine = {"model_name": "x", "litellm_params": MODELS["oai"]}
    status, answer = await send(nursery, app, "/model/new", orjson.dumps(fine))
    assert status == 200, answer[:300]
    status, answer = await send(nursery, app, "/v1/chat/completions", orjson.dumps(
        {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    ))  # fmt: skip
    assert status == 200, answer[:300]


# --- one nesting bound, where a body is decoded ----------------------------------------

EMAIL_MASK = {"pattern_type": "prebuilt", "pattern_name": "email", "action": "MASK"}
GUARDED_CACHED = {
    **CONFIG,
    "guardrails": [
        {
            "guardrail_name": f"filter-{mode}",
            "litellm_params": {
                "guardrail": "litellm_content_filter",
                "mode": mode,
                "default_on": True,
                "patterns": [EMAIL_MASK],
            },
        }
        for mode in ("pre_call", "post_call")
    ],
    "litellm_settings": {"cache": True, "cache_params": {"type": "local"}},
}
CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": DEEP}}
TOOL_TURN = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "ok"},
]
# Fields no surface checked, each walked (the cache key, a Response's rendering, a
# stored row) past Python's stack or orjson's 254 levels: 500s, each now the 400 below.
TOO_DEEP = [
    ("/v1/chat/completions", {**CHAT, "top_p": DEEP}, "top_p"),
    ("/v1/chat/completions", {**CHAT, "metadata": {"a": DEEP}}, "metadata"),
    ("/v1/responses", {"model": "mock", "input": "hi", "temperature": DEEP}, "temperature"),
    ("/v1/messages", {**CHAT, "max_tokens": 5, "top_k": DEEP}, "top_k"),
    ("/team/new", {"metadata": {"a": DEEP}}, "metadata"),
    ("/openai/v1/chat/completions", {**CHAT, "model": "m", "seed": DEEP}, None),
]


async def test_a_field_nested_past_the_bound_is_a_400_naming_it_on_every_route(
    nursery: trio.Nursery,
) -> None:
    running = await start_gateway(nursery, GUARDED_CACHED, transport=httpx.MockTransport(upstream))
    async with running.client() as client:
        for path, body, field in TOO_DEEP:
            raw = orjson.dumps(body).replace(orjson.dumps(DEEP), nested(1000))
            reply = await client.post(path, content=raw)
            assert reply.status_code == 400, (path, field, reply.text[:300])
            assert "nested more than 64 levels deep" in reply.text, (path, reply.text[:300])
            if field is not None and path != "/v1/messages":
                assert reply.json()["error"]["param"] == field
        # 64 levels a field is still served, through the guardrails and the cache.
        raw = orjson.dumps({**CHAT, "top_p": DEEP}).replace(orjson.dumps(DEEP), nested(63))
        assert (await client.post("/v1/chat/completions", content=raw)).status_code == 200


async def test_tool_call_arguments_nested_past_the_bound_are_read_whole_or_refused(
    nursery: trio.Nursery,
) -> None:
    """JSON in a string is past the body's bound: a guardrail reads such arguments as one
    text (its walk of them ran out of stack: a 500), and a translation that must send
    them as JSON refuses them (orjson could not write them: a 500)."""
    running = await start_gateway(nursery, GUARDED_CACHED, transport=httpx.MockTransport(upstream))
    async with running.client() as client:
        for model, depth, status in (("mock", 1000, 200), ("gem", 300, 400), ("bed", 300, 400),
                                     ("claude", 300, 400)):  # fmt: skip
            body = {"model": model, "messages": TOOL_TURN, "max_tokens": 5}
            inner = orjson.dumps(nested(depth).decode())  # the arguments, as a JSON string
            raw = orjson.dumps(body).replace(orjson.dumps(DEEP), inner)
            reply = await client.post("/v1/chat/completions", content=raw)
            assert reply.status_code == status, (model, reply.text[:300])
            if status == 400:
                assert "nested more than 64 levels deep" in reply.text, reply.text[:300]

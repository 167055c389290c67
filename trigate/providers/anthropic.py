"""`anthropic/`: Anthropic's Messages API, spoken to in OpenAI's chat-completions shapes.

Requests are rebuilt field by field, because the Messages API rejects fields it
does not know: system messages move to `system`, tool calls and tool results
become content blocks, consecutive turns of one role merge, and OpenAI fields
with no Anthropic meaning are dropped. `response_format` is served the way
LiteLLM serves it: a forced tool whose input is the JSON answer, handed back to
the client as message content. Answers and stream events are mapped back to
OpenAI's `chat.completion` and `chat.completion.chunk`, usage included.
A client of the gateway's own `/v1/messages` needs none of this: `messages` and
`open_messages_stream` send its body as it came and hand back the upstream's own
message or events, with the usage in OpenAI's shape for metering.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from trigate.errors import Failure, UpstreamError, from_upstream_status
from trigate.nesting import TooDeep, loads_bounded
from trigate.providers.base import (
    Completion,
    NativeEvent,
    NativeMessages,
    Provider,
    SSEChunkStream,
    StreamRead,
    UpstreamClient,
    read_json_object,
    upstream_json,
)
from trigate.providers.fields import a_list, an_object, objects, requested_format
from trigate.sse import ServerSentEvent
from trigate.usage import reported_count

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

DEFAULT_API_BASE = "https://api.anthropic.com"
DEFAULT_API_VERSION = "2023-06-01"
# What a Messages API client's own headers say of its body; sent on with it.
CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")
# The Messages API requires `max_tokens`; OpenAI clients usually leave it out.
DEFAULT_MAX_TOKENS = 4096
JSON_TOOL = "json_tool_call"
# Any JSON object, for `response_format: {"type": "json_object"}`.
OPEN_OBJECT_SCHEMA = {"type": "object", "additionalProperties": True, "properties": {}}
# `reasoning_effort` as a thinking budget, as LiteLLM maps it (1024 is Anthropic's minimum).
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}
# Fields that mean the same to both APIs; `top_k` and `thinking` are Anthropic's own,
# sent through the OpenAI SDK's `extra_body`.
SHARED_FIELDS = ("temperature", "top_p", "top_k", "thinking")
EMPTY_SCHEMA = {"type": "object", "properties": {}}

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# A mid-stream `error` event carries only its type; these are the statuses Anthropic
# gives the same types outside a stream, so it is classified like them.
ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicMessages(Provider, NativeMessages):
    """Adapter for one Anthropic deployment."""

    # The client's headers that go on with its own Messages body.
    _client_header_names: tuple[str, ...] = CLIENT_HEADERS

    def __init__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> None:
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            "anthropic-version": params.anthropic_version or DEFAULT_API_VERSION,
        }
        if params.api_key:
            headers["x-api-key"] = params.api_key
        headers.update(params.extra_headers or {})
        upstream = UpstreamClient(
            transport, messages_url(params.api_base or DEFAULT_API_BASE), headers, params.timeout
        )
        self._connect(params, headers, upstream, upstream)

    def _connect(
        self,
        params: LiteLLMParams,
        headers: Mapping[str, str],
        whole: UpstreamClient,
        stream: UpstreamClient,
    ) -> None:
        """Where the Messages API is: Anthropic's one URL, or Vertex AI's two methods
        (trigate/providers/vertex.py), whole answers and streams apart."""
        self._model = params.upstream_model
        self._max_tokens = params.max_tokens or DEFAULT_MAX_TOKENS
        self._betas = next(
            (value for name, value in headers.items() if name.lower() == "anthropic-beta"), None
        )
        self._upstream = whole
        self._stream_upstream = stream

    def _payload(self, body: dict[str, Any]) -> dict[str, Any]:
        """A Messages request as this upstream takes it: Anthropic's names the model (a
        translated request already does, and is not copied again)."""
        if body.get("model") == self._model:
            return body
        return {**body, "model": self._model}

    async def complete(self, body: dict[str, Any]) -> Completion:
        payload = self._payload(to_anthropic(body, self._model, self._max_tokens))
        _, data = await read_json_object(await self._upstream.post(payload))
        return Completion(body=to_openai(data, json_mode=_json_schema(body) is not None))

    async def open_stream(self, body: dict[str, Any]) -> AnthropicChunkStream:
        payload = self._payload(to_anthropic(body, self._model, self._max_tokens))
        response = await self._stream_upstream.post_stream({**payload, "stream": True})
        return AnthropicChunkStream(response, StreamTranslator(_json_schema(body) is not None))

    async def messages(self, body: dict[str, Any], headers: Mapping[str, str]) -> Completion:
        """A Messages API request sent as the client wrote it (only `model` is ours),
        answered with the upstream's own message and bytes."""
        payload = self._payload(body)
        raw, data = await read_json_object(
            await self._upstream.post(payload, overrides=self._client_headers(headers))
        )
        usage = data.get("usage")
        metered = openai_usage(usage) if isinstance(usage, dict) else None
        return Completion(body=data, raw=raw, native=True, native_usage=metered)

    async def open_messages_stream(
        self, body: dict[str, Any], headers: Mapping[str, str]
    ) -> AnthropicChunkStream:
        """A Messages API stream sent as the client wrote it, read as its own events."""
        payload = self._payload(body)
        response = await self._stream_upstream.post_stream(
            payload, overrides=self._client_headers(headers)
        )
        return AnthropicChunkStream(response, NativeEvents())

    def _client_headers(self, client: Mapping[str, str]) -> dict[str, str]:
        """The client's `anthropic-version` over the deployment's (it wrote the body for
        that version), and its `anthropic-beta` beside the deployment's own betas: a beta
        body field (`context_management`, ...) is legal only with its beta named."""
        headers = {name: client[name] for name in self._client_header_names if client.get(name)}
        betas = [*_betas(self._betas), *_betas(headers.get("anthropic-beta"))]
        if betas:
            headers["anthropic-beta"] = ",".join(dict.fromkeys(betas))
        return headers


def _betas(value: str | None) -> list[str]:
    return [beta.strip() for beta in (value or "").split(",") if beta.strip()]


def messages_url(api_base: str) -> str:
    """LiteLLM configs give Anthropic's base with or without `/v1`; both mean the same."""
    base = api_base.rstrip("/")
    if base.endswith("/v1/messages"):
        return base
    return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"


# --- OpenAI request -> Anthropic request ---------------------------------------------


def to_anthropic(body: dict[str, Any], model: str, default_max_tokens: int) -> dict[str, Any]:
    """The Messages API request for an OpenAI chat-completions request."""
    system, messages = translate_messages(objects(body.get("messages"), "messages"))
    payload: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        payload["system"] = system
    payload.update({key: body[key] for key in SHARED_FIELDS if body.get(key) is not None})
    thinking = payload.get("thinking") or _thinking(body.get("reasoning_effort"))
    if thinking:
        payload["thinking"] = thinking
    payload["max_tokens"] = _max_tokens(body, default_max_tokens, thinking)
    stop = body.get("stop")
    if stop:
        payload["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    user = body.get("user")
    if isinstance(user, str) and user:
        payload["metadata"] = {"user_id": user}
    _add_tools(payload, body)
    return payload


def translate_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System text blocks, and the conversation as alternating user/assistant turns."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_content_blocks(message))
            continue
        if role == "assistant":
            blocks = _assistant_blocks(message)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif role == "user":
            blocks = _content_blocks(message)
        else:
            raise _rejected(f"Messages with role {role!r} cannot be sent to Anthropic.")
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty message says nothing anyway
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _content_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's content as blocks; the message's `cache_control` marks its last one."""
    content = message.get("content")
    if isinstance(content, str):
        blocks = [{"type": "text", "text": content}] if content else []
    elif isinstance(content, list):
        blocks = [block for part in content if (block := _part_block(part)) is not None]
    elif content is None:
        blocks = []
    else:
        raise _rejected("Message `content` must be a string or an array of content parts.")
    cache_control = message.get("cache_control")
    if cache_control and blocks:
        blocks[-1] = {**blocks[-1], "cache_control": cache_control}
    return blocks


def _part_block(part: Any) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        raise _rejected("Every content part must be an object.")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not text:
            return None  # Anthropic rejects empty text blocks
        block: dict[str, Any] = {"type": "text", "text": text}
    elif kind == "image_url":
        block = _image_block(part.get("image_url"))
    else:
        return dict(part)  # Anthropic's own block types (documents, ...) pass as they are
    if part.get("cache_control"):
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(image: Any) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _rejected("An `image_url` part needs a `url`.")
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    header, _, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding != "base64" or not data:
        raise _rejected("Image data URLs must be base64: `data:<media type>;base64,<data>`.")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Thinking first (Anthropic requires it), then text, then tool calls."""
    thinking = message.get("thinking_blocks")
    thinking = objects(thinking if isinstance(thinking, list) else None, "thinking_blocks")
    blocks = [dict(block) for block in thinking]
    blocks.extend(_content_blocks(message))
    calls = a_list(message.get("tool_calls") or [], "messages[].tool_calls")
    blocks.extend(_tool_use(call) for call in calls)
    return blocks


def _tool_use(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise _rejected("Every assistant `tool_calls` entry needs a `function`.")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = loads_bounded(arguments)
    except TooDeep as error:
        raise _rejected(f"Tool call `arguments` are {error.msg}.") from None
    except (orjson.JSONDecodeError, TypeError):
        parsed = None
    if not isinstance(parsed, dict):
        raise _rejected("Tool call `arguments` must be a JSON object, as Anthropic requires.")
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": parsed}


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content:
        block["content"] = _content_blocks({"content": content})
    if message.get("cache_control"):
        block["cache_control"] = message["cache_control"]
    return block


def _thinking(effort: Any) -> dict[str, Any] | None:
    budget = THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    return {"type": "enabled", "budget_tokens": budget} if budget else None


def _max_tokens(body: dict[str, Any], default: int, thinking: Any) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int):
            return value
    # Thinking counts against `max_tokens`: a defaulted limit leaves the answer its own room.
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    return default + budget if isinstance(budget, int) else default


def _add_tools(payload: dict[str, Any], body: dict[str, Any]) -> None:
    tools = [_tool(tool) for tool in a_list(body.get("tools") or [], "tools", "tools")]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    schema = _json_schema(body)
    if schema is not None:
        # LiteLLM's JSON mode: the answer is the input of a tool the model must call.
        tools.append({"name": JSON_TOOL, "input_schema": schema})
        choice = {"type": "tool", "name": JSON_TOOL}
    if tools:
        payload["tools"] = tools
        if choice is not None:
            payload["tool_choice"] = choice


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise _rejected("Every entry of `tools` must be an object.", param="tools")
    if tool.get("type") != "function":
        return tool  # Anthropic's own tools (web search, ...) pass as they are
    function = an_object(tool.get("function") or {}, "tools[].function", "tools")
    result = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or EMPTY_SCHEMA,
    }
    if function.get("description"):
        result["description"] = function["description"]
    if tool.get("cache_control"):
        result["cache_control"] = tool["cache_control"]
    return result


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        result: dict[str, Any] = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name")}
    elif choice == "auto" or parallel is False:
        result = {"type": "auto"}
    else:
        return None
    if parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def _json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema a `response_format` asks for, or None when it asks for plain text."""
    kind, schema = requested_format(body.get("response_format"))
    if kind == "json_object":
        return OPEN_OBJECT_SCHEMA
    if kind != "json_schema":
        return None
    return schema if isinstance(schema, dict) else OPEN_OBJECT_SCHEMA


def _rejected(message: str, param: str = "messages") -> UpstreamError:
    """A request that cannot be put into Anthropic's shape: the client's fault, so the
    router neither retries it nor holds it against the deployment."""
    return UpstreamError(message, kind=Failure.BAD_REQUEST, param=param)


# --- Anthropic response -> OpenAI chat.completion --------------------------------------


def to_openai(data: dict[str, Any], *, json_mode: bool) -> dict[str, Any]:
    """A `chat.completion` for a Messages API response."""
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for block in data.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind in ("thinking", "redacted_thinking"):
            reasoning.append(block.get("thinking") or "")
            thinking_blocks.append(block)
        elif kind == "tool_use" and json_mode and block.get("name") == JSON_TOOL:
            texts.append(orjson.dumps(block.get("input")).decode())
        elif kind == "tool_use":
            tool_calls.append(_tool_call(block))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if thinking_blocks:
        # LiteLLM's field: clients send these back, signed, with the next turn.
        message["thinking_blocks"] = thinking_blocks
    result = {
        "id": data.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish_reason(data.get("stop_reason"), bool(tool_calls)),
            }
        ],
    }
    if isinstance(data.get("usage"), dict):
        result["usage"] = openai_usage(data["usage"])
    return result


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = orjson.dumps(block.get("input") or {}).decode()
    function = {"name": block.get("name"), "arguments": arguments}
    return {"id": block.get("id"), "type": "function", "function": function}


def _finish_reason(stop_reason: Any, has_tool_calls: bool) -> str:
    finish = FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    # In JSON mode the forced tool call is the answer, not a call for the client to make.
    return "stop" if finish == "tool_calls" and not has_tool_calls else finish


def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage: the prompt counts every input token, cache reads and writes included."""
    plain, reads, writes, output = (
        reported_count(usage.get(key))
        for key in (
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "output_tokens",
        )
    )
    prompt = plain + reads + writes
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": reads},
        "cache_creation_input_tokens": writes,
    }
    details = usage.get("output_tokens_details")
    thinking = details.get("thinking_tokens") if isinstance(details, dict) else None
    if isinstance(thinking, int):
        result["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return result


# --- Anthropic stream -> OpenAI chunks ---------------------------------------------------


class AnthropicChunkStream(SSEChunkStream):
    """An upstream Messages stream, decoded into batches of OpenAI chunk dicts (or of
    its own events, for a client that speaks the Messages API too)."""

    def __init__(
        self, response: httpx.Response, translator: StreamTranslator | NativeEvents
    ) -> None:
        super().__init__(response, translator.translate)


class NativeEvents:
    """A Messages stream's own events, for relaying as they are (the translator of a
    native stream); message_start's and message_delta's usage is kept for metering."""

    def __init__(self) -> None:
        self._usage: dict[str, Any] = {}

    def translate(self, events: list[ServerSentEvent]) -> StreamRead:
        batch: list[Any] = []
        for sse in events:
            try:
                data = _event_data(sse.data)
            except UpstreamError as failure:
                return StreamRead(batch, failure=failure)
            kind = data.get("type")
            if kind == "error":
                # Relayed as the failure it names, so the record holds it too.
                return StreamRead(batch, failure=_stream_error(data.get("error")))
            frame = f"event: {sse.event}\ndata: {sse.data}\n\n".encode()
            batch.append(NativeEvent(sse.event, data, frame, self._usage_after(kind, data)))
            if kind == "message_stop":
                return StreamRead(batch, done=True)
        return StreamRead(batch)

    def _usage_after(self, kind: Any, data: dict[str, Any]) -> dict[str, Any] | None:
        """The usage so far, after an event that reports some (message_delta's counts
        are cumulative)."""
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage")
        elif kind == "message_delta":
            usage = data.get("usage")
        else:
            return None
        if not isinstance(usage, dict):
            return None
        self._usage.update({k: v for k, v in usage.items() if v is not None})
        return openai_usage(self._usage)


class StreamTranslator:
    """The state a stream's translation needs: the message's identity, its usage so
    far, and which content blocks are tool calls (and which OpenAI index each has)."""

    def __init__(self, json_mode: bool) -> None:
        self._json_mode = json_mode
        self._frame: dict[str, Any] = {
            "id": "",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "",
        }
        self._usage: dict[str, Any] = {}
        # Content block index -> OpenAI tool call index, or None for the JSON-mode tool.
        self._tool_blocks: dict[int, int | None] = {}
        self._tool_calls = 0

    def translate(self, events: list[ServerSentEvent]) -> StreamRead:
        chunks: list[dict[str, Any]] = []
        for event in events:
            try:
                data = _event_data(event.data)
            except UpstreamError as failure:
                return StreamRead(chunks, failure=failure)
            kind = data.get("type")
            if kind == "message_stop":
                return StreamRead(chunks, done=True)
            if kind == "error":
                # The chunks before the failure still reach the client, and are billed.
                return StreamRead(chunks, failure=_stream_error(data.get("error")))
            self._translate_event(kind, data, chunks)
        return StreamRead(chunks)

    def _translate_event(
        self, kind: Any, data: dict[str, Any], chunks: list[dict[str, Any]]
    ) -> None:
        if kind == "content_block_delta":
            delta = self._delta(data.get("index"), data.get("delta") or {})
            if delta:
                chunks.append(self._chunk(delta))
        elif kind == "content_block_start":
            delta = self._block_start(data.get("index"), data.get("content_block") or {})
            if delta:
                chunks.append(self._chunk(delta))
        elif kind == "message_start":
            message = data.get("message") or {}
            self._frame["id"] = message.get("id") or ""
            self._frame["model"] = message.get("model") or ""
            self._usage.update(message.get("usage") or {})
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        elif kind == "message_delta":
            chunks.extend(self._message_delta(data))
        # `ping`, `content_block_stop` and event types added later say nothing to translate.

    def _block_start(self, index: Any, block: dict[str, Any]) -> dict[str, Any] | None:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return {"content": block["text"]}
        if kind == "thinking" and block.get("thinking"):
            return {"reasoning_content": block["thinking"]}
        if kind == "redacted_thinking":
            return {"thinking_blocks": [block]}
        if kind != "tool_use":
            return None
        if self._json_mode and block.get("name") == JSON_TOOL:
            self._tool_blocks[index] = None
            return None
        self._tool_blocks[index] = self._tool_calls
        self._tool_calls += 1
        call = {
            "index": self._tool_blocks[index],
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return {"tool_calls": [call]}

    def _delta(self, index: Any, delta: dict[str, Any]) -> dict[str, Any] | None:
        kind = delta.get("type")
        if kind == "text_delta":
            return {"content": delta.get("text") or ""}
        if kind == "thinking_delta":
            return {"reasoning_content": delta.get("thinking") or ""}
        if kind == "signature_delta":
            signature = {"type": "thinking", "thinking": "", "signature": delta.get("signature")}
            return {"thinking_blocks": [signature]}
        if kind != "input_json_delta" or not delta.get("partial_json"):
            return None
        if index not in self._tool_blocks:
            return None  # the input of a server tool (web search, ...): not the client's call
        tool_call, arguments = self._tool_blocks[index], delta["partial_json"]
        if tool_call is None:
            return {"content": arguments}
        return {"tool_calls": [{"index": tool_call, "function": {"arguments": arguments}}]}

    def _message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The finish reason, then the usage so far: `message_delta` counts are cumulative."""
        chunks = []
        stop_reason = (data.get("delta") or {}).get("stop_reason")
        if stop_reason is not None:
            finish = _finish_reason(stop_reason, self._tool_calls > 0)
            chunks.append({**self._frame, "choices": [_choice({}, finish)]})
        usage = data.get("usage") or {}
        self._usage.update({k: v for k, v in usage.items() if v is not None})
        if self._usage:
            chunks.append({**self._frame, "choices": [], "usage": openai_usage(self._usage)})
        return chunks

    def _chunk(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {**self._frame, "choices": [_choice(delta, None)]}


def _choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish}


def _event_data(data: str) -> dict[str, Any]:
    try:
        parsed = upstream_json(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream sent a stream event that is not JSON.") from None
    if not isinstance(parsed, dict):
        raise UpstreamError("The upstream sent a stream event that is not a JSON object.")
    return parsed


def _stream_error(error: Any) -> UpstreamError:
    """An `error` event, classified as the same error outside a stream would be."""
    error = error if isinstance(error, dict) else {}
    kind = error.get("type")
    message = error.get("message") or "no details"
    status = ERROR_STATUSES.get(kind, 500) if isinstance(kind, str) else 500
    return from_upstream_status(
        status,
        f"The upstream failed mid-stream: {message}",
        {},
        kind if isinstance(kind, str) else None,
    )

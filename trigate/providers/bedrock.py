"""`bedrock/`: Amazon Bedrock through its model-agnostic Converse and ConverseStream APIs.

OpenAI requests are translated to Converse (`bedrock/converse/<model>` is accepted
too, as LiteLLM spells it), signed with AWS SigV4 per request, and the answers
translated back: JSON for Converse, binary event-stream frames for ConverseStream.
Embeddings (Titan's and Cohere's models) go through InvokeModel instead.
Bedrock's errors carry their type in the `x-amzn-errortype` header and only a
`message` in the body, so they are mapped here rather than by the OpenAI-style
parser in `base.py`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from trigate.errors import (
    Failure,
    InvalidRequest,
    UpstreamError,
    from_upstream_status,
    secrets,
)
from trigate.nesting import TooDeep, loads_bounded
from trigate.providers.base import (
    ERROR_MESSAGE_LIMIT,
    Completion,
    Embeddings,
    Provider,
    StreamRead,
    UpstreamClient,
    read_error_body,
    read_json_object,
    translate_transport_error,
    upstream_json,
)
from trigate.providers.eventstream import EventStreamDecoder, Frame
from trigate.providers.fields import a_string, an_object, objects, strings
from trigate.transport import waits_next_of

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

# At DEBUG, botocore logs each canonical request, session token included.
logging.getLogger("botocore.auth").setLevel(logging.INFO)

# LiteLLM's default region, so that its configs reach the same endpoint.
DEFAULT_REGION = "us-west-2"
ROUTE_PREFIX = "converse/"
SERVICE = "bedrock"
EVENT_STREAM = "application/vnd.amazon.eventstream"

# Signs given headers plus the exact body bytes; returns the headers to send.
Sign = Callable[[str, dict[str, str], bytes], dict[str, str]]


class BedrockConverse(Provider, Embeddings):
    """Adapter for one Bedrock deployment."""

    def __init__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> None:
        self._model = params.upstream_model.removeprefix(ROUTE_PREFIX)
        base, sign, auth = runtime_access(params)
        # Model ids hold ':' and ARNs hold '/': the id is one path segment.
        model_url = f"{base}/model/{quote(self._model, safe='')}"

        def endpoint(path: str, accept: str) -> UpstreamClient:
            url = f"{model_url}/{path}"
            # `host` is given rather than derived so that the signed value is the sent one.
            headers = {
                "host": urlsplit(url).netloc,
                "content-type": "application/json",
                "accept": accept,
                "accept-encoding": "identity",
                **auth,
            }
            return UpstreamClient(
                transport, url, headers, params.timeout, sign=sign, read_error=_error_from_response
            )

        self._converse = endpoint("converse", "application/json")
        self._converse_stream = endpoint("converse-stream", EVENT_STREAM)
        self._invoke = endpoint("invoke", "application/json")

    async def complete(self, body: dict[str, Any]) -> Completion:
        response = await self._converse.post(converse_request(body))
        _, data = await read_json_object(response)
        return Completion(body=to_completion(data, self._model, _completion_id(response)))

    async def open_stream(self, body: dict[str, Any]) -> ConverseChunkStream:
        response = await self._converse_stream.post_stream(converse_request(body), EVENT_STREAM)
        return ConverseChunkStream(response, self._model)

    async def embed(self, body: dict[str, Any]) -> Completion:
        """InvokeModel: Cohere's models take every text at once; Titan's take one text a
        call and report its tokens, which become the usage."""
        value = body.get("input")
        given = value if isinstance(value, list) else [value]
        texts = [text for text in given if isinstance(text, str)]
        if len(texts) != len(given):
            raise _client_error("Bedrock embedding models take text, not token ids.")
        if self._model.startswith(("cohere.", "us.cohere.", "eu.cohere.")):
            vectors, usage = await self._embed_cohere(texts, body), None
        else:
            vectors, usage = await self._embed_titan(texts, body)
        answer: dict[str, Any] = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": vector}
                for index, vector in enumerate(vectors)
            ],
            "model": self._model,
        }
        if usage is not None:
            answer["usage"] = {"prompt_tokens": usage, "total_tokens": usage}
        return Completion(body=answer)

    async def _embed_titan(
        self, texts: list[str], body: dict[str, Any]
    ) -> tuple[list[list[float]], int]:
        dimensions = body.get("dimensions")
        vectors: list[list[float]] = []
        tokens = 0
        for text in texts:
            request: dict[str, Any] = {"inputText": text}
            if isinstance(dimensions, int):
                request["dimensions"] = dimensions
            _, data = await read_json_object(await self._invoke.post(request))
            vectors.append(data.get("embedding") or [])
            tokens += int(data.get("inputTextTokenCount") or 0)
        return vectors, tokens

    async def _embed_cohere(self, texts: list[str], body: dict[str, Any]) -> list[list[float]]:
        request = {"texts": texts, "input_type": body.get("input_type") or "search_document"}
        _, data = await read_json_object(await self._invoke.post(request))
        vectors = data.get("embeddings") or []
        # Newer Cohere models answer {"embeddings": {"float": [...]}} by embedding type.
        return vectors.get("float", []) if isinstance(vectors, dict) else vectors


def _client_error(message: str) -> UpstreamError:
    """A request Bedrock cannot take: the client's 400, never retried or held against it."""
    return UpstreamError(message, kind=Failure.BAD_REQUEST, code="unsupported_input")


def _setting(value: str | None, *environment: str) -> str | None:
    """A `litellm_params` value, else the first of the standard AWS variables that is set."""
    if value:
        return value
    return next((os.environ[var] for var in environment if os.environ.get(var)), None)


def runtime_access(params: LiteLLMParams) -> tuple[str, Sign, dict[str, str]]:
    """A deployment's Bedrock runtime: its base URL, and how its requests are signed (with
    the headers that carry a bearer key); the pass-through routes use them too."""
    region = _setting(params.aws_region_name, "AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION")
    region = region or DEFAULT_REGION
    base = params.api_base or params.aws_bedrock_runtime_endpoint
    base = (base or f"https://bedrock-runtime.{region}.amazonaws.com").rstrip("/")
    sign, auth = _authentication(params, region)
    return base, sign, auth


def _authentication(params: LiteLLMParams, region: str) -> tuple[Sign, dict[str, str]]:
    """SigV4 from AWS keys, or a Bedrock API key as a bearer token: what the deployment
    names wins over the environment."""
    if params.api_key and not params.aws_access_key_id:
        return _bearer(params.api_key)
    access_key = _setting(params.aws_access_key_id, "AWS_ACCESS_KEY_ID")
    secret_key = _setting(params.aws_secret_access_key, "AWS_SECRET_ACCESS_KEY")
    token = _setting(params.aws_session_token, "AWS_SESSION_TOKEN")
    if access_key and secret_key:
        secrets.extend((secret_key, token))
        return SigV4(Credentials(access_key, secret_key, token), region), {}
    if api_key := os.environ.get("AWS_BEARER_TOKEN_BEDROCK"):
        return _bearer(api_key)
    return _missing_credentials, {}


def _bearer(api_key: str) -> tuple[Sign, dict[str, str]]:
    secrets.add(api_key)
    return _unsigned, {"authorization": f"Bearer {api_key}"}


class _PayloadSigner(SigV4Auth):
    """botocore's SigV4, hashing the body bytes directly: its own `payload` prepares
    a whole request only to read them back."""

    def payload(self, request: AWSRequest) -> str:
        return hashlib.sha256(request.data or b"").hexdigest()


class SigV4:
    """Signs each request as it goes out: the signature covers the time, so it cannot
    be computed once."""

    def __init__(self, credentials: Credentials, region: str) -> None:
        self._signer = _PayloadSigner(credentials, SERVICE, region)

    def __call__(self, url: str, headers: dict[str, str], content: bytes) -> dict[str, str]:
        request = AWSRequest(method="POST", url=url, data=content, headers=headers)
        self._signer.add_auth(request)
        return dict(request.headers.items())


def _unsigned(url: str, headers: dict[str, str], content: bytes) -> dict[str, str]:
    return headers


def _missing_credentials(url: str, headers: dict[str, str], content: bytes) -> dict[str, str]:
    raise UpstreamError(
        "This Bedrock deployment has no credentials: set aws_access_key_id and "
        "aws_secret_access_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
        "or a Bedrock API key as api_key.",
        kind=Failure.AUTH,
        # The gateway's configuration is at fault, not the client's key: not a 401.
        status=502,
        code="missing_credentials",
    )


# Bedrock words "context window exceeded" in ways `trigate.errors` does not all know.
_CONTEXT_WORDS = re.compile(
    r"input is too long|too many input tokens|too many total text bytes"
    r"|input tokens? exceed|prompt is too long|context window|context length",
    re.IGNORECASE,
)
# Stream exception frames carry no HTTP status; these are their documented ones.
_EXCEPTION_STATUS = {
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ModelTimeoutException": 408,
    "ServiceUnavailableException": 503,
}

# Documented as 424, but the model failed, not the request: the gateway's problem.
_MODEL_FAULTS = {"ModelErrorException", "ModelStreamErrorException"}


async def _error_from_response(response: httpx.Response) -> UpstreamError:
    """Bedrock's `{"message"}` body and `x-amzn-errortype` header, as the client's error."""
    body = await read_error_body(response)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    message = _error_message(data) or body[:ERROR_MESSAGE_LIMIT].decode("utf-8", "replace")
    error_type = response.headers.get("x-amzn-errortype", "").partition(":")[0]
    if not error_type and isinstance(data, dict) and isinstance(data.get("__type"), str):
        error_type = data["__type"].rpartition("#")[2]
    return bedrock_error(
        response.status_code,
        message.strip() or f"The upstream answered {response.status_code}.",
        response.headers,
        error_type or None,
    )


def _error_message(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    message = data.get("message", data.get("Message"))
    return message[:ERROR_MESSAGE_LIMIT] if isinstance(message, str) else None


def bedrock_error(
    status: int, message: str, headers: Mapping[str, str], error_type: str | None
) -> UpstreamError:
    """The error type becomes the code; a too-long input is a context-window error."""
    code = error_type
    if status == 400 and _CONTEXT_WORDS.search(message):
        code = "context_length_exceeded"
    if error_type in _MODEL_FAULTS:
        status = 500
    return from_upstream_status(status, message, headers, code)


# Requests: OpenAI chat completions to Converse.

_CACHE_POINT = {"cachePoint": {"type": "default"}}
_IMAGE_HEADER = re.compile(r"data:image/(png|jpe?g|gif|webp);base64", re.IGNORECASE)
_INFERENCE_FIELDS = (
    ("max_completion_tokens", "maxTokens"),
    ("max_tokens", "maxTokens"),
    ("temperature", "temperature"),
    ("top_p", "topP"),
)


def converse_request(body: dict[str, Any]) -> dict[str, Any]:
    """The Converse body for an OpenAI request; fields with no Converse meaning are dropped."""
    system, messages = _conversation(objects(body.get("messages"), "messages"))
    payload: dict[str, Any] = {"messages": messages}
    if system:
        payload["system"] = system
    if config := _inference_config(body):
        payload["inferenceConfig"] = config
    if tools := _tool_config(body, messages):
        payload["toolConfig"] = tools
    if isinstance(body.get("thinking"), dict):
        payload["additionalModelRequestFields"] = {"thinking": body["thinking"]}
    return payload


def _conversation(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System blocks, and turns that alternate between user and assistant as Converse
    requires: tool results travel in user turns, and consecutive same-role turns merge."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_content_blocks(message.get("content")))
        elif role == "user":
            _append(turns, "user", _content_blocks(message.get("content")))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message)])
        else:
            raise InvalidRequest(f"Bedrock has no message role {role!r}.", param="messages")
    return system, turns


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """Text and image blocks; a part marked with `cache_control` is followed by a cache point."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in objects(content, "messages[].content"):
        kind = part.get("type")
        if kind == "text":
            if text := a_string(part.get("text"), "messages[].content[].text"):
                blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url")))
        else:
            raise InvalidRequest(
                f"Bedrock's Converse API takes text and image parts, not {kind!r}.",
                param="messages",
            )
        if part.get("cache_control"):
            blocks.append(_CACHE_POINT)
    return blocks


def _image(image_url: Any) -> dict[str, Any]:
    """Converse takes image bytes inline (base64 in JSON), never a URL to fetch."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    header, _, data = url.partition(",") if isinstance(url, str) else ("", "", "")
    match = _IMAGE_HEADER.fullmatch(header)
    if match is None or not data:
        raise InvalidRequest(
            "Bedrock takes images inline: use a base64 data: URL of a PNG, JPEG, GIF or WebP.",
            param="messages",
        )
    image_format = match[1].lower().replace("jpg", "jpeg")
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _content_blocks(message.get("content"))
    for call in objects(message.get("tool_calls"), "messages[].tool_calls"):
        function = an_object(call.get("function"), "messages[].tool_calls[].function")
        call_id = a_string(call.get("id"), "messages[].tool_calls[].id")
        name = a_string(function.get("name"), "messages[].tool_calls[].function.name")
        try:
            arguments = loads_bounded(function.get("arguments") or "{}")
        except TooDeep as error:
            raise InvalidRequest(
                f"The arguments of tool call {call_id!r} are {error.msg}.", param="messages"
            ) from None
        except orjson.JSONDecodeError:
            raise InvalidRequest(
                f"The arguments of tool call {call_id!r} are not JSON.", param="messages"
            ) from None
        blocks.append({"toolUse": {"toolUseId": call_id, "name": name, "input": arguments}})
    return blocks


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, str):
        parts = objects(content, "messages[].content")
        content = "".join(
            a_string(part.get("text"), "messages[].content[].text")
            for part in parts
            if part.get("type") == "text"
        )
    tool_call_id = a_string(message.get("tool_call_id"), "messages[].tool_call_id")
    return {"toolResult": {"toolUseId": tool_call_id, "content": [{"text": content}]}}


def _inference_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for field, name in _INFERENCE_FIELDS:
        if body.get(field) is not None:
            config.setdefault(name, body[field])
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = strings(stop, "stop", "stop")
    return config


def _tool_config(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    tools = body.get("tools")
    if not tools:
        return None
    choice = body.get("tool_choice")
    # Converse has no "none"; without tools the model cannot call one. A conversation
    # that already holds tool blocks must keep the tools, though, or Bedrock refuses it.
    if choice == "none" and not _has_tool_blocks(messages):
        return None
    tools = objects(tools, "tools", "tools")
    config: dict[str, Any] = {"tools": [_tool_spec(tool) for tool in tools]}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        function = an_object(choice.get("function"), "tool_choice.function", "tool_choice")
        name = a_string(function.get("name"), "tool_choice.function.name", "tool_choice")
        config["toolChoice"] = {"tool": {"name": name}}
    return config


def _tool_spec(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise InvalidRequest("Bedrock takes only function tools.", param="tools")
    function = an_object(tool.get("function"), "tools[].function", "tools")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    name = a_string(function.get("name"), "tools[].function.name", "tools")
    spec: dict[str, Any] = {"name": name, "inputSchema": {"json": schema}}
    if function.get("description"):
        spec["description"] = function["description"]
    return {"toolSpec": spec}


def _has_tool_blocks(messages: list[dict[str, Any]]) -> bool:
    return any(
        "toolUse" in block or "toolResult" in block
        for message in messages
        for block in message["content"]
    )


# Responses: Converse to OpenAI chat completions.

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def finish_reason(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def to_usage(usage: Any) -> dict[str, Any] | None:
    """OpenAI's usage: prompt tokens count cache reads and writes too, which Bedrock
    reports apart from `inputTokens`."""
    if not isinstance(usage, dict):
        return None
    plain, completion = usage.get("inputTokens"), usage.get("outputTokens")
    if not isinstance(plain, int) or not isinstance(completion, int):
        return None
    read, written = usage.get("cacheReadInputTokens"), usage.get("cacheWriteInputTokens")
    read = read if isinstance(read, int) else 0
    prompt = plain + read + (written if isinstance(written, int) else 0)
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
    }
    if isinstance(written, int):
        result["cache_creation_input_tokens"] = written
    return result


def to_completion(data: dict[str, Any], model: str, completion_id: str) -> dict[str, Any]:
    """A `chat.completion` from a Converse response."""
    output = data.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    blocks = message.get("content") if isinstance(message, dict) else None
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _objects(blocks):
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            calls.append(_tool_call(block["toolUse"]))
        elif isinstance(block.get("reasoningContent"), dict):
            text = (block["reasoningContent"].get("reasoningText") or {}).get("text")
            if isinstance(text, str):
                reasoning.append(text)
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        reply["tool_calls"] = calls
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)
    completion: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": reply, "finish_reason": finish_reason(data.get("stopReason"))}
        ],
    }
    if (usage := to_usage(data.get("usage"))) is not None:
        completion["usage"] = usage
    return completion


def _objects(items: Any) -> Iterable[dict[str, Any]]:
    return (item for item in items if isinstance(item, dict)) if isinstance(items, list) else ()


def _tool_call(tool_use: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": tool_use.get("toolUseId"),
        "type": "function",
        "function": {
            "name": tool_use.get("name"),
            "arguments": orjson.dumps(tool_use.get("input", {})).decode(),
        },
    }


def _completion_id(response: httpx.Response) -> str:
    """Bedrock's request id when it sent one, so that a completion can be traced there."""
    request_id = response.headers.get("x-amzn-requestid")
    return f"chatcmpl-{request_id or uuid.uuid4().hex}"


# Streams: ConverseStream events to OpenAI chunks.


class ConverseChunkStream:
    """A ConverseStream response, decoded into batches of OpenAI chunk dicts: one batch
    per upstream read."""

    # `ChunkStream.waits_next`, the transport's own.
    waits_next: Callable[[], bool]

    def __init__(self, response: httpx.Response, model: str) -> None:
        self._response = response
        self.waits_next = waits_next_of(response)
        self._model = model

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        decoder = EventStreamDecoder()
        translator = StreamTranslator(self._model, _completion_id(self._response))
        try:
            async for raw in self._response.aiter_raw():
                read = translator.read(decoder.feed(raw))
                if read.chunks:
                    yield read.chunks
                if read.failure is not None:
                    raise read.failure
        except httpx.HTTPError as error:
            raise translate_transport_error(error) from error
        if decoder.pending:
            raise UpstreamError("The upstream's event stream ended in the middle of a frame.")
        if not translator.stopped:
            raise UpstreamError("The upstream's event stream ended before the message did.")

    async def aclose(self) -> None:
        await self._response.aclose()


class StreamTranslator:
    """Turns ConverseStream events into chunks, keeping what spans events: which content
    block is which tool call, and whether the message has stopped."""

    def __init__(self, model: str, completion_id: str) -> None:
        self._frame = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        # Content block index to OpenAI tool-call index (the call's ordinal).
        self._tool_calls: dict[int, int] = {}
        self.stopped = False

    def read(self, frames: Iterator[Frame]) -> StreamRead:
        chunks: list[dict[str, Any]] = []
        try:
            for frame in frames:
                chunk = self._chunk(frame)
                if chunk is not None:
                    chunks.append(chunk)
        except UpstreamError as failure:
            # The chunks before the failure still reach the client, and are billed.
            return StreamRead(chunks, failure=failure)
        return StreamRead(chunks)

    def _chunk(self, frame: Frame) -> dict[str, Any] | None:
        headers = frame.headers
        message_type = headers.get(":message-type", "event")
        if message_type != "event":
            raise _stream_failure(headers, frame.payload)
        try:
            event = upstream_json(frame.payload)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream sent a stream event that is not JSON.") from None
        if not isinstance(event, dict):
            raise UpstreamError("The upstream sent a stream event that is not a JSON object.")
        kind = headers.get(":event-type")
        if kind == "contentBlockDelta":
            return self._delta(event)
        if kind == "messageStart":
            return self._choice({"role": "assistant", "content": ""})
        if kind == "contentBlockStart":
            return self._block_start(event)
        if kind == "messageStop":
            self.stopped = True
            return self._choice({}, finish_reason(event.get("stopReason")))
        if kind == "metadata" and (usage := to_usage(event.get("usage"))) is not None:
            return {**self._frame, "choices": [], "usage": usage}
        return None

    def _delta(self, event: dict[str, Any]) -> dict[str, Any] | None:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return None
        if isinstance(delta.get("text"), str):
            return self._choice({"content": delta["text"]})
        tool_use = delta.get("toolUse")
        if isinstance(tool_use, dict):
            index = self._tool_index(event.get("contentBlockIndex"))
            arguments = tool_use.get("input", "")
            return self._choice(
                {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}
            )
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
            return self._choice({"reasoning_content": reasoning["text"]})
        return None

    def _block_start(self, event: dict[str, Any]) -> dict[str, Any] | None:
        start = event.get("start")
        tool_use = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(tool_use, dict):
            return None
        call = {
            "index": self._tool_index(event.get("contentBlockIndex")),
            "id": tool_use.get("toolUseId"),
            "type": "function",
            "function": {"name": tool_use.get("name"), "arguments": ""},
        }
        return self._choice({"tool_calls": [call]})

    def _tool_index(self, block: Any) -> int:
        return self._tool_calls.setdefault(block, len(self._tool_calls))

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self._frame, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _stream_failure(headers: dict[str, Any], payload: bytes) -> UpstreamError:
    """An `exception` frame (a modeled error such as throttling) or an `error` frame."""
    if headers.get(":message-type") == "exception":
        name = str(headers.get(":exception-type", "InternalServerException"))
        name = name[:1].upper() + name[1:]
        try:
            message = _error_message(orjson.loads(payload))
        except orjson.JSONDecodeError:
            message = None
        message = f"The upstream failed mid-stream: {message or name}"
        return bedrock_error(_EXCEPTION_STATUS.get(name, 500), message, {}, name)
    code = headers.get(":error-code")
    detail = headers.get(":error-message") or code or "unknown error"
    return UpstreamError(f"The upstream failed mid-stream: {detail}")

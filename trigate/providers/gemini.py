"""`gemini/`: Google AI Studio's Gemini API, spoken to in OpenAI's chat-completions shapes.

Requests are rebuilt for `generateContent`: system messages become
`systemInstruction`, turns become `contents` (roles `user` and `model`), tool
calls and results become `functionCall` and `functionResponse` parts, tools
become `functionDeclarations` with their JSON schemas cut down to the OpenAPI
subset Gemini accepts, and sampling options move into `generationConfig`.
Answers and `streamGenerateContent?alt=sse` events are mapped back to OpenAI's
`chat.completion` and `chat.completion.chunk`, usage included. Embeddings go
through `batchEmbedContents`, text only.

Gemini rarely gives a function call an id, so each gets a fresh `call_...` one;
a tool result names its function by the id of the call it answers. Gemini 3 requires
the `thoughtSignature` of a function call back with the history: it travels
to the client as `extra_content.google.thought_signature` on the tool call,
the field Google's own OpenAI-compatible endpoint uses, and when a client
drops it, Google's documented placeholder stands in.
"""

from __future__ import annotations

import math
import mimetypes
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlsplit

import httpx
import orjson

from trigate.errors import Failure, InvalidRequest, UpstreamError, from_upstream_status
from trigate.nesting import TooDeep, loads_bounded
from trigate.providers.base import (
    Completion,
    Embeddings,
    Images,
    Provider,
    SSEChunkStream,
    StreamRead,
    UpstreamClient,
    error_from_body,
    read_error_body,
    upstream_json,
)
from trigate.providers.fields import (
    a_list,
    an_object,
    objects,
    optional_string,
    requested_format,
    strings,
)
from trigate.providers.openai import fetch_completion, upstream_headers
from trigate.sse import ServerSentEvent
from trigate.usage import reported_count

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

DEFAULT_API_BASE = "https://generativelanguage.googleapis.com"
# Google's documented stand-in for a thought signature a history does not have.
SKIP_SIGNATURE = "skip_thought_signature_validator"

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "BLOCKLIST": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# Gemini's `Schema` is a subset of OpenAPI 3.0 and rejects any other key.
SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "minimum",
        "maximum",
    }
)
# String formats other than these fail the request on the Gemini API.
SCHEMA_FORMATS = frozenset({"enum", "date-time", "float", "double", "int32", "int64"})
MAX_REF_DEPTH = 16
AUDIO_TYPES = {"mp3": "audio/mp3", "wav": "audio/wav"}
_DATA_URL = re.compile(r"data:(?P<mime>[^;,]+)(?:;[^,]*)?;base64,(?P<data>.*)", re.DOTALL)
# Gemini reports an oversized prompt and a bad key as plain INVALID_ARGUMENT 400s.
_CONTEXT_WINDOW = re.compile(r"exceeds the maximum number of tokens|input token count", re.I)
_BAD_KEY = re.compile(r"API key (?:not valid|expired)|API_KEY_INVALID", re.I)


class GeminiEndpoint(NamedTuple):
    """Where one model's Gemini API methods are: `{prefix}:generateContent` and so on."""

    model: str
    prefix: str
    headers: dict[str, str]
    timeout: float
    # Headers asked for per request (Vertex AI's OAuth token); None for a fixed API key.
    authorize: Callable[[], Awaitable[Mapping[str, str]]] | None = None
    embed_method: str = "batchEmbedContents"


class GeminiProvider(Provider, Embeddings, Images):
    """Adapter for one Gemini API deployment; an Imagen model's serves image generation
    (`predict`)."""

    def __init__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> None:
        model = params.upstream_model.removeprefix("models/")
        base = (params.api_base or DEFAULT_API_BASE).rstrip("/").removesuffix("/v1beta")
        auth = {"x-goog-api-key": params.api_key} if params.api_key else {}
        self._connect(
            GeminiEndpoint(
                model,
                f"{base}/v1beta/models/{quote(model, safe='')}",
                upstream_headers(params, auth),
                params.timeout,
            ),
            transport,
        )

    def _connect(self, endpoint: GeminiEndpoint, transport: httpx.AsyncBaseTransport) -> None:
        """The upstream's methods under `endpoint.prefix`: Google AI Studio's, or Vertex
        AI's (trigate/providers/vertex.py), which speak the same `generateContent`."""
        self._model = endpoint.model

        def client(method: str) -> UpstreamClient:
            return UpstreamClient(
                transport,
                f"{endpoint.prefix}:{method}",
                endpoint.headers,
                endpoint.timeout,
                read_error=read_error,
                authorize=endpoint.authorize,
            )

        self._generate = client("generateContent")
        self._stream = client("streamGenerateContent?alt=sse")
        self._embed = client(endpoint.embed_method)
        self._predict = client("predict")

    async def generate_images(self, body: dict[str, Any]) -> Completion:
        """Imagen's `predict`: the prompt as its one instance, `n` as its sample count, the
        size as its aspect ratio where Imagen has it. Imagen answers base64 images only,
        so each is `b64_json`, whatever `response_format` asked (as LiteLLM answers)."""
        parameters: dict[str, Any] = {}
        count = body.get("n")
        if isinstance(count, int) and count > 0:
            parameters["sampleCount"] = count
        ratio = _aspect_ratio(body.get("size"))
        if ratio is not None:
            parameters["aspectRatio"] = ratio
        payload = {"instances": [{"prompt": body.get("prompt")}], "parameters": parameters}
        try:
            answer = await fetch_completion(self._predict, payload)
        except UpstreamError as error:
            raise reclassified(error) from None
        predictions = answer.body.get("predictions")
        images = [
            {"b64_json": item["bytesBase64Encoded"]}
            for item in (predictions if isinstance(predictions, list) else ())
            if isinstance(item, dict) and isinstance(item.get("bytesBase64Encoded"), str)
        ]
        return Completion(body={"created": int(time.time()), "data": images})

    async def complete(self, body: dict[str, Any]) -> Completion:
        try:
            answer = await fetch_completion(self._generate, to_gemini(body, self._model))
        except UpstreamError as error:
            raise reclassified(error) from None
        return Completion(body=to_openai(answer.body, self._model))

    async def open_stream(self, body: dict[str, Any]) -> GeminiChunkStream:
        try:
            response = await self._stream.post_stream(to_gemini(body, self._model))
        except UpstreamError as error:
            raise reclassified(error) from None
        return GeminiChunkStream(response, StreamTranslator(self._model))

    async def embed(self, body: dict[str, Any]) -> Completion:
        """`batchEmbedContents`, one request per input. Gemini reports no token usage for
        embeddings, so the gateway counts the input, as for any silent upstream."""
        texts = texts_to_embed(body, "Gemini")
        dimensions = body.get("dimensions")
        requests = [
            {
                "model": f"models/{self._model}",
                "content": {"parts": [{"text": text}]},
                **({"outputDimensionality": dimensions} if isinstance(dimensions, int) else {}),
            }
            for text in texts
        ]
        try:
            answer = await fetch_completion(self._embed, {"requests": requests})
        except UpstreamError as error:
            raise reclassified(error) from None
        vectors = [item.get("values", []) for item in answer.body.get("embeddings") or ()]
        return Completion(
            body={
                "object": "list",
                "data": [
                    {"object": "embedding", "index": index, "embedding": vector}
                    for index, vector in enumerate(vectors)
                ],
                "model": self._model,
            }
        )


# The aspect ratios Imagen takes.
_ASPECT_RATIOS = {"1:1": 1.0, "3:4": 0.75, "4:3": 4 / 3, "9:16": 9 / 16, "16:9": 16 / 9}


def _aspect_ratio(size: Any) -> str | None:
    """The Imagen aspect ratio nearest an OpenAI size ("1792x1024" is 16:9)."""
    if not isinstance(size, str):
        return None
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit()) or not int(width) or not int(height):
        return None
    wanted = math.log(int(width) / int(height))
    return min(_ASPECT_RATIOS, key=lambda name: abs(math.log(_ASPECT_RATIOS[name]) - wanted))


async def read_error(response: httpx.Response) -> UpstreamError:
    """As any upstream's error, except that Gemini says how long a rate limit lasts in the
    body (a `google.rpc.RetryInfo` detail, `"retryDelay": "36s"`), not in a Retry-After
    header: it becomes both, so the router waits it out and so can the client."""
    body = await read_error_body(response)
    delay = retry_delay(body) if response.status_code == 429 else None
    return error_from_body(response, body, retry_after=delay)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")


def retry_delay(body: bytes) -> float | None:
    """The seconds of a RetryInfo detail in a Google API error body, if there is one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict) or not str(detail.get("@type")).endswith(".RetryInfo"):
            continue
        if match := _DURATION.fullmatch(str(detail.get("retryDelay", ""))):
            return float(match.group(1))
    return None


def texts_to_embed(body: dict[str, Any], upstream: str) -> list[str]:
    """An embeddings request's `input` as the texts it must be: `upstream` (Gemini,
    Vertex AI) embeds no token ids."""
    value = body.get("input")
    texts: list[Any] = value if isinstance(value, list) else [value]
    if not all(isinstance(text, str) for text in texts):
        raise to_gemini_error(f"{upstream} embeds text only, not token ids.")
    return texts


def to_gemini_error(message: str) -> UpstreamError:
    """A request Gemini cannot take: the client's 400, never retried or held against it."""
    return UpstreamError(message, kind=Failure.BAD_REQUEST, code="unsupported_input")


def reclassified(error: UpstreamError) -> UpstreamError:
    """Gemini's 400s that mean more: a prompt over the context window (so context-window
    fallbacks apply) and the deployment's key being refused (the gateway's problem)."""
    if error.upstream_status != 400:
        return error
    if _CONTEXT_WINDOW.search(error.message):
        return from_upstream_status(400, error.message, {}, "context_length_exceeded")
    if _BAD_KEY.search(error.message):
        return from_upstream_status(401, error.message, {})
    return error


# --- OpenAI request -> Gemini request -------------------------------------------------


def to_gemini(body: dict[str, Any], model: str = "") -> dict[str, Any]:
    """The `generateContent` request for an OpenAI chat-completions request to `model`."""
    system, contents = translate_messages(objects(body.get("messages"), "messages"))
    payload: dict[str, Any] = {"contents": contents}
    if system:
        payload["systemInstruction"] = {"parts": system}
    tools = _tools(body.get("tools"))
    if tools:
        payload["tools"] = tools
    tool_config = _tool_config(body.get("tool_choice"))
    if tool_config:
        payload["toolConfig"] = tool_config
    config = generation_config(body)
    if thinking := thinking_config(body.get("reasoning_effort"), model):
        config["thinkingConfig"] = thinking
    if config:
        payload["generationConfig"] = config
    return payload


def translate_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System parts, and the turns as `contents`; consecutive tool results share one turn,
    as Gemini expects the answers to parallel calls together."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    results: list[dict[str, Any]] | None = None  # the parts of the turn of tool results
    for message in messages:
        role = message.get("role")
        if role in ("tool", "function"):
            if results is None:
                results = []
                contents.append({"role": "user", "parts": results})
            results.append(_function_response(message, names))
            continue
        results = None
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content")))
        elif role == "assistant":
            parts = _assistant_parts(message, names)
            if parts:
                contents.append({"role": "model", "parts": parts})
        else:
            contents.append({"role": "user", "parts": _user_parts(message.get("content"))})
    return system, contents


def _text_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if content is None:
        return []
    return [
        {"text": part["text"]}
        for part in a_list(content, "messages[].content")
        if isinstance(part, dict) and isinstance(part.get("text"), str) and part["text"]
    ]


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return [{"text": content or ""}]
    return [_user_part(part) for part in a_list(content, "messages[].content")]


def _user_part(part: Any) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return {"text": part.get("text") or ""}
    if kind == "image_url":
        image = part.get("image_url")
        return _media(image.get("url") if isinstance(image, dict) else image)
    if kind == "input_audio":
        audio = an_object(part.get("input_audio") or {}, "messages[].content[].input_audio")
        audio_format = str(audio.get("format"))
        mime = AUDIO_TYPES.get(audio_format, f"audio/{audio_format}")
        return {"inlineData": {"mimeType": mime, "data": audio.get("data")}}
    if kind == "file":
        file = an_object(part.get("file") or {}, "messages[].content[].file")
        return _media(file.get("file_data") or file.get("file_id"))
    raise InvalidRequest(
        f"Content parts of type {kind!r} cannot be sent to Gemini.", param="messages"
    )


def _media(url: Any) -> dict[str, Any]:
    """A data URL goes inline; any other URL by reference, which Gemini fetches itself."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest("A media content part has no URL.", param="messages")
    inline = _DATA_URL.fullmatch(url)
    if inline:
        return {"inlineData": {"mimeType": inline["mime"], "data": inline["data"]}}
    if url.startswith("data:"):
        raise InvalidRequest("Data URLs must be base64-encoded.", param="messages")
    reference = {"fileUri": url}
    mime, _ = mimetypes.guess_type(urlsplit(url).path)
    if mime:
        reference["mimeType"] = mime
    return {"fileData": reference}


def _assistant_parts(message: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    parts = _text_parts(message.get("content"))
    calls = [call for call in message.get("tool_calls") or () if isinstance(call, dict)]
    for index, call in enumerate(calls):
        parts.append(_function_call(call, names, first=index == 0))
    return parts


def _function_call(call: dict[str, Any], names: dict[str, str], *, first: bool) -> dict[str, Any]:
    function = an_object(call.get("function") or {}, "messages[].tool_calls[].function")
    name = optional_string(function.get("name"), "messages[].tool_calls[].function.name") or ""
    if isinstance(call.get("id"), str):
        names[call["id"]] = name
    part: dict[str, Any] = {"functionCall": {"name": name, "args": _arguments(function)}}
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    # Gemini 3 validates the signature of the first call in each model turn.
    if signature or first:
        part["thoughtSignature"] = signature or SKIP_SIGNATURE
    return part


def _arguments(function: dict[str, Any]) -> dict[str, Any]:
    text = function.get("arguments") or "{}"
    try:
        arguments = loads_bounded(text) if isinstance(text, str) else text
    except TooDeep as error:
        raise InvalidRequest(
            f"The arguments of tool call {function.get('name')!r} are {error.msg}.",
            param="messages",
        ) from None
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            f"The arguments of tool call {function.get('name')!r} are not valid JSON.",
            param="messages",
        ) from None
    if not isinstance(arguments, dict):
        raise InvalidRequest(
            f"The arguments of tool call {function.get('name')!r} are not a JSON object.",
            param="messages",
        )
    return arguments


def _function_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    call_id = optional_string(message.get("tool_call_id"), "messages[].tool_call_id")
    name = names.get(call_id or "") or optional_string(message.get("name"), "messages[].name")
    if not name:
        raise InvalidRequest(
            f"The tool message for call {message.get('tool_call_id')!r} answers no earlier "
            "tool call; Gemini needs the function's name.",
            param="messages",
        )
    content = message.get("content")
    text = content if isinstance(content, str) else "".join(p["text"] for p in _text_parts(content))
    try:
        result = loads_bounded(text)
    except orjson.JSONDecodeError:  # TooDeep too: sent as the text it is
        result = None
    # Gemini wants an object; anything else is the function's `output`, as Google documents.
    response = result if isinstance(result, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Function tools become one `functionDeclarations` tool; Gemini's own tools
    (`{"googleSearch": {}}`, `{"codeExecution": {}}`) pass as they are."""
    declarations: list[dict[str, Any]] = []
    native: list[dict[str, Any]] = []
    for tool in tools or ():
        if isinstance(tool, dict) and tool.get("type") == "function":
            function = an_object(tool.get("function") or {}, "tools[].function", "tools")
            declarations.append(_declaration(function))
        elif isinstance(tool, dict):
            native.append(tool)
    return [{"functionDeclarations": declarations}, *native] if declarations else native


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        declaration["description"] = function["description"]
    parameters = gemini_schema(function.get("parameters") or {})
    # Gemini rejects an OBJECT without properties; a function without arguments has none.
    if parameters.get("properties") or parameters.get("type", "object") != "object":
        declaration["parameters"] = parameters
    return declaration


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str) and choice in TOOL_MODES:
        return {"functionCallingConfig": {"mode": TOOL_MODES[choice]}}
    if isinstance(choice, dict):
        function = an_object(choice.get("function") or {}, "tool_choice.function", "tool_choice")
        name = optional_string(function.get("name"), "tool_choice.function.name", "tool_choice")
        if name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None


def generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(source) is not None:
            config[target] = body[source]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = strings(stop, "stop", "stop")
    config.update(_response_format(body.get("response_format")))
    return config


# OpenAI's `reasoning_effort` as LiteLLM maps it, for drop-in parity: Gemini 3 and newer
# take a thinking level; earlier models a token budget, with their own least for "minimal".
_THINKING_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "disable": 0, "none": 0}
_MINIMAL_BUDGETS = (
    ("gemini-2.5-flash-lite", 512),
    ("gemini-2.5-pro", 128),
    ("gemini-2.5-flash", 1),
)
_BEFORE_GEMINI_3 = re.compile(
    r"^gemini-(?:[12](?:\.\d+)?|exp|(?:pro|flash)(?!-(?:lite-)?latest$))(?:-|$)"
)


def thinking_config(effort: Any, model: str) -> dict[str, Any]:
    """Gemini's `thinkingConfig` for a `reasoning_effort` ("minimal", "low", "medium",
    "high", or "none"/"disable" for no thoughts); none for a request that sets none."""
    if effort is None:
        return {}
    if not isinstance(effort, str) or (effort != "minimal" and effort not in _THINKING_BUDGETS):
        raise to_gemini_error(
            f"`reasoning_effort` {effort!r} is not one of minimal, low, medium, high, none."
        )
    thoughts = effort not in ("none", "disable")
    name = model.lower()
    if name.startswith("gemini-") and not _BEFORE_GEMINI_3.match(name):
        least = "minimal" if "flash" in name else "low"
        level = effort if effort in ("low", "medium", "high") else least
        return {"thinkingLevel": level, "includeThoughts": thoughts}
    if effort == "minimal":
        budget = next((least for prefix, least in _MINIMAL_BUDGETS if prefix in name), 128)
    else:
        budget = _THINKING_BUDGETS[effort]
    return {"thinkingBudget": budget, "includeThoughts": thoughts}


def _response_format(response_format: Any) -> dict[str, Any]:
    kind, schema = requested_format(response_format)
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        config: dict[str, Any] = {"responseMimeType": "application/json"}
        if isinstance(schema, dict):
            config["responseSchema"] = gemini_schema(schema)
        return config
    return {}


def gemini_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A JSON schema cut down to Gemini's OpenAPI subset: `$ref`s inlined, `const` as a
    one-value `enum`, `["x", "null"]` types and null `anyOf` members as `nullable`, and
    every key Gemini rejects (`additionalProperties`, `$schema`, ...) dropped."""
    if not isinstance(schema, dict):
        return schema
    if defs is None:
        defs = {}
        for key in ("definitions", "$defs"):
            defs.update(an_object(schema.get(key) or {}, f"a schema's `{key}`", "tools"))
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1])
        if not isinstance(target, dict) or depth >= MAX_REF_DEPTH:
            raise InvalidRequest(f"The schema reference {ref!r} is unknown or recursive.")
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return gemini_schema({**target, **rest}, defs, depth + 1)
    cleaned: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            cleaned[key] = {name: gemini_schema(sub, defs, depth) for name, sub in value.items()}
        elif key == "items":
            cleaned[key] = gemini_schema(value, defs, depth)
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            _add_any_of(cleaned, [gemini_schema(sub, defs, depth) for sub in value])
        elif key == "type" and isinstance(value, list):
            _add_types(cleaned, value)
        elif key == "const":
            cleaned["enum"] = [value]
        elif key == "format":
            if value in SCHEMA_FORMATS:
                cleaned[key] = value
        elif key in SCHEMA_KEYS:
            cleaned[key] = value
    return cleaned


def _add_types(schema: dict[str, Any], types: list[Any]) -> None:
    if "null" in types:
        schema["nullable"] = True
    rest = [t for t in types if t != "null"]
    if len(rest) == 1:
        schema["type"] = rest[0]
    elif rest:
        schema["anyOf"] = [{"type": t} for t in rest]


def _add_any_of(schema: dict[str, Any], members: list[Any]) -> None:
    rest = [m for m in members if not (isinstance(m, dict) and m.get("type") == "null")]
    if len(rest) < len(members):
        schema["nullable"] = True
    if len(rest) == 1 and isinstance(rest[0], dict):
        schema.update({k: v for k, v in rest[0].items() if k not in schema})
    elif rest:
        schema["anyOf"] = rest


# --- Gemini answer -> OpenAI answer ---------------------------------------------------


def to_openai(data: dict[str, Any], model: str) -> dict[str, Any]:
    """The `chat.completion` for a `GenerateContentResponse`."""
    _raise_if_blocked(data)
    choices = []
    for position, candidate in enumerate(data.get("candidates") or ()):
        parts = _Parts.of(candidate)
        message: dict[str, Any] = {"role": "assistant", "content": parts.text or None}
        if parts.reasoning:
            message["reasoning_content"] = parts.reasoning
        if parts.calls:
            message["tool_calls"] = parts.calls
        choices.append(
            {
                "index": candidate.get("index", position),
                "message": message,
                "finish_reason": _finish_reason(candidate.get("finishReason"), bool(parts.calls)),
            }
        )
    body: dict[str, Any] = {**_identity(data, model), "object": "chat.completion"}
    body["choices"] = choices
    usage = openai_usage(data.get("usageMetadata"))
    if usage is not None:
        body["usage"] = usage
    return body


class _Parts(NamedTuple):
    """A candidate's parts, sorted into OpenAI's message fields."""

    text: str
    reasoning: str
    calls: list[dict[str, Any]]

    @classmethod
    def of(cls, candidate: dict[str, Any]) -> _Parts:
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in (candidate.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                calls.append(_tool_call(part))
            elif isinstance(part.get("text"), str):
                (reasoning if part.get("thought") else text).append(part["text"])
        return cls("".join(text), "".join(reasoning), calls)


def _tool_call(part: dict[str, Any]) -> dict[str, Any]:
    call = part["functionCall"] or {}
    tool_call: dict[str, Any] = {
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": call.get("name") or "",
            "arguments": orjson.dumps(call.get("args") or {}).decode(),
        },
    }
    if part.get("thoughtSignature"):
        tool_call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return tool_call


def _finish_reason(reason: Any, has_tool_calls: bool) -> str | None:
    if reason is None:
        return None
    if has_tool_calls and reason == "STOP":
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop")


def _identity(data: dict[str, Any], model: str) -> dict[str, Any]:
    response_id = data.get("responseId") or uuid.uuid4().hex
    return {
        "id": f"chatcmpl-{response_id}",
        "created": int(time.time()),
        "model": data.get("modelVersion") or model,
    }


def _raise_if_blocked(data: dict[str, Any]) -> None:
    """A prompt Gemini refused to answer: a content-policy failure, so that
    `content_policy_fallbacks` can send it elsewhere."""
    reason = (data.get("promptFeedback") or {}).get("blockReason")
    if reason:
        raise from_upstream_status(
            400, f"Gemini blocked the prompt ({reason}).", {}, "content_policy_violation"
        )


def openai_usage(metadata: Any) -> dict[str, Any] | None:
    """OpenAI's usage for Gemini's `usageMetadata`. Gemini leaves zero counts out, so an
    absent count is a real 0. Thinking tokens are output tokens, billed as such."""
    if not isinstance(metadata, dict):
        return None
    prompt = _count(metadata, "promptTokenCount") + _count(metadata, "toolUsePromptTokenCount")
    reasoning = _count(metadata, "thoughtsTokenCount")
    completion = _count(metadata, "candidatesTokenCount") + reasoning
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": _count(metadata, "cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _count(metadata: dict[str, Any], key: str) -> int:
    return reported_count(metadata.get(key))


# --- Gemini stream -> OpenAI chunks ---------------------------------------------------


class GeminiChunkStream(SSEChunkStream):
    """A `streamGenerateContent?alt=sse` response, as batches of OpenAI chunks; the usage
    chunk comes last, once the stream has ended and its final counts are known."""

    def __init__(self, response: httpx.Response, translator: StreamTranslator) -> None:
        super().__init__(response, translator.translate, translator.usage_chunk)


class StreamTranslator:
    """Turns `GenerateContentResponse` events into chunks, remembering what the
    client has been told: roles sent, tool calls numbered, the latest usage."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._frame: dict[str, Any] | None = None
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}
        self._usage: dict[str, Any] | None = None

    def translate(self, events: Iterable[ServerSentEvent]) -> StreamRead:
        chunks: list[dict[str, Any]] = []
        for event in events:
            try:
                chunks.extend(self._translate_event(_event_data(event.data)))
            except UpstreamError as failure:
                # The chunks before the failure still reach the client, and are billed.
                return StreamRead(chunks, failure=failure)
        return StreamRead(chunks)

    def usage_chunk(self) -> list[dict[str, Any]]:
        if self._usage is None or self._frame is None:
            return []
        return [{**self._frame, "choices": [], "usage": self._usage}]

    def _translate_event(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        _raise_if_blocked(data)
        if self._frame is None:
            self._frame = {**_identity(data, self._model), "object": "chat.completion.chunk"}
        usage = openai_usage(data.get("usageMetadata"))
        if usage is not None:
            self._usage = usage
        chunks = []
        for position, candidate in enumerate(data.get("candidates") or ()):
            choice = self._choice(candidate.get("index", position), candidate)
            if choice is not None:
                chunks.append({**self._frame, "choices": [choice]})
        return chunks

    def _choice(self, index: int, candidate: dict[str, Any]) -> dict[str, Any] | None:
        parts = _Parts.of(candidate)
        delta: dict[str, Any] = {}
        if index not in self._started:
            self._started.add(index)
            delta["role"] = "assistant"
        if parts.text:
            delta["content"] = parts.text
        if parts.reasoning:
            delta["reasoning_content"] = parts.reasoning
        if parts.calls:
            delta["tool_calls"] = [self._numbered(index, call) for call in parts.calls]
        reason = candidate.get("finishReason")
        finish = _finish_reason(reason, index in self._calls)
        if not delta and finish is None:
            return None
        return {"index": index, "delta": delta, "finish_reason": finish}

    def _numbered(self, index: int, call: dict[str, Any]) -> dict[str, Any]:
        number = self._calls.get(index, 0)
        self._calls[index] = number + 1
        return {"index": number, **call}


def _event_data(data: str) -> dict[str, Any]:
    try:
        event = upstream_json(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream sent a stream event that is not JSON.") from None
    if not isinstance(event, dict):
        raise UpstreamError("The upstream sent a stream event that is not a JSON object.")
    error = event.get("error")
    if error is not None:
        raise _stream_error(error)
    return event


def _stream_error(error: Any) -> UpstreamError:
    """An error event mid-stream, classified like the same error before the stream."""
    if not isinstance(error, dict):
        return UpstreamError(f"The upstream failed mid-stream: {error}")
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    message = str(error.get("message") or error.get("status") or "unknown error")
    failure = from_upstream_status(status, f"The upstream failed mid-stream: {message}", {})
    return reclassified(failure)

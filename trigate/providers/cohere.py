"""`cohere/`: Cohere's v2 API (chat, embed, rerank), spoken to in OpenAI's shapes.

Cohere's v2 chat is close to OpenAI's: the same roles, tool calls and function tools,
so messages go nearly as they are; sampling options take Cohere's names (`p`, `k`,
`stop_sequences`), `tool_choice` its upper-case words, and answers come back as
content items with a `finish_reason` of Cohere's own. Its stream is named SSE events
(`message-start`, `content-delta`, `tool-call-start`, ..., `message-end`), mapped to
OpenAI's chunks, the usage last. Usage is what Cohere bills (`billed_units`), as
LiteLLM reports it.

Embeddings go to `/v2/embed` with LiteLLM's `input_type` (default `search_document`)
and `embedding_types` (default `float`); rerank to `/v2/rerank` (rerank.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from trigate.errors import Failure, UpstreamError, from_upstream_status
from trigate.providers.base import (
    Completion,
    Embeddings,
    Provider,
    SSEChunkStream,
    StreamRead,
    UpstreamClient,
    read_json_object,
    upstream_json,
)
from trigate.providers.fields import objects, requested_format
from trigate.providers.openai import upstream_headers
from trigate.providers.rerank import COHERE_V2, RerankClient
from trigate.sse import ServerSentEvent

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

DEFAULT_API_BASE = "https://api.cohere.com"
FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
TOOL_CHOICES = {"required": "REQUIRED", "none": "NONE"}
# OpenAI's names for the options Cohere names otherwise.
RENAMED = {
    "top_p": "p",
    "top_k": "k",
    "max_completion_tokens": "max_tokens",
    "stop": "stop_sequences",
}
SHARED = (
    "temperature", "max_tokens", "seed", "frequency_penalty", "presence_penalty", "tools",
    "logprobs",
)  # fmt: skip


class CohereProvider(Provider, Embeddings, RerankClient):
    """Adapter for one Cohere deployment: chat, embeddings and rerank."""

    def __init__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> None:
        self._model = params.upstream_model
        base = (params.api_base or DEFAULT_API_BASE).rstrip("/").removesuffix("/v2")
        auth = {"authorization": f"Bearer {params.api_key}"} if params.api_key else {}
        headers = upstream_headers(params, auth)

        def client(path: str) -> UpstreamClient:
            return UpstreamClient(transport, f"{base}/{path}", headers, params.timeout)

        self._chat = client("v2/chat")
        self._embed = client("v2/embed")
        RerankClient.__init__(self, client(COHERE_V2.path), self._model, COHERE_V2)

    async def complete(self, body: dict[str, Any]) -> Completion:
        _, data = await read_json_object(await self._chat.post(to_cohere(body, self._model)))
        return Completion(body=to_openai(data, self._model))

    async def open_stream(self, body: dict[str, Any]) -> SSEChunkStream:
        payload = {**to_cohere(body, self._model), "stream": True}
        response = await self._chat.post_stream(payload)
        translator = StreamTranslator(self._model)
        unfinished = "Cohere's stream ended before its message-end event."
        return SSEChunkStream(response, translator.translate, unfinished=unfinished)

    async def embed(self, body: dict[str, Any]) -> Completion:
        value = body.get("input")
        texts = value if isinstance(value, list) else [value]
        if not all(isinstance(text, str) for text in texts):
            raise UpstreamError(
                "Cohere embeds text, not token ids.", kind=Failure.BAD_REQUEST, param="input"
            )
        kinds = body.get("embedding_types") or ["float"]
        payload: dict[str, Any] = {
            "model": self._model,
            "texts": texts,
            "input_type": body.get("input_type") or "search_document",
            "embedding_types": kinds,
        }
        if isinstance(body.get("dimensions"), int):
            payload["output_dimension"] = body["dimensions"]
        if body.get("truncate") is not None:
            payload["truncate"] = body["truncate"]
        _, data = await read_json_object(await self._embed.post(payload))
        return Completion(body=embeddings_answer(data, kinds, self._model))


def embeddings_answer(data: dict[str, Any], kinds: list[Any], model: str) -> dict[str, Any]:
    """OpenAI's embedding list, from the first of the `embedding_types` asked for."""
    embeddings = data.get("embeddings")
    vectors: list[Any] = []
    if isinstance(embeddings, dict):
        vectors = embeddings.get(str(kinds[0])) or []
    elif isinstance(embeddings, list):  # `embeddings_floats`, the v1 shape
        vectors = embeddings
    billed = ((data.get("meta") or {}).get("billed_units") or {}).get("input_tokens")
    tokens = int(billed) if isinstance(billed, int | float) else None
    answer: dict[str, Any] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": vector}
            for index, vector in enumerate(vectors)
        ],
        "model": model,
    }
    if tokens is not None:
        answer["usage"] = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
    return answer


# --- OpenAI request -> Cohere request ------------------------------------------------


def to_cohere(body: dict[str, Any], model: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "messages": _messages(body)}
    payload.update({key: body[key] for key in SHARED if body.get(key) is not None})
    for ours, theirs in RENAMED.items():
        if body.get(ours) is not None:
            payload[theirs] = body[ours]
    if isinstance(payload.get("stop_sequences"), str):
        payload["stop_sequences"] = [payload["stop_sequences"]]
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        payload["tool_choice"] = TOOL_CHOICES[choice]
    response_format = _response_format(body.get("response_format"))
    if response_format:
        payload["response_format"] = response_format
    return payload


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI's messages in Cohere's v2 roles: `developer` is `system`, an assistant's empty
    content is left out (Cohere refuses null), and nothing else changes."""
    messages = []
    for message in objects(body.get("messages"), "messages"):
        role = message.get("role")
        turn: dict[str, Any] = {"role": "system" if role == "developer" else role}
        for key in ("content", "tool_calls", "tool_call_id", "tool_plan"):
            if message.get(key) is not None:
                turn[key] = message[key]
        messages.append(turn)
    return messages


def _response_format(value: Any) -> dict[str, Any] | None:
    kind, schema = requested_format(value)
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        return {"type": "json_object", **({"json_schema": schema} if schema else {})}
    return None


# --- Cohere answer -> OpenAI answer ---------------------------------------------------


def to_openai(data: dict[str, Any], model: str) -> dict[str, Any]:
    message = data.get("message") or {}
    texts, thoughts = [], []
    for item in message.get("content") or ():
        if isinstance(item, dict) and item.get("type") == "text":
            texts.append(item.get("text") or "")
        elif isinstance(item, dict) and item.get("type") == "thinking":
            thoughts.append(item.get("thinking") or "")
    calls = message.get("tool_calls") or []
    answer: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if thoughts:
        answer["reasoning_content"] = "".join(thoughts)
    if calls:
        answer["tool_calls"] = calls
    finish = data.get("finish_reason")
    _raise_if_failed(finish, data.get("error"))
    body: dict[str, Any] = {
        "id": data.get("id") or "",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": answer, "finish_reason": _finish(finish)}],
    }
    usage = openai_usage(data.get("usage"))
    if usage is not None:
        body["usage"] = usage
    return body


def _finish(reason: Any) -> str:
    return FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def _raise_if_failed(reason: Any, error: Any) -> None:
    if reason in ("ERROR", "TIMEOUT"):
        raise UpstreamError(f"Cohere failed the generation ({reason}): {error or 'no details'}")


def openai_usage(usage: Any) -> dict[str, Any] | None:
    """What Cohere bills (`billed_units`), else the tokens it counted."""
    if not isinstance(usage, dict):
        return None
    counts = usage.get("billed_units") or usage.get("tokens")
    if not isinstance(counts, dict):
        return None
    prompt, completion = (
        int(value) if isinstance(value := counts.get(key), int | float) else 0
        for key in ("input_tokens", "output_tokens")
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# --- Cohere stream -> OpenAI chunks ---------------------------------------------------


class StreamTranslator:
    """Cohere's v2 stream events as OpenAI chunks."""

    def __init__(self, model: str) -> None:
        self._frame: dict[str, Any] = {
            "id": "",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

    def translate(self, events: list[ServerSentEvent]) -> StreamRead:
        chunks: list[dict[str, Any]] = []
        for event in events:
            try:
                data = upstream_json(event.data)
            except orjson.JSONDecodeError:
                return StreamRead(chunks, failure=UpstreamError("Cohere sent an event not JSON."))
            except UpstreamError as failure:  # nested too deep
                return StreamRead(chunks, failure=failure)
            if not isinstance(data, dict):
                continue
            kind = data.get("type")
            if kind == "message-end":
                try:
                    chunks.extend(self._end(data.get("delta") or {}))
                except UpstreamError as failure:
                    return StreamRead(chunks, failure=failure)
                return StreamRead(chunks, done=True)
            delta = self._delta(kind, data)
            if delta is not None:
                chunks.append({**self._frame, "choices": [_choice(delta, None)]})
        return StreamRead(chunks)

    def _delta(self, kind: Any, data: dict[str, Any]) -> dict[str, Any] | None:
        message = (data.get("delta") or {}).get("message") or {}
        if kind == "message-start":
            self._frame["id"] = data.get("id") or ""
            return {"role": "assistant", "content": ""}
        if kind == "content-delta":
            content = message.get("content") or {}
            if content.get("thinking"):
                return {"reasoning_content": content["thinking"]}
            return {"content": content.get("text") or ""}
        if kind in ("tool-call-start", "tool-call-delta"):
            call = dict(message.get("tool_calls") or {})
            return {"tool_calls": [{"index": data.get("index", 0), **call}]}
        # content-start/-end, tool-plan-delta, citations and debug say nothing OpenAI's
        # chunks carry.
        return None

    def _end(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        reason = delta.get("finish_reason")
        if reason in ("ERROR", "TIMEOUT"):
            raise from_upstream_status(
                500, f"The upstream failed mid-stream: {delta.get('error') or reason}", {}
            )
        chunks = [{**self._frame, "choices": [_choice({}, _finish(reason))]}]
        usage = openai_usage(delta.get("usage"))
        if usage is not None:
            chunks.append({**self._frame, "choices": [], "usage": usage})
        return chunks


def _choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish}

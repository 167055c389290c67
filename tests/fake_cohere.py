"""A fake Cohere v2 API (chat, its SSE stream, embed, rerank): every answer and stream event
is first checked against the official `cohere` SDK's types, so the fake cannot drift from
what Cohere sends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import trio
from cohere import EmbedByTypeResponse, V2ChatResponse
from cohere.v2 import V2ChatStreamResponse, V2RerankResponse
from fakes import StreamReply
from pydantic import TypeAdapter

_STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(V2ChatStreamResponse)
USAGE = {
    "billed_units": {"input_tokens": 11, "output_tokens": 5},
    "tokens": {"input_tokens": 75, "output_tokens": 5},
}


def chat(text: str, *, tool_calls: Sequence[Mapping[str, object]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": [{"type": "text", "text": text}]}
    if tool_calls:
        message = {
            "role": "assistant",
            "tool_plan": "I will call a tool.",
            "tool_calls": tool_calls,
        }
    body = {
        "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
        "finish_reason": "TOOL_CALL" if tool_calls else "COMPLETE",
        "message": message,
        "usage": USAGE,
    }
    V2ChatResponse.model_validate(body)
    return body


def event(payload: dict[str, Any]) -> bytes:
    _STREAM_EVENT.validate_python(payload)
    return b"event: %s\ndata: %s\n\n" % (payload["type"].encode(), orjson.dumps(payload))


def text_stream(*pieces: str) -> StreamReply:
    frames: list[bytes | float | trio.Event] = [
        event(
            {
                "type": "message-start",
                "id": "29f14a5a-11de-4cae-9800-25e4747408ea",
                "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "",
                                      "tool_calls": [], "citations": []}},
            }
        ),
        event({"type": "content-start", "index": 0,
               "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
    ]  # fmt: skip
    frames += [
        event({"type": "content-delta", "index": 0,
               "delta": {"message": {"content": {"text": piece}}}})
        for piece in pieces
    ]  # fmt: skip
    frames += [
        event({"type": "content-end", "index": 0}),
        event({"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": USAGE}}),
    ]
    return StreamReply(frames)


def tool_stream() -> StreamReply:
    call = {"id": "get_weather_1byjy32y4hvq", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    frames: list[bytes | float | trio.Event] = [
        event({"type": "message-start", "id": "m1", "delta": {"message": {"role": "assistant"}}}),
        event({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will look."}}}),
        event({"type": "tool-call-start", "index": 0,
               "delta": {"message": {"tool_calls": call}}}),
        event({"type": "tool-call-delta", "index": 0,
               "delta": {"message": {"tool_calls": {"function": {"arguments": '{"city": '}}}}}),
        event({"type": "tool-call-delta", "index": 0,
               "delta": {"message": {"tool_calls": {"function": {"arguments": '"Paris"}'}}}}}),
        event({"type": "tool-call-end", "index": 0}),
        event({"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": USAGE}}),
    ]  # fmt: skip
    return StreamReply(frames)


def embeddings(vectors: list[list[float]], tokens: int) -> dict[str, Any]:
    body = {
        "id": "da6e531f-83ba-4e6f-9d8b-3d9b7f5c5d2a",
        "embeddings": {"float": vectors},
        "texts": ["a"] * len(vectors),
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
        "response_type": "embeddings_by_type",
    }
    EmbedByTypeResponse.model_validate(body)
    return body


def reranked(order: list[tuple[int, float]], searches: int = 1) -> dict[str, Any]:
    body = {
        "id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf",
        "results": [{"index": index, "relevance_score": score} for index, score in order],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": searches}},
    }
    V2RerankResponse.model_validate(body)
    return body

"""A fake Anthropic Messages API, as documented (Messages API, streaming events, error
shapes): every response and stream event it sends is first checked against the official
`anthropic` SDK's types, and every request it receives is checked the way the Messages API
checks it (known fields only, alternating roles, no empty text), so that a translation slip
shows as Anthropic's own 400, not as a silently passing test."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from fakes import FakeUpstream, JSONReply, ReceivedRequest, Reply
from helpers import UPSTREAM_KEY, deployment_config
from pydantic import TypeAdapter

MODEL = "claude-sonnet-4-5"
UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
# The Messages API's top-level request fields; anything else is a 400 there.
REQUEST_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
}
_STREAM_EVENT = TypeAdapter(RawMessageStreamEvent)


def anthropic_config(upstream: FakeUpstream, **params: Any) -> dict[str, Any]:
    base = f"http://127.0.0.1:{upstream.port}"
    model = {"model": f"anthropic/{MODEL}", "api_base": base, "api_key": UPSTREAM_KEY}
    return deployment_config("claude", {**model, **params})


def serve(upstream: FakeUpstream, reply: Callable[[dict[str, Any]], Reply]) -> None:
    """Answer valid Messages API requests with `reply`, invalid ones as Anthropic would."""

    def handle(request: ReceivedRequest) -> Reply:
        problem = wire_problem(request)
        if problem:
            return JSONReply(error_body("invalid_request_error", problem), status=400)
        return reply(request.json)

    upstream.handler = handle


def wire_problem(request: ReceivedRequest) -> str | None:
    body = request.json
    if request.target != "/v1/messages" or request.method != "POST":
        return f"no route {request.method} {request.target}"
    if (
        request.headers.get("x-api-key") != UPSTREAM_KEY
        or "anthropic-version" not in request.headers
    ):
        return "missing x-api-key or anthropic-version"
    if unknown := set(body) - REQUEST_FIELDS:
        return f"{sorted(unknown)}: Extra inputs are not permitted"
    if not {"model", "messages", "max_tokens"} <= set(body):
        return "model, messages and max_tokens are required"
    roles = [message["role"] for message in body["messages"]]
    if any(a == b for a, b in itertools.pairwise(roles)) or set(roles) - {"user", "assistant"}:
        return f"messages: roles must alternate between user and assistant: {roles}"
    for message in body["messages"]:
        blocks = message["content"]
        if not blocks or any(b.get("type") == "text" and not b.get("text") for b in blocks):
            return "messages: text content blocks must be non-empty"
    return None


def message(
    content: list[dict[str, Any]], *, stop_reason: str = "end_turn", **usage: int
) -> dict[str, Any]:
    body = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": UPSTREAM_MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6, **usage},
    }
    Message.model_validate(body)
    return body


def error_body(kind: str, text: str) -> dict[str, Any]:
    body = {"type": "error", "error": {"type": kind, "message": text}, "request_id": "req_011"}
    ErrorResponse.model_validate(body)
    return body


def event(payload: dict[str, Any]) -> bytes:
    """One named SSE event, as the Messages API sends it. The SDK's event union leaves
    out `ping` (nothing to check) and `error` (an error body, checked as one)."""
    if payload["type"] == "error":
        ErrorResponse.model_validate(payload)
    elif payload["type"] != "ping":
        _STREAM_EVENT.validate_python(payload)
    return b"event: %s\ndata: %s\n\n" % (payload["type"].encode(), orjson.dumps(payload))


def message_start(**usage: int) -> bytes:
    # `stop_reason` named, so that no usage key can be taken for it; a start's is None.
    skeleton = message([], stop_reason="end_turn", **usage) | {"stop_reason": None}
    return event({"type": "message_start", "message": skeleton})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return event({"type": "content_block_start", "index": index, "content_block": block})


def block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return event({"type": "content_block_delta", "index": index, "delta": delta})


def text_block(index: int, *pieces: str) -> list[bytes | float]:
    frames: list[bytes | float] = [block_start(index, {"type": "text", "text": ""})]
    for piece in pieces:
        frames += [block_delta(index, {"type": "text_delta", "text": piece}), 0.01]
    return [*frames, event({"type": "content_block_stop", "index": index})]


def tool_block(index: int, tool_id: str, name: str, *pieces: str) -> list[bytes | float]:
    start = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    frames: list[bytes | float] = [block_start(index, start)]
    for piece in ("", *pieces):  # Anthropic opens with an empty partial_json
        frames += [block_delta(index, {"type": "input_json_delta", "partial_json": piece}), 0.01]
    return [*frames, event({"type": "content_block_stop", "index": index})]


def message_end(stop_reason: str, **usage: Any) -> list[bytes | float]:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return [
        event({"type": "message_delta", "delta": delta, "usage": usage}),
        event({"type": "message_stop"}),
    ]


PING = event({"type": "ping"})

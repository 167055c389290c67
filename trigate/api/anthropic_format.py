"""Anthropic's Messages API as an ingress: its requests in OpenAI's chat shapes, and
OpenAI's answers, chunks and errors back in Anthropic's.

The gateway routes, limits and bills in OpenAI's shapes, so an Anthropic client's
request is translated once on the way in and its answer once on the way out.
Fields an Anthropic provider understands but OpenAI has no word for (`thinking`,
`cache_control`, thinking blocks with their signatures) ride along under the
names the `anthropic/` provider reads, so a Claude deployment loses nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from trigate.api.envelopes import anthropic_error_body as error_body
from trigate.errors import GatewayError, InvalidRequest
from trigate.providers import NativeEvent
from trigate.relay import FrameEncoder
from trigate.usage import reported_count

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
# Fields both APIs name alike; `thinking` is Anthropic's, which the `anthropic/` provider reads.
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "thinking")


# --- Anthropic request -> OpenAI chat request --------------------------------------


def to_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions request for a validated Messages API request (or a token
    count request, which has no `max_tokens`)."""
    messages = _system_messages(body.get("system"))
    for message in body["messages"]:
        messages.extend(_chat_messages(message))
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    chat.update({key: body[key] for key in SAMPLING_FIELDS if body.get(key) is not None})
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    if body.get("tools"):
        chat["tools"] = [_tool(tool) for tool in body["tools"]]
    _add_tool_choice(chat, body.get("tool_choice"))
    if body.get("stream"):
        # The Anthropic stream ends with usage, so it is always asked of the upstream.
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _system_messages(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if isinstance(system, list) and system:
        return [{"role": "system", "content": [_content_part(block) for block in system]}]
    return []


def _chat_messages(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Anthropic turn as chat messages: a user turn's tool results become `tool`
    messages, first, because OpenAI wants them right after the assistant's calls. A
    `system` turn (Claude Code's mid-conversation system beta) is a system message."""
    role = message.get("role")
    if role not in ("user", "assistant", "system"):
        raise InvalidRequest(f"Message role must be `user`, `assistant` or `system`, not {role!r}.")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest("Message `content` must be a string or an array of blocks.")
    if role == "system":
        return _system_messages(content)
    if role == "assistant":
        return [_assistant_message(content)]
    results = [_tool_message(block) for block in content if _kind(block) == "tool_result"]
    parts = [_content_part(block) for block in content if _kind(block) != "tool_result"]
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _kind(block: Any) -> Any:
    if not isinstance(block, dict):
        raise InvalidRequest("Every content block must be an object.", param="messages")
    return block.get("type")


def _content_part(block: Any) -> dict[str, Any]:
    """A text or image block as an OpenAI content part; other blocks (documents, ...)
    pass as they are, for providers that understand them."""
    kind = _kind(block)
    if kind == "text":
        part: dict[str, Any] = {"type": "text", "text": block.get("text") or ""}
    elif kind == "image":
        part = {"type": "image_url", "image_url": {"url": _image_url(block.get("source"))}}
    else:
        return dict(block)
    if block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part


def _image_url(source: Any) -> str:
    if not isinstance(source, dict):
        raise InvalidRequest("An image block needs a `source`.", param="messages")
    url = source.get("url")
    if source.get("type") == "url" and isinstance(url, str):
        return url
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    raise InvalidRequest("Image `source` must be of type `base64` or `url`.", param="messages")


def _assistant_message(content: list[Any]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for block in content:
        kind = _kind(block)
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(dict(block))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        # LiteLLM's field, which the `anthropic/` provider sends back signed.
        message["thinking_blocks"] = thinking
    return message


def _tool_message(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list):
        content = [_content_part(part) for part in content]
    message = {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content or ""}
    if block.get("cache_control"):
        message["cache_control"] = block["cache_control"]
    return message


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise InvalidRequest("Every entry of `tools` must be an object.", param="tools")
    if "input_schema" not in tool:
        return tool  # Anthropic's server tools (web search, ...) pass as they are
    function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    result: dict[str, Any] = {"type": "function", "function": function}
    if tool.get("cache_control"):
        result["cache_control"] = tool["cache_control"]
    return result


def _add_tool_choice(chat: dict[str, Any], choice: Any) -> None:
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in TOOL_CHOICES:
        chat["tool_choice"] = TOOL_CHOICES[kind]
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


# --- OpenAI chat.completion -> Anthropic message ---------------------------------------


def to_message(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """The Messages API answer for a chat completion; `model` is the one the client named."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = _thinking_blocks(message)
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    content.extend(_tool_use(call) for call in message.get("tool_calls") or ())
    return {
        "id": _message_id(completion),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage(completion.get("usage") or {}),
    }


def _message_id(completion: dict[str, Any]) -> str:
    value = completion.get("id")
    return value if isinstance(value, str) and value else f"msg_{uuid.uuid4().hex}"


def _thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The upstream's own signed blocks when it gave them, else its reasoning text."""
    blocks = message.get("thinking_blocks")
    if isinstance(blocks, list) and blocks:
        return [dict(block) for block in blocks if isinstance(block, dict)]
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        return [{"type": "thinking", "thinking": reasoning, "signature": ""}]
    return []


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        arguments = None
    return {
        "type": "tool_use",
        "id": call.get("id"),
        "name": function.get("name"),
        "input": arguments if isinstance(arguments, dict) else {},
    }


def stop_reason(finish_reason: Any) -> str | None:
    if finish_reason is None:
        return None
    return STOP_REASONS.get(finish_reason, "end_turn")


def anthropic_usage(usage: dict[str, Any]) -> dict[str, int]:
    """Anthropic counts cache reads and writes apart from `input_tokens`; OpenAI's
    prompt count includes them."""
    details = usage.get("prompt_tokens_details")
    reads = reported_count(details.get("cached_tokens") if isinstance(details, dict) else None)
    writes = reported_count(usage.get("cache_creation_input_tokens"))
    return {
        "input_tokens": max(reported_count(usage.get("prompt_tokens")) - reads - writes, 0),
        "output_tokens": reported_count(usage.get("completion_tokens")),
        "cache_read_input_tokens": reads,
        "cache_creation_input_tokens": writes,
    }


# --- OpenAI chunks -> Anthropic stream events -------------------------------------------


def event_frame(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class AnthropicFrames(FrameEncoder):
    """Chat chunks as Messages stream events. A content block opens when the kind of
    content (thinking, text, one tool call) changes, and closes before the next opens."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = False
        self._failed = False
        # The open block: "thinking", "text", or a tool call's index; None when closed.
        self._block: str | int | None = None
        self._blocks = 0
        self._stop_reason: str | None = None
        # A native stream brings its own message_start and message_stop.
        self._native = False

    def native(self, event: NativeEvent) -> bytes:
        self._native = True
        return event.frame

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = [self._start(chunk)]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out.append(self._open("thinking", {"type": "thinking", "thinking": ""}))
                thinking = {"type": "thinking_delta", "thinking": delta["reasoning_content"]}
                out.append(self._delta(thinking))
            if delta.get("content"):
                out.append(self._open("text", {"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            out.extend(self._tool_call(call) for call in delta.get("tool_calls") or ())
            if choice.get("finish_reason") is not None:
                out.append(self._close())
                self._stop_reason = stop_reason(choice["finish_reason"])
        return b"".join(out)

    def usage(self, chunk: dict[str, Any]) -> bytes:
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        usage = anthropic_usage(chunk.get("usage") or {})
        end = event_frame("message_delta", {"delta": delta, "usage": usage})
        return self._start(chunk) + self._close() + end

    def error(self, error: GatewayError) -> bytes:
        self._failed = True
        return event_frame("error", error_body(error))

    def end(self) -> bytes:
        return b"" if self._failed or self._native else event_frame("message_stop", {})

    def _start(self, chunk: dict[str, Any]) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": _message_id(chunk),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # The real counts come with `message_delta`, once the upstream reports them.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event_frame("message_start", {"message": message})

    def _tool_call(self, call: Any) -> bytes:
        if not isinstance(call, dict):
            return b""
        index = call.get("index", 0)
        function = call.get("function") or {}
        opened = b""
        if self._block != index:
            block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name")}
            opened = self._open(index, {**block, "input": {}})
        arguments = function.get("arguments")
        if not arguments:
            return opened
        return opened + self._delta({"type": "input_json_delta", "partial_json": arguments})

    def _open(self, block: str | int, content_block: dict[str, Any]) -> bytes:
        if self._block == block:
            return b""
        closed = self._close()
        self._block = block
        data = {"index": self._blocks, "content_block": content_block}
        return closed + event_frame("content_block_start", data)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event_frame("content_block_delta", {"index": self._blocks, "delta": delta})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        self._blocks += 1
        return event_frame("content_block_stop", {"index": self._blocks - 1})

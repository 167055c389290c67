"""One view of the text in a request, an answer and a stream chunk, for every surface.

The pipeline hands hooks the request in OpenAI's shapes (a Messages or Responses request
translated: its system prompt, content blocks, tool uses and tool results are messages,
content parts and tool calls there), so one reader covers every surface's request. An
answer or a chunk may also be in the client's own API (a native Anthropic message or
Responses object, their stream events), and those are read here too.

A `Slot` is one piece of text and the place it came from: a guardrail reads `text`, and
a mask is written back by `replace`, in the shape it was read from. Tool-call arguments
that are a JSON object are read leaf by leaf (each string value a slot) and written back
as JSON, so a mask never breaks the arguments a tool is called with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from trigate.providers import NativeEvent

TEXT = "text"
TOOL_ARGUMENTS = "tool_arguments"
TOOL_RESULT = "tool_result"


class Slot:
    """One string in a JSON document: `container[key]`."""

    __slots__ = ("_commit", "container", "key", "kind")

    def __init__(
        self,
        container: Any,
        key: Any,
        kind: str = TEXT,
        commit: Callable[[], None] | None = None,
    ) -> None:
        self.container = container
        self.key = key
        self.kind = kind
        self._commit = commit

    @property
    def text(self) -> str:
        value: str = self.container[self.key]
        return value

    def replace(self, text: str) -> None:
        if text != self.container[self.key]:
            self.container[self.key] = text
            if self._commit is not None:
                self._commit()


# --- requests -------------------------------------------------------------------------


def request_slots(body: dict[str, Any]) -> list[Slot]:
    """The text of a request in OpenAI's shapes: chat messages (with tool calls and tool
    results), a completion's or an image's prompt, embeddings', moderations' or speech's
    input, and a rerank's query and documents."""
    slots: list[Slot] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                slots.extend(_message_slots(message))
    for key in ("prompt", "input", "query"):
        slots.extend(_strings(body, key))
    slots.extend(_documents(body))
    return slots


def _documents(body: dict[str, Any]) -> Iterator[Slot]:
    """A rerank request's documents: strings, or objects with their `text`."""
    documents = body.get("documents")
    if not isinstance(documents, list):
        return
    for index, document in enumerate(documents):
        if isinstance(document, str):
            yield Slot(documents, index)
        elif isinstance(document, dict) and isinstance(document.get("text"), str):
            yield Slot(document, "text")


def _message_slots(message: dict[str, Any]) -> Iterator[Slot]:
    kind = TOOL_RESULT if message.get("role") in ("tool", "function") else TEXT
    yield from _content(message, "content", kind)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            yield from json_slots(function, "arguments")
    function_call = message.get("function_call")
    if isinstance(function_call, dict):
        yield from json_slots(function_call, "arguments")


def _content(holder: dict[str, Any], key: str, kind: str = TEXT) -> Iterator[Slot]:
    """A message's content: a string, or a list of parts whose text parts are read (and
    a tool result's own nested content)."""
    content = holder.get(key)
    if isinstance(content, str):
        yield Slot(holder, key, kind)
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                yield Slot(part, "text", kind)
            if part.get("type") == "tool_result":
                yield from _content(part, "content", TOOL_RESULT)


def _strings(holder: dict[str, Any], key: str) -> Iterator[Slot]:
    """A prompt or an input: a string or a list of strings (token arrays have no text)."""
    value = holder.get(key)
    if isinstance(value, str):
        yield Slot(holder, key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield Slot(value, index)


def json_slots(holder: dict[str, Any], key: str) -> list[Slot]:
    """Tool-call arguments: each string of the JSON they hold, written back as JSON; as
    one text when they are not a JSON object or array (a stream's fragment, say)."""
    raw = holder.get(key)
    if not isinstance(raw, str):
        return []
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [Slot(holder, key, TOOL_ARGUMENTS)]
    if not isinstance(parsed, dict | list):
        return [Slot(holder, key, TOOL_ARGUMENTS)]

    def commit() -> None:
        holder[key] = orjson.dumps(parsed).decode()

    return list(leaves(parsed, commit))


def leaves(value: Any, commit: Callable[[], None] | None = None) -> Iterator[Slot]:
    """Every string in a JSON value, keys aside, as tool arguments."""
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(item, str):
            yield Slot(value, key, TOOL_ARGUMENTS, commit)
        elif isinstance(item, dict | list):
            yield from leaves(item, commit)


# --- answers ----------------------------------------------------------------------------


def answer_slots(answer: dict[str, Any]) -> list[Slot]:
    """The text of a whole answer: a chat or text completion's, a native Anthropic
    message's (text blocks and tool uses' input) or a Responses object's output."""
    slots: list[Slot] = []
    if answer.get("type") == "message" and isinstance(answer.get("content"), list):
        slots.extend(_anthropic_blocks(answer["content"]))
    elif answer.get("object") == "response" and isinstance(answer.get("output"), list):
        for item in answer["output"]:
            if isinstance(item, dict):
                slots.extend(_response_item(item))
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            slots.extend(_message_slots(message))
        if isinstance(choice.get("text"), str):
            slots.append(Slot(choice, "text"))
    return slots


def _anthropic_blocks(blocks: list[Any]) -> Iterator[Slot]:
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            yield Slot(block, "text")
        elif block.get("type") == "tool_use" and isinstance(block.get("input"), dict):
            yield from leaves(block["input"])


def _response_item(item: dict[str, Any]) -> Iterator[Slot]:
    kind = item.get("type")
    if kind == "message":
        yield from _content(item, "content")
    elif kind == "function_call":
        yield from json_slots(item, "arguments")


# --- stream chunks -------------------------------------------------------------------------


def chunk_slots(chunk: Any) -> list[Slot]:
    """The text a stream chunk adds: a chat chunk's delta (content, tool-call argument
    fragments), a text completion chunk's text, or a native event's delta."""
    if isinstance(chunk, NativeEvent):
        return _event_slots(chunk.data)
    if not isinstance(chunk, dict):
        return []
    slots: list[Slot] = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if isinstance(delta.get("content"), str):
                slots.append(Slot(delta, "content"))
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    slots.append(Slot(function, "arguments", TOOL_ARGUMENTS))
        if isinstance(choice.get("text"), str):
            slots.append(Slot(choice, "text"))
    return slots


_RESPONSE_DELTAS = {
    "response.output_text.delta": TEXT,
    "response.function_call_arguments.delta": TOOL_ARGUMENTS,
}


def _event_slots(data: dict[str, Any]) -> list[Slot]:
    kind = data.get("type")
    if kind == "content_block_delta":
        delta = data.get("delta")
        if isinstance(delta, dict):
            for key, slot_kind in (("text", TEXT), ("partial_json", TOOL_ARGUMENTS)):
                if isinstance(delta.get(key), str):
                    return [Slot(delta, key, slot_kind)]
    elif kind in _RESPONSE_DELTAS and isinstance(data.get("delta"), str):
        return [Slot(data, "delta", _RESPONSE_DELTAS[kind])]
    return []


def rewritten(chunk: Any) -> Any:
    """A chunk after its slots were replaced: a native event's frame made anew from its
    data (it is otherwise relayed as the upstream's bytes)."""
    if isinstance(chunk, NativeEvent):
        data = orjson.dumps(chunk.data)
        return NativeEvent(
            chunk.name, chunk.data, b"event: " + chunk.name.encode() + b"\ndata: " + data + b"\n\n",
            chunk.usage,
        )  # fmt: skip
    return chunk

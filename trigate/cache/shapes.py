"""An answer's two shapes, each made from the other: a stream's chunks assembled into
the whole answer that is cached, and a cached answer replayed as a stream's chunks.

Both are OpenAI's (a chat completion, or a text completion); the surfaces that speak
another API (Messages, Responses) render them as they render any translated answer, so
a replay is a real stream in each surface's shapes, ending with its terminator.
Reasoning (`reasoning_content`, `thinking_blocks`), tool calls and finish reasons go
through both ways.
"""

from __future__ import annotations

from typing import Any

from trigate.errors import UpstreamError
from trigate.providers import NativeEvent, passed_chunks

_IDENTITY = ("id", "created", "model", "system_fingerprint")


class Assembler:
    """Reads a stream's batches as they pass and says, at the end, the whole answer;
    None when the stream cannot be kept (events in another API, an unreadable chunk,
    or a choice that never finished)."""

    __slots__ = ("_choices", "_identity", "_object", "events", "storable", "usage")

    def __init__(self) -> None:
        # A native stream's events (in the client's own API), kept as they came.
        self.events: list[NativeEvent] | None = None
        self._choices: dict[int, dict[str, Any]] = {}
        self._identity: dict[str, Any] | None = None
        self._object = "chat.completion"
        self.usage: dict[str, Any] | None = None
        self.storable = True

    def add(self, batch: list[Any]) -> None:
        if not self.storable:
            return
        for item in batch:
            if isinstance(item, NativeEvent):
                if self._identity is not None:
                    self.storable = False
                    return
                self.events = self.events if self.events is not None else []
                self.events.append(item)
                continue
            if self.events is not None:
                self.storable = False
                return
            try:
                chunks = passed_chunks(item) if type(item) is bytes else [item]
            except UpstreamError:
                self.storable = False
                return
            for chunk in chunks:
                if isinstance(chunk, dict):
                    self._chunk(chunk)
                else:
                    self.storable = False

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if self._identity is None:
            self._identity = {name: chunk[name] for name in _IDENTITY if name in chunk}
            if chunk.get("object") == "text_completion":
                self._object = "text_completion"
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            state = self._choices.setdefault(index, {"index": index, "finish_reason": None})
            if self._object == "text_completion":
                state["text"] = state.get("text", "") + (choice.get("text") or "")
            else:
                _merge_delta(state.setdefault("message", {}), choice.get("delta") or {})
            if choice.get("finish_reason") is not None:
                state["finish_reason"] = choice["finish_reason"]

    def answer(self) -> dict[str, Any] | None:
        if not self.storable or not self._choices or self._identity is None:
            return None
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            if state["finish_reason"] is None:
                return None
            if "message" in state:
                state["message"] = _finished_message(state["message"])
            choices.append(state)
        answer = {**self._identity, "object": self._object, "choices": choices}
        if self.usage is not None:
            answer["usage"] = self.usage
        return answer


def native_events(events: list[list[Any]]) -> list[NativeEvent]:
    """A native stream's events as kept (`event_entries`), to replay."""
    return [NativeEvent(name, data, frame.encode(), usage) for name, data, frame, usage in events]


def event_entries(events: list[NativeEvent]) -> list[list[Any]]:
    """A native stream's events as an entry keeps them (JSON)."""
    return [[e.name, e.data, e.frame.decode(), e.usage] for e in events]


def _merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    for name, value in delta.items():
        if value is None:
            continue
        if name == "tool_calls" and isinstance(value, list):
            calls: dict[int, dict[str, Any]] = message.setdefault("tool_calls", {})
            for position, call in enumerate(value):
                if isinstance(call, dict):
                    _merge_tool_call(calls, call, position)
        elif name == "role":
            message["role"] = value
        elif isinstance(value, str):
            message[name] = message.get(name, "") + value
        elif isinstance(value, list):
            message.setdefault(name, []).extend(value)
        else:
            message[name] = value


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any], at: int) -> None:
    index = delta.get("index", at)
    call = calls.setdefault(index, {"function": {"name": "", "arguments": ""}})
    for name in ("id", "type"):
        if delta.get(name):
            call[name] = delta[name]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] = call["function"]["name"] or function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]


def _finished_message(message: dict[str, Any]) -> dict[str, Any]:
    finished = {"role": message.get("role", "assistant"), "content": message.get("content")}
    for name, value in message.items():
        if name == "tool_calls":
            finished[name] = [{"type": "function", **call} for _, call in sorted(value.items())]
        elif name not in finished:
            finished[name] = value
    return finished


def replay_chunks(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole answer as the chunks a stream of it would have carried: the role with any
    reasoning, the content, the tool calls (each with its `index`), the finish, then the
    usage chunk (the relay sends it only to a client that asked)."""
    identity = {name: answer[name] for name in _IDENTITY if name in answer}
    chunks: list[dict[str, Any]] = []
    text = answer.get("object") == "text_completion"

    def add(choices: list[dict[str, Any]]) -> None:
        chunk_object = "text_completion" if text else "chat.completion.chunk"
        chunks.append({**identity, "object": chunk_object, "choices": choices})

    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        finish = choice.get("finish_reason") or "stop"
        if text:
            add([{"index": index, "text": choice.get("text") or "", "finish_reason": None}])
            add([{"index": index, "text": "", "finish_reason": finish}])
            continue
        for delta in _deltas(choice.get("message") or {}):
            add([{"index": index, "delta": delta, "finish_reason": None}])
        add([{"index": index, "delta": {}, "finish_reason": finish}])
    usage = answer.get("usage")
    if isinstance(usage, dict):
        chunk_object = "text_completion" if text else "chat.completion.chunk"
        chunks.append({**identity, "object": chunk_object, "choices": [], "usage": usage})
    return chunks


def _deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    first: dict[str, Any] = {"role": message.get("role") or "assistant"}
    rest: dict[str, Any] = {}
    for name, value in message.items():
        if value is None or name in ("role", "content", "tool_calls"):
            continue
        (first if name in ("reasoning_content", "thinking_blocks", "reasoning") else rest)[name] = (
            value
        )
    deltas = [first]
    if message.get("content"):
        deltas.append({"content": message["content"]})
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        deltas.append(
            {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)
                            if isinstance(call, dict)]}
        )  # fmt: skip
    if rest:
        deltas.append(rest)
    return deltas

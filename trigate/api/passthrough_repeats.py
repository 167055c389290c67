"""What a Responses stream's closing events repeat of the text the guardrails read in
its deltas, beyond output text and call arguments (`responses_format.StreamedText`):
refusals, reasoning summaries and reasoning text, a custom tool's input, and a tool's
item that comes whole (a shell call, an MCP call, a web search).

A guardrail masks the deltas as they pass; the events that close each part, the item's
`response.output_item.done` and the final Response give the text back whole, as the
provider wrote it. Each is set to what was streamed (masks included), so that nothing
the guardrails masked reaches the client another way.
"""

from __future__ import annotations

from typing import Any

from trigate.guardrails.text import RESPONSE_FINALS as FINAL_EVENTS
from trigate.guardrails.text import TOOL_ITEMS

# A delta's event: the text it adds to (the key it is kept by), and the index naming
# the part it is in (None: the item has one).
DELTAS = {
    "response.refusal.delta": ("refusal", "content_index"),
    "response.reasoning_summary_text.delta": ("summary", "summary_index"),
    "response.reasoning_text.delta": ("reasoning", "content_index"),
    "response.custom_tool_call_input.delta": ("input", None),
    "response.code_interpreter_call_code.delta": ("code", None),
    "response.mcp_call_arguments.delta": ("mcp_arguments", None),
    "response.audio.transcript.delta": ("transcript", None),
}
# An event that closes a part: the text it repeats, the index, and where it holds the
# text (in itself or in its `part`, and under which key).
CLOSINGS = {
    "response.refusal.done": ("refusal", "content_index", None, "refusal"),
    "response.reasoning_summary_text.done": ("summary", "summary_index", None, "text"),
    "response.reasoning_summary_part.done": ("summary", "summary_index", "part", "text"),
    "response.reasoning_text.done": ("reasoning", "content_index", None, "text"),
    "response.custom_tool_call_input.done": ("input", None, None, "input"),
    "response.code_interpreter_call_code.done": ("code", None, None, "code"),
    "response.mcp_call_arguments.done": ("mcp_arguments", None, None, "arguments"),
    "response.audio.transcript.done": ("transcript", None, None, "transcript"),
}


class StreamedRest:
    """The text each delta sent, as the hooks released it; `settled` is given every
    released event in order and sets a closing event's repetition to it."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, Any, Any], str] = {}
        # A tool's item as it was released (read and masked whole), by its id.
        self._tools: dict[Any, dict[str, Any]] = {}

    def settled(self, data: dict[str, Any]) -> bool:
        """Whether `data` was changed to repeat what was streamed."""
        kind = data.get("type")
        if kind in DELTAS:
            text, index = DELTAS[kind]
            key = (text, data.get("item_id"), data.get(index) if index else None)
            delta = data.get("delta")
            self._sent[key] = self._sent.get(key, "") + (delta if isinstance(delta, str) else "")
            return False
        if kind in CLOSINGS:
            text, index, inner, field = CLOSINGS[kind]
            holder = data.get(inner) if inner else data
            key = (text, data.get("item_id"), data.get(index) if index else None)
            return isinstance(holder, dict) and self._set(holder, field, key)
        if kind == "response.content_part.done" and isinstance(data.get("part"), dict):
            part = data["part"]
            text = "refusal" if part.get("type") == "refusal" else "reasoning"
            field = "refusal" if text == "refusal" else "text"
            return self._set(part, field, (text, data.get("item_id"), data.get("content_index")))
        if kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            item = data["item"]
            if item.get("type") in TOOL_ITEMS:
                self._tools[item.get("id")] = item
                return False
            return self._item(item)
        return kind in FINAL_EVENTS and any([self._item(item) for item in _output(data)])

    def _item(self, item: dict[str, Any]) -> bool:
        """An item repeated whole: its parts set to what their deltas streamed."""
        identity, kind = item.get("id"), item.get("type")
        if kind in TOOL_ITEMS:
            released = self._tools.get(identity)
            if released is None or released == item:
                return False
            item.update(released)
            return True
        if kind == "custom_tool_call":
            return self._set(item, "input", ("input", identity, None))
        changed = []
        parts = [("summary", "summary", "text"), ("content", "reasoning", "text")]
        if kind == "message":
            parts = [("content", "refusal", "refusal")]
        for key, text, field in parts:
            listed = item.get(key)
            for index, part in enumerate(listed if isinstance(listed, list) else ()):
                if isinstance(part, dict) and field in part:
                    changed.append(self._set(part, field, (text, identity, index)))
        return any(changed)

    def _set(self, holder: dict[str, Any], field: str, key: tuple[str, Any, Any]) -> bool:
        streamed = self._sent.get(key)
        if streamed is None or holder.get(field) == streamed:
            return False
        holder[field] = streamed
        return True


def _output(final: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of a final event's Response."""
    response = final.get("response")
    output = response.get("output") if isinstance(response, dict) else None
    return [item for item in output if isinstance(item, dict)] if isinstance(output, list) else []

"""The kinds of parts, blocks and items the guardrails know, in each provider API the
pass-through routes read (passthrough_formats.py).

The guardrails read a call's text where each kind keeps it (trigate.guardrails.text); a
kind they do not know may hold text they never see. Guardrails fail closed, so a request
that holds one is refused (a 400 naming it, in the provider's envelope), and an answer
or a stream event that holds one goes no further (`UnreadableAnswer`). Each function
here returns what is unknown in a document, described for that message, or None.

The lists follow the providers' API references (Anthropic's content blocks and stream
deltas, the Responses API's items, parts and stream events, Gemini's `Part` fields, chat
content parts, Mistral's among them); a kind a provider adds later is refused until it
is read here and in trigate.guardrails.text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from trigate.guardrails.text import RESPONSE_DELTAS, TOOL_ITEMS

# --- Anthropic's Messages ----------------------------------------------------------------

# Blocks whose text the guardrails read, or that hold none (an image, a redacted
# thinking block's and a container upload's opaque data).
ANTHROPIC_BLOCKS = frozenset({
    "text", "image", "document", "search_result", "tool_use", "tool_result", "thinking",
    "redacted_thinking", "server_tool_use", "web_search_tool_result", "mcp_tool_use",
    "mcp_tool_result", "container_upload",
})  # fmt: skip
# A web search's results, and its error; a document's sources.
ANTHROPIC_INNER = frozenset({"web_search_result", "web_search_tool_result_error"})
DOCUMENT_SOURCES = frozenset({"text", "content", "base64", "url", "file"})
ANTHROPIC_STREAM_DELTAS = frozenset(
    {"text_delta", "input_json_delta", "thinking_delta", "signature_delta", "citations_delta"}
)


def anthropic_request(body: dict[str, Any]) -> str | None:
    messages = body.get("messages")
    contents = [message.get("content") for message in _dicts(messages)]
    return _anthropic_blocks([body.get("system"), *contents])


def anthropic_answer(answer: dict[str, Any]) -> str | None:
    if answer.get("type") == "error":
        return None
    return _anthropic_blocks([answer.get("content")])


def anthropic_event(data: dict[str, Any]) -> str | None:
    kind = data.get("type")
    if kind == "content_block_start":
        return _anthropic_blocks([[data.get("content_block")]])
    if kind == "content_block_delta":
        delta = data.get("delta")
        delta_kind = delta.get("type") if isinstance(delta, dict) else None
        if delta_kind not in ANTHROPIC_STREAM_DELTAS:
            return f"an Anthropic stream delta of type `{delta_kind}`"
    if kind == "message_start" and isinstance(data.get("message"), dict):
        return anthropic_answer(data["message"])
    return None


def _anthropic_blocks(contents: Iterable[Any]) -> str | None:
    """The first unknown block in `contents` (each a string or a list of blocks), in
    the blocks a block holds too (a tool result's, a document's, a search result's)."""
    for block in _blocks(contents):
        kind = block.get("type")
        if kind not in ANTHROPIC_BLOCKS and kind not in ANTHROPIC_INNER:
            return f"an Anthropic content block of type `{kind}`"
        source = block.get("source")
        if kind == "document" and isinstance(source, dict):
            if source.get("type") not in DOCUMENT_SOURCES:
                return f"an Anthropic document source of type `{source.get('type')}`"
            found = _anthropic_blocks([source.get("content")])
        else:
            found = _anthropic_blocks([block.get("content")]) if kind != "text" else None
        if found is not None:
            return found
    return None


# --- OpenAI's chat completions, completions and embeddings ------------------------------

# Chat content parts (Mistral's `thinking`, `document_url` and `file_url` too).
CHAT_PARTS = frozenset({"text", "image_url", "input_audio", "file", "refusal", "thinking",
                        "document_url", "file_url"})  # fmt: skip


def chat_request(body: dict[str, Any]) -> str | None:
    return _chat_contents(message.get("content") for message in _dicts(body.get("messages")))


def chat_answer(answer: dict[str, Any]) -> str | None:
    messages = (choice.get("message") for choice in _dicts(answer.get("choices")))
    return _chat_contents(m.get("content") for m in messages if isinstance(m, dict))


def chat_event(data: dict[str, Any]) -> str | None:
    deltas = (choice.get("delta") for choice in _dicts(data.get("choices")))
    return _chat_contents(d.get("content") for d in deltas if isinstance(d, dict))


def _chat_contents(contents: Iterable[Any]) -> str | None:
    for part in _blocks(contents):
        kind = part.get("type")
        if kind not in CHAT_PARTS:
            return f"a content part of type `{kind}`"
        found = _chat_contents([part.get("thinking")])
        if found is not None:
            return found
    return None


# --- OpenAI's Responses ----------------------------------------------------------------

# Items the guardrails read (or that hold no text: a reference, a compaction's opaque
# summary), of a request's input or an answer's output.
RESPONSE_ITEMS = frozenset({
    "message", "function_call", "function_call_output", "custom_tool_call",
    "custom_tool_call_output", "reasoning", "item_reference", "compaction", *TOOL_ITEMS,
})  # fmt: skip
RESPONSE_PARTS = frozenset({
    "input_text", "output_text", "refusal", "input_image", "input_file", "input_audio",
    "summary_text", "reasoning_text",
})  # fmt: skip


def responses_request(body: dict[str, Any]) -> str | None:
    found = _response_items(body.get("input"))
    if found is None and isinstance(body.get("instructions"), list):
        found = _response_items(body["instructions"])
    prompt = body.get("prompt")
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    if found is None and isinstance(variables, dict):
        found = _parts(variables.values())
    return found


def responses_answer(answer: dict[str, Any]) -> str | None:
    return _response_items(answer.get("output"))


def responses_event(data: dict[str, Any]) -> str | None:
    kind = data.get("type")
    if not isinstance(kind, str):
        return "a Responses stream event without a type"
    if kind.endswith(".delta") and kind not in RESPONSE_DELTAS:
        return f"a Responses stream event `{kind}`"
    if isinstance(data.get("item"), dict):
        return _response_items([data["item"]])
    if isinstance(data.get("part"), dict):
        return _parts([data["part"]])
    response = data.get("response")
    return _response_items(response.get("output")) if isinstance(response, dict) else None


def _response_items(items: Any) -> str | None:
    for item in _dicts(items):
        kind = item.get("type", "message")
        if kind not in RESPONSE_ITEMS:
            return f"a Responses item of type `{kind}`"
        if kind in TOOL_ITEMS:  # its own fields, read whole
            continue
        contents = [item.get(key) for key in ("content", "summary", "output")]
        found = _parts(part for content in contents for part in _listed(content))
        if found is not None:
            return found
    return None


def _parts(parts: Iterable[Any]) -> str | None:
    for part in parts:
        if isinstance(part, dict) and part.get("type") not in RESPONSE_PARTS:
            return f"a Responses content part of type `{part.get('type')}`"
    return None


# --- Gemini's generateContent ----------------------------------------------------------

# A `Part`'s fields the guardrails read, or that hold no text (media, a thought's flag and
# signature, metadata), in either spelling the API takes.
GEMINI_PART_FIELDS = frozenset({
    "text", "thought", "thoughtSignature", "thought_signature", "inlineData", "inline_data",
    "fileData", "file_data", "functionCall", "function_call", "functionResponse",
    "function_response", "executableCode", "executable_code", "codeExecutionResult",
    "code_execution_result", "videoMetadata", "video_metadata", "mediaResolution",
    "media_resolution", "partMetadata", "part_metadata",
})  # fmt: skip


GEMINI_CONTENTS = ("systemInstruction", "system_instruction", "content")


def gemini_request(body: dict[str, Any]) -> str | None:
    inner = body.get("generateContentRequest")
    requests = [body, *([inner] if isinstance(inner, dict) else []), *_dicts(body.get("requests"))]
    contents: list[Any] = []
    for request in requests:
        contents.extend(request.get(key) for key in GEMINI_CONTENTS)
        contents.extend(_listed(request.get("contents")))
    return _gemini_contents(contents)


def gemini_answer(answer: dict[str, Any]) -> str | None:
    candidates = _dicts(answer.get("candidates"))
    return _gemini_contents(candidate.get("content") for candidate in candidates)


def _gemini_contents(contents: Iterable[Any]) -> str | None:
    for content in contents:
        if not isinstance(content, dict):
            continue
        for part in _dicts(content.get("parts")):
            unknown = sorted(set(part) - GEMINI_PART_FIELDS)
            if unknown:
                return f"a Gemini part with `{unknown[0]}`"
    return None


# --- walking ------------------------------------------------------------------------------


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    return (item for item in _listed(value) if isinstance(item, dict))


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _blocks(contents: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """The blocks of each content that is a list of them (a string is text)."""
    for content in contents:
        yield from _dicts(content)

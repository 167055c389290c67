"""One view of the text in a request, an answer and a stream chunk, for every surface.

The pipeline hands hooks the request in OpenAI's shapes (a Messages or Responses request
translated: its system prompt, content blocks, tool uses and tool results are messages,
content parts and tool calls there), so one reader covers every surface's request. An
answer or a chunk may also be in the client's own API (a native Anthropic message or
Responses object, their stream events), and those are read here too. The pass-through
routes hand hooks a provider's own request, answer and stream events as they came:
Anthropic's Messages (its `system`, tool uses' input, text documents), OpenAI's
Responses (`instructions`, input items) and Gemini's `generateContent` (contents and
system instruction, candidates, embedding requests) are read in their own shapes.

A `Slot` is one piece of text and the place it came from: a guardrail reads `text`, and
a mask is written back by `replace`, in the shape it was read from. Tool-call arguments
that are a JSON object are read leaf by leaf (each string value a slot) and written back
as JSON, so a mask never breaks the arguments a tool is called with.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from trigate.nesting import loads_bounded
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
    input, and a rerank's query and documents; and in a provider's own (the pass-through
    routes'): Anthropic's `system`, Responses' `instructions` and input items, Gemini's
    contents, system instruction and embedding requests."""
    slots: list[Slot] = []
    # Each reader is asked only about a body that has its keys: a chat request has
    # only `messages`, and a reader asked for nothing still costs its generator.
    if "system" in body:
        slots.extend(_content(body, "system"))
    if "instructions" in body:
        slots.extend(_strings(body, "instructions"))
        # Responses' instructions may also be input items (as a stored prompt gives them).
        slots.extend(_input_items(body["instructions"]))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                _add_message(slots, message)
    for key in ("prompt", "input", "query", "suffix"):
        if key in body:
            slots.extend(_strings(body, key))
    if "input" in body:
        slots.extend(_input_items(body["input"]))
    if "prompt" in body:
        slots.extend(_prompt_variables(body["prompt"]))
    if "documents" in body:
        slots.extend(_documents(body))
    if not _GEMINI_REQUEST_KEYS.isdisjoint(body):
        slots.extend(_gemini_request(body))
    return slots


def every_slot(body: dict[str, Any]) -> list[Slot]:
    """Every text of a request a deployment is sent as it is (a Responses request sent
    natively, and its chat form beside it): `request_slots`, then every other string
    of it but those that name, identify or configure (`_OPAQUE`) and binary data
    (`_binary`): its metadata, tools' descriptions and schemas, a file's name and URL,
    an annotation's title, an item of a kind no reader knows. What no guardrail reads
    never goes upstream."""
    slots = request_slots(body)
    read = {(id(slot.container), slot.key) for slot in slots}
    for slot in slots:
        commit = slot._commit
        if isinstance(commit, _Rewrite):  # tool-call arguments: read leaf by leaf
            read.add((id(commit.holder), commit.key))
    slots.extend(_unread(body, read))
    metadata = body.get("metadata")
    if isinstance(metadata, dict):  # the client's own keys: each value is read, any key
        slots.extend(_opaque_named(metadata))
    return slots


def _opaque_named(metadata: dict[str, Any]) -> Iterator[Slot]:
    """Metadata's values under a key `_unread` passes by (`name`, `id`): read still."""
    for key, value in metadata.items():
        if key in _OPAQUE and isinstance(value, str) and not _binary(value):
            yield Slot(metadata, key)


# A request's strings that name, identify, point at or configure, which a model is not
# given as text to read (and a mask would break): never read by `every_slot`.
_OPAQUE = frozenset({
    "type", "id", "call_id", "tool_call_id", "item_id", "status", "model", "role", "name",
    "encrypted_content", "file_id", "file_data", "previous_response_id",
    "approval_request_id", "server_label", "container_id", "vector_store_ids",
    "service_tier", "truncation", "include",
    "tool_choice", "reasoning_effort", "effort", "detail", "voice", "modalities",
})  # fmt: skip


def _unread(value: Any, read: set[tuple[int, Any]]) -> Iterator[Slot]:
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if key in _OPAQUE and not isinstance(item, dict):  # a dict may hold text still
            continue
        if isinstance(item, str):
            if (id(value), key) not in read and not _binary(item):
                yield Slot(value, key)
        elif isinstance(item, dict | list):
            yield from _unread(item, read)


_BASE64 = re.compile(r"[A-Za-z0-9+/=_\-\n]+")


def _binary(text: str) -> bool:
    """Whether a string is binary data (a data URL, or a long run of base64), which is
    no text to read: an image's, an audio clip's or a file's bytes."""
    if text.startswith("data:"):
        return ";base64," in text[:200]
    return len(text) >= 256 and _BASE64.fullmatch(text) is not None


# What `_gemini_request` reads of a body.
_GEMINI_REQUEST_KEYS = frozenset(
    {"generateContentRequest", "systemInstruction", "system_instruction", "content",
     "contents", "requests"}
)  # fmt: skip


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


def _prompt_variables(prompt: Any) -> Iterator[Slot]:
    """A Responses request's stored prompt's variables: strings, or input parts."""
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    for name, value in variables.items() if isinstance(variables, dict) else ():
        if isinstance(value, str):
            yield Slot(variables, name)
        elif isinstance(value, dict) and isinstance(value.get("text"), str):
            yield Slot(value, "text")


def _add_message(slots: list[Slot], message: dict[str, Any]) -> None:
    """A chat message's slots added to `slots`. Most messages are a role and a string
    alone: their one slot is added at once, as `_message_slots` would yield it, without
    the four generators that read a message of any shape (some 5,000 instructions
    each time, on every request and answer a guardrail reads)."""
    content = message.get("content")
    if len(message) == 2 and type(content) is str and "role" in message:
        role = message["role"]
        slots.append(Slot(message, "content", TOOL_RESULT if role in _TOOL_ROLES else TEXT))
    else:
        slots.extend(_message_slots(message))


# The roles whose message's content is a tool's result.
_TOOL_ROLES = ("tool", "function")


def _message_slots(message: dict[str, Any]) -> Iterator[Slot]:
    kind = TOOL_RESULT if message.get("role") in _TOOL_ROLES else TEXT
    yield from _content(message, "content", kind)
    yield from _said(message)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            yield from json_slots(function, "arguments")
    function_call = message.get("function_call")
    if isinstance(function_call, dict):
        yield from json_slots(function_call, "arguments")


def _said(message: dict[str, Any]) -> Iterator[Slot]:
    """A chat message's (or delta's) text besides its content: a reasoning model's
    thinking (`reasoning_content`, `reasoning`), and a refusal."""
    for key in ("reasoning_content", "reasoning", "refusal"):
        if isinstance(message.get(key), str):
            yield Slot(message, key)


def _content(holder: dict[str, Any], key: str, kind: str = TEXT) -> Iterator[Slot]:
    """A message's content: a string, or a list of parts (`_part`)."""
    content = holder.get(key)
    if isinstance(content, str):
        yield Slot(holder, key, kind)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                yield from _part(part, kind)


# Anthropic's blocks that call a tool: a client's, a server tool's, an MCP server's.
_TOOL_USES = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_TOOL_RESULTS = frozenset({"tool_result", "mcp_tool_result"})


def _part(part: dict[str, Any], kind: str) -> Iterator[Slot]:
    """One content part or block: its text, a refusal, a model's thinking (Anthropic's
    `thinking` block, Mistral's list of thinking parts); Anthropic's own blocks as they
    came: a tool use's input, a tool result's content, a document's title, context and
    text, a search result's title and content, a web search's results' titles; the text
    a block's citations quote."""
    for key in ("text", "refusal", "title", "context"):
        if isinstance(part.get(key), str):
            yield Slot(part, key, kind)
    yield from _content(part, "thinking", kind)
    citations = part.get("citations")
    for citation in citations if isinstance(citations, list) else ():
        if isinstance(citation, dict) and isinstance(citation.get("cited_text"), str):
            yield Slot(citation, "cited_text", kind)
    kind_of_part = part.get("type")
    if kind_of_part in _TOOL_RESULTS:
        yield from _content(part, "content", TOOL_RESULT)
    elif kind_of_part in _TOOL_USES and isinstance(part.get("input"), dict | list):
        yield from leaves(part["input"])
    elif kind_of_part == "search_result":
        yield from _content(part, "content", kind)
    elif kind_of_part == "web_search_tool_result":
        yield from _content(part, "content", TOOL_RESULT)
    elif kind_of_part == "document" and isinstance(part.get("source"), dict):
        yield from _document_source(part["source"], kind)


def _document_source(source: dict[str, Any], kind: str) -> Iterator[Slot]:
    """An Anthropic document's text: a plain-text source's data, or its content blocks."""
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        yield Slot(source, "data", kind)
    elif source.get("type") == "content":
        yield from _content(source, "content", kind)


def _input_items(items: Any) -> Iterator[Slot]:
    """A Responses request's input items: messages, tool calls and their outputs."""
    if not isinstance(items, list):
        return
    for item in items:
        if isinstance(item, dict):
            yield from _response_item(item)


# The Responses API's items whose text is in fields of their own (a shell's command and
# output, a patch, an MCP call's arguments and output, a web search's query): every
# string of the item is read but those that name or identify it.
TOOL_ITEMS = frozenset({
    "local_shell_call", "local_shell_call_output", "shell_call", "shell_call_output",
    "apply_patch_call", "apply_patch_call_output", "mcp_call", "mcp_list_tools",
    "mcp_approval_request", "mcp_approval_response", "web_search_call", "file_search_call",
    "computer_call", "computer_call_output", "code_interpreter_call", "image_generation_call",
})  # fmt: skip
_NOT_TEXT = frozenset({"type", "id", "call_id", "status", "approval_request_id", "server_label",
                       "name", "encrypted_content", "container_id"})  # fmt: skip


def _response_item(item: dict[str, Any]) -> Iterator[Slot]:
    """A Responses item (of a request's input, or an answer's output)."""
    kind = item.get("type")
    if kind in ("function_call_output", "custom_tool_call_output"):
        yield from _content(item, "output", TOOL_RESULT)
    elif kind == "custom_tool_call" and isinstance(item.get("input"), str):
        yield Slot(item, "input", TOOL_ARGUMENTS)
    elif kind == "function_call":
        yield from json_slots(item, "arguments")
    elif kind in (None, "message"):
        yield from _content(item, "content")
    elif kind == "reasoning":
        yield from _content(item, "summary")
        yield from _content(item, "content")
    elif kind in TOOL_ITEMS or kind not in _READ_ITEMS:
        # A tool's item, or a kind of item this reader does not know (a newer API's):
        # every string of it but those that name or identify it, never none of it.
        yield from _tool_item(item)


# The items `_response_item` reads by their own shape.
_READ_ITEMS = frozenset({
    None, "message", "reasoning", "function_call", "function_call_output", "custom_tool_call",
    "custom_tool_call_output",
})  # fmt: skip


def _tool_item(item: dict[str, Any]) -> Iterator[Slot]:
    for key, value in item.items():
        if key in _NOT_TEXT and not isinstance(value, dict | list):  # those may hold text
            continue
        if key == "arguments":
            yield from json_slots(item, key)
        elif isinstance(value, str):
            yield Slot(item, key, TOOL_ARGUMENTS)
        elif isinstance(value, dict | list):
            yield from leaves(value)


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
    one text when they are not a JSON object or array (a stream's fragment, say), or
    nest deeper than `MAX_NESTING` (which `leaves` could not walk)."""
    raw = holder.get(key)
    if not isinstance(raw, str):
        return []
    try:
        parsed = loads_bounded(raw)
    except orjson.JSONDecodeError:  # TooDeep too: read whole, as the text it is
        return [Slot(holder, key, TOOL_ARGUMENTS)]
    if not isinstance(parsed, dict | list):
        return [Slot(holder, key, TOOL_ARGUMENTS)]
    return list(leaves(parsed, _Rewrite(holder, key, parsed)))


class _Rewrite:
    """Writes parsed tool-call arguments back, as JSON, where they came from: what a
    leaf's mask commits; and it names that place (`every_slot` reads it no more)."""

    __slots__ = ("holder", "key", "parsed")

    def __init__(self, holder: dict[str, Any], key: str, parsed: Any) -> None:
        self.holder, self.key, self.parsed = holder, key, parsed

    def __call__(self) -> None:
        self.holder[self.key] = orjson.dumps(self.parsed).decode()


def leaves(
    value: Any, commit: Callable[[], None] | None = None, kind: str = TOOL_ARGUMENTS
) -> Iterator[Slot]:
    """Every string in a JSON value, keys aside, as tool arguments (or `kind`)."""
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(item, str):
            yield Slot(value, key, kind, commit)
        elif isinstance(item, dict | list):
            yield from leaves(item, commit, kind)


# --- plain chat: the texts alone -----------------------------------------------------------


def plain_request_texts(body: dict[str, Any]) -> list[str] | None:
    """The texts `request_slots` reads of `body`, in its order, when it is a plain chat
    request (its messages' contents, each a string and the message's only text, and no
    other key a reader reads); None for any other shape. Most requests are plain: their
    texts are read without a slot made for each (slots are made only to write a mask)."""
    messages = body.get("messages")
    if type(messages) is not list or not _NOT_CHAT_KEYS.isdisjoint(body):
        return None
    texts: list[str] = []
    for message in messages:
        text = _plain_content(message)
        if text is None:
            return None
        texts.append(text)
    return texts


def plain_answer_texts(answer: dict[str, Any]) -> list[str] | None:
    """The texts `answer_slots` reads of `answer`, in its order, when it is a plain chat
    or text completion (each choice's message a plain one, `_plain_content`, or its
    text a string); None for any other shape."""
    if answer.get("type") == "message" or answer.get("object") in _RESPONSES:
        return None
    if "candidates" in answer:
        return None
    choices = answer.get("choices") or []
    if type(choices) is not list:
        return None
    texts: list[str] = []
    for choice in choices:
        if type(choice) is not dict:
            return None
        message = choice.get("message")
        if message is not None:
            text = _plain_content(message)
            if text is None:
                return None
            texts.append(text)
        text = choice.get("text")
        if text is not None:
            if type(text) is not str:
                return None
            texts.append(text)
    return texts


def _plain_content(message: Any) -> str | None:
    """A chat message's content, when it is a string and the message holds no other
    text (`_message_slots` reads nothing else of it); None otherwise."""
    if type(message) is not dict:
        return None
    content = message.get("content")
    if type(content) is not str:
        return None
    if _MESSAGE_TEXT_KEYS.isdisjoint(message):
        return content
    for key in ("reasoning_content", "reasoning", "refusal"):
        if isinstance(message.get(key), str):
            return None
    if message.get("tool_calls") or isinstance(message.get("function_call"), dict):
        return None
    return content


# What a chat message may hold text in besides its content (`_message_slots`).
_MESSAGE_TEXT_KEYS = frozenset(
    {"reasoning_content", "reasoning", "refusal", "tool_calls", "function_call"}
)
# What `request_slots` reads of a request besides its messages.
_NOT_CHAT_KEYS = (
    frozenset({"system", "instructions", "prompt", "input", "query", "suffix", "documents"})
    | _GEMINI_REQUEST_KEYS
)


# --- answers ----------------------------------------------------------------------------


# The Responses API's objects whose `output` holds items: a Response, and a compaction
# (`/v1/responses/compact`: the turns it keeps, and its opaque summary).
_RESPONSES = ("response", "response.compaction")


def answer_slots(answer: dict[str, Any]) -> list[Slot]:
    """The text of a whole answer: a chat or text completion's, a native Anthropic
    message's (text blocks and tool uses' input) or a Responses object's output (a
    compaction's too)."""
    slots: list[Slot] = []
    if answer.get("type") == "message" and isinstance(answer.get("content"), list):
        slots.extend(_anthropic_blocks(answer["content"]))
    elif answer.get("object") in _RESPONSES and isinstance(answer.get("output"), list):
        for item in answer["output"]:
            if isinstance(item, dict):
                slots.extend(_response_item(item))
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            _add_message(slots, message)
        if isinstance(choice.get("text"), str):
            slots.append(Slot(choice, "text"))
    if "candidates" in answer:  # (Gemini's: a generator asked for nothing still costs)
        slots.extend(_candidates(answer))
    return slots


def _anthropic_blocks(blocks: list[Any]) -> Iterator[Slot]:
    for block in blocks:
        if isinstance(block, dict):
            yield from _part(block, TEXT)


# --- Gemini's own API (the pass-through routes) ------------------------------------------


def _gemini_request(body: dict[str, Any]) -> Iterator[Slot]:
    """A `generateContent` request's system instruction and contents (also inside a
    `countTokens` request's `generateContentRequest`), an `embedContent` request's
    content, and a `batchEmbedContents` request's."""
    inner = body.get("generateContentRequest")
    for request in (body, inner) if isinstance(inner, dict) else (body,):
        for key in ("systemInstruction", "system_instruction", "content"):
            if isinstance(request.get(key), dict):
                yield from _gemini_parts(request[key])
        contents = request.get("contents")
        for content in contents if isinstance(contents, list) else ():
            if isinstance(content, dict):
                yield from _gemini_parts(content)
    requests = body.get("requests")
    for request in requests if isinstance(requests, list) else ():
        if isinstance(request, dict) and isinstance(request.get("content"), dict):
            yield from _gemini_parts(request["content"])


_GEMINI_CODE = (
    ("executableCode", "code"), ("executable_code", "code"),
    ("codeExecutionResult", "output"), ("code_execution_result", "output"),
)  # fmt: skip


def _candidates(answer: dict[str, Any]) -> Iterator[Slot]:
    """A `GenerateContentResponse`'s candidates (a whole answer, or a stream event)."""
    candidates = answer.get("candidates")
    for candidate in candidates if isinstance(candidates, list) else ():
        if isinstance(candidate, dict) and isinstance(candidate.get("content"), dict):
            yield from _gemini_parts(candidate["content"])


def _gemini_parts(content: dict[str, Any]) -> Iterator[Slot]:
    """A Gemini content's parts: text (a thought's too: it is text the client reads, or
    the model is given), code the model wrote and its run's output, a function call's
    arguments and a function response's result."""
    parts = content.get("parts")
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            yield Slot(part, "text")
        for name, key in _GEMINI_CODE:
            code = part.get(name)
            if isinstance(code, dict) and isinstance(code.get(key), str):
                yield Slot(code, key, TOOL_ARGUMENTS if key == "code" else TOOL_RESULT)
        call = part.get("functionCall") or part.get("function_call")
        if isinstance(call, dict) and isinstance(call.get("args"), dict):
            yield from leaves(call["args"])
        response = part.get("functionResponse") or part.get("function_response")
        if isinstance(response, dict) and isinstance(response.get("response"), dict):
            yield from leaves(response["response"], kind=TOOL_RESULT)


# --- stream chunks -------------------------------------------------------------------------


def chunk_slots(chunk: Any) -> list[Slot]:
    """The text a stream chunk adds: a chat chunk's delta (content, tool-call argument
    fragments), a text completion chunk's text, a native event's delta, or a Gemini
    stream event's candidates."""
    if isinstance(chunk, NativeEvent):
        return [*_event_slots(chunk.data), *_repeated_slots(chunk.data)]
    if not isinstance(chunk, dict):
        return []
    slots: list[Slot] = list(_candidates(chunk))
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            slots.extend(_content(delta, "content"))
            slots.extend(_said(delta))
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    slots.append(Slot(function, "arguments", TOOL_ARGUMENTS))
        if isinstance(choice.get("text"), str):
            slots.append(Slot(choice, "text"))
    return slots


# The Responses stream's events that add text, by the kind of text they add. (Their
# closing events repeat it whole: the client's codec sets them to what was streamed.)
RESPONSE_DELTAS = {
    "response.output_text.delta": TEXT,
    "response.refusal.delta": TEXT,
    "response.reasoning_summary_text.delta": TEXT,
    "response.reasoning_text.delta": TEXT,
    "response.function_call_arguments.delta": TOOL_ARGUMENTS,
    "response.custom_tool_call_input.delta": TOOL_ARGUMENTS,
    "response.code_interpreter_call_code.delta": TOOL_ARGUMENTS,
    "response.mcp_call_arguments.delta": TOOL_ARGUMENTS,
    "response.audio.transcript.delta": TEXT,
}
# Deltas that carry bytes, not text (an audio clip's, in base64): never read. Any other
# `response.*.delta` whose delta is a string is read as text, known or not.
BINARY_DELTAS = frozenset({"response.audio.delta"})
# Anthropic's deltas' text: a text block's, a tool use's input, a thinking block's.
ANTHROPIC_DELTAS = (("text", TEXT), ("partial_json", TOOL_ARGUMENTS), ("thinking", TEXT))


def _event_slots(data: dict[str, Any]) -> list[Slot]:
    kind = data.get("type")
    if kind == "content_block_delta":
        delta = data.get("delta")
        if isinstance(delta, dict):
            for key, slot_kind in ANTHROPIC_DELTAS:
                if isinstance(delta.get(key), str):
                    return [Slot(delta, key, slot_kind)]
            citation = delta.get("citation")  # a `citations_delta`: the text it quotes
            if isinstance(citation, dict) and isinstance(citation.get("cited_text"), str):
                return [Slot(citation, "cited_text")]
    elif kind == "content_block_start" and isinstance(data.get("content_block"), dict):
        # A block that comes whole (a server tool's result), or starts with text.
        return list(_part(data["content_block"], TEXT))
    elif isinstance(kind, str) and isinstance(data.get("delta"), str) and _read_delta(kind):
        return [Slot(data, "delta", RESPONSE_DELTAS.get(kind, TEXT))]
    elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
        # A tool's item comes whole, its text in no delta.
        item = data["item"]
        return list(_tool_item(item)) if item.get("type") in TOOL_ITEMS else []
    return []


def _read_delta(kind: str) -> bool:
    """Whether a delta event's string is text a guardrail reads: a known one's, or any
    other Responses delta's but for bytes (a newer event is read, not let through)."""
    if kind in RESPONSE_DELTAS:
        return True
    return kind.startswith("response.") and kind.endswith(".delta") and kind not in BINARY_DELTAS


# A Responses stream's events that close a part and repeat its text: where the text is.
RESPONSE_CLOSINGS = {
    "response.output_text.done": (None, "text"),
    "response.refusal.done": (None, "refusal"),
    "response.reasoning_summary_text.done": (None, "text"),
    "response.reasoning_text.done": (None, "text"),
    "response.content_part.done": ("part", None),
    "response.reasoning_summary_part.done": ("part", None),
    "response.function_call_arguments.done": (None, "arguments"),
    "response.custom_tool_call_input.done": (None, "input"),
    "response.code_interpreter_call_code.done": (None, "code"),
    "response.mcp_call_arguments.done": (None, "arguments"),
    "response.audio.transcript.done": (None, "transcript"),
}
# Closing events that hold no text of their own to read (an item's is read by
# `_event_slots`; the final Response's below).
_NO_REPEAT = frozenset({"response.output_item.done", "response.audio.done"})
RESPONSE_FINALS = ("response.completed", "response.incomplete", "response.failed")


def _repeated_slots(data: dict[str, Any]) -> list[Slot]:
    """The text a Responses stream's closing events hold: a part's, an item's, the final
    Response's. Each repeats what the deltas carried, but an upstream may send text in
    them alone, so the guardrails read them as well (and the client's codec then sets
    what was streamed in their place, `passthrough_repeats`)."""
    kind = data.get("type")
    if kind in RESPONSE_CLOSINGS:
        inner, key = RESPONSE_CLOSINGS[kind]
        holder = data.get(inner) if inner else data
        if not isinstance(holder, dict):
            return []
        return list(_part(holder, TEXT)) if key is None else list(_strings(holder, key))
    if kind == "response.output_item.done" and isinstance(data.get("item"), dict):
        item = data["item"]  # a tool's item is read by `_event_slots`
        return [] if item.get("type") in TOOL_ITEMS else list(_response_item(item))
    if kind in RESPONSE_FINALS and isinstance(data.get("response"), dict):
        output = data["response"].get("output")
        items = output if isinstance(output, list) else ()
        return [slot for item in items if isinstance(item, dict) for slot in _response_item(item)]
    if isinstance(kind, str) and kind.startswith("response.") and kind.endswith(".done"):
        # A closing event this reader does not know: its every string but those that
        # name or identify, read rather than let through unread.
        return [] if kind in _NO_REPEAT else list(_unread(data, set()))
    return []


def event_text(data: dict[str, Any]) -> str:
    """The text a stream event's data adds, in whichever API's shape (Anthropic's or the
    Responses API's named events, an OpenAI chunk, a Gemini response): what a stream cut
    short is counted by."""
    return "".join(slot.text for slot in (*_event_slots(data), *chunk_slots(data)))


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

"""OpenAI's Responses API as an ingress on the chat path: its requests in chat shapes,
and chat answers, chunks and errors back as Response objects and Responses events.

Only deployments that cannot speak the Responses API come through here; the gateway
routes, limits and bills in chat shapes, so a Responses client's request is
translated once on the way in and its answer once on the way out. What another
provider cannot use (reasoning items' encrypted content, built-in tools it cannot
run) is dropped, and the dropped tool types are returned for a response header.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from trigate.api.passthrough_repeats import StreamedRest
from trigate.errors import GatewayError, InvalidRequest, secrets
from trigate.providers import NativeEvent
from trigate.providers.fields import a_string
from trigate.relay import FrameEncoder

# A namespace's function reaches the model as `<namespace>__<function>`, so the model's
# call maps back to the namespace's function. Chat providers cap a tool's name (OpenAI
# and Anthropic at 64 characters), so a longer one is cut and told apart by a hash.
NAMESPACE_SEPARATOR = "__"
MAX_TOOL_NAME = 64
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TOOL_CHOICES = ("auto", "none", "required")
# Request fields that a chat request names alike.
SAMPLING_FIELDS = ("model", "temperature", "top_p", "user")
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
# The events that end a Responses stream, each with the final Response.
FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


# --- Responses request -> chat request ---------------------------------------------------


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's `input` as items, the shape stored and replayed for
    `previous_response_id`: a string is one user message."""
    given = body.get("input")
    if given is None:
        return []
    if isinstance(given, str):
        return [_user_message(given)]
    if not isinstance(given, list):
        raise InvalidRequest("`input` must be a string or an array of items.", param="input")
    return [_item(item) for item in given]


def _user_message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _item(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidRequest("Every entry of `input` must be an object.", param="input")
    if "type" not in item and "role" in item:
        return {"type": "message", **item}
    if not isinstance(item.get("type"), str):
        raise InvalidRequest("Every input item needs a `type` or a `role`.", param="input")
    return dict(item)


def to_chat_request(
    body: dict[str, Any], history: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """The chat-completions request for a Responses request whose earlier conversation
    (`previous_response_id`'s input and output items, oldest first) is `history`; with
    the types of the built-in tools dropped from it."""
    messages = _instructions(body.get("instructions"))
    messages.extend(chat_messages([*history, *input_items(body)]))
    chat: dict[str, Any] = {"messages": messages}
    chat.update({key: body[key] for key in SAMPLING_FIELDS if body.get(key) is not None})
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    tools, dropped = chat_tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        _add_tool_choice(chat, body.get("tool_choice"))
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    _add_text_format(chat, body.get("text"))
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    if body.get("stream"):
        # The Responses stream ends with usage, so it is always asked of the upstream.
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, dropped


def _instructions(instructions: Any) -> list[dict[str, Any]]:
    if isinstance(instructions, str) and instructions:
        return [{"role": "system", "content": instructions}]
    if isinstance(instructions, list) and instructions:
        # A stored prompt's instructions come back as items.
        return chat_messages([_item(item) for item in instructions])
    return []


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as chat messages. A function call joins the assistant message before it,
    as chat keeps a turn's text and its tool calls in one message. Other items are
    dropped: reasoning and compaction (their encrypted content means nothing to another
    provider), and the calls of built-in and custom tools, which are never sent to it."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            messages.append(_message(item))
        elif kind == "function_call":
            _add_tool_call(messages, item)
        elif kind == "function_call_output":
            messages.append(_tool_message(item))
        elif kind == "item_reference":
            # The gateway resolves stored items before translating; one left is unknown.
            raise InvalidRequest(
                f"The item `{item.get('id')}` referenced in `input` was not found.",
                param="input",
                code="item_not_found",
            )
    return messages


def _message(item: dict[str, Any]) -> dict[str, Any]:
    given = item.get("role")
    role = ROLES.get(given) if isinstance(given, str) else None
    if role is None:
        raise InvalidRequest(
            "Message `role` must be `user`, `assistant`, `system` or `developer`, "
            f"not {item.get('role')!r}.",
            param="input",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest("Message `content` must be a string or an array.", param="input")
    parts = [_content_part(part) for part in content]
    if role == "user":
        return {"role": role, "content": parts}
    # Assistant and system turns are text: joined, as every provider takes a string.
    return {"role": role, "content": "".join(_texts(parts))}


def _texts(parts: list[dict[str, Any]]) -> list[str]:
    return [part["text"] for part in parts if part.get("type") == "text"]


def _content_part(part: Any) -> dict[str, Any]:
    """A Responses content part as a chat one; parts chat has no word for pass as they
    are, for providers that understand them."""
    if not isinstance(part, dict):
        raise InvalidRequest("Every content part must be an object.", param="input")
    kind = part.get("type")
    if kind in TEXT_PARTS:
        return {"type": "text", "text": a_string(part.get("text") or "", "content[].text", "input")}
    if kind == "refusal":
        refusal = a_string(part.get("refusal") or "", "content[].refusal", "input")
        return {"type": "text", "text": refusal}
    if kind == "input_image":
        return _image_part(part)
    if kind == "input_file":
        fields = ("file_data", "file_id", "filename")
        return {"type": "file", "file": {key: part[key] for key in fields if key in part}}
    return dict(part)


def _image_part(part: dict[str, Any]) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise InvalidRequest(
            "An `input_image` needs an `image_url` for this model; uploaded files "
            "(`file_id`) cannot be sent to it.",
            param="input",
        )
    image: dict[str, Any] = {"url": url}
    if part.get("detail") in ("low", "high"):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _add_tool_call(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    name = str(item.get("name"))
    if isinstance(item.get("namespace"), str):
        name = flat_name(item["namespace"], name)
    function = {"name": name, "arguments": item.get("arguments") or "{}"}
    call = {"id": item.get("call_id"), "type": "function", "function": function}
    last = messages[-1] if messages else None
    if last is not None and last.get("role") == "assistant":
        last.setdefault("tool_calls", []).append(call)
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _tool_message(item: dict[str, Any]) -> dict[str, Any]:
    output = item.get("output")
    if isinstance(output, list):
        output = [_content_part(part) for part in output]
    elif not isinstance(output, str):
        output = orjson.dumps(output).decode()
    return {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}


def chat_tools(tools: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Function tools in chat's shape, a namespace's functions flattened; and the types of
    the built-in tools dropped, which no translated provider can run."""
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise InvalidRequest("`tools` must be an array.", param="tools")
    chat: list[dict[str, Any]] = []
    dropped: list[str] = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise InvalidRequest("Every entry of `tools` must be an object.", param="tools")
        kind = tool.get("type")
        if kind == "function":
            chat.append(_function_tool(tool))
        elif kind == "namespace":
            chat.extend(_namespace_tools(tool))
        elif str(kind) not in dropped:
            dropped.append(str(kind))
    return chat, dropped


def _function_tool(tool: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    name = str(tool.get("name"))
    function: dict[str, Any] = {"name": name if namespace is None else flat_name(namespace, name)}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _namespace_tools(tool: dict[str, Any]) -> list[dict[str, Any]]:
    namespace = str(tool.get("name"))
    if not isinstance(tool.get("tools"), list):
        raise InvalidRequest("A `namespace` tool needs an array of `tools`.", param="tools")
    return [_function_tool(member, namespace) for member in _members(tool)]


def _members(namespace: dict[str, Any]) -> list[dict[str, Any]]:
    """A namespace's function tools (its only kind)."""
    members = namespace.get("tools")
    listed = members if isinstance(members, list) else []
    return [
        member
        for member in listed
        if isinstance(member, dict) and member.get("type", "function") == "function"
    ]


def flat_name(namespace: str, name: str) -> str:
    """The one chat tool name of a namespace's function, the same on every turn."""
    flat = f"{namespace}{NAMESPACE_SEPARATOR}{name}"
    if len(flat) <= MAX_TOOL_NAME:
        return flat
    digest = hashlib.sha256(flat.encode()).hexdigest()[:10]
    return f"{flat[: MAX_TOOL_NAME - len(digest) - 1]}_{digest}"


def namespaced_names(request: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The request's namespace functions by their flat chat names: (namespace, name)."""
    names: dict[str, tuple[str, str]] = {}
    tools = request.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "namespace":
            namespace = str(tool.get("name"))
            for member in _members(tool):
                name = str(member.get("name"))
                names[flat_name(namespace, name)] = (namespace, name)
    return names


def _add_tool_choice(chat: dict[str, Any], choice: Any) -> None:
    """Chat's `tool_choice`; a choice of a built-in tool, which is not sent, is left out."""
    kind = choice.get("type") if isinstance(choice, dict) else None
    if choice in TOOL_CHOICES:
        chat["tool_choice"] = choice
    elif kind == "function" and isinstance(choice, dict):
        name = str(choice.get("name"))
        if isinstance(choice.get("namespace"), str):
            name = flat_name(choice["namespace"], name)
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif (
        kind == "allowed_tools" and isinstance(choice, dict) and choice.get("mode") in TOOL_CHOICES
    ):
        chat["tool_choice"] = choice["mode"]


def _add_text_format(chat: dict[str, Any], text: Any) -> None:
    form = text.get("format") if isinstance(text, dict) else None
    if not isinstance(form, dict):
        return
    if form.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif form.get("type") == "json_schema":
        fields = ("name", "schema", "strict", "description")
        schema = {key: form[key] for key in fields if form.get(key) is not None}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}


# --- chat.completion -> Response object -------------------------------------------------


def response_object(
    completion: dict[str, Any], *, response_id: str, request: dict[str, Any], created_at: float
) -> dict[str, Any]:
    """The Response object for a chat completion of `request`, echoing its settings as
    OpenAI does."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output = _reasoning_items(message.get("reasoning_content"))
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(message_item(_new_id("msg"), text, "completed"))
    names = namespaced_names(request)
    calls = message.get("tool_calls") or ()
    output.extend(_call_item(call, names) for call in calls if isinstance(call, dict))
    response = base_response(response_id=response_id, request=request, created_at=created_at)
    _finish(response, choice.get("finish_reason"), output)
    response["usage"] = responses_usage(completion.get("usage") or {})
    return response


def _call_item(call: dict[str, Any], names: dict[str, tuple[str, str]]) -> dict[str, Any]:
    given = call.get("function")
    function: dict[str, Any] = given if isinstance(given, dict) else {}
    item = function_call_item(_new_id("fc"), call.get("id"), function.get("name"), names)
    return {**item, "arguments": function.get("arguments") or "", "status": "completed"}


def base_response(
    *, response_id: str, request: dict[str, Any], created_at: float
) -> dict[str, Any]:
    """A Response object in progress: no output yet, and the request's settings echoed
    with OpenAI's defaults where the request left them out."""
    reasoning = _dict(request.get("reasoning"))
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "status": "in_progress",
        "background": bool(request.get("background")),
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request.get("model"),
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, **_dict(request.get("text"))},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation") or "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def _finish(response: dict[str, Any], finish_reason: Any, output: list[dict[str, Any]]) -> None:
    response["output"] = output
    reason = INCOMPLETE_REASONS.get(finish_reason)
    if reason is None:
        response["status"] = "completed"
        return
    response["status"] = "incomplete"
    response["incomplete_details"] = {"reason": reason}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _reasoning_items(reasoning: Any) -> list[dict[str, Any]]:
    if not isinstance(reasoning, str) or not reasoning:
        return []
    return [reasoning_item(_new_id("rs"), reasoning, "completed")]


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """The provider's thinking text as a reasoning item's `reasoning_text` content; it has
    no summary."""
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [output_text(text)]
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(
    item_id: str, call_id: Any, name: Any, namespaced: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    """A function call item in progress; a flat name is mapped back to its namespace's
    function, as OpenAI names a namespace's call (`namespace` beside `name`)."""
    item: dict[str, Any] = {"id": item_id, "type": "function_call", "call_id": call_id}
    if isinstance(name, str) and name in namespaced:
        namespace, function = namespaced[name]
        item.update(name=function, namespace=namespace)
    else:
        item["name"] = name
    return {**item, "arguments": "", "status": "in_progress"}


def responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Chat usage in the Responses API's words."""
    prompt = _details(usage, "prompt_tokens_details")
    completion = _details(usage, "completion_tokens_details")
    input_tokens = _count(usage.get("prompt_tokens"))
    output_tokens = _count(usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": _count(prompt.get("cached_tokens")),
            # Anthropic's cache writes, which the gateway's chat usage carries as such.
            "cache_write_tokens": _count(usage.get("cache_creation_input_tokens")),
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": _count(completion.get("reasoning_tokens"))},
        "total_tokens": total if isinstance(total, int) else input_tokens + output_tokens,
    }


def _details(usage: dict[str, Any], key: str) -> dict[str, Any]:
    return _dict(usage.get(key))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) else 0


def error_object(error: GatewayError) -> dict[str, Any]:
    """A failed Response's `error`: the gateway's code, else one of OpenAI's."""
    code = error.code or ("rate_limit_exceeded" if error.status == 429 else "server_error")
    return {"code": code, "message": secrets.redact(error.message)}


# --- chat chunks -> Responses stream events ---------------------------------------------


def event_frame(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamedText:
    """What a Responses stream's deltas sent of each output text and each call's
    arguments, as they went out, which its closing events repeat whole
    (`response.output_text.done`, `response.content_part.done`,
    `response.function_call_arguments.done`, `response.output_item.done`, the final
    Response): a guardrail that masked the deltas must not see the text given back
    whole. `settled` is given every event in order."""

    def __init__(self) -> None:
        # By (item id, content index), and by item id.
        self._texts: dict[tuple[Any, Any], str] = {}
        self._arguments: dict[Any, str] = {}

    def settled(self, data: dict[str, Any]) -> bool:
        """Whether a closing event's repetition was set to what was streamed (a delta is
        kept; any other event is left as it is)."""
        kind = data.get("type")
        delta = data.get("delta")
        key = (data.get("item_id"), data.get("content_index"))
        if kind == "response.output_text.delta" and isinstance(delta, str):
            self._texts[key] = self._texts.get(key, "") + delta
            return False
        if kind == "response.function_call_arguments.delta" and isinstance(delta, str):
            item = data.get("item_id")
            self._arguments[item] = self._arguments.get(item, "") + delta
            return False
        if kind == "response.output_text.done":
            return _set(data, "text", self._texts.get(key))
        if kind == "response.content_part.done" and isinstance(data.get("part"), dict):
            return _set(data["part"], "text", self._texts.get(key))
        if kind == "response.function_call_arguments.done":
            return _set(data, "arguments", self._arguments.get(data.get("item_id")))
        if kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            return self._item(data["item"])
        response = data.get("response")
        output = response.get("output") if isinstance(response, dict) else None
        if kind in FINAL_EVENTS and isinstance(output, list):
            return any([self._item(item) for item in output if isinstance(item, dict)])
        return False

    def _item(self, item: dict[str, Any]) -> bool:
        if item.get("type") == "function_call":
            return _set(item, "arguments", self._arguments.get(item.get("id")))
        content = item.get("content")
        parts = content if item.get("type") == "message" and isinstance(content, list) else []
        return any(
            [_set(part, "text", self._texts.get((item.get("id"), index)))
             for index, part in enumerate(parts) if isinstance(part, dict)]
        )  # fmt: skip


def _set(holder: dict[str, Any], key: str, streamed: str | None) -> bool:
    """Set `holder[key]` to what was streamed, if it differs; whether it did."""
    if streamed is None or holder.get(key) == streamed:
        return False
    holder[key] = streamed
    return True


class _Item:
    """An output item being streamed: its Response item, and the text or arguments so far."""

    def __init__(self, index: int, item: dict[str, Any]) -> None:
        self.index = index
        self.item = item
        self.text: list[str] = []

    @property
    def id(self) -> str:
        return str(self.item["id"])


class ResponsesEvents(FrameEncoder):
    """Chat chunks as Responses stream events. An output item opens when the kind of
    content (reasoning, text, one tool call) changes, and is done before the next opens;
    `response.completed` carries the whole Response, which `response` keeps for storing.

    A Responses upstream's own events pass as they came; the encoder only follows their
    numbering and their Response, so that a failure after them still fits the stream."""

    def __init__(
        self,
        *,
        response_id: str,
        request: dict[str, Any],
        created_at: float,
        echoed: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        # Puts the client's own values back in a native Response's echo of the request
        # (`_Offered.restore_echo`), where a guardrail masked what went upstream.
        self._echoed = echoed
        self._response = base_response(
            response_id=response_id, request=request, created_at=created_at
        )
        self._namespaced = namespaced_names(request)
        self._sequence = 0
        self._started = False
        self._native = False
        # Set once the stream's last event (completed, incomplete or failed) is out.
        self._done = False
        self._output: list[dict[str, Any]] = []
        # The open item and what it is: "reasoning", "message", or a tool call's index.
        self._open: _Item | None = None
        self._open_key: str | int | None = None
        self._finish_reason: Any = None
        self._usage: dict[str, Any] = {}
        self._final: dict[str, Any] | None = None
        self._streamed = StreamedText()
        # A native stream's other repeated texts: refusals, reasoning, a custom tool's
        # input, a code interpreter's code, an MCP call's arguments, a tool's item.
        self._rest = StreamedRest()

    @property
    def response(self) -> dict[str, Any] | None:
        """The final Response object once the stream has ended, for storing."""
        return self._final

    def native(self, event: NativeEvent) -> bytes:
        """A Responses upstream's event, as it came (its closing events repeating what
        was streamed, as hooks released it); its Response is kept."""
        self._native = self._started = True
        frame = event.frame
        # Both see every event: `|`, not `or` (as the pass-through's codec does).
        if self._streamed.settled(event.data) | self._rest.settled(event.data):
            frame = event_frame(event.name, event.data)
        sequence = event.data.get("sequence_number")
        if isinstance(sequence, int):
            self._sequence = sequence + 1
        response = event.data.get("response")
        if isinstance(response, dict):
            if self._echoed is not None and self._echoed(response):
                frame = event_frame(event.name, event.data)
            self._response = response
            if event.data.get("type") in FINAL_EVENTS:
                self._final = response
                self._done = True
        return frame

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = [self._start()]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        out.extend(
            self._choice(choice)
            for choice in chunk.get("choices") or ()
            if isinstance(choice, dict) and choice.get("index", 0) == 0
        )
        return b"".join(out)

    def usage(self, chunk: dict[str, Any]) -> bytes:
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        return self._start()

    def error(self, error: GatewayError) -> bytes:
        """One `response.failed`, after `response.created` (which the SDKs expect first);
        items still open are left out of its output."""
        if self._done:
            return b""
        started = self._start()
        self._done = True
        failed = {**self._response, "status": "failed", "error": error_object(error)}
        failed["output"] = self._output
        self._final = failed
        return started + self._event("response.failed", {"response": failed})

    def end(self) -> bytes:
        """The open item's `.done` events and the final Response: `response.completed`,
        or `response.incomplete` when the output was cut short, as OpenAI sends it."""
        if self._done or self._native:
            return b""
        out = [self._start(), self._close()]
        self._done = True
        final = dict(self._response)
        _finish(final, self._finish_reason, self._output)
        final["usage"] = responses_usage(self._usage)
        self._final = final
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": final}))
        return b"".join(out)

    # --- events ---

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        frame = event_frame(kind, {"type": kind, "sequence_number": self._sequence, **data})
        self._sequence += 1
        return frame

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        created = self._event("response.created", {"response": self._response})
        return created + self._event("response.in_progress", {"response": self._response})

    def _choice(self, choice: dict[str, Any]) -> bytes:
        delta = choice.get("delta") or {}
        out: list[bytes] = []
        if delta.get("reasoning_content"):
            out.append(self._reasoning_delta(str(delta["reasoning_content"])))
        if delta.get("content"):
            out.append(self._text_delta(str(delta["content"])))
        calls = delta.get("tool_calls") or ()
        out.extend(self._tool_call(call) for call in calls if isinstance(call, dict))
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
            out.append(self._close())
        return b"".join(out)

    def _added(self, key: str | int, item: dict[str, Any]) -> bytes:
        closed = self._close()
        self._open = _Item(len(self._output), item)
        self._open_key = key
        added = {"output_index": self._open.index, "item": item}
        return closed + self._event("response.output_item.added", added)

    def _reasoning_delta(self, text: str) -> bytes:
        out = b""
        if self._open_key != "reasoning":
            out = self._added("reasoning", reasoning_item(_new_id("rs"), "", "in_progress"))
        return out + self._part_delta("response.reasoning_text.delta", text)

    def _text_delta(self, text: str) -> bytes:
        out = b""
        if self._open_key != "message":
            out = self._added("message", message_item(_new_id("msg"), None, "in_progress"))
            out += self._event("response.content_part.added", self._part(output_text("")))
        return out + self._part_delta("response.output_text.delta", text, logprobs=[])

    def _part(self, part: dict[str, Any]) -> dict[str, Any]:
        assert self._open is not None
        return {
            "item_id": self._open.id,
            "output_index": self._open.index,
            "content_index": 0,
            "part": part,
        }

    def _part_delta(self, kind: str, text: str, **extra: Any) -> bytes:
        assert self._open is not None
        self._open.text.append(text)
        data = {
            "item_id": self._open.id,
            "output_index": self._open.index,
            "content_index": 0,
            "delta": text,
            **extra,
        }
        return self._event(kind, data)

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        index = call.get("index")
        key = index if isinstance(index, int) else 0
        function = call.get("function") or {}
        out = b""
        if self._open_key != key or self._new_call(call.get("id")):
            item = function_call_item(
                _new_id("fc"), call.get("id"), function.get("name"), self._namespaced
            )
            out = self._added(key, item)
        arguments = function.get("arguments")
        if not arguments:
            return out
        assert self._open is not None
        self._open.text.append(arguments)
        data = {"item_id": self._open.id, "output_index": self._open.index, "delta": arguments}
        return out + self._event("response.function_call_arguments.delta", data)

    def _new_call(self, call_id: Any) -> bool:
        """A call with an id of its own under the open call's index: an upstream that
        numbers every call 0 still gets one item per call."""
        assert self._open is not None
        return bool(call_id) and call_id != self._open.item.get("call_id")

    def _close(self) -> bytes:
        """The `.done` events of the open item, which joins the output."""
        item, self._open, self._open_key = self._open, None, None
        if item is None:
            return b""
        text = "".join(item.text)
        kind = item.item["type"]
        if kind == "message":
            out = self._message_done(item, text)
        elif kind == "reasoning":
            out = self._reasoning_done(item, text)
        else:
            out = self._arguments_done(item, text)
        self._output.append(item.item)
        done = {"output_index": item.index, "item": item.item}
        return out + self._event("response.output_item.done", done)

    def _message_done(self, item: _Item, text: str) -> bytes:
        ids = {"item_id": item.id, "output_index": item.index, "content_index": 0}
        done = self._event("response.output_text.done", {**ids, "text": text, "logprobs": []})
        part = output_text(text)
        done += self._event("response.content_part.done", {**ids, "part": part})
        item.item = {**item.item, "status": "completed", "content": [part]}
        return done

    def _reasoning_done(self, item: _Item, text: str) -> bytes:
        ids = {"item_id": item.id, "output_index": item.index, "content_index": 0}
        done = self._event("response.reasoning_text.done", {**ids, "text": text})
        item.item = reasoning_item(item.id, text, "completed")
        return done

    def _arguments_done(self, item: _Item, arguments: str) -> bytes:
        data = {"item_id": item.id, "output_index": item.index, "arguments": arguments}
        done = self._event("response.function_call_arguments.done", data)
        item.item = {**item.item, "arguments": arguments, "status": "completed"}
        return done

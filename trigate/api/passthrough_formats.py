"""The provider APIs of the pass-through routes that the gateway can read, so that hooks and
guardrails run on their calls (passthrough_guard.py).

A pass-through call goes to its provider in the provider's own API, and hooks read it
there (`trigate.guardrails.text` reads each of these shapes):

- Anthropic's Messages: `/anthropic/v1/messages` (and `/count_tokens`), and Claude on
  Vertex AI's `rawPredict` / `streamRawPredict`;
- OpenAI's chat completions, completions, embeddings and Responses: on `/openai`,
  `/azure`, `/mistral` and `/vllm`;
- Gemini's `generateContent`, `streamGenerateContent` (as SSE, `alt=sse`, what the
  google-genai SDK asks), `countTokens`, `embedContent` and `batchEmbedContents`: on
  `/gemini`, and Gemini on Vertex AI.

Each API has its stream's events: `EventCodec` turns an
SSE stream into the chunks hooks see (the event objects the gateway's own surfaces give
them: a `NativeEvent` for Anthropic's and the Responses API's named events, the JSON
object of an OpenAI chunk or a Gemini `GenerateContentResponse`), a chunk back into its
frame, and a guardrail's block into the one error event that ends the stream in that
API's format. Any other route or path (Bedrock, Cohere, a custom endpoint, a provider's
files or batches) is one the gateway cannot read: while hooks apply to its caller, it is
refused rather than let through unseen.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from trigate.api.anthropic_format import event_frame as anthropic_frame
from trigate.api.envelopes import anthropic_error_body, google_error_body
from trigate.api.passthrough_targets import VERTEX_ROUTES
from trigate.api.responses_format import FINAL_EVENTS
from trigate.api.responses_format import event_frame as responses_frame
from trigate.errors import GatewayError, secrets
from trigate.providers import NativeEvent
from trigate.relay import DONE_FRAME, sse_frame
from trigate.sse import ServerSentEvent, SSEDecoder

# The OpenAI-style routes, and their model calls' paths (as `calls_model` spells them).
OPENAI_ROUTES = frozenset({"openai", "azure", "mistral", "vllm"})
_OPENAI_CALL = re.compile(
    r"^(?:/openai)?(?:/v\d+\w*)?(?:/openai)?(?:/deployments/[^/]+)?"
    r"/(chat/completions|completions|embeddings|responses)$"
)
_ANTHROPIC_CALL = re.compile(r"^(?:/v\d+)?/messages(?:/count_tokens)?$")
_VERTEX_CLAUDE = re.compile(r"/publishers/anthropic/models/[^/:]+:(?:rawPredict|streamRawPredict)$")
_GEMINI_CALL = re.compile(
    r"/models/[^/:]+:(generateContent|streamGenerateContent|countTokens|embedContent"
    r"|batchEmbedContents)$"
)
_VERTEX_GEMINI = re.compile(
    r"/publishers/google/models/[^/:]+:(generateContent|streamGenerateContent|countTokens)$"
)
_SSE_QUERY = re.compile(r"(?:^|&)alt=sse(?:&|$)")


class UnreadableAnswer(GatewayError):
    """An answer, or an event of a watched stream, that is not what its API sends (or
    too large to hold): the hooks cannot read it, so it goes no further unseen."""

    status = 502
    code = "pass_through_unreadable_answer"


@dataclass(frozen=True, slots=True)
class NativeAPI:
    """A provider API the gateway reads on a pass-through route: its name, and its
    streams' codec. (Its errors' envelope is the route's: `PassCall.envelope`.)"""

    name: str
    events: Callable[[], EventCodec]


def native_api(route: str | None, method: str, path: str, query: str) -> NativeAPI | None:
    """The API of a pass-through call, when the gateway can read it; None otherwise."""
    if route is None or method != "POST":
        return None
    if route == "anthropic" and _ANTHROPIC_CALL.search(path):
        return ANTHROPIC_MESSAGES
    if route in OPENAI_ROUTES:
        found = _OPENAI_CALL.search(path)
        if found is None:
            return None
        return OPENAI_RESPONSES if found.group(1) == "responses" else OPENAI_CHAT
    if route in VERTEX_ROUTES:
        if _VERTEX_CLAUDE.search(path):
            return ANTHROPIC_MESSAGES
        found = _VERTEX_GEMINI.search(path)
    elif route == "gemini":
        found = _GEMINI_CALL.search(path)
    else:
        return None
    if found is None:
        return None
    # A stream without `alt=sse` is one JSON array, written as it is generated: not read.
    if found.group(1) == "streamGenerateContent" and not _SSE_QUERY.search(query):
        return None
    return GEMINI


def unreadable_reason(route: str | None, method: str, path: str) -> str:
    """Why a pass-through call is not one `native_api` reads, for its refusal."""
    if route is None:
        return "a custom endpoint's API is its target's, which the gateway does not know"
    if method != "POST":
        return f"a {method} request is not a model call the gateway reads"
    if path.endswith(":streamGenerateContent"):
        return "a Gemini stream is read only as SSE (`?alt=sse`)"
    return f"the gateway does not read the API of /{route}{path}"


# --- streams ----------------------------------------------------------------------------


class EventCodec:
    """One SSE stream's events as the chunks hooks see, and back: `feed` the upstream's
    bytes (then `flush` at its end) for chunks, `frame` each chunk released, `error` for
    the event that ends the stream with a failure, `end` for what closes it.
    `drop_usage`: leave out the usage-only chunk the gateway asked for, not the client.
    An event that cannot be read stops the decoding: the chunks before it are returned,
    and `failure` says why the stream must end after them."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self.drop_usage = False
        # Hears each event's data as it is decoded (the call's usage reader).
        self.heard: Callable[[dict[str, Any]], None] = _ignored
        self.failure: UnreadableAnswer | None = None

    def feed(self, piece: bytes) -> list[Any]:
        return self._chunks(self._decoder.feed(piece))

    def flush(self) -> list[Any]:
        return self._chunks(self._decoder.flush())

    def _chunks(self, events: list[ServerSentEvent]) -> list[Any]:
        chunks = []
        for event in events:
            try:
                chunk = self._chunk(event)
            except UnreadableAnswer as failure:
                self.failure = failure
                break
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def _chunk(self, event: ServerSentEvent) -> Any:
        """The chunk an event stands for (None: none to relay)."""
        raise NotImplementedError

    def frame(self, chunk: Any) -> bytes:
        raise NotImplementedError

    def error(self, error: GatewayError) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        return b""

    def _data(self, event: ServerSentEvent) -> dict[str, Any]:
        """An event's JSON object, which `heard` hears; any other is unreadable."""
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise UnreadableAnswer(
                "The provider's stream sent an event that is not a JSON object, which the "
                "guardrails cannot read: the stream ends here."
            )
        self.heard(data)
        return data


def _ignored(data: dict[str, Any]) -> None:
    pass


def _frame_of(event: ServerSentEvent) -> bytes:
    """An event's frame as it came (its data lines as it split them)."""
    lines = b"".join(b"data: " + line.encode() + b"\n" for line in event.data.split("\n"))
    return b"event: " + event.event.encode() + b"\n" + lines + b"\n"


class NamedEvents(EventCodec):
    """Anthropic's and the Responses API's streams: named events, each a `NativeEvent`
    (relayed as it came unless a hook rewrote it)."""

    def __init__(self, error: Callable[[GatewayError, int], bytes]) -> None:
        super().__init__()
        self._error = error
        self._sequence = 0

    def _chunk(self, event: ServerSentEvent) -> Any:
        data = self._data(event)
        sequence = data.get("sequence_number")
        if isinstance(sequence, int):
            self._sequence = sequence
        return NativeEvent(event.event, data, _frame_of(event))

    def frame(self, chunk: Any) -> bytes:
        frame: bytes = chunk.frame
        return frame

    def error(self, error: GatewayError) -> bytes:
        self._sequence += 1
        return self._error(error, self._sequence)


class ResponsesEvents(NamedEvents):
    """The Responses API's stream, whose closing events repeat the text its deltas
    streamed (`response.output_text.done`, `response.content_part.done`,
    `response.output_item.done`, the final Response, and function calls' arguments):
    each repeats what the client was sent of the deltas, as the hooks released them, so
    that a mask in the deltas is not undone by the text repeated whole."""

    def __init__(self) -> None:
        super().__init__(_responses_error)
        # What was sent of each output text (item id, content index) and each call's
        # arguments (item id).
        self._texts: dict[tuple[Any, Any], str] = {}
        self._arguments: dict[Any, str] = {}

    def frame(self, chunk: Any) -> bytes:
        data = chunk.data
        kind = data.get("type")
        delta = data.get("delta")
        if kind == "response.output_text.delta" and isinstance(delta, str):
            key = (data.get("item_id"), data.get("content_index"))
            self._texts[key] = self._texts.get(key, "") + delta
        elif kind == "response.function_call_arguments.delta" and isinstance(delta, str):
            item = data.get("item_id")
            self._arguments[item] = self._arguments.get(item, "") + delta
        elif self._settled(kind, data):
            return responses_frame(chunk.name, data)
        return super().frame(chunk)

    def _settled(self, kind: Any, data: dict[str, Any]) -> bool:
        """Whether a closing event's repeated text was set to what was streamed."""
        key = (data.get("item_id"), data.get("content_index"))
        if kind == "response.output_text.done":
            return _set(data, "text", self._texts.get(key))
        if kind == "response.content_part.done" and isinstance(data.get("part"), dict):
            return _set(data["part"], "text", self._texts.get(key))
        if kind == "response.function_call_arguments.done":
            return _set(data, "arguments", self._arguments.get(data.get("item_id")))
        if kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            return self._settle_item(data["item"])
        response = data.get("response")
        if kind in FINAL_EVENTS and isinstance(response, dict):
            output = response.get("output")
            items = (
                [item for item in output if isinstance(item, dict)]
                if isinstance(output, list)
                else []
            )
            return any([self._settle_item(item) for item in items])
        return False

    def _settle_item(self, item: dict[str, Any]) -> bool:
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


class DataEvents(EventCodec):
    """OpenAI's chat and completion streams, and Gemini's: unnamed events, each the JSON
    object hooks see, framed anew once released. OpenAI's `[DONE]` is held until the
    stream ends; the usage-only chunk the gateway asked for (`drop_usage`) is not the
    client's and never reaches it."""

    def __init__(self, error: Callable[[GatewayError], bytes], *, done: bool) -> None:
        super().__init__()
        self._error = error
        self._done = done

    def _chunk(self, event: ServerSentEvent) -> Any:
        if self._done and event.data.strip() == "[DONE]":
            return None
        data = self._data(event)
        if self.drop_usage and data.get("choices") == [] and data.get("usage"):
            return None
        return data

    def frame(self, chunk: Any) -> bytes:
        return sse_frame(chunk)

    def error(self, error: GatewayError) -> bytes:
        return self._error(error) + (DONE_FRAME if self._done else b"")

    def end(self) -> bytes:
        return DONE_FRAME if self._done else b""


def _anthropic_error(error: GatewayError, sequence: int) -> bytes:
    return anthropic_frame("error", anthropic_error_body(error))


def _responses_error(error: GatewayError, sequence: int) -> bytes:
    """The Responses API's `error` event."""
    data = {"type": "error", "code": error.code, "message": secrets.redact(error.message),
            "param": error.param, "sequence_number": sequence}  # fmt: skip
    return responses_frame("error", data)


def _gemini_error(error: GatewayError) -> bytes:
    """Google's error object as a stream event, which google-genai raises."""
    return b"data: " + orjson.dumps(google_error_body(error)) + b"\n\n"


def _openai_error(error: GatewayError) -> bytes:
    return sse_frame(error.to_dict())


ANTHROPIC_MESSAGES = NativeAPI("anthropic_messages", lambda: NamedEvents(_anthropic_error))
OPENAI_CHAT = NativeAPI("openai", lambda: DataEvents(_openai_error, done=True))
OPENAI_RESPONSES = NativeAPI("openai_responses", ResponsesEvents)
GEMINI = NativeAPI("gemini", lambda: DataEvents(_gemini_error, done=False))

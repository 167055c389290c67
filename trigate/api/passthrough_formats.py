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

from trigate.api import passthrough_kinds as kinds
from trigate.api.anthropic_format import event_frame as anthropic_frame
from trigate.api.envelopes import anthropic_error_body, google_error_body
from trigate.api.passthrough_repeats import StreamedRest
from trigate.api.passthrough_targets import VERTEX_ROUTES
from trigate.api.responses_format import StreamedText
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


# What a request, an answer or an event holds that the guardrails do not read (None:
# nothing), described for the refusal (passthrough_kinds.py).
Unknown = Callable[[dict[str, Any]], str | None]


@dataclass(frozen=True, slots=True)
class NativeAPI:
    """A provider API the gateway reads on a pass-through route: its name, its streams'
    codec, and what in its requests, answers and stream events the guardrails do not
    know. (Its errors' envelope is the route's: `PassCall.envelope`.)"""

    name: str
    events: Callable[[], EventCodec]
    unknown_in_request: Unknown
    unknown_in_answer: Unknown
    unknown_in_event: Unknown


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
        # What an event holds that the guardrails do not read: it ends the stream.
        self.unknown: Unknown = _nothing
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
        unknown = self.unknown(data)
        if unknown is not None:
            raise UnreadableAnswer(unread_answer(unknown) + " The stream ends here.")
        return data


def unread_answer(unknown: str) -> str:
    """Why an answer holding `unknown` goes no further."""
    return (
        f"The provider's answer holds {unknown}, which the guardrails do not read: it goes "
        "no further unseen."
    )


def _ignored(data: dict[str, Any]) -> None:
    pass


def _nothing(data: dict[str, Any]) -> str | None:
    return None


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
    """The Responses API's stream, whose closing events repeat what its deltas streamed
    as the hooks released it (`StreamedText`, `StreamedRest`), masks included."""

    def __init__(self) -> None:
        super().__init__(_responses_error)
        self._streamed = StreamedText()
        self._rest = StreamedRest()

    def frame(self, chunk: Any) -> bytes:
        # Both see every event: `|`, not `or`.
        if self._streamed.settled(chunk.data) | self._rest.settled(chunk.data):
            return responses_frame(chunk.name, chunk.data)
        return super().frame(chunk)


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


ANTHROPIC_MESSAGES = NativeAPI(
    "anthropic_messages", lambda: NamedEvents(_anthropic_error),
    kinds.anthropic_request, kinds.anthropic_answer, kinds.anthropic_event,
)  # fmt: skip
OPENAI_CHAT = NativeAPI(
    "openai", lambda: DataEvents(_openai_error, done=True),
    kinds.chat_request, kinds.chat_answer, kinds.chat_event,
)  # fmt: skip
OPENAI_RESPONSES = NativeAPI(
    "openai_responses", ResponsesEvents,
    kinds.responses_request, kinds.responses_answer, kinds.responses_event,
)  # fmt: skip
GEMINI = NativeAPI(
    "gemini", lambda: DataEvents(_gemini_error, done=False),
    kinds.gemini_request, kinds.gemini_answer, kinds.gemini_answer,
)  # fmt: skip

"""`openai/`: any OpenAI-compatible upstream.

The request body is relayed as the client sent it, unknown fields included,
with two changes: `model` becomes the upstream's model name and streams ask
for usage (where the upstream accepts `stream_options`), so that billing never
has to guess. What sets one compatible upstream apart from another, its
default base URL and quirks, is a `Dialect`; Azure reuses the request and
stream handling through `fetch_completion`, `stream_payload` and
`OpenAIChunkStream`. The Responses API (`/responses`) is relayed the same way,
body and events as they came, where the upstream speaks it (`fetch_response`,
`ResponseEventStream`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from trigate.errors import UpstreamError
from trigate.forms import StreamedFile, form_boundary, form_parts, streamed_form
from trigate.providers.base import (
    Batches,
    Completion,
    Embeddings,
    ImageEdits,
    Images,
    Moderations,
    NativeEvent,
    NativeResponses,
    Provider,
    RealtimeEndpoint,
    Speech,
    SSEChunkStream,
    StreamRead,
    TextCompletions,
    Transcriptions,
    UpstreamClient,
    parse_chunk,
    read_body,
    read_json_object,
)
from trigate.sse import ServerSentEvent, SSEDecoder

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

DEFAULT_API_BASE = "https://api.openai.com/v1"
DONE = "[DONE]"
# The events that end a Responses API stream.
FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


@dataclass(frozen=True, slots=True)
class Dialect:
    """What sets one OpenAI-compatible upstream apart from another."""

    # None: there is no public endpoint, so every deployment must name its `api_base`.
    api_base: str | None = DEFAULT_API_BASE
    # Some upstreams reject `stream_options`; without it the gateway counts what they omit.
    stream_options: bool = True
    # Prefixed to bare model names (Fireworks names models `accounts/<owner>/models/<name>`).
    model_namespace: str = ""
    # Whether the upstream speaks the Responses API unless `model_info` says otherwise.
    responses: bool = False
    # Whether the upstream serves the Realtime API (`/realtime`, a WebSocket).
    realtime: bool = False

    def model_name(self, name: str) -> str:
        if self.model_namespace and "/" not in name:
            return f"{self.model_namespace}{name}"
        return name


OPENAI = Dialect(responses=True, realtime=True)


class ResponsesAPI(NativeResponses):
    """The Responses API of an upstream that speaks it, OpenAI's or Azure's: the body goes
    with `model` replaced, and the answer, events or deletion come back as they came.
    An adapter sets `_model`, `_responses_upstream` and `_compact_upstream`."""

    _model: str
    _responses_upstream: UpstreamClient
    _compact_upstream: UpstreamClient

    async def respond(self, body: dict[str, Any]) -> Completion:
        return await fetch_response(self._responses_upstream, {**body, "model": self._model})

    async def open_response_stream(self, body: dict[str, Any]) -> ResponseEventStream:
        payload = {**body, "model": self._model, "stream": True}
        return ResponseEventStream(await self._responses_upstream.post_stream(payload))

    async def delete_response(self, response_id: str) -> None:
        await self._responses_upstream.delete(response_id)

    async def compact(self, body: dict[str, Any]) -> Completion:
        return await fetch_response(self._compact_upstream, {**body, "model": self._model})


class MediaAPI(Images, ImageEdits, Moderations, Speech, Transcriptions):
    """OpenAI's image, moderation and speech endpoints, which OpenAI and Azure serve alike:
    the body goes with `model` replaced, and the answer comes back as it came. An adapter
    sets `_model` and calls `_connect_media`."""

    _model: str
    _image_upstream: UpstreamClient
    _image_edit_upstream: UpstreamClient
    _moderation_upstream: UpstreamClient
    _speech_upstream: UpstreamClient
    _transcription_upstream: UpstreamClient
    _translation_upstream: UpstreamClient

    def _connect_media(self, client: Callable[[str], UpstreamClient]) -> None:
        """Each endpoint's `UpstreamClient`, made by `client` for its path."""
        self._image_upstream = client("images/generations")
        self._image_edit_upstream = client("images/edits")
        self._moderation_upstream = client("moderations")
        self._speech_upstream = client("audio/speech")
        self._transcription_upstream = client("audio/transcriptions")
        self._translation_upstream = client("audio/translations")

    async def generate_images(self, body: dict[str, Any]) -> Completion:
        return await fetch_completion(self._image_upstream, {**body, "model": self._model})

    async def edit_images(self, form: dict[str, Any]) -> Completion:
        fields, files = form_parts({**form, "model": self._model})
        raw, data = await read_json_object(await self._image_edit_upstream.post_form(fields, files))
        return Completion(body=data, raw=raw)

    async def moderate(self, body: dict[str, Any]) -> Completion:
        return await fetch_completion(self._moderation_upstream, {**body, "model": self._model})

    async def open_speech(self, body: dict[str, Any]) -> httpx.Response:
        return await self._speech_upstream.post({**body, "model": self._model})

    async def transcribe(self, form: dict[str, Any], task: str) -> Completion:
        upstream = (
            self._translation_upstream if task == "translations" else self._transcription_upstream
        )
        fields = {**form, "model": self._model}
        name, upload = next(
            (name, value) for name, value in fields.items() if isinstance(value, StreamedFile)
        )
        del fields[name]
        boundary = form_boundary()
        content = streamed_form(fields, name, upload, boundary)
        response = await upstream.post_streamed(
            content, f"multipart/form-data; boundary={boundary.decode()}"
        )
        return await read_answer(response)


class BatchAPI(Batches):
    """OpenAI's Files and Batch APIs, which OpenAI and Azure serve alike. An adapter sets
    `_files_upstream` and `_batches_upstream`."""

    _files_upstream: UpstreamClient
    _batches_upstream: UpstreamClient

    async def upload_file(self, form: dict[str, Any]) -> Completion:
        fields, files = form_parts(form)
        return await _read(self._files_upstream.post_form(fields, files))

    async def retrieve_file(self, file_id: str) -> Completion:
        return await _read(self._files_upstream.send("GET", file_id))

    async def file_content(self, file_id: str) -> httpx.Response:
        # Relayed to the client, or summed line by line for a batch's bill: never held
        # whole, so a file larger than a whole answer may be is read all the same.
        return await self._files_upstream.send("GET", file_id, "content", read_as_stream=True)

    async def delete_file(self, file_id: str) -> Completion:
        return await _read(self._files_upstream.send("DELETE", file_id))

    async def create_batch(self, body: dict[str, Any]) -> Completion:
        return await _read(self._batches_upstream.send("POST", payload=body))

    async def retrieve_batch(self, batch_id: str) -> Completion:
        return await _read(self._batches_upstream.send("GET", batch_id))

    async def cancel_batch(self, batch_id: str) -> Completion:
        return await _read(self._batches_upstream.send("POST", batch_id, "cancel"))


async def _read(sent: Awaitable[httpx.Response]) -> Completion:
    raw, data = await read_json_object(await sent)
    return Completion(body=data, raw=raw)


class OpenAICompatible(Provider, TextCompletions, Embeddings, ResponsesAPI, MediaAPI, BatchAPI):
    """Adapter for one OpenAI-compatible deployment; it serves the Responses API natively
    where its dialect (OpenAI's) or its `model_info` says the upstream speaks it."""

    def __init__(
        self,
        params: LiteLLMParams,
        transport: httpx.AsyncBaseTransport,
        counter: TokenCounter,
        dialect: Dialect = OPENAI,
    ) -> None:
        base = params.api_base or dialect.api_base
        if not base:
            raise ValueError(f"`{params.provider}/` models need an `api_base`")
        self._model = dialect.model_name(params.upstream_model)
        self._stream_options = dialect.stream_options
        self.responses_by_default = dialect.responses
        auth = {"authorization": f"Bearer {params.api_key}"} if params.api_key else {}
        headers = upstream_headers(params, auth)
        base = base.rstrip("/")

        def client(path: str) -> UpstreamClient:
            return UpstreamClient(transport, f"{base}/{path}", headers, params.timeout)

        self._upstream = client("chat/completions")
        self._text_upstream = client("completions")
        self._embeddings_upstream = client("embeddings")
        self._responses_upstream = client("responses")
        self._compact_upstream = client("responses/compact")
        self._connect_media(client)
        self._files_upstream = client("files")
        self._batches_upstream = client("batches")
        self._realtime: RealtimeEndpoint | None = None
        if dialect.realtime:
            url = f"{websocket_url(base)}/realtime?model={quote(self._model, safe='')}"
            self._realtime = RealtimeEndpoint(url, realtime_headers(headers))

    def realtime_endpoint(self) -> RealtimeEndpoint | None:
        return self._realtime

    async def complete(self, body: dict[str, Any]) -> Completion:
        return await fetch_completion(self._upstream, {**body, "model": self._model})

    async def open_stream(self, body: dict[str, Any]) -> OpenAIChunkStream:
        payload = stream_payload(body, self._model, stream_options=self._stream_options)
        return OpenAIChunkStream(await self._upstream.post_stream(payload), passes=True)

    async def complete_text(self, body: dict[str, Any]) -> Completion:
        """Legacy `/completions`; the body is relayed as it came, like chat's."""
        return await fetch_completion(self._text_upstream, {**body, "model": self._model})

    async def open_text_stream(self, body: dict[str, Any]) -> OpenAIChunkStream:
        payload = stream_payload(body, self._model, stream_options=self._stream_options)
        return OpenAIChunkStream(await self._text_upstream.post_stream(payload), passes=True)

    async def embed(self, body: dict[str, Any]) -> Completion:
        return await fetch_completion(self._embeddings_upstream, {**body, "model": self._model})


def websocket_url(base: str) -> str:
    """An HTTP base URL as its WebSocket one (https to wss, http to ws)."""
    scheme, _, rest = base.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}"


def realtime_headers(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The deployment's credentials and own headers, without those of a JSON request."""
    dropped = {"content-type", "accept-encoding"}
    return tuple((name, value) for name, value in headers.items() if name.lower() not in dropped)


def upstream_headers(params: LiteLLMParams, auth: dict[str, str]) -> dict[str, str]:
    """JSON in, no compression, the upstream's credentials, then the deployment's own
    `extra_headers`, which may override any of them."""
    headers = {"content-type": "application/json", "accept-encoding": "identity", **auth}
    return headers | (params.extra_headers or {})


async def fetch_completion(upstream: UpstreamClient, payload: dict[str, Any]) -> Completion:
    """POST a request and keep the upstream's bytes for relaying."""
    raw, data = await read_json_object(await upstream.post(payload))
    return Completion(body=data, raw=raw)


async def read_answer(response: httpx.Response) -> Completion:
    """An answer that is JSON, or text (a transcription's `text`, `srt` or `vtt` format):
    its bytes and media type kept for relaying, its JSON object read where it is one."""
    media_type = response.headers.get("content-type", "application/json")
    if media_type.partition(";")[0].strip().lower() == "application/json":
        raw, data = await read_json_object(response)
        return Completion(body=data, raw=raw, media_type=media_type)
    return Completion(body={}, raw=await read_body(response), media_type=media_type)


async def fetch_response(upstream: UpstreamClient, payload: dict[str, Any]) -> Completion:
    """A Responses API request, answered with the upstream's own Response and bytes; its
    usage is metered in chat completions' words."""
    raw, data = await read_json_object(await upstream.post(payload))
    usage = data.get("usage")
    metered = chat_usage(usage) if isinstance(usage, dict) else None
    return Completion(body=data, raw=raw, native=True, native_usage=metered)


def chat_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A Response's usage (input, cached input, output and reasoning tokens) in chat
    completions' words, which the meter and the price formula read."""
    given = usage.get("input_tokens_details")
    cached = given.get("cached_tokens") if isinstance(given, dict) else None
    made = usage.get("output_tokens_details")
    reasoning = made.get("reasoning_tokens") if isinstance(made, dict) else None
    return {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def stream_payload(body: dict[str, Any], model: str, *, stream_options: bool) -> dict[str, Any]:
    """The streamed request: usage asked for where the upstream takes `stream_options`,
    and the client's own `stream_options` dropped where it would be rejected."""
    payload = {**body, "model": model, "stream": True}
    if not stream_options:
        payload.pop("stream_options", None)
        return payload
    options = body.get("stream_options")
    payload["stream_options"] = (
        {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    )
    return payload


class OpenAIChunkStream(SSEChunkStream):
    """An upstream SSE response, decoded into batches of OpenAI chunk dicts; with
    `passes`, plain events (`SSEDecoder.plain`) with no usage and no error in them are
    kept as they came, one bytes item for those of one read (`ChunkStream`)."""

    def __init__(self, response: httpx.Response, *, passes: bool = False) -> None:
        super().__init__(response, _parse_events)
        self._passes = passes

    def _passable(self, events: bytes) -> bool:
        if events.find(b'"usage"') < 0 and events.find(b'"error"') < 0:
            return True  # two searches where `_first_mark` counts and finds
        return _first_mark(events, len(events)) < 0

    def _read(self, decoder: SSEDecoder, raw: bytes) -> StreamRead:
        plain = decoder.plain(raw) if self._passes else None
        if plain is None:
            return self._translate(decoder.feed(raw))
        passed, done = plain
        rest = b"" if done or passed == len(raw) else raw[passed:]
        # From the first event that carries usage or an error on, the events are read.
        if passed and (mark := _first_mark(raw, passed)) >= 0:
            passed = raw.rfind(b"\n", 0, mark) + 1
            rest, done = raw[passed:], False
        chunks: list[Any] = []
        if passed:
            chunks.append(raw if passed == len(raw) else raw[:passed])
        if not rest:
            return StreamRead(chunks, done=done)
        read = self._translate(decoder.feed(rest))
        if not chunks:
            return read
        return StreamRead(chunks + read.chunks, read.done, read.failure)


def _first_mark(raw: bytes, end: int) -> int:
    """Where in plain events `raw[:end]` the first thing the gateway must act on is, or -1:
    an error, or usage (a `"usage":null`, which OpenAI puts in every chunk of a stream
    that asks for usage, says none). A string value that holds either name has its
    quotes escaped, so only a key is found."""
    error = raw.find(b'"error"', 0, end)
    usages = raw.count(b'"usage"', 0, end)
    if not usages or usages == raw.count(b'"usage":null', 0, end):
        return error
    usage = raw.find(b'"usage"', 0, end)
    while raw.startswith(b'"usage":null', usage):
        usage = raw.find(b'"usage"', usage + 1, end)
    return usage if error < 0 else min(error, usage)


def _parse_events(events: list[ServerSentEvent]) -> StreamRead:
    chunks: list[dict[str, Any]] = []
    for event in events:
        if event.data == DONE:
            return StreamRead(chunks, done=True)
        try:
            chunks.append(parse_chunk(event.data))
        except UpstreamError as failure:
            # The chunks before the failure still reach the client, and are billed.
            return StreamRead(chunks, failure=failure)
    return StreamRead(chunks)


class ResponseEventStream(SSEChunkStream):
    """An upstream Responses API stream, read as its own events (`NativeEvent`s), each
    relayed as it came; the final Response's usage is kept for metering. A stream
    that ends before its final event was cut short: the client gets `response.failed`."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(
            response,
            _response_events,
            unfinished="The upstream's Responses stream ended before its final event.",
        )


def _response_events(events: list[ServerSentEvent]) -> StreamRead:
    batch: list[Any] = []
    for sse in events:
        try:
            data = parse_chunk(sse.data)
        except UpstreamError as failure:
            return StreamRead(batch, failure=failure)
        kind = data.get("type")
        if kind == "error":
            # The relay ends the stream with the failure, as a `response.failed`.
            message = data.get("message") or data.get("code") or "an error event"
            return StreamRead(batch, failure=UpstreamError(f"The upstream failed: {message}"))
        name = sse.event if sse.event != "message" else str(kind)
        frame = f"event: {name}\ndata: {sse.data}\n\n".encode()
        response = data.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
        metered = chat_usage(usage) if isinstance(usage, dict) else None
        batch.append(NativeEvent(name, data, frame, metered))
        if kind in FINAL_EVENTS:
            return StreamRead(batch, done=True)
    return StreamRead(batch)

"""What every provider module offers the gateway, and the helpers they share.

A provider adapter is built once per deployment, so URLs, headers and
timeouts are computed at start-up rather than on every request. Adapters speak
OpenAI's shapes to the rest of the gateway: a non-stream call returns a
`Completion`, a stream call returns a `ChunkStream` of OpenAI chunk dicts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import quote

import httpx
import orjson

from trigate.errors import (
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
    from_upstream_status,
)
from trigate.nesting import deeper_than, may_nest_deeper
from trigate.sse import ServerSentEvent, SSEDecoder, plain_array, plain_payloads
from trigate.transport import (
    READ_AS_STREAM,
    ResponseTooLarge,
    read_whole_body,
    waits_next_of,
)

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

SSE = "text/event-stream"
# The client's headers that the API layer lets reach the upstream of the request in
# hand: set per request, read by every `UpstreamClient`, so no provider method needs
# them as a parameter. Empty unless `forward_client_headers_to_llm_api` allows some.
forwarded_headers: ContextVar[Mapping[str, str]] = ContextVar(
    "forwarded_headers", default=MappingProxyType({})
)

# How much of an upstream's error body is worth reading and quoting.
ERROR_BODY_LIMIT = 64 * 1024
ERROR_MESSAGE_LIMIT = 1000


@dataclass(slots=True)
class Completion:
    """A finished chat completion in OpenAI's shape."""

    body: dict[str, Any]
    # The upstream's own bytes, relayed untouched when nothing needed changing.
    raw: bytes | None = None
    # True when `body` is in the client's own API (a native Anthropic message), not
    # OpenAI's; its usage for metering is then `native_usage`, in OpenAI's shape.
    native: bool = False
    native_usage: dict[str, Any] | None = None
    # The answer's media type where it need not be JSON (a transcription as text or SRT).
    media_type: str | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        if self.native:
            return self.native_usage
        usage = self.body.get("usage")
        return usage if isinstance(usage, dict) else None


@dataclass(slots=True)
class NativeEvent:
    """A stream event in the client's own API, relayed as the upstream sent it. `usage`
    is the usage so far, in OpenAI's shape, when this event reported some."""

    name: str
    data: dict[str, Any]
    frame: bytes
    usage: dict[str, Any] | None = None


# The deepest an upstream's JSON may nest. orjson reads 1024 levels but writes only 254,
# and an answer is written again (to the client, a stored response, a spend row, a
# cache entry) inside a few levels of its own: an answer deeper than that would be a 500
# of ours, where it is the upstream's fault. No model's answer nests near this.
UPSTREAM_NESTING = 128


def upstream_json(raw: bytes | bytearray | str) -> Any:
    """An upstream's JSON text, decoded as orjson does (its JSONDecodeError for text that
    is not JSON), or the upstream's error (a 502) for JSON nested deeper than
    `UPSTREAM_NESTING`. Two bracket counts in C for a usual answer; a walk only for one
    with more brackets than the bound."""
    value = orjson.loads(raw)
    if may_nest_deeper(raw, UPSTREAM_NESTING) and deeper_than(value, UPSTREAM_NESTING):
        raise UpstreamError(
            f"The upstream answered with JSON nested more than {UPSTREAM_NESTING} levels deep."
        )
    return value


def passed_chunks(events: bytes) -> list[dict[str, Any]]:
    """The chunks of plain events kept as they came (`ChunkStream`): read as one JSON
    array, or one by one to say which is not a JSON object."""
    try:
        chunks = upstream_json(plain_array(events))
    except orjson.JSONDecodeError:
        chunks = None
    if isinstance(chunks, list) and all(isinstance(chunk, dict) for chunk in chunks):
        return chunks
    return [parse_chunk(payload) for payload in plain_payloads(events)]


class ChunkStream(Protocol):
    """An open upstream stream, read as batches of OpenAI `chat.completion.chunk` dicts,
    or `NativeEvent`s. An item that is bytes is OpenAI chunks as the upstream sent them:
    whole SSE events, each one `data: {...}` line holding a chunk that carries no usage
    and no error. A relay whose client speaks OpenAI's API sends them on as they came,
    with no parse and no re-encoding; anything else reads them (`passed_chunks`).

    Each batch holds what one upstream read delivered, so a burst of tokens is
    handled once, not token by token. Iterating ends at the upstream's end of
    stream; `aclose` releases the connection and must be called however the
    reading ended.
    """

    def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]: ...

    def waits_next(self) -> bool:
        """Whether the next batch has yet to arrive, as far as the stream can tell (the
        upstream trickles, as a model's tokens do): a relay then writes each batch to the
        client as it comes, where batches that follow one another at once are better
        written together. False when it cannot tell."""
        ...

    async def aclose(self) -> None: ...


class StreamRead(NamedTuple):
    """What one upstream read held: its chunks (or native events), then perhaps the end
    of the stream or a failure."""

    chunks: list[Any]
    done: bool = False
    failure: UpstreamError | None = None


class SSEChunkStream:
    """An upstream SSE response read as batches, one per upstream read.

    `translate` turns one read's events into a `StreamRead`; a failure ends the stream
    after the chunks before it, which still reach the client and are billed. `tail`
    adds what only the end of the stream can say (Gemini's final usage chunk).
    `unfinished`, when given, is the failure of a stream that ends before a read
    says `done`: an API whose streams close with an event of their own was cut short.
    """

    # Whether reads that are plain events only are kept as they came (`_pass`).
    _passes = False
    # `ChunkStream.waits_next`, the transport's own.
    waits_next: Callable[[], bool]

    def __init__(
        self,
        response: httpx.Response,
        translate: Callable[[list[ServerSentEvent]], StreamRead],
        tail: Callable[[], list[Any]] | None = None,
        unfinished: str | None = None,
    ) -> None:
        self._response = response
        self.waits_next = waits_next_of(response)
        self._translate = translate
        self._tail = tail
        self._unfinished = unfinished

    async def __aiter__(self) -> AsyncIterator[list[Any]]:
        decoder = SSEDecoder()
        # The transport's byte stream itself: httpx's `aiter_raw` would add a generator, a
        # chunker and its bookkeeping to every read, and the body is never encoded.
        body = self._response.stream
        assert isinstance(body, httpx.AsyncByteStream)
        try:
            async for raw in body:
                if self._passes and decoder.whole_plain(raw) and self._passable(raw):
                    # The common read, from an upstream that speaks OpenAI's API.
                    yield [raw]
                    continue
                read = self._read(decoder, raw)
                if read.chunks:
                    yield read.chunks
                if read.failure is not None:
                    raise read.failure
                if read.done:
                    return
        except httpx.HTTPError as error:
            raise translate_transport_error(error) from error
        read = self._translate(decoder.flush())
        if not decoder.seen_event:
            # A 200 whose body held no event at all is no answer, whatever it held.
            raise UpstreamError("The upstream's stream ended without sending any event.")
        chunks = [*read.chunks, *(self._tail() if self._tail else ())]
        if chunks:
            yield chunks
        if read.failure is not None:
            raise read.failure
        if self._unfinished is not None and not read.done:
            raise UpstreamError(self._unfinished)

    def _read(self, decoder: SSEDecoder, raw: bytes) -> StreamRead:
        """What one upstream read holds."""
        return self._translate(decoder.feed(raw))

    def _passable(self, events: bytes) -> bool:
        """Whether plain events may be passed on as they came."""
        return False

    async def aclose(self) -> None:
        await self._response.aclose()


def parse_chunk(data: str | bytes) -> dict[str, Any]:
    """One stream event's JSON object; an error event (with no choices) is the upstream's
    failure mid-stream."""
    try:
        chunk = upstream_json(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream sent a stream event that is not JSON.") from None
    if not isinstance(chunk, dict):
        raise UpstreamError("The upstream sent a stream event that is not a JSON object.")
    error = chunk.get("error")
    if error is not None and "choices" not in chunk:
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise UpstreamError(f"The upstream failed mid-stream: {message}")
    return chunk


# What a provider can do, as types: an adapter class lists the abilities it has among its
# bases, so the type checker holds each method to its protocol, and `Abilities.of` finds
# them once per deployment, at start-up; a request looks them up as attributes, not names.


@runtime_checkable
class Provider(Protocol):
    """One deployment's adapter to its upstream: every provider serves chat completions."""

    async def complete(self, body: dict[str, Any]) -> Completion: ...

    async def open_stream(self, body: dict[str, Any]) -> ChunkStream: ...


@runtime_checkable
class TextCompletions(Protocol):
    """The legacy `/v1/completions` API."""

    async def complete_text(self, body: dict[str, Any]) -> Completion: ...

    async def open_text_stream(self, body: dict[str, Any]) -> ChunkStream: ...


@runtime_checkable
class Embeddings(Protocol):
    """`/v1/embeddings`; the answer is OpenAI's embedding list in a `Completion`."""

    async def embed(self, body: dict[str, Any]) -> Completion: ...


@runtime_checkable
class NativeMessages(Protocol):
    """Anthropic's Messages API spoken by the upstream itself: the client's body goes as
    it came, and the answer (a `Completion` with `native` set) or the stream's
    `NativeEvent`s come back as they came. `headers` are the client's own
    `anthropic-version` and `anthropic-beta`, which say how its body is to be read."""

    async def messages(self, body: dict[str, Any], headers: Mapping[str, str]) -> Completion: ...

    async def open_messages_stream(
        self, body: dict[str, Any], headers: Mapping[str, str]
    ) -> ChunkStream: ...


@runtime_checkable
class Rerank(Protocol):
    """`/v1/rerank` in Cohere's shape, as LiteLLM serves it: the answer (`id`, `results` of
    `index` and `relevance_score`, `meta`) in a native `Completion`, whose usage in
    OpenAI's shape carries the searches billed (`search_units`) and any tokens."""

    async def rerank(self, body: dict[str, Any]) -> Completion: ...


# The `model_info` key that says whether a deployment's upstream speaks the Responses
# API: true for an OpenAI-compatible server that does, false for an `openai/` or `azure/`
# one that does not.
SUPPORTS_RESPONSES_API = "supports_responses_api"


@runtime_checkable
class NativeResponses(Protocol):
    """OpenAI's Responses API spoken by the upstream itself: the client's body goes as it
    came (with the deployment's model), and the answer (a `Completion` with `native`
    set) or the stream's `NativeEvent`s come back as they came. `responses_by_default`
    says whether the upstream speaks it unless `model_info` says otherwise."""

    responses_by_default: bool

    async def respond(self, body: dict[str, Any]) -> Completion: ...

    async def open_response_stream(self, body: dict[str, Any]) -> ChunkStream: ...

    async def delete_response(self, response_id: str) -> None:
        """Delete a response the upstream stores, as `DELETE /responses/{id}` does."""
        ...

    async def compact(self, body: dict[str, Any]) -> Completion:
        """`POST /responses/compact`: the conversation compacted by the upstream, its
        answer (a `response.compaction`) as it came."""
        ...


@runtime_checkable
class Images(Protocol):
    """`/images/generations`: the answer is OpenAI's image list, `url` or `b64_json` as
    the client asked (where the upstream can give both)."""

    async def generate_images(self, body: dict[str, Any]) -> Completion: ...


@runtime_checkable
class ImageEdits(Protocol):
    """`/images/edits`: a form (`trigate.forms`) with its image files; OpenAI's image list."""

    async def edit_images(self, form: dict[str, Any]) -> Completion: ...


@runtime_checkable
class Moderations(Protocol):
    """`/moderations`: OpenAI's moderation result, as it came."""

    async def moderate(self, body: dict[str, Any]) -> Completion: ...


@runtime_checkable
class Speech(Protocol):
    """`/audio/speech`: the upstream's open response, whose body is the audio as it is
    produced; the caller reads and closes it."""

    async def open_speech(self, body: dict[str, Any]) -> httpx.Response: ...


@runtime_checkable
class Transcriptions(Protocol):
    """`/audio/transcriptions` and `/audio/translations` (`task`): a form whose file is a
    `StreamedFile` (`trigate.forms`), sent on as the client uploads it. The answer is
    JSON or, as the client's `response_format` asks, text (`Completion.media_type`)."""

    async def transcribe(self, form: dict[str, Any], task: str) -> Completion: ...


@runtime_checkable
class Batches(Protocol):
    """OpenAI's Files and Batch APIs on the deployment's upstream: each answer is the
    upstream's object, as it came; a file's content is the open response."""

    async def upload_file(self, form: dict[str, Any]) -> Completion: ...

    async def retrieve_file(self, file_id: str) -> Completion: ...

    async def file_content(self, file_id: str) -> httpx.Response: ...

    async def delete_file(self, file_id: str) -> Completion: ...

    async def create_batch(self, body: dict[str, Any]) -> Completion: ...

    async def retrieve_batch(self, batch_id: str) -> Completion: ...

    async def cancel_batch(self, batch_id: str) -> Completion: ...


@dataclass(frozen=True, slots=True)
class RealtimeEndpoint:
    """Where a deployment's Realtime API WebSocket is, and the head to open it with."""

    url: str
    headers: tuple[tuple[str, str], ...]


@runtime_checkable
class Realtime(Protocol):
    """OpenAI's Realtime API (`/v1/realtime`, a WebSocket); None where the upstream has none."""

    def realtime_endpoint(self) -> RealtimeEndpoint | None: ...


@dataclass(frozen=True, slots=True)
class Abilities:
    """What one deployment's provider can do; None where it cannot."""

    chat: Provider
    text: TextCompletions | None
    embeddings: Embeddings | None
    messages: NativeMessages | None
    responses: NativeResponses | None = None
    rerank: Rerank | None = None
    images: Images | None = None
    image_edits: ImageEdits | None = None
    moderations: Moderations | None = None
    speech: Speech | None = None
    transcriptions: Transcriptions | None = None
    batches: Batches | None = None
    realtime: Realtime | None = None

    @classmethod
    def of(cls, provider: Provider, model_info: Mapping[str, Any] | None = None) -> Abilities:
        """By protocol checks, which are slow: once per deployment, never per request.
        The deployment's `model_info` may say its upstream speaks the Responses API."""
        responses = provider if isinstance(provider, NativeResponses) else None
        if responses is not None:
            default = responses.responses_by_default
            if (model_info or {}).get(SUPPORTS_RESPONSES_API, default) is not True:
                responses = None
        return cls(
            chat=provider,
            text=provider if isinstance(provider, TextCompletions) else None,
            embeddings=provider if isinstance(provider, Embeddings) else None,
            messages=provider if isinstance(provider, NativeMessages) else None,
            responses=responses,
            rerank=provider if isinstance(provider, Rerank) else None,
            images=provider if isinstance(provider, Images) else None,
            image_edits=provider if isinstance(provider, ImageEdits) else None,
            moderations=provider if isinstance(provider, Moderations) else None,
            speech=provider if isinstance(provider, Speech) else None,
            transcriptions=provider if isinstance(provider, Transcriptions) else None,
            batches=provider if isinstance(provider, Batches) else None,
            realtime=_realtime(provider),
        )

    def supported_endpoints(self) -> list[str]:
        """The OpenAI paths this deployment serves, as LiteLLM's `supported_endpoints`
        names them (`/model/info`)."""
        served = {
            "/v1/chat/completions": True,
            "/v1/completions": self.text is not None,
            "/v1/embeddings": self.embeddings is not None,
            "/v1/messages": True,
            "/v1/responses": True,
            "/v1/images/generations": self.images is not None,
            "/v1/images/edits": self.image_edits is not None,
            "/v1/moderations": self.moderations is not None,
            "/v1/audio/speech": self.speech is not None,
            "/v1/audio/transcriptions": self.transcriptions is not None,
            "/v1/audio/translations": self.transcriptions is not None,
            "/v1/files": self.batches is not None,
            "/v1/batches": self.batches is not None,
            "/v1/realtime": self.realtime is not None,
        }
        return [path for path, serves in served.items() if serves]


def _realtime(provider: Provider) -> Realtime | None:
    """The provider's Realtime API, where its upstream has one."""
    if isinstance(provider, Realtime) and provider.realtime_endpoint() is not None:
        return provider
    return None


class ProviderFactory(Protocol):
    def __call__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> Provider: ...


class UpstreamClient:
    """One deployment's way to its upstream: a fixed URL, headers and timeouts, sent
    straight to the worker's shared transport.

    httpx's `AsyncClient` adds per-request work the gateway never uses (cookie jars,
    redirects, auth flows, event hooks), so requests go to the transport directly;
    they are still httpx `Request` and `Response` objects.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        url: str,
        headers: dict[str, str],
        timeout: float,
        *,
        sign: Callable[[str, dict[str, str], bytes], dict[str, str]] | None = None,
        read_error: Callable[[httpx.Response], Awaitable[UpstreamError]] | None = None,
        authorize: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
    ) -> None:
        self._transport = transport
        self._url_text = url
        self._url = httpx.URL(url)
        self._raw_headers = headers
        self._headers = httpx.Headers(headers)
        # The deployment's own head as httpx completes it (Host first, Content-Length
        # last), built once: a request that adds nothing to it copies it and sets its
        # length, where httpx would rebuild and re-check it (about 9 us a request).
        # Not where the deployment sets its own framing, which httpx then keeps.
        framing = {"content-length", "transfer-encoding"}
        self._prepared: httpx.Headers | None = None
        if sign is None and not framing.intersection(name.lower() for name in headers):
            self._prepared = httpx.Request("POST", self._url, headers=headers, content=b"-").headers
        # Bedrock signs each request (SigV4 covers the date and the body); Vertex AI sends
        # an OAuth token that lasts an hour, so its headers are asked for per request.
        self._sign = sign
        self._authorize = authorize
        self._read_error = read_error or error_from_response
        # Each read may take the deployment's whole `timeout`; connecting, at most 10 s.
        connect = min(timeout, 10.0)
        self._timeout = {"connect": connect, "read": timeout, "write": timeout, "pool": timeout}

    async def post(
        self, payload: dict[str, Any], overrides: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """Send a JSON body; the response is open (streamed) and its status checked.
        `overrides` (lower-case names) replace the deployment's headers for this request."""
        if self._authorize is not None:
            # The credential last: nothing the client sends may replace it.
            overrides = {**(overrides or {}), **(await self._authorize())}
        try:
            content = orjson.dumps(payload)
        except orjson.JSONEncodeError:
            # orjson writes at most 254 levels of nesting; the body parsed, but cannot go on.
            raise InvalidRequest(
                "The request is nested too deeply to forward (more than 254 levels)."
            ) from None
        raw = self._request_headers(overrides)
        if raw is self._raw_headers and self._prepared is not None:
            request = self._prepared_request(content)
        else:
            headers = self._sign(self._url_text, raw, content) if self._sign else raw
            request = httpx.Request(
                "POST",
                self._url,
                headers=headers,
                content=content,
                extensions={"timeout": self._timeout},
            )
        return await self._send(request)

    async def post_form(
        self, fields: Mapping[str, str | list[str]], files: list[tuple[str, Any]]
    ) -> httpx.Response:
        """Send a multipart/form-data body (`files`: field name and `UploadedFile`); httpx
        writes the form and its boundary, so the deployment's JSON content-type is not sent."""
        request = httpx.Request(
            "POST",
            self._url,
            headers=self._headers_but_content_type(),
            data=dict(fields),
            files=[(name, (f.filename, f.data, f.content_type)) for name, f in files],
            extensions={"timeout": self._timeout},
        )
        return await self._send(request)

    async def post_streamed(
        self, content: AsyncIterator[bytes], content_type: str
    ) -> httpx.Response:
        """Send a body made as it is sent (an upload relayed as it arrives), chunked: its
        length is not known until it has all been read."""
        request = httpx.Request(
            "POST",
            self._url,
            headers={**self._headers_but_content_type(), "content-type": content_type},
            content=content,
            extensions={"timeout": self._timeout},
        )
        return await self._send(request)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; the response is open, unless its status (400 or more) is the
        upstream's refusal, raised as the client's error with the response closed."""
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as error:
            raise translate_transport_error(error) from error
        response.request = request
        if response.status_code >= 400:
            try:
                raise await self._read_error(response)
            finally:
                await response.aclose()
        return response

    def _prepared_request(self, content: bytes) -> httpx.Request:
        """The request httpx would build from the deployment's headers and `content`."""
        assert self._prepared is not None
        headers = httpx.Headers(self._prepared)
        headers["Content-Length"] = str(len(content))
        request = httpx.Request(
            "POST",
            self._url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": self._timeout},
        )
        request.read()  # holds the body as bytes: the transport may resend it
        return request

    async def send(
        self,
        method: str,
        *segments: str,
        payload: dict[str, Any] | None = None,
        read_as_stream: bool = False,
    ) -> httpx.Response:
        """`method` on a resource under this client's URL (`segments` appended to its path,
        each quoted, its query kept), with a JSON body if given; the response is open and
        its status checked, as in `post`. `read_as_stream`: the caller reads the answer
        piece by piece, so the transport does not cap it as a whole answer."""
        path = "/".join([self._url.path.rstrip("/"), *(quote(s, safe="") for s in segments)])
        url = self._url.copy_with(path=path)
        content = orjson.dumps(payload) if payload is not None else None
        if content is None:
            headers = self._headers_but_content_type()
        else:
            headers = self._request_headers(None)
        extensions: dict[str, Any] = {"timeout": self._timeout}
        if read_as_stream:
            extensions[READ_AS_STREAM] = True
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions=extensions
        )
        return await self._send(request)

    async def delete(self, name: str) -> None:
        """DELETE the resource `name` under this client's URL (a stored response, say);
        the upstream's refusal is raised as it is for `post`."""
        url = self._url.copy_with(path=f"{self._url.path.rstrip('/')}/{quote(name, safe='')}")
        request = httpx.Request(
            "DELETE", url, headers=self._headers, extensions={"timeout": self._timeout}
        )
        response = await self._send(request)
        await response.aclose()

    def _request_headers(self, overrides: Mapping[str, str] | None) -> dict[str, str]:
        """The headers of one request: the client's forwarded ones under the deployment's
        own (its credentials are never the client's to replace), then `overrides`; the
        deployment's own dict itself when nothing is added, so its prebuilt `httpx.Headers`
        are sent as they are."""
        forwarded = forwarded_headers.get()
        if not forwarded and not overrides:
            return self._raw_headers
        own = {name.lower(): value for name, value in self._raw_headers.items()}
        return {**forwarded, **own, **(overrides or {})}

    def _headers_but_content_type(self) -> dict[str, str]:
        """A request's headers without the deployment's JSON content-type, for a body
        that is not JSON (a form, a relayed upload) or no body at all."""
        return {
            name: value
            for name, value in self._request_headers(None).items()
            if name.lower() != "content-type"
        }

    async def post_stream(
        self,
        payload: dict[str, Any],
        media_type: str = SSE,
        overrides: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """`post` for a stream: a success whose body is not of `media_type` (an HTML page
        from a proxy, a JSON answer that ignored `stream`) is the upstream's failure, a
        502, not a stream that happens to hold no events. A response without a
        content-type is given the benefit of the doubt."""
        response = await self.post(payload, overrides)
        declared = response.headers.get("content-type")
        if declared is None or _media_type(declared) == media_type:
            return response
        try:
            detail, _ = _error_details(await read_error_body(response))
        except httpx.HTTPError:
            detail = ""
        finally:
            await response.aclose()
        raise UpstreamError(
            f"The upstream answered a stream request with `{_media_type(declared)}`, not "
            f"`{media_type}`" + (f": {detail}" if detail else ".")
        )


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def translate_transport_error(error: httpx.HTTPError) -> UpstreamError:
    if isinstance(error, ResponseTooLarge):
        return UpstreamError(
            "The upstream's answer is larger than this gateway accepts "
            "(general_settings.max_upstream_response_size_mb)."
        )
    if isinstance(error, httpx.TimeoutException):
        return UpstreamTimeout(f"The upstream did not answer in time ({type(error).__name__}).")
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return UpstreamUnreachable("The upstream could not be reached.")
    return UpstreamError(f"The upstream connection failed ({type(error).__name__}).")


async def read_body(response: httpx.Response) -> bytes:
    """A non-stream answer's bytes; the response is closed either way."""
    try:
        return await read_whole_body(response)
    except httpx.HTTPError as error:
        raise translate_transport_error(error) from error
    finally:
        await response.aclose()


async def read_json_object(response: httpx.Response) -> tuple[bytes, dict[str, Any]]:
    """A non-stream answer's bytes and its JSON object; the response is closed either way."""
    raw = await read_body(response)
    try:
        data = upstream_json(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream answered with a body that is not JSON.") from None
    if not isinstance(data, dict):
        raise UpstreamError("The upstream answered with JSON that is not an object.")
    return raw, data


async def error_from_response(response: httpx.Response) -> UpstreamError:
    """Read (a bounded part of) an error response and turn it into the client's error."""
    return error_from_body(response, await read_error_body(response))


async def read_error_body(response: httpx.Response) -> bytes:
    """An error response's body, up to ERROR_BODY_LIMIT: enough to say what went wrong."""
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= ERROR_BODY_LIMIT:
            break
    return body


def error_from_body(
    response: httpx.Response, body: bytes, *, retry_after: float | None = None
) -> UpstreamError:
    """`retry_after`: how long a rate limit lasts, where the upstream says it elsewhere
    than in a Retry-After header."""
    message, code = _error_details(body)
    message = message or f"The upstream answered {response.status_code}."
    return from_upstream_status(
        response.status_code, message, response.headers, code, retry_after=retry_after
    )


def _error_details(body: bytes) -> tuple[str, str | None]:
    """The message and machine-readable code of an OpenAI-style error body."""
    text = body[:ERROR_MESSAGE_LIMIT].decode("utf-8", "replace").strip()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text, None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code") or error.get("type")
        return (
            message[:ERROR_MESSAGE_LIMIT] if isinstance(message, str) else text,
            code if isinstance(code, str) else None,
        )
    if isinstance(error, str):
        return error[:ERROR_MESSAGE_LIMIT], None
    return text, None

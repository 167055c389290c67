"""A surface: a model API a client speaks, as a codec the one pipeline drives.

The pipeline routes, limits and bills every request in OpenAI's chat shapes. A
`Surface` decodes a client's body into an `Exchange` (the request in those shapes, with
what the surface alone knows: which provider ability serves it, how its answer and
stream go back to the client, and for a surface with a native upstream, what that
upstream is sent instead). OpenAI's own surfaces (chat, completions, embeddings) need no
translation: their exchange is `OpenAIExchange`. Anthropic's Messages and OpenAI's
Responses API translate, and a deployment that speaks them natively is sent the
client's own body: their exchanges extend `TranslatedExchange`.

A new surface is one `Surface` (its `decode`, its error envelope) and one line in the
route table (`trigate.api.routes`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import orjson

from trigate.api.envelopes import JSON_HEADERS, Envelope
from trigate.errors import Failure, InvalidRequest, UpstreamError
from trigate.providers import (
    Abilities,
    ChunkStream,
    Completion,
    Embeddings,
    ImageEdits,
    Images,
    Moderations,
    Provider,
    Rerank,
    Speech,
    TextCompletions,
    Transcriptions,
)
from trigate.relay import FrameEncoder, StreamOutcome
from trigate.router.deployments import Deployment
from trigate.usage import Usage

if TYPE_CHECKING:
    from trigate.auth import Caller
    from trigate.gateway import Gateway

SSE_HEADERS: Mapping[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}

# The provider ability an operation is served by (a protocol of `trigate.providers`).
A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Operation(Generic[A]):
    """An API the gateway proxies: which of a deployment's abilities serves it, and how
    that ability is called, whole and, when the API streams, as a stream."""

    name: str
    ability: Callable[[Abilities], A | None]
    complete: Callable[[A, dict[str, Any]], Awaitable[Completion]]
    open_stream: Callable[[A, dict[str, Any]], Awaitable[ChunkStream]] | None = None
    # Its `gen_ai.operation.name` in OpenTelemetry's GenAI conventions.
    gen_ai_name: str = "chat"
    # LiteLLM's `call_type` for it, in spend logs.
    call_type: str = "completion"
    # Whether it is billed by output tokens at all (an embedding or an image has none
    # to reserve a budget for).
    has_output_tokens: bool = True

    def served_by(self, deployment: Deployment) -> A:
        """The deployment's ability; a provider without it cannot take the request, which
        is the client's 400, never retried nor held against the deployment."""
        ability = self.ability(deployment.abilities)
        if ability is None:
            raise UpstreamError(
                f"Deployment `{deployment.id}` ({deployment.params.provider}/) does not serve "
                f"{self.name} requests.",
                kind=Failure.BAD_REQUEST,
                code="unsupported_operation",
            )
        return ability

    async def stream_from(self, ability: A, body: dict[str, Any]) -> ChunkStream:
        if self.open_stream is None:
            # Only a streaming operation's exchange says `stream`; this is a bug if reached.
            raise TypeError(f"{self.name} requests cannot stream")
        return await self.open_stream(ability, body)


CHAT: Operation[Provider] = Operation(
    "chat completions",
    lambda abilities: abilities.chat,
    lambda provider, body: provider.complete(body),
    lambda provider, body: provider.open_stream(body),
)
TEXT_COMPLETIONS: Operation[TextCompletions] = Operation(
    "completions",
    lambda abilities: abilities.text,
    lambda provider, body: provider.complete_text(body),
    lambda provider, body: provider.open_text_stream(body),
    "text_completion",
    "text_completion",
)


def _unmetered(
    name: str,
    call_type: str,
    ability: Callable[[Abilities], A | None],
    complete: Callable[[A, dict[str, Any]], Awaitable[Completion]],
    gen_ai_name: str = "generate_content",
) -> Operation[A]:
    """An operation answered whole, with no output tokens to bill or reserve a budget for:
    what it is billed for is its input's tokens (an embedding) or its units (an image, a
    character of speech, a second of audio)."""
    return Operation(
        name,
        ability,
        complete,
        gen_ai_name=gen_ai_name,
        call_type=call_type,
        has_output_tokens=False,
    )


EMBEDDINGS: Operation[Embeddings] = _unmetered(
    "embeddings", "embeddings", lambda abilities: abilities.embeddings,
    lambda provider, body: provider.embed(body), gen_ai_name="embeddings",
)  # fmt: skip
IMAGES: Operation[Images] = _unmetered(
    "image generation", "image_generation", lambda abilities: abilities.images,
    lambda provider, body: provider.generate_images(body),
)  # fmt: skip
IMAGE_EDITS: Operation[ImageEdits] = _unmetered(
    "image edit", "image_edit", lambda abilities: abilities.image_edits,
    lambda provider, body: provider.edit_images(body),
)  # fmt: skip
# Speech streams through `SpeechExchange.open_stream`, which reads the ability itself.
SPEECH: Operation[Speech] = _unmetered(
    "speech", "speech", lambda abilities: abilities.speech, lambda provider, body: _not_whole()
)
TRANSCRIPTIONS: Operation[Transcriptions] = _unmetered(
    "transcription", "transcription", lambda abilities: abilities.transcriptions,
    lambda provider, body: provider.transcribe(body, "transcriptions"),
)  # fmt: skip
TRANSLATIONS: Operation[Transcriptions] = _unmetered(
    "translation", "translation", lambda abilities: abilities.transcriptions,
    lambda provider, body: provider.transcribe(body, "translations"),
)  # fmt: skip
MODERATIONS: Operation[Moderations] = _unmetered(
    "moderation", "moderation", lambda abilities: abilities.moderations,
    lambda provider, body: provider.moderate(body), gen_ai_name="moderation",
)  # fmt: skip
RERANK: Operation[Rerank] = _unmetered(
    "rerank", "rerank", lambda abilities: abilities.rerank,
    lambda provider, body: provider.rerank(body), gen_ai_name="rerank",
)  # fmt: skip


async def _not_whole() -> Completion:
    """Speech is never answered whole; reaching this is a bug."""
    raise TypeError("speech requests always stream")


class Exchange(Protocol):
    """One request as its surface decoded it, and how its answer goes back."""

    @property
    def requested(self) -> str:
        """The model the client named, before aliases and wildcards resolve it."""

    @property
    def body(self) -> dict[str, Any]:
        """The request in OpenAI's shapes: what limits count, hooks see, and a
        translating deployment is sent."""

    @property
    def operation(self) -> Operation[Any]: ...

    @property
    def stream(self) -> bool: ...

    @property
    def preferred(self) -> str | None:
        """The deployment to take while it is available: the one whose upstream holds
        what the request continues."""

    @property
    def has_native_path(self) -> bool:
        """Whether a deployment that speaks the client's own API is sent the client's
        own body rather than `body`."""

    @property
    def native_cacheable(self) -> bool:
        """Whether the response cache may keep an answer in the client's own API."""

    def native_request(self) -> dict[str, Any] | None:
        """The request in the client's own API, as a deployment that speaks it is sent it
        (a Responses request with the conversation it continues), for a hook that reads
        that API too (a guardrail): what the hook changes there is what that deployment
        is sent. None when the surface has no such request to offer."""

    def native_in_step(self) -> bool:
        """Whether `native_request`, as hooks left it, is still the request `body` is the
        translation of: hooks that changed `body` changed it alike, so a deployment that
        speaks the client's API may still be sent it (no `translate_only`)."""

    def translate_only(self) -> None:
        """A hook rewrote `body`: from now on every deployment is sent `body`, never the
        client's own, so a guardrail's change (masked PII) cannot be bypassed by a
        deployment that speaks the client's API. A request with no chat form is then
        refused (its error raised here)."""

    @property
    def carried_tokens(self) -> int:
        """Prompt tokens the upstream already holds, and bills, that `body` does not carry
        (a conversation continued by id): counted with the body's for limits."""

    def complete(self, deployment: Deployment) -> Awaitable[Completion]: ...

    async def open_stream(self, deployment: Deployment) -> tuple[ChunkStream, bool]:
        """The opened stream, and whether its events are in the client's own API."""

    def answer(self, completion: Completion, usage: Usage) -> bytes:
        """The client's answer body for a finished completion."""

    def frames(self, native: bool) -> FrameEncoder | None:
        """How a stream's chunks become the client's bytes (None: OpenAI's SSE)."""

    @property
    def stream_headers(self) -> Mapping[str, str]:
        """A streamed answer's headers: SSE's, unless the stream is something else
        (speech's audio)."""

    @property
    def answer_headers(self) -> Mapping[str, str]:
        """A whole answer's headers: JSON's, unless the answer is text (a transcription's)."""

    def bill(self, deployment: Deployment, completion: Completion | None, usage: Usage) -> Usage:
        """The usage to bill for an answer `deployment` gave (None: a stream's): as metered
        by tokens, or priced by the unit (images, characters, seconds)."""

    async def settled(self, answer: bytes) -> bytes:
        """Hears a successful whole answer after its record, and returns what the client
        gets: the Responses API stores it, and says `"store": false` if it could not."""

    async def finished(self, outcome: StreamOutcome) -> None:
        """Hears how a stream ended, after its record: the Responses API stores it."""


class Surface(Protocol):
    """A model API a client speaks: its errors' envelope and its request codec."""

    envelope: Envelope

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> Exchange:
        """Validate what the gateway reads of `body` (a 400 otherwise) and translate it."""


class PlainExchange:
    """What an exchange does unless it says otherwise: streams in SSE, answers in JSON,
    bills the usage as metered, keeps its answer nowhere, and offers hooks no request
    but `body`."""

    __slots__ = ()
    stream_headers: Mapping[str, str] = SSE_HEADERS
    answer_headers: Mapping[str, str] = JSON_HEADERS
    # Whether the response cache may keep an answer in the client's own API (not a
    # Response the upstream stores, whose id a hit would hand out again).
    native_cacheable: bool = True

    def bill(self, deployment: Deployment, completion: Completion | None, usage: Usage) -> Usage:
        return usage

    async def settled(self, answer: bytes) -> bytes:
        """Hears a whole answer, as `Exchange.settled` does."""
        return answer

    async def finished(self, outcome: StreamOutcome) -> None:
        """Hears a stream's end, as `Exchange.finished` does."""
        return None

    def native_request(self) -> dict[str, Any] | None:
        """No request but `body` is offered to hooks (`Exchange.native_request`): a hook's
        change to `body` sends every deployment the translation."""
        return None

    def native_in_step(self) -> bool:
        return False


class OpenAIExchange(PlainExchange):
    """A request in OpenAI's own API: sent as it came, answered as the upstream answered."""

    __slots__ = ("body", "operation", "requested", "stream")
    preferred: ClassVar[str | None] = None
    has_native_path: ClassVar[bool] = False
    carried_tokens: ClassVar[int] = 0

    def __init__(
        self,
        requested: str,
        body: dict[str, Any],
        operation: Operation[Any],
        stream: bool,
    ) -> None:
        self.requested = requested
        self.body = body
        self.operation = operation
        self.stream = stream

    def complete(self, deployment: Deployment) -> Awaitable[Completion]:
        # The provider's own coroutine, not one of ours around it: this is the hot path.
        operation = self.operation
        return operation.complete(operation.served_by(deployment), self.body)

    async def open_stream(self, deployment: Deployment) -> tuple[ChunkStream, bool]:
        operation = self.operation
        return await operation.stream_from(operation.served_by(deployment), self.body), False

    def answer(self, completion: Completion, usage: Usage) -> bytes:
        """The upstream's own bytes when they can go as they are; the usage the upstream
        reported is kept whole (cache and reasoning details included); counted usage is
        added where it reported none."""
        if completion.usage is not None:
            return completion.raw or orjson.dumps(completion.body)
        return orjson.dumps({**completion.body, "usage": usage.to_openai()})

    def frames(self, native: bool) -> FrameEncoder | None:
        return None

    def translate_only(self) -> None:
        """Every deployment is sent `body` already."""


class TranslatedExchange(PlainExchange, ABC):
    """A request in another API (Anthropic's Messages, OpenAI's Responses): translated to
    a chat completion for most deployments, but sent as it came (`native_body`) to one
    with the `native` operation's ability, whose answer then goes back as it came.
    `untranslatable` says why a body that only a native deployment can take cannot go
    to any other. Subclasses render a translated answer (`render`) and stream
    (`frames`)."""

    operation: Operation[Any] = CHAT
    has_native_path = True
    carried_tokens: int = 0

    def __init__(
        self,
        requested: str,
        body: dict[str, Any],
        native: Operation[Any],
        untranslatable: InvalidRequest | None,
        preferred: str | None = None,
    ) -> None:
        self.requested = requested
        self.body = body
        self.stream = bool(body.get("stream"))
        self.native = native
        self.untranslatable = untranslatable
        self.preferred = preferred
        self._native_allowed = True

    @abstractmethod
    def native_body(self, deployment: Deployment) -> dict[str, Any]:
        """What a deployment that speaks the client's API is sent."""

    @abstractmethod
    def render(self, completion: dict[str, Any]) -> bytes:
        """A translated answer (a chat completion with its usage) in the client's API."""

    @abstractmethod
    def frames(self, native: bool) -> FrameEncoder | None:
        """The client's stream encoder; `native` when the events are already its own."""

    def translate_only(self) -> None:
        failure = self.untranslatable
        if failure is not None:
            raise InvalidRequest(
                f"A request hook changed this request, which has no chat form to send "
                f"changed: {failure.message}",
                param=failure.param,
                code=failure.code,
            )
        self._native_allowed = False

    def _native(self, deployment: Deployment) -> Any:
        """The deployment's ability for the client's own API, if it is to be used."""
        return self.native.ability(deployment.abilities) if self._native_allowed else None

    def _translated(self, deployment: Deployment) -> Any:
        """The chat ability, when the body has a chat form; each deployment that cannot
        take it refuses it for itself, so the error is built anew."""
        failure = self.untranslatable
        if failure is not None:
            raise InvalidRequest(failure.message, param=failure.param, code=failure.code)
        return CHAT.served_by(deployment)

    async def complete(self, deployment: Deployment) -> Completion:
        native = self._native(deployment)
        if native is not None:
            return await self.native.complete(native, self.native_body(deployment))
        return await CHAT.complete(self._translated(deployment), self.body)

    async def open_stream(self, deployment: Deployment) -> tuple[ChunkStream, bool]:
        native = self._native(deployment)
        if native is not None:
            return await self.native.stream_from(native, self.native_body(deployment)), True
        return await CHAT.stream_from(self._translated(deployment), self.body), False

    def answer(self, completion: Completion, usage: Usage) -> bytes:
        if completion.native:
            return completion.raw or orjson.dumps(completion.body)
        return self.render({**completion.body, "usage": completion.usage or usage.to_openai()})

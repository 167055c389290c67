"""OpenAI's Responses API: `POST /v1/responses`, and reading, listing the input of and
deleting a stored response (`GET`/`DELETE /v1/responses/{id}`,
`GET /v1/responses/{id}/input_items`); `background` responses, and so `cancel`, are a
clear 400.

Codex CLI, the OpenAI Agents SDK and LangChain speak this API. A request takes the
one request pipeline (auth, limits, budgets, routing, spend). A deployment whose
upstream speaks the API itself (`openai/`, `azure/`, or `model_info`'s
`supports_responses_api: true`) is sent the client's body as it came, `model`
replaced (a guardrail's masks written into it, `_Offered`), and its answer or events go
back as they came, metered from the Response's usage. Every other deployment is sent
the request translated to a chat completion (`responses_format`), and its answer and
stream are rendered as a Response; built-in tools it cannot run (`web_search`,
`file_search`, ...) are dropped, never sent to an upstream that would refuse the whole
request, and named in `x-trigate-dropped-tools`.

`store` defaults to true, as OpenAI's does: a stored response (its request's input
items and its Response object) is kept in the gateway's store for
`responses_retention_days`, so `previous_response_id` works on every provider: the
gateway rebuilds the conversation from the chain of stored responses. A native
upstream is sent the client's `previous_response_id` when it made that response
itself (and then the chain is read no further than that response, unless a retry or
fallback needs it), and the rebuilt conversation when another deployment did. A stored
response is visible only to the key that made it, another key of its team, and the
master key; to anyone else it does not exist (404).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio

from trigate.api.context import RequestContext, current_request
from trigate.api.envelopes import OPENAI
from trigate.api.jsonio import json_response, parse_json_object
from trigate.api.model_api import Reply, Route
from trigate.api.pipeline import counted_model
from trigate.api.responses_format import (
    ResponsesEvents,
    input_items,
    response_object,
    to_chat_request,
)
from trigate.api.surface import Operation, PlainExchange, TranslatedExchange
from trigate.api.validation import (
    check_stream_fields,
    check_tool_fields,
    require_model,
)
from trigate.auth import Caller, owner_of
from trigate.clock import wall_time
from trigate.errors import Failure, GatewayError, InvalidRequest, NotFound, UpstreamError, echoed
from trigate.gateway import Gateway
from trigate.providers import ChunkStream, Completion, NativeResponses
from trigate.relay import StreamOutcome
from trigate.router.deployments import Deployment
from trigate.store import ChainTooLarge, ResponseViewer, Row
from trigate.usage import Usage, UsageMeter

logger = logging.getLogger("trigate")

DROPPED_TOOLS_HEADER = "x-trigate-dropped-tools"
DAY = 86400.0
DEFAULT_PAGE = 20
MAX_PAGE = 100

# Served by a deployment whose upstream speaks the Responses API itself.
NATIVE_RESPONSES: Operation[NativeResponses] = Operation(
    "responses",
    lambda abilities: abilities.responses,
    lambda provider, body: provider.respond(body),
    lambda provider, body: provider.open_response_stream(body),
)


def register(app: QuartTrio, gateway: Gateway) -> None:
    """The stored responses' routes; `POST /v1/responses` is the model API's."""

    @app.get("/v1/responses/<response_id>")
    @app.get("/responses/<response_id>")
    async def retrieve_response(response_id: str) -> Response:
        row = await _visible(gateway, response_id)
        return Response(orjson.dumps(row["response"]), content_type="application/json")

    @app.delete("/v1/responses/<response_id>")
    @app.delete("/responses/<response_id>")
    async def delete_response(response_id: str) -> Response:
        row = await _visible(gateway, response_id)
        await _delete_upstream_copy(gateway, row)
        await gateway.store.delete_response(response_id, row["key_hash"])
        return json_response({"id": response_id, "object": "response.deleted", "deleted": True})

    @app.post("/v1/responses/<response_id>/cancel")
    @app.post("/responses/<response_id>/cancel")
    async def cancel_response(response_id: str) -> Response:
        """Only a background response can be cancelled, and the gateway runs none."""
        await _visible(gateway, response_id)
        raise InvalidRequest(
            "Only background responses can be cancelled, and this gateway does not run any.",
            code="unsupported_operation",
        )

    @app.get("/v1/responses/<response_id>/input_items")
    @app.get("/responses/<response_id>/input_items")
    async def response_input_items(response_id: str) -> Response:
        row = await _visible(gateway, response_id)
        return json_response(_page(row["input_items"], request.args))


class InputTokens:
    """`POST /v1/responses/input_tokens` (the openai SDK's `responses.input_tokens.count`):
    the input a `POST /v1/responses` with this body would send, its stored conversation
    (`previous_response_id`) included, counted by the gateway's tiktoken encodings and
    answered in OpenAI's shape. It runs the pipeline's first stages (authenticate,
    decode, resolve, model access) and answers without an upstream; a model whose
    upstream uses a tokenizer of its own (Claude, Gemini) counts differently there."""

    envelope = OPENAI

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def route(self) -> Route:
        return Route(self.serve, self.envelope)

    async def serve(
        self, caller: Caller, headers: Mapping[str, str], raw: bytes | bytearray
    ) -> Reply:
        gateway = self._gateway
        body = parse_json_object(raw)
        # The same checks as a response's: a bad field is the client's 400, not our 500.
        upstream_model = counted_model(gateway, caller, _validate(body))
        previous = body.get("previous_response_id")
        conversation = await _Conversation.opened(gateway, caller, previous)
        translated = _translated(body, await conversation.load())
        if translated.failure is not None:
            raise translated.failure
        meter = UsageMeter(gateway.counter, upstream_model, translated.chat)
        counted = {"object": "response.input_tokens", "input_tokens": await meter.prompt_tokens()}
        return Reply(orjson.dumps(counted))


# `POST /v1/responses/compact`, served by a deployment whose upstream speaks the
# Responses API: nothing else can compact a conversation the way its client expects.
COMPACT: Operation[NativeResponses] = Operation(
    "Responses API compaction (/v1/responses/compact)",
    lambda abilities: abilities.responses,
    lambda provider, body: provider.compact(body),
    gen_ai_name="compact",
)


class CompactSurface:
    """`POST /v1/responses/compact` (Codex CLI's remote compaction): the client's body
    goes as it came to a deployment whose upstream speaks the Responses API, and its
    `response.compaction` comes back as it came, on the one pipeline (limits, budgets,
    routing, spend). A model group without such a deployment is a 400 naming it. A
    `previous_response_id` the upstream does not hold (another deployment made it) is
    sent as the conversation it continues, as `POST /v1/responses` sends it."""

    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> _CompactExchange:
        model = _validate(body)
        members = gateway.groups.deployments(caller.model_group(model))
        if not any(COMPACT.ability(member.abilities) is not None for member in members):
            raise InvalidRequest(
                f"Model `{echoed(model)}` has no deployment whose upstream speaks the "
                "Responses API (openai/, azure/, or model_info.supports_responses_api: "
                "true), and only such an upstream can compact a conversation.",
                param="model",
                code="unsupported_operation",
            )
        conversation = await _Conversation.opened(gateway, caller, body.get("previous_response_id"))
        history = await conversation.load()
        # What limits count and hooks see; the upstream is sent the client's own body.
        translated = _translated(body, history)
        return _CompactExchange(model, translated.chat, body, conversation.chain, history)


class _CompactExchange(PlainExchange):
    """One compaction: sent as the client sent it, answered as the upstream answered."""

    operation = COMPACT
    stream = False
    has_native_path = True
    carried_tokens = 0

    def __init__(
        self,
        requested: str,
        chat: dict[str, Any],
        body: dict[str, Any],
        chain: list[Row],
        history: list[Any],
    ) -> None:
        self.requested = requested
        self.body = chat
        self._body = body
        self._chain = chain
        self._history = history
        self.preferred = _holder(chain)
        self._offered: _Offered | None = None

    def native_request(self) -> dict[str, Any]:
        """The compaction as `_Offered` offers it to hooks."""
        if self._offered is None:
            self._offered = _Offered(self._body, self._history)
        return self._offered.request

    def native_in_step(self) -> bool:
        return self._offered is not None and self._offered.translates_to(self.body)

    def translate_only(self) -> None:
        """A hook changed the request, not as it changed the client's own (a guardrail
        does): a compaction has no form but the client's own, so it cannot go changed,
        nor go unchanged past the hook."""
        raise InvalidRequest(
            "A request hook changed this request, and a compaction can only be sent as "
            "the client sent it.",
            code="unsupported_operation",
        )

    async def complete(self, deployment: Deployment) -> Completion:
        if self._offered is not None:  # as hooks left it (a guardrail's masks)
            body = self._offered.native_body(self._chain, deployment)
        else:
            body = _native_body(self._body, self._chain, self._history, deployment)
        return await COMPACT.complete(COMPACT.served_by(deployment), body)

    async def open_stream(self, deployment: Deployment) -> tuple[ChunkStream, bool]:
        raise InvalidRequest("A compaction does not stream.", param="stream")

    def answer(self, completion: Completion, usage: Usage) -> bytes:
        return completion.raw or orjson.dumps(completion.body)

    def frames(self, native: bool) -> None:
        return None


class ResponsesSurface:
    """`POST /v1/responses`: a follow-up's head response is read here, at decoding, so a
    `previous_response_id` the caller may not see is a 404 before anything is admitted.

    The rest of its chain is read here too, unless the requested group has the
    deployment whose upstream made the head and holds the conversation: that one is
    sent the id alone, so the chain is read only when another deployment (a retry, a
    fallback) needs the conversation rebuilt. Until then the translation holds the
    request's own input, and accounting counts the conversation as the holder reported
    it (`_reported_tokens`)."""

    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> _Exchange:
        model = _validate(body)
        conversation = await _Conversation.opened(gateway, caller, body.get("previous_response_id"))
        carried = _held_upstream(gateway, caller, model, conversation)
        if carried is None:
            await conversation.load()
        translated = _translated(body, conversation.history or [])
        context = current_request.get()
        return _Exchange(gateway, caller, context, body, model, translated, conversation, carried)


class _Conversation:
    """The stored responses a follow-up continues, newest first: the head, read and
    checked when the request is decoded, and the rest of the chain, read once, when
    something needs the conversation rebuilt (`load`), within `max_request_size_mb`."""

    def __init__(
        self, gateway: Gateway, caller: Caller, response_id: str | None, head: list[Row]
    ) -> None:
        self._gateway = gateway
        self._caller = caller
        self._response_id = response_id
        self.chain = head
        # None until read: the items each response of the chain took and gave, oldest first.
        self.history: list[Any] | None = None if head else []
        self._reading = trio.Lock()

    @classmethod
    async def opened(
        cls, gateway: Gateway, caller: Caller, response_id: str | None
    ) -> _Conversation:
        head = [] if response_id is None else [await _head(gateway, caller, response_id)]
        return cls(gateway, caller, response_id, head)

    @property
    def head(self) -> Row | None:
        return self.chain[0] if self.chain else None

    async def load(self) -> list[Any]:
        """The conversation's items, the chain read the first time it is asked for (once,
        however many attempts ask at once)."""
        async with self._reading:
            if self.history is None:
                head = self.chain[0]
                if head["previous_response_id"] is not None and self._response_id is not None:
                    self.chain = await _chain(self._gateway, self._caller, self._response_id, head)
                self.history = _history(self.chain)
            return self.history


class _Translated(NamedTuple):
    """The request as a chat completion, with the built-in tools it dropped; or, when it
    has no chat form, what the gateway accounts by and why (`failure`)."""

    chat: dict[str, Any]
    dropped: list[str]
    failure: InvalidRequest | None = None


def _translated(body: dict[str, Any], history: list[Any]) -> _Translated:
    """A request without a chat form is no 400 yet: a deployment that speaks the
    Responses API may still take it as it is; one that needs the translation refuses it."""
    try:
        chat, dropped = to_chat_request(body, history)
        check_tool_fields(chat)
    except InvalidRequest as failure:
        accounted = {"stream": body.get("stream"), "max_tokens": body.get("max_output_tokens")}
        return _Translated({k: v for k, v in accounted.items() if v is not None}, [], failure)
    return _Translated(chat, dropped)


class _Offered:
    """A Responses request as hooks are offered it (`Exchange.native_request`): a copy of
    the client's body, its `input` preceded by the conversation it continues, so that a
    hook (a guardrail) reads, and masks, what a deployment that does not hold the
    conversation is sent too; such a deployment is then sent it as hooks left it. The
    client's own body stays as it came: it is what is stored, and what a Response
    echoes."""

    __slots__ = ("_client", "_earlier", "request")

    def __init__(self, body: dict[str, Any], history: list[Any]) -> None:
        request: dict[str, Any] = orjson.loads(orjson.dumps(body))
        if history:
            request["input"] = [*orjson.loads(orjson.dumps(history)), *input_items(request)]
        self.request = request
        self._client = body
        self._earlier = len(history)

    def restore_echo(self, response: dict[str, Any]) -> bool:
        """Put the client's own values back in what a native Response echoes of the
        request (`instructions`, `prompt`, `metadata`, `tools`) where hooks changed them
        (a guardrail's masks): the client reads, and the store keeps, its own request,
        not the masks it was sent upstream with. Whether anything was put back."""
        sent, _ = self.parts()
        changed = False
        for key, value in self._client.items():
            if key != "input" and key in response and sent.get(key) != value:
                response[key] = value
                changed = True
        return changed

    def parts(self) -> tuple[dict[str, Any], list[Any]]:
        """The request as hooks left it: the client's body, and the conversation."""
        request, earlier = self.request, self._earlier
        if not earlier:
            return request, []
        items = request["input"]
        return {**request, "input": items[earlier:]}, items[:earlier]

    def native_body(self, chain: list[Row], deployment: Deployment) -> dict[str, Any]:
        body, history = self.parts()
        return _native_body(body, chain, history, deployment)

    def translates_to(self, chat: dict[str, Any]) -> bool:
        """Whether the request, as hooks left it, translates to `chat` as they left it:
        each text a hook changed in one it changed in the other alike. Anything else (a
        hook that changed `chat` alone, a mask only one of them could hold) is not."""
        body, history = self.parts()
        translated = _translated(body, history)
        return translated.failure is None and translated.chat == chat


def _native_body(
    body: dict[str, Any], chain: list[Row], history: list[Any], deployment: Deployment
) -> dict[str, Any]:
    """What a deployment that speaks the Responses API is sent: the client's body, unless
    it continues a response that deployment's upstream does not hold (one a translated
    deployment, or another upstream, made), whose conversation is then sent whole."""
    if not chain or (chain[0]["native"] and chain[0]["deployment"] == deployment.id):
        return body
    earlier = [_without_id(item) for item in history]
    native = {key: value for key, value in body.items() if key != "previous_response_id"}
    return {**native, "input": [*earlier, *input_items(body)]}


async def _delete_upstream_copy(gateway: Gateway, row: Row) -> None:
    """A response a native upstream made is stored there too: delete it there first, so
    that a failure leaves the gateway's copy for the client to retry. An upstream that
    no longer has it (404), or a deployment no longer configured, has nothing to delete."""
    if not row["native"]:
        return
    holder = next((d for d in gateway.groups.all() if d.id == row["deployment"]), None)
    if holder is None or holder.abilities.responses is None:
        return
    try:
        await holder.abilities.responses.delete_response(row["response_id"])
    except UpstreamError as error:
        if error.kind != Failure.NOT_FOUND:
            raise


def _holder(chain: list[Row]) -> str | None:
    """The deployment whose upstream holds the response a follow-up continues; sent
    there, the follow-up names it instead of carrying the whole conversation."""
    return chain[0]["deployment"] if chain and chain[0]["native"] else None


def _sent_by_id(chain: list[Row], deployment: Deployment) -> bool:
    """Whether `deployment` is sent the client's `previous_response_id` as it came: it
    speaks the Responses API and its upstream made the head response."""
    holder = _holder(chain)
    return holder == deployment.id and NATIVE_RESPONSES.ability(deployment.abilities) is not None


def _held_upstream(
    gateway: Gateway, caller: Caller, model: str, conversation: _Conversation
) -> int | None:
    """The tokens accounting counts for a conversation the requested group's own holder
    keeps (`_reported_tokens`), which is then read no further than its head; None when
    the follow-up needs the conversation rebuilt from the start (no such deployment in
    the group, hooks that must see it, or no usage reported to count it by)."""
    head = conversation.head
    if head is None or not head["native"] or _hooked(gateway):
        return None
    members = gateway.groups.deployments(caller.model_group(model))
    if not any(_sent_by_id(conversation.chain, member) for member in members):
        return None
    return _reported_tokens(head)


def _hooked(gateway: Gateway) -> bool:
    """Whether requests meet hooks: those see the request with its conversation, as a
    guardrail judges it and a cache keys on it, so the conversation is read before they
    run."""
    return gateway.live.hooks is not None


def _reported_tokens(head: Row) -> int | None:
    """The conversation up to and including the head, as its holder counted it: the head
    request's input tokens (which counted every earlier turn) and its output tokens. A
    little more than a rebuilt conversation's count: it includes the head request's
    instructions and tool definitions, which the holder does not carry forward, and its
    reasoning, which a rebuilt conversation drops."""
    usage = head["response"].get("usage") if isinstance(head["response"], dict) else None
    if not isinstance(usage, dict):
        return None
    counts = [usage.get("input_tokens"), usage.get("output_tokens")]
    numbers = [n for n in counts if isinstance(n, int) and not isinstance(n, bool) and n >= 0]
    return sum(numbers) if len(numbers) == len(counts) else None


def _without_id(item: Any) -> Any:
    """An item the gateway made, without the id no upstream would know."""
    if isinstance(item, dict) and "id" in item:
        return {key: value for key, value in item.items() if key != "id"}
    return item


def _validate(body: dict[str, Any]) -> str:
    """What the gateway itself reads; the rest is the translation's, or the upstream's."""
    model = require_model(body)
    check_stream_fields(body)
    _check_echoed(body)
    if body.get("background"):
        raise InvalidRequest(
            "`background` responses are not supported by this gateway; send the request "
            "without it (stream it to see the answer as it is made).",
            param="background",
            code="unsupported_parameter",
        )
    value = body.get("input")
    if value is not None and not isinstance(value, str | list):
        raise InvalidRequest("`input` must be a string or an array of items.", param="input")
    if body.get("store") is not None and not isinstance(body["store"], bool):
        raise InvalidRequest("`store` must be a boolean.", param="store")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise InvalidRequest(
            "`previous_response_id` must be a string.", param="previous_response_id"
        )
    return model


def _check_echoed(body: dict[str, Any]) -> None:
    """The echoed fields (`base_response`) in the shapes OpenAI's API gives them: `user`
    a string, `metadata` an object of strings; each is rendered back, so each is checked
    before admission, lest an answer the upstream was paid for fail to render."""
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("`user` must be a string.", param="user")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise InvalidRequest(
            "`metadata` must be an object whose values are strings.", param="metadata"
        )


class _Exchange(TranslatedExchange):
    """One Responses request's identity and what becomes of its answer: rendered as a
    Response (whole or as events), then stored unless the request said `store: false`.
    Only a translated answer names the built-in tools it dropped."""

    def __init__(
        self,
        gateway: Gateway,
        caller: Caller,
        context: RequestContext,
        body: dict[str, Any],
        model: str,
        translated: _Translated,
        conversation: _Conversation,
        carried: int | None,
    ) -> None:
        super().__init__(
            model,
            translated.chat,
            NATIVE_RESPONSES,
            translated.failure,
            preferred=_holder(conversation.chain),
        )
        self._gateway = gateway
        self._caller = caller
        self._context = context
        self._body = body
        self._model = model
        self._dropped = translated.dropped
        self._conversation = conversation
        # Counted, not read: the conversation is added to the translation when read.
        self.carried_tokens = carried or 0
        self._unread = carried is not None
        self.response_id = f"resp_{uuid.uuid4().hex}"
        # The response cache keeps a native upstream's answer only when the upstream
        # does not store it: a hit would hand out a stored Response's id again.
        self.native_cacheable = body.get("store") is False
        self.created_at = int(wall_time())
        self.response: dict[str, Any] | None = None
        self._events: ResponsesEvents | None = None
        self._native_stream = False
        # The request offered to hooks (`native_request`), once one asked for it.
        self._offered: _Offered | None = None
        # Whether hooks ran (read or changed `body`) while the conversation was unread.
        self._hooked_unread = False

    def native_body(self, deployment: Deployment) -> dict[str, Any]:
        conversation = self._conversation
        if self._offered is not None:  # as hooks left it (a guardrail's masks)
            return self._offered.native_body(conversation.chain, deployment)
        return _native_body(self._body, conversation.chain, conversation.history or [], deployment)

    def native_request(self) -> dict[str, Any] | None:
        """The request as `_Offered` offers it; None while the conversation is unread
        (no hook ran when the request was decoded)."""
        if self._unread:
            self._hooked_unread = True  # `_add_history` must not replace what they read
            return None
        if self._offered is None:
            self._offered = _Offered(self._body, self._conversation.history or [])
        return self._offered.request

    def native_in_step(self) -> bool:
        return self._offered is not None and self._offered.translates_to(self.body)

    async def complete(self, deployment: Deployment) -> Completion:
        await self._rebuilt_for(deployment)
        return await super().complete(deployment)

    async def open_stream(self, deployment: Deployment) -> tuple[ChunkStream, bool]:
        await self._rebuilt_for(deployment)
        return await super().open_stream(deployment)

    async def _rebuilt_for(self, deployment: Deployment) -> None:
        """Before an attempt on a deployment that does not hold the conversation: read it
        (the first time) and translate the request with it, as decoding would have. No
        hook has seen the translation (with hooks, the conversation is read before they
        run), and it is replaced, not changed: the meter may be counting it in a thread."""
        if self._unread and not _sent_by_id(self._conversation.chain, deployment):
            self._add_history(await self._conversation.load())

    def translate_only(self) -> None:
        self._hooked_unread = self._hooked_unread or self._unread
        super().translate_only()

    def _add_history(self, history: list[Any]) -> None:
        if not self._unread:
            return  # another attempt, which read it at the same time, added it
        if self._hooked_unread:
            # Hooks read (and may have masked) `body` without the conversation, which
            # `decode` reads first whenever hooks run: a fresh translation would send
            # what they never read, or undo their masks. Our bug; never sent.
            logger.error("responses: hooks ran before the conversation was read")
            raise GatewayError(
                "The gateway could not rebuild this conversation after its request hooks "
                "ran; the request is not sent.",
            )
        self._unread = False
        translated = _translated(self._body, history)
        self.body, self.untranslatable = translated.chat, translated.failure

    def render(self, completion: dict[str, Any]) -> bytes:
        self._name_dropped()
        self._context.response_id = self.response_id
        self.response = response_object(
            completion,
            response_id=self.response_id,
            request=self._body,
            created_at=self.created_at,
        )
        return orjson.dumps(self.response)

    def frames(self, native: bool) -> ResponsesEvents:
        if not native:
            self._name_dropped()
            self._context.response_id = self.response_id
        self._native_stream = native
        offered = self._offered
        self._events = ResponsesEvents(
            response_id=self.response_id,
            request=self._body,
            created_at=self.created_at,
            echoed=offered.restore_echo if offered is not None else None,
        )
        return self._events

    def _name_dropped(self) -> None:
        """The client chose these names: only printable ASCII ones can go in a header."""
        names = [name for name in self._dropped if name.isascii() and name.isprintable()]
        if names:
            self._context.headers[DROPPED_TOOLS_HEADER] = ",".join(names)

    async def settled(self, answer: bytes) -> bytes:
        """A whole answer, stored as the request asked: the gateway's own Response, or the
        upstream's as the client got it. One that could not be stored (the database is
        down) still goes to the client, which paid for it, but says `"store": false`: no
        client is handed an id it could not continue from."""
        native = self.response is None
        response = orjson.loads(answer) if native else self.response
        if not isinstance(response, dict):
            return answer
        if native and self._offered is not None and self._offered.restore_echo(response):
            answer = orjson.dumps(response)
        if await self.save(response, native=native):
            return answer
        return orjson.dumps({**response, "store": False})

    async def finished(self, outcome: StreamOutcome) -> None:
        """A stream that ran to its end is stored; one cut short or failed is not."""
        if self._events is not None and outcome.completed and outcome.error is None:
            await self.save(self._events.response, native=self._native_stream)

    async def save(self, response: dict[str, Any] | None, *, native: bool) -> bool:
        """Under the Response's own id: the gateway's, or a native upstream's. False when
        it should have been stored and was not."""
        if response is None or self._body.get("store") is False:
            return True
        response_id = response.get("id")
        if not isinstance(response_id, str):
            return True
        if self._caller.owner is None:
            return False  # a caller no one could read it back as: not stored
        try:
            replaced = await self._gateway.store.save_response(
                self._row(response_id, response, native)
            )
        except Exception as error:  # any failure: the answer is still the client's
            logger.warning("storing response %s failed: %s", response_id, error)
            return False
        if replaced:
            # Not silent: the upstream (a mock, a local server) reuses ids, and the key's
            # earlier response of this id can no longer be read or continued.
            logger.warning(
                "response %s: the upstream reused the id of an earlier response of the same "
                "key, which this one replaces",
                response_id,
            )
        return True

    def _row(self, response_id: str, response: dict[str, Any], native: bool) -> Row:
        """The stored row; a native request's `input` may have no item form (a 400 had
        it been translated), which fails here, not the answer."""
        route = self._context.route
        deployment = route.deployment if route is not None else None
        retention = self._gateway.config.general_settings.responses_retention_days
        return {
            "response_id": response_id,
            "response": response,
            "input_items": _with_ids(input_items(self._body)),
            "model_group": self._model,
            "deployment": deployment.id if deployment is not None else None,
            # Its owner (`Caller.owner`): a key's hash, a keyless user's `user:{id}`.
            "key_hash": self._caller.owner or None,
            "team_id": self._caller.team_id,
            "previous_response_id": self._body.get("previous_response_id"),
            "native": native,
            "created_at": float(self.created_at),
            "expires_at": self.created_at + retention * DAY,
        }


def _with_ids(items: list[Any]) -> list[Any]:
    """Input items as `input_items` lists them: each with an id, as OpenAI gives one."""
    return [
        {"id": f"msg_{uuid.uuid4().hex}", **item}
        if isinstance(item, dict) and "id" not in item
        else item
        for item in items
    ]


async def _head(gateway: Gateway, caller: Caller, response_id: str) -> Row:
    """The stored response a follow-up continues, if the caller may see it; read alone
    and first, so that whether another key's conversation exists, or how large it is,
    is never told. An id with a NUL is none the gateway made, and one PostgreSQL could
    not be asked for."""
    viewer = _viewer(caller)
    head = (
        []
        if "\x00" in response_id
        else await gateway.store.response_chain(response_id, wall_time(), depth=1, viewer=viewer)
    )
    if not head or not _may_see(caller, head[0]):
        raise NotFound(
            f"Previous response with id '{echoed(response_id)}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return head[0]


async def _chain(gateway: Gateway, caller: Caller, response_id: str, head: Row) -> list[Row]:
    """The stored responses a follow-up continues, newest first, from its `head`."""
    # A rebuilt conversation is a request the gateway sends: no larger than one it takes.
    limit = gateway.config.max_request_bytes
    try:
        chain = await gateway.store.response_chain(
            response_id, wall_time(), max_bytes=limit, viewer=_viewer(caller)
        )
    except ChainTooLarge:
        raise InvalidRequest(
            "The conversation `previous_response_id` continues is larger than this gateway "
            f"rebuilds ({limit // (1024 * 1024)} MiB, general_settings.max_request_size_mb): "
            "start a new one, or send its items as `input`.",
            param="previous_response_id",
            code="conversation_too_large",
        ) from None
    return chain or [head]  # deleted meanwhile: the head as it was read


def _history(chain: list[Row]) -> list[Any]:
    """The conversation a chain holds: each response's input items and then its output
    items, oldest first."""
    items: list[Any] = []
    for row in reversed(chain):
        items.extend(row["input_items"])
        items.extend(row["response"].get("output") or ())
    return items


async def _visible(gateway: Gateway, response_id: str) -> Row:
    """A stored response the caller may see; any other is a 404, never a 403, so that
    whether another key's response exists is not told."""
    caller = await gateway.auth.authenticate(request.headers)
    chain = await gateway.store.response_chain(
        response_id, wall_time(), depth=1, viewer=_viewer(caller)
    )
    if not chain or not _may_see(caller, chain[0]):
        raise NotFound(f"Response with id '{echoed(response_id)}' not found.", code="not_found")
    return chain[0]


def _viewer(caller: Caller) -> ResponseViewer | None:
    """Whose stored responses the caller reads: the master key, anyone's. An upstream may
    reuse a response id for several keys; each key reads its own (or its team's)."""
    return None if caller.is_master else ResponseViewer(owner_of(caller), caller.team_id)


def _may_see(caller: Caller, row: Row) -> bool:
    if caller.is_master:
        return True
    if row["key_hash"] is not None and row["key_hash"] == caller.owner:
        return True
    return row["team_id"] is not None and row["team_id"] == caller.team_id


def _page(items: list[Any], args: Any) -> dict[str, Any]:
    """OpenAI's list shape, `order` (`desc` by default, as OpenAI's) and `limit`
    (1 to 100, 20 by default), after the item `after` names."""
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("`order` must be `asc` or `desc`.", param="order")
    limit = _limit(args.get("limit"))
    ordered = items if order == "asc" else items[::-1]
    after = args.get("after")
    if after is not None:
        ids = [item.get("id") if isinstance(item, dict) else None for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": _item_id(data[0]) if data else None,
        "last_id": _item_id(data[-1]) if data else None,
        "has_more": len(ordered) > limit,
    }


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise InvalidRequest(f"`limit` must be an integer from 1 to {MAX_PAGE}.", param="limit")
    return int(value)


def _item_id(item: Any) -> Any:
    return item.get("id") if isinstance(item, dict) else None

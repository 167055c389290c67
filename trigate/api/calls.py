"""A proxied model call: admitted, routed to a deployment, relayed, and accounted for.

Chat completions, legacy completions and embeddings differ in what they
validate and which provider method serves them; everything after validation
(limits, routing, streaming, usage, spend) is this one path. A stream is
opened and its first chunks awaited *before* the response starts, so an
upstream that fails or stalls early still yields a real HTTP error status,
and the router can still retry or fall back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import orjson
import trio

from trigate.api.context import RequestContext, current_request
from trigate.api.jsonio import parse_json_object
from trigate.api.model_api import Incoming, Reply
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.errors import (
    Failure,
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    secrets,
)
from trigate.gateway import Gateway
from trigate.limits import (
    Admission,
    ModelNotAllowed,
    allows_model,
    check_model,
    requested_output_tokens,
)
from trigate.providers import (
    Abilities,
    ChunkStream,
    Completion,
    Embeddings,
    Provider,
    TextCompletions,
)
from trigate.relay import FrameEncoder, StreamOutcome, StreamRelay
from trigate.router.deployments import Deployment
from trigate.router.router import Attempt, Routed, RouteProgress
from trigate.spend import RequestRecord
from trigate.usage import Usage, UsageMeter

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
RECORD_TIMEOUT = 10.0
# How deep the request fields the gateway reads may nest; real requests nest a few levels.
MAX_NESTING = 64
READ_FIELDS = ("messages", "tools", "tool_choice", "response_format", "prompt", "input", "system")
# nginx's status for a request its client abandoned; it never reaches a client.
CLIENT_CLOSED = 499


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
)
EMBEDDINGS: Operation[Embeddings] = Operation(
    "embeddings",
    lambda abilities: abilities.embeddings,
    lambda provider, body: provider.embed(body),
    gen_ai_name="embeddings",
)


@dataclass(frozen=True, slots=True)
class Surface:
    """The API a client speaks when it is not OpenAI's: how the answer of a call made
    in OpenAI's shapes is rendered back, as a whole and as a stream. A deployment
    with the `native` operation's ability (if the surface has one) is sent the
    client's own body instead (`body(deployment)`: a follow-up may need another body
    for another deployment), and its answer goes back as it came. `untranslatable`
    says why a body that only a native deployment can take cannot go to any other.
    `finished`, when given, hears how a relayed stream ended, after its record.
    `preferred` names the deployment to take while it is available: the one whose
    upstream holds what the request continues."""

    answer: Callable[[dict[str, Any]], bytes]
    # Given whether the stream is native (its events already in the surface's API).
    frames: Callable[[bool], FrameEncoder]
    body: Callable[[Deployment], dict[str, Any]]
    native: Operation[Any] | None
    untranslatable: InvalidRequest | None = None
    finished: Callable[[StreamOutcome], Awaitable[None]] | None = None
    preferred: str | None = None


async def proxy_request(
    gateway: Gateway,
    incoming: Incoming,
    operation: Operation[A],
    validate: Callable[[dict[str, Any]], str],
) -> Reply:
    """Authenticate, validate with `validate(body) -> model group`, admit, then serve."""
    caller = await gateway.auth.authenticate(incoming.headers)
    body = parse_json_object(incoming.take_body())
    group = validate(body)
    check_nesting(body)
    fallbacks = pop_fallbacks(body)
    call = ProxiedCall(gateway, current_request.get(), caller, group, body, fallbacks, operation)
    await call.admit()
    if body.get("stream") and operation.open_stream:
        return await call.stream()
    return await call.complete()


def check_access(caller: Caller, requested: str, group: str) -> None:
    """The key's, team's and user's `models` must allow the model asked for. A name the
    team aliases to a model group passes when they all allow the alias, or all allow
    the group; a refusal names what the client asked for."""
    try:
        check_model(caller, requested)
    except ModelNotAllowed:
        if requested == group or not allows_model(caller, group):
            raise


def require_model(body: dict[str, Any]) -> str:
    """The model group a request names; every proxied API needs one."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string.", param="model")
    return model


def require_messages(body: dict[str, Any]) -> None:
    """A non-empty list of message objects, in OpenAI's and Anthropic's APIs alike."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "`messages` is required and must be a non-empty array.", param="messages"
        )
    if not all(isinstance(message, dict) for message in messages):
        raise InvalidRequest("Every entry of `messages` must be an object.", param="messages")


def check_nesting(body: dict[str, Any]) -> None:
    """The fields the gateway itself walks (to count tokens, to translate for another
    provider's API) are at most MAX_NESTING levels deep, so no walk of them can run out
    of stack; fields it only forwards are the upstream's to judge."""
    for field in READ_FIELDS:
        if field in body and _too_deep(body[field]):
            raise InvalidRequest(
                f"`{field}` is nested more than {MAX_NESTING} levels deep.", param=field
            )


def _too_deep(value: Any) -> bool:
    """Whether `value` nests lists and objects more than MAX_NESTING deep; iterative, so
    that the check itself has no recursion to exhaust."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        if children and depth > MAX_NESTING:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_tool_fields(body: dict[str, Any]) -> None:
    """`tools` and `tool_choice` in the shapes OpenAI's API defines, as far as the gateway
    reads them (to count tokens, to translate): a list of objects whose `function`, when
    present, is an object with object `parameters`; a string or an object with a string
    `type`. Anything else every upstream would refuse too."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
            raise InvalidRequest("`tools` must be an array of objects.", param="tools")
        for tool in tools:
            _check_function(tool.get("function"))
    choice = body.get("tool_choice")
    if choice is None or isinstance(choice, str):
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type", ""), str):
        raise InvalidRequest(
            "`tool_choice` must be a string or an object with a string `type`.",
            param="tool_choice",
        )
    if "function" in choice and not isinstance(choice["function"], dict):
        raise InvalidRequest("`tool_choice.function` must be an object.", param="tool_choice")


def _check_function(function: Any) -> None:
    if function is None:
        return
    if not isinstance(function, dict):
        raise InvalidRequest("A tool's `function` must be an object.", param="tools")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest(
            "A function's `parameters` must be a JSON schema object.", param="tools"
        )


def check_stream_fields(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object.", param="stream_options")


def pop_fallbacks(body: dict[str, Any]) -> list[str] | None:
    """LiteLLM's per-request `fallbacks`: the gateway's to act on, never the upstream's."""
    fallbacks = body.pop("fallbacks", None)
    if fallbacks is None:
        return None
    if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
        raise InvalidRequest("`fallbacks` must be an array of model names.", param="fallbacks")
    return fallbacks


class Serving(NamedTuple, Generic[A]):
    """How one deployment serves one call: the operation, the provider's ability it is
    served by, the body that is sent, and whether the answer is in the client's own API."""

    operation: Operation[A]
    provider: A
    body: dict[str, Any]
    native: bool = False

    def complete(self) -> Awaitable[Completion]:
        return self.operation.complete(self.provider, self.body)

    def open_stream(self) -> Awaitable[ChunkStream]:
        open_stream = self.operation.open_stream
        if open_stream is None:
            # `proxy_request` streams only operations that can; another caller may not.
            raise InvalidRequest(f"{self.operation.name} requests cannot stream.", param="stream")
        return open_stream(self.provider, self.body)


def serving(
    deployment: Deployment,
    operation: Operation[A],
    body: dict[str, Any],
    surface: Surface | None,
) -> Serving[A] | Serving[Any]:
    """The surface's native operation when the deployment has its ability (the client's
    own body, answered in its own API), else `operation` in OpenAI's shapes."""
    if surface is not None:
        native = surface.native.ability(deployment.abilities) if surface.native else None
        if surface.native is not None and native is not None:
            return Serving(surface.native, native, surface.body(deployment), native=True)
        failure = surface.untranslatable
        if failure is not None:
            # Built anew: each deployment that cannot take the body refuses it for itself.
            raise InvalidRequest(failure.message, param=failure.param, code=failure.code)
    return Serving(operation, operation.served_by(deployment), body)


@dataclass(slots=True)
class OpenedStream:
    """An upstream stream whose first chunks have arrived (None: it ended at once);
    `native` when its chunks are events in the client's own API."""

    stream: ChunkStream
    chunks: Any
    first: list[Any] | None
    native: bool = False

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.chunks.aclose()
            await self.stream.aclose()


class CompletionAttempt(Generic[A]):
    stream = False

    def __init__(
        self, body: dict[str, Any], operation: Operation[A], surface: Surface | None
    ) -> None:
        self._body = body
        self._operation = operation
        self._surface = surface

    async def run(self, deployment: Deployment) -> Completion:
        return await serving(deployment, self._operation, self._body, self._surface).complete()

    async def discard(self, result: Completion) -> None:
        """A finished completion holds nothing open."""


class StreamAttempt(Generic[A]):
    """Open a stream and wait for its first chunk, within the deployment's
    time-to-first-token deadline (`stream_timeout`, else `timeout`)."""

    stream = True

    def __init__(
        self, body: dict[str, Any], operation: Operation[A], surface: Surface | None
    ) -> None:
        self._body = body
        self._operation = operation
        self._surface = surface

    async def run(self, deployment: Deployment) -> OpenedStream:
        params = deployment.params
        deadline = params.stream_timeout or params.timeout
        served = serving(deployment, self._operation, self._body, self._surface)
        opened: OpenedStream | None = None
        try:
            with trio.fail_after(deadline):
                stream = await served.open_stream()
                opened = OpenedStream(stream, aiter(stream), None, served.native)
                opened.first = await anext(opened.chunks, None)
        except BaseException as failure:
            if opened is not None:
                await opened.aclose()
            if isinstance(failure, trio.TooSlowError):
                raise UpstreamTimeout(
                    f"The upstream sent no first token within {deadline:g} s."
                ) from None
            raise
        return opened

    async def discard(self, result: OpenedStream) -> None:
        await result.aclose()


class ProxiedCall(Generic[A]):
    """One model call: routed to a deployment, relayed, and accounted for."""

    def __init__(
        self,
        gateway: Gateway,
        context: RequestContext,
        caller: Caller,
        group: str,
        body: dict[str, Any],
        fallbacks: list[str] | None,
        operation: Operation[A],
        surface: Surface | None = None,
    ) -> None:
        self.gateway = gateway
        self.operation = operation
        self.surface = surface
        self.context = context
        self.caller = caller
        self.body = body
        self.fallbacks = fallbacks
        self.requested = group
        group = caller.model_group(group)
        # An unknown model is a 404 before anything about it reaches the response headers.
        first = gateway.groups.deployments(group)[0]
        model = first.upstream_model
        # Metrics know a name a wildcard matched (the client's own) by its pattern.
        labelled = first.model_group if first.pattern else group
        self.telemetry = gateway.telemetry.call(
            context, caller, labelled, operation.gen_ai_name, body
        )
        self.progress = RouteProgress(
            group,
            preferred=surface.preferred if surface else None,
            observer=self.telemetry,
        )
        context.route = self.progress
        self.meter = UsageMeter(gateway.counter, model, body)
        self.ttft: float | None = None
        self.admission: Admission | None = None

    async def admit(self) -> None:
        """The caller's model access, budgets and rate limits, before any upstream call.
        Budgets reserve the request's most expensive outcome; `_record` settles it."""
        if self.caller.is_master:
            return
        try:
            check_access(self.caller, self.requested, self.progress.model_group)
            for fallback in self.fallbacks or ():
                check_model(self.caller, fallback, param="fallbacks")
            self.admission = await self.gateway.limits.admit(
                self.caller, self.meter.prompt_tokens, self._max_cost
            )
        except GatewayError as rejection:
            with trio.CancelScope(shield=True), trio.move_on_after(RECORD_TIMEOUT):
                await self._record(rejection.status, rejection, None, cancelled=False)
            raise
        self.context.headers.update(self.admission.headers)

    async def _max_cost(self) -> float:
        output = 0 if self.operation is EMBEDDINGS else requested_output_tokens(self.body)
        prompt = await self.meter.prompt_tokens()
        return self.gateway.max_cost(self.progress.model_group, prompt, output)

    async def complete(self) -> Reply:
        status, error, usage, cancelled = 500, None, None, False
        routed: Routed[Completion] | None = None
        try:
            routed = await self._route(CompletionAttempt(self.body, self.operation, self.surface))
            completion = routed.result
            self.meter.report(completion.usage)
            if completion.usage is None:
                self.meter.observe_completion(completion.body)
            usage = await self.meter.settle()
            status = 200
            return Reply(self._answer(completion, usage))
        except GatewayError as failure:
            status, error = failure.status, failure
            raise
        except trio.Cancelled:
            status, cancelled = CLIENT_CLOSED, True
            raise
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(RECORD_TIMEOUT):
                usage = await self._record(status, error, usage, cancelled=cancelled)
            if routed is not None:
                self.gateway.router.release(routed.deployment, usage.total_tokens if usage else 0)
            await self._release_unsettled()

    def _answer(self, completion: Completion, usage: Usage) -> bytes:
        """The upstream's own bytes when they can go as they are; the usage the upstream
        reported is kept whole (cache and reasoning details included); counted usage is
        added where it reported none. Another surface renders the answer its own way,
        unless the upstream answered in that surface's API itself."""
        if completion.native:
            return completion.raw or orjson.dumps(completion.body)
        if self.surface is not None:
            return self.surface.answer(
                {**completion.body, "usage": completion.usage or usage.to_openai()}
            )
        if completion.usage is not None:
            return completion.raw or orjson.dumps(completion.body)
        return orjson.dumps({**completion.body, "usage": usage.to_openai()})

    async def stream(self) -> Reply:
        try:
            routed = await self._route(StreamAttempt(self.body, self.operation, self.surface))
        except BaseException as failure:
            error = failure if isinstance(failure, GatewayError) else None
            cancelled = isinstance(failure, trio.Cancelled)
            status = error.status if error else CLIENT_CLOSED if cancelled else 500
            with trio.CancelScope(shield=True), trio.move_on_after(RECORD_TIMEOUT):
                await self._record(status, error, None, cancelled=cancelled)
            await self._release_unsettled()
            raise
        self.ttft = self.context.elapsed()
        opened = routed.result
        options = self.body.get("stream_options") or {}
        relay = StreamRelay(
            opened.stream,
            opened.chunks,
            opened.first,
            self.meter,
            include_usage=options.get("include_usage") is True and not opened.native,
            on_finish=self._finish_stream,
            encoder=self.surface.frames(opened.native) if self.surface else None,
            on_backpressure=self.gateway.telemetry.metrics.backpressure_wait,
        )
        self.context.relay = relay
        return Reply(relay, headers=SSE_HEADERS)

    async def _route(self, attempt: Attempt[Any]) -> Routed[Any]:
        """Route the request, counting the whole wait as the upstreams', not ours."""
        started = trio.current_time()
        try:
            routed = await self.gateway.router.route(
                self.progress.model_group,
                attempt,
                self.progress,
                prompt_tokens=self.meter.prompt_tokens,
                request_fallbacks=self.fallbacks,
                may_use=self._may_use,
            )
        finally:
            self.context.upstream_wait = trio.current_time() - started
        self.meter.model = routed.deployment.upstream_model
        return routed

    def _may_use(self, group: str) -> bool:
        """Whether a fallback group passes the caller's model checks, as its own did."""
        return self.caller.is_master or allows_model(self.caller, group)

    async def _finish_stream(self, outcome: StreamOutcome) -> None:
        status = 200
        if outcome.error:
            status = outcome.error.status
        elif outcome.cancelled_by_client:
            status = CLIENT_CLOSED
        usage = await self.meter.settle()
        if self.progress.deployment is not None:
            self.gateway.router.release(self.progress.deployment, usage.total_tokens)
        try:
            await self._record(status, outcome.error, usage, cancelled=outcome.cancelled_by_client)
        finally:
            await self._release_unsettled()
        if self.surface is not None and self.surface.finished is not None:
            await self.surface.finished(outcome)

    async def _release_unsettled(self) -> None:
        """A record that never got written (it timed out) must not hold its parallel
        slots and reservations. Bounded by `redis_timeout`, so shielded."""
        if self.admission is not None:
            with trio.CancelScope(shield=True):
                await self.admission.settle(0, 0.0)

    async def _record(
        self,
        status: int,
        error: GatewayError | None,
        usage: Usage | None,
        *,
        cancelled: bool,
    ) -> Usage:
        if usage is None:
            # A client that left before the answer is billed the prompt the upstream had.
            prompt = await self.meter.prompt_tokens() if cancelled else 0
            usage = Usage(prompt, 0, "counted" if cancelled else "none")
        deployment = self.progress.deployment
        caller = self.caller
        elapsed = self.context.elapsed()
        end = wall_time()
        cost = self.gateway.cost(deployment, usage) if deployment else 0.0
        if self.admission is not None:
            # A worker's own budget count has no checkpoint here before the ledger counts
            # the cost as unflushed, as it expects; a shared one is billed in Redis first.
            await self.admission.settle(usage.total_tokens, cost)
        record = RequestRecord(
            request_id=self.context.request_id,
            client_request_id=self.context.client_request_id,
            key_identity=caller.identity,
            key_hash=caller.key_hash,
            key_alias=caller.key_alias,
            team_id=caller.team_id,
            user_id=caller.user_id,
            model_group=self.progress.model_group,
            deployment=deployment.id if deployment else None,
            model=deployment.params.model if deployment else None,
            status=status,
            stream=bool(self.body.get("stream")),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            usage_source=usage.source,
            cost=cost,
            start_time=end - elapsed,
            end_time=end,
            latency_ms=round(elapsed * 1000, 3),
            ttft_ms=round(self.ttft * 1000, 3) if self.ttft is not None else None,
            cancelled_by_client=cancelled,
            error=secrets.redact(error.message) if error else None,
        )
        self.telemetry.finished(self.context, caller, record, deployment, error)
        await self.gateway.record(record)
        return usage

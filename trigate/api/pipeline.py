"""The one request pipeline every model route runs, stage by stage, in this order:

1. authenticate: from the request's head, before its body is read (`ModelAPI` calls
   `Pipeline.authenticate` first, so a client with no valid key is answered at once);
2. decode: the body parsed as JSON (or a multipart form's fields: `trigate.forms`; an
   upload's file is then read as it is sent on), LiteLLM's own fields and headers consumed
   (`trigate.api.litellm_request`, for every surface alike: none goes upstream), then
   the route's `Surface` validates what the gateway reads and translates the rest into
   OpenAI's chat shapes (an `Exchange`);
3. resolve: the team's model aliases, then the model group (a wildcard matches a
   name here; an unknown one is a 404), in `Call.__init__`;
4. admit: model access, rate limits and budgets (`Call.admit`);
5. hooks before routing, which may answer or refuse the request (`trigate.hooks`),
   then the response cache, which may answer it from an entry or from an identical
   request's call in flight (`trigate.cache`; `Call.look_up`);
6. route: attempts, retries, fallbacks and hedges by `trigate.router` (`Call` is the
   router's `Attempt`: a stream's attempt ends at its first chunk, so an upstream that
   fails early is still a real HTTP error and can still be retried);
7. relay: a whole answer, after the hooks' `after_answer`, rendered by the exchange;
   or a stream through `StreamRelay`, each chunk past the hooks' `on_chunk`;
8. record: spend, metrics and the trace, in `finally` under a shield with a bound, so
   a request is accounted however it ended (`Call._record`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
import trio

from trigate.api.context import RequestContext, current_request
from trigate.api.export_details import own_logging, record_details
from trigate.api.jsonio import parse_json_object
from trigate.api.litellm_request import Attempted, LiteLLMRequest, consume, prepare
from trigate.api.model_api import Reply, RequestBody, Route
from trigate.api.surface import Exchange, Surface
from trigate.auth import Caller
from trigate.cache import KeptCompletion, Replay, ResponseCache, Subscription, Ticket
from trigate.clock import wall_time
from trigate.end_users import end_user_of
from trigate.errors import GatewayError, UpstreamTimeout, secrets
from trigate.forms import StreamedForm, boundary_of, parse_form
from trigate.gateway import Gateway
from trigate.hooks import Beside, Hooks, run_beside
from trigate.limits import (
    Admission,
    Covering,
    ModelNotAllowed,
    allows_model,
    check_model,
    requested_output_tokens,
)
from trigate.providers import ChunkStream, Completion, NativeEvent
from trigate.relay import StreamOutcome, StreamRelay
from trigate.router.deployments import Deployment
from trigate.router.router import Routed, RouteProgress
from trigate.spend import RequestRecord
from trigate.sse import plain_payloads
from trigate.usage import Usage, UsageMeter

RECORD_TIMEOUT = 10.0
# A stream's after_answer hooks run in the relay's finishing time, before its record.
STREAM_HOOK_TIMEOUT = 5.0
logger = logging.getLogger("trigate")
# nginx's status for a request its client abandoned; it never reaches a client.
CLIENT_CLOSED = 499
# What answers a request before routing: a hook's or the cache's whole answer, or the
# cache's stream (a replayed entry, or a share of an identical request's stream).
Answered = Completion | Replay | Subscription | None
# The response cache's name of each surface's exchange (others are not cached).
_CACHED_SURFACES = {
    "trigate.api.surface.OpenAIExchange": "",
    "trigate.api.messages.MessagesExchange": "messages",
    "trigate.api.responses._Exchange": "responses",
}


@functools.cache
def _cached_surface(exchange: type) -> str | None:
    """The response cache's name of an exchange's surface, or None: not cached."""
    return _CACHED_SURFACES.get(f"{exchange.__module__}.{exchange.__qualname__}")


class Pipeline:
    """The stages every model route shares; a route is a surface on this pipeline."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def route(self, surface: Surface) -> Route:
        """The route serving `surface`: its handler and its error envelope."""
        return Route(functools.partial(self.serve, surface), surface.envelope)

    def form_route(self, surface: Surface) -> Route:
        """The route serving `surface` from a multipart/form-data body (`trigate.forms`)."""
        return Route(functools.partial(self.serve_form, surface), surface.envelope)

    def upload_route(self, surface: Surface) -> Route:
        """The route serving `surface` from a multipart/form-data body read as it arrives:
        its text fields first, then its file, sent on as the client uploads it."""
        handler = functools.partial(self.serve_upload, surface)
        return Route(handler, surface.envelope, streams_body=True)

    def authenticate(self, headers: Mapping[str, str]) -> Awaitable[Caller]:
        """The first stage, which `ModelAPI` runs on the head alone, before the body."""
        return self._gateway.auth.authenticate(headers)

    async def serve_form(
        self,
        surface: Surface,
        caller: Caller,
        headers: Mapping[str, str],
        raw: bytes | bytearray,
    ) -> Reply:
        return await self.serve(surface, caller, headers, parse_form(raw, headers))

    async def serve_upload(
        self,
        surface: Surface,
        caller: Caller,
        headers: Mapping[str, str],
        upload: RequestBody,
    ) -> Reply:
        form = StreamedForm(upload.read, boundary_of(headers))
        return await self.serve(surface, caller, headers, await form.fields())

    async def serve(
        self,
        surface: Surface,
        caller: Caller,
        headers: Mapping[str, str],
        raw: bytes | bytearray | dict[str, Any],
    ) -> Reply:
        """The stages after authentication; `raw` is the body, or a form's fields already
        read (`serve_form`, `serve_upload`)."""
        body = raw if isinstance(raw, dict) else parse_json_object(raw)
        gateway = self._gateway
        context = current_request.get()
        # Read as the client sent it, before LiteLLM's fields are consumed (its
        # `litellm_metadata.user` names an end user too) or a surface translates it.
        caller.end_user_id = end_user_of(body, headers)
        # LiteLLM's fields are the gateway's, never an upstream's: popped here, before any
        # surface reads or translates the body.
        litellm = consume(body, headers, context.path)
        attempted = None
        if litellm is not None:
            attempted = await prepare(gateway, surface, caller, body, headers, litellm)
        exchange = await surface.decode(gateway, caller, body, headers)
        # The hooks of the live state the request started with (a reload may swap them).
        hooks = gateway.live.hooks
        fallbacks = litellm.fallbacks if litellm else None
        call = Call(gateway, context, caller, exchange, fallbacks, hooks)
        if litellm is not None:  # guardrails: the request's own `guardrails` (issue 23)
            call.requested_guardrails = litellm.guardrails
        if attempted is not None:
            attempted.attach(call)
        await call.admit()
        answered: Answered = None if hooks is None else await call.before_route(hooks)
        # --- the response cache (trigate.cache) ---
        if answered is None and gateway.cache is not None:
            answered = await call.look_up(gateway.cache, litellm)
        # --- end of the response cache ---
        if call.stream:
            return await call.relay_stream(answered)
        return await call.complete(answered)


def _bounded_shield() -> trio.CancelScope:
    """Where a request is recorded however it ended: shielded from its cancellation, and
    bounded by `RECORD_TIMEOUT`. One scope with a deadline does what a shield around a
    `move_on_after` does, for one scope's cost."""
    return trio.CancelScope(shield=True, deadline=trio.current_time() + RECORD_TIMEOUT)


def check_access(caller: Caller, requested: str, group: str, covering: Covering) -> None:
    """The key's, team's and user's `models` must allow the model asked for. A name the
    team aliases to a model group passes when they all allow the alias, or all allow
    the group; a refusal names what the client asked for."""
    try:
        check_model(caller, requested, covering)
    except ModelNotAllowed:
        if requested == group or not allows_model(caller, group, covering):
            raise


def counted_model(gateway: Gateway, caller: Caller, requested: str) -> str:
    """The upstream model a token count for `requested` is made with (its group's first
    deployment's), once the caller's access to it is checked as a request's would be."""
    group = caller.model_group(requested)
    if not caller.is_master:
        check_access(caller, requested, group, gateway.groups.access.covering)
    return gateway.groups.deployments(group)[0].upstream_model


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


class Call:
    """One model call from its resolution on: admitted, routed, relayed and recorded.
    It is also the router's `Attempt` (`stream`, `run`, `discard`) and what a hook sees
    (`caller`, `model_group`, `body`, `context`)."""

    def __init__(
        self,
        gateway: Gateway,
        context: RequestContext,
        caller: Caller,
        exchange: Exchange,
        fallbacks: list[str] | None,
        hooks: Hooks | None,
    ) -> None:
        self.gateway = gateway
        self.context = context
        self.caller = caller
        self.exchange = exchange
        self.fallbacks = fallbacks
        self.hooks = hooks
        self.body = body = exchange.body
        self.stream = exchange.stream
        group = caller.model_group(exchange.requested)
        # An unknown model is a 404 before anything about it reaches the response headers.
        first = gateway.groups.deployments(group)[0]
        # Metrics know a name a wildcard matched (the client's own) by its pattern.
        labelled = first.model_group if first.pattern else group
        operation = exchange.operation
        self.telemetry = gateway.telemetry.call(
            context, caller, labelled, operation.gen_ai_name, body
        )
        self.progress = RouteProgress(group, preferred=exchange.preferred, observer=self.telemetry)
        context.route = self.progress
        carried = exchange.carried_tokens
        self.meter = UsageMeter(gateway.counter, first.upstream_model, body, carried)
        self.ttft: float | None = None
        self.admission: Admission | None = None
        # What LiteLLM's fields asked of the attempts (`Attempted.attach`), if any.
        self.attempted: Attempted | None = None
        # The request's cost once recorded, for LiteLLM's response headers.
        self.cost: float | None = None
        # A whole answer, for export sinks (`record_details`): its body is read only for
        # them (a cache hit's is parsed from its bytes only when read: `KeptCompletion`).
        self.answered: Completion | None = None
        # The guardrails the request names (LiteLLM's `guardrails`), for the hooks.
        self.requested_guardrails: list[str] = []
        # Its part in the response cache, when that applies to it (`look_up`).
        self.cache_ticket: Ticket | None = None
        context.call = self

    @property
    def model_group(self) -> str:
        return self.progress.model_group

    @property
    def call_type(self) -> str:
        return self.exchange.operation.call_type

    def native_request(self) -> dict[str, Any] | None:
        """The request in the client's own API, for a hook that reads it as well as `body`
        and changes both alike (`Exchange.native_request`); None on most surfaces."""
        return self.exchange.native_request()

    # --- admit --------------------------------------------------------------------------

    async def admit(self) -> None:
        """The caller's model access, budgets and rate limits, before any upstream call.
        Budgets reserve the request's most expensive outcome; `_record` settles it. The
        proxy's budget (LiteLLM's `litellm_settings.max_budget`) and a request's end user
        bind the master key too."""
        gateway = self.gateway
        caller = self.caller
        proxy = await gateway.proxy_budget_row() if gateway.proxy_budget is not None else None
        if caller.is_master and caller.end_user_id is None and proxy is None:
            return
        try:
            if caller.end_user_id is not None:
                await gateway.end_users.bind(caller)
            if not caller.is_master:
                covering = gateway.groups.access.covering
                check_access(caller, self.exchange.requested, self.progress.model_group, covering)
                for fallback in self.fallbacks or ():
                    check_model(caller, fallback, covering, param="fallbacks")
            self.admission = await gateway.limits.admit(
                caller, self.meter.prompt_tokens, self._max_cost, proxy
            )
        except GatewayError as rejection:
            await self._refused(rejection)
            raise
        self.context.headers.update(self.admission.headers)

    async def _max_cost(self) -> float:
        has_output = self.exchange.operation.has_output_tokens
        output = requested_output_tokens(self.body) if has_output else 0
        prompt = await self.meter.prompt_tokens()
        return self.gateway.max_cost(self.progress.model_group, prompt, output)

    async def _refused(self, error: GatewayError) -> None:
        """A request refused before routing is recorded, and releases what it reserved."""
        await self._ended_unrouted(error.status, error, cancelled=False)

    async def _ended_unrouted(
        self, status: int, error: GatewayError | None, *, cancelled: bool
    ) -> None:
        """A request that ended before any upstream answered it (refused, failed, or left
        by its client) is recorded, and releases its parallel slot and reservations."""
        with _bounded_shield():
            await self._record(status, error, None, cancelled=cancelled)
        await self._release_unsettled()

    # --- hooks, then route and relay --------------------------------------------------------

    async def before_route(self, hooks: Hooks) -> Completion | None:
        """The hooks' answer (a cache hit), or None. A refusal is recorded as one, and so
        is a client that leaves while a hook runs: the request was admitted, and must
        not keep its parallel slot or budget reservation."""
        exchange = self.exchange
        # Hooks rewrite the request in OpenAI's shapes; whether they did decides what a
        # deployment that speaks the client's own API may be sent: the client's request
        # as hooks that read it changed it alike (a guardrail's masks), or else only the
        # rewrite (`translate_only`), so no change can be bypassed.
        before = orjson.dumps(self.body) if exchange.has_native_path else None
        try:
            answer = await hooks.before_route(self)
            changed = before is not None and orjson.dumps(self.body) != before
            if changed and not exchange.native_in_step():
                exchange.translate_only()
        except GatewayError as refusal:
            await self._refused(refusal)
            raise
        except trio.Cancelled:
            await self._ended_unrouted(CLIENT_CLOSED, None, cancelled=True)
            raise
        except BaseException:
            await self._refused(GatewayError("A request hook failed."))
            raise
        return None if answer is None else Completion(answer)

    async def look_up(self, cache: ResponseCache, litellm: LiteLLMRequest | None) -> Answered:
        """The response cache's answer (an entry, or a share of an identical request in
        flight), or None: the request goes upstream, and its ticket keeps its answer. It
        is recorded as `before_route` records, however it ends here."""
        if litellm is not None and not litellm.cacheable:
            return None
        if self.hooks is not None and self.hooks.personalises(self):
            return None  # an answer made the caller's own is neither kept nor shared
        exchange = self.exchange
        kind = _cached_surface(type(exchange))
        if kind is None:
            return None
        surface = kind or exchange.operation.gen_ai_name
        controls = litellm.cache if litellm is not None else None
        ticket = cache.ticket(self, surface, kind or self.call_type, controls)
        if ticket is None:
            return None
        self.cache_ticket = ticket
        served = cache.served_at_once(self, ticket)
        if served is not None:
            return served
        try:
            return await cache.lookup(self, ticket)
        except GatewayError as failure:  # the call in flight it joined failed
            await self._refused(failure)
            raise
        except trio.Cancelled:
            await self._ended_unrouted(CLIENT_CLOSED, None, cancelled=True)
            raise

    async def complete(self, answered: Answered) -> Reply:
        """Route, or take the hooks' answer, then answer whole and record."""
        status, error, usage, cancelled = 500, None, None, False
        routed: Routed[Completion] | None = None
        try:
            if answered is None:
                routed = await self._route()
                completion = routed.result
            else:
                assert isinstance(answered, Completion), "a whole request is answered whole"
                completion = answered
            self.answered = completion
            if type(completion) is KeptCompletion and completion.billed is not None:
                # A cache hit's usage, as its entry found it once for every hit it serves;
                # a copy where hooks (a user's, which may change it) are given it.
                billed = completion.billed
                usage = billed if self.hooks is None else replace(billed)
            else:
                reported = completion.usage
                self.meter.report(reported)
                if reported is None or type(reported.get("completion_tokens")) is not int:
                    # No count of its own (none, or no number): its text is counted.
                    self.meter.observe_completion(completion.body)
                usage = await self.meter.settle()
            if routed is not None:
                usage = self.exchange.bill(routed.deployment, completion, usage)
            if self.hooks is not None and await self.hooks.after_answer(
                self, completion.body, usage
            ):
                completion.raw = None  # a guardrail changed the answer: not the upstream's bytes
            ticket = self.cache_ticket
            if ticket is not None and not ticket.hit:  # the cache keeps it (trigate.cache)
                completion = await ticket.answered(completion, usage)
            answer = self.exchange.answer(completion, usage)
            if self.context.response_id is None:  # a surface that made its own id set it
                self.context.response_id = _completion_id(completion)
            status = 200
        except GatewayError as failure:
            status, error = failure.status, failure
            raise
        except trio.Cancelled:
            status, cancelled = CLIENT_CLOSED, True
            raise
        finally:
            if self.cache_ticket is not None:  # those waiting on it fail or ask again
                self.cache_ticket.ended(error)
            if self._record_may_block(usage, cancelled):
                with _bounded_shield():
                    usage = await self._record(status, error, usage, cancelled=cancelled)
            else:
                # No checkpoint on the way (`_record_may_block`), so no cancellation can
                # cut the record short, and a shielding scope would only cost.
                usage = await self._record(status, error, usage, cancelled=cancelled)
            if routed is not None:
                self.gateway.router.release(
                    routed.deployment, usage.total_tokens if usage is not None else 0
                )
            if self.admission is not None:  # none to settle (the master key's): no coroutine
                await self._release_unsettled()
        return Reply(await self.exchange.settled(answer), headers=self.exchange.answer_headers)

    async def relay_stream(self, answered: Answered) -> Reply:
        """Route to a stream's first chunks, or take the hooks' or the cache's answer,
        then relay it; the relay records it when it ends."""
        try:
            if answered is None:
                opened = (await self._route()).result
            elif isinstance(answered, Completion):
                opened = OpenedStream(_AnsweredStream(), None, [_as_chunk(answered.body)])
                opened.chunks = aiter(opened.stream)
            else:  # the response cache's stream (trigate.cache)
                opened = OpenedStream(answered, aiter(answered), answered.first, answered.native)
        except BaseException as failure:
            error = failure if isinstance(failure, GatewayError) else None
            cancelled = isinstance(failure, trio.Cancelled)
            status = error.status if error else CLIENT_CLOSED if cancelled else 500
            if self.cache_ticket is not None:  # those waiting on it fail or ask again
                self.cache_ticket.ended(error)
            with _bounded_shield():
                await self._record(status, error, None, cancelled=cancelled)
            await self._release_unsettled()
            raise
        self.ttft = self.context.elapsed()
        first = opened.first
        if answered is None and self.cache_ticket is not None:
            # The response cache (trigate.cache): identical requests share this stream.
            shared = self.cache_ticket.share(opened, self.progress.deployment)
            if shared is not None:
                opened = OpenedStream(shared, aiter(shared), None, opened.native)
        options = self.body.get("stream_options") or {}
        relay = StreamRelay(
            opened.stream,
            opened.chunks,
            opened.first,
            self.meter,
            include_usage=options.get("include_usage") is True and not opened.native,
            on_finish=self._finish_stream,
            encoder=self.exchange.frames(opened.native),
            on_backpressure=self.gateway.telemetry.metrics.backpressure_wait,
            on_chunk=None if self.hooks is None else self.hooks.chunk_hook(self),
        )
        self.context.relay = relay
        if self.context.response_id is None and first:
            self.context.response_id = _answer_id(first[0])
        return Reply(relay, headers=self.exchange.stream_headers)

    async def _route(self) -> Routed[Any]:
        """Route the request, beside what hooks run during the call (guardrails)."""
        beside = None if self.hooks is None else self.hooks.beside_route(self)
        if beside is not None:
            return await self._route_beside(beside)
        return await self._route_only()

    async def _route_beside(self, beside: Beside) -> Routed[Any]:
        """Route while `beside` runs (LiteLLM's during_call guardrails): the answer waits
        for it, and its refusal cancels the call, or discards an answer that came first."""

        async def discard(routed: Routed[Any] | None) -> None:
            if routed is not None:
                await self._abandon(routed)

        return await run_beside(self._route_only, beside, discard)

    async def _abandon(self, routed: Routed[Any]) -> None:
        """Release an answer nobody will be sent: its upstream, and its deployment's
        count of requests in flight."""
        try:
            await self.discard(routed.result)
        finally:
            self.gateway.router.release(routed.deployment, 0)

    async def _route_only(self) -> Routed[Any]:
        """Route the request, counting the whole wait as the upstreams', not ours."""
        started = trio.current_time()
        try:
            routed: Routed[Any] = await self.gateway.router.route(
                self.progress.model_group,
                self,
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
        return self.caller.is_master or allows_model(
            self.caller, group, self.gateway.groups.access.covering
        )

    # --- the router's attempt ---------------------------------------------------------------

    async def run(self, deployment: Deployment) -> Any:
        """One try on `deployment`: a whole completion, or a stream's first chunks."""
        if self.attempted is not None:
            return await self.attempted.run(self, deployment)
        if not self.stream:
            return await self.exchange.complete(deployment)
        return await self._open(deployment)

    async def discard(self, result: Any) -> None:
        """Release a result that lost a hedge race (a finished completion holds nothing)."""
        if isinstance(result, OpenedStream):
            await result.aclose()

    async def _open(self, deployment: Deployment) -> OpenedStream:
        """Open a stream and wait for its first chunk, within the deployment's
        time-to-first-token deadline (`stream_timeout`, else `timeout`)."""
        params = deployment.params
        deadline = params.stream_timeout or params.timeout
        opened: OpenedStream | None = None
        try:
            with trio.fail_after(deadline):
                stream, native = await self.exchange.open_stream(deployment)
                opened = OpenedStream(stream, aiter(stream), None, native)
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

    # --- record ---------------------------------------------------------------------------

    async def _finish_stream(self, outcome: StreamOutcome) -> None:
        usage = await self.meter.settle()
        if self.progress.deployment is not None:
            usage = self.exchange.bill(self.progress.deployment, None, usage)
        if self.hooks is not None and outcome.error is None:
            outcome.error = await self._stream_refusal(self.hooks, usage)
        status = 200
        if outcome.error:
            status = outcome.error.status
        elif outcome.cancelled_by_client:
            status = CLIENT_CLOSED
        if self.progress.deployment is not None:
            self.gateway.router.release(self.progress.deployment, usage.total_tokens)
        try:
            await self._record(status, outcome.error, usage, cancelled=outcome.cancelled_by_client)
        finally:
            await self._release_unsettled()
        await self.exchange.finished(outcome)

    async def _stream_refusal(self, hooks: Hooks, usage: Usage) -> GatewayError | None:
        """The hooks' `after_answer` on a stream that has gone out: a refusal, or a hook's
        bug (logged), is the stream's recorded error. Bounded, so that the record
        (which shares the relay's finishing time) always follows."""
        try:
            with trio.fail_after(STREAM_HOOK_TIMEOUT):
                await hooks.after_answer(self, {}, usage)
        except GatewayError as refusal:
            return refusal
        except trio.TooSlowError:
            logger.error(  # noqa: TRY400 (a deadline, not a traceback worth logging)
                "request %s: an after_answer hook ran past %g s",
                self.context.reference, STREAM_HOOK_TIMEOUT,
            )  # fmt: skip
            return GatewayError("A response hook did not finish in time.")
        except Exception:
            logger.exception("request %s: an after_answer hook failed", self.context.reference)
            return GatewayError("A response hook failed.")
        return None

    async def _release_unsettled(self) -> None:
        """A record that never got written (it timed out) must not hold its parallel
        slots and reservations. Bounded by `redis_timeout`, so shielded; a cancel scope
        costs a request more than the rest of this check, so none when already settled."""
        admission = self.admission
        if admission is not None and admission.unsettled:
            with trio.CancelScope(shield=True):
                await admission.settle(0, 0.0)

    def _record_may_block(self, usage: Usage | None, cancelled: bool) -> bool:
        """Whether `_record` may reach a checkpoint, and so must run shielded: to count
        the prompt of a client that left, to settle an admission through Redis (or give
        back leases it took there), or to hand the record to an attached sink. Otherwise
        everything it awaits finishes at once: the ledger only queues a row."""
        if usage is None and cancelled:
            return True
        admission = self.admission
        if admission is not None and not admission.settles_at_once:
            return True
        return not self.gateway.records_at_once

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
        deployment = billed = self.progress.deployment
        if self.cache_ticket is not None:  # a hit, or a share of another's call, pays nothing
            billed = self.cache_ticket.billed(deployment)
            deployment = deployment or billed  # the share's payer names who served it
        caller = self.caller
        # One reading of the clock for both: the row's end is its start plus its latency.
        now = trio.current_time()
        elapsed = now - self.context.started
        end = wall_time(now)
        cost = self.gateway.cost(billed, usage) if billed else 0.0
        if self.admission is not None:
            # A worker's own budget count has no checkpoint here before the ledger counts
            # the cost as unflushed, as it expects; a shared one is billed in Redis first.
            await self.admission.settle(usage.total_tokens, cost)
        context = self.context
        # Positional, in the fields' order (`RECORD_FIELDS`): a class called with 25
        # keywords costs some 13,000 instructions more than with its arguments in order.
        record = RequestRecord(
            context.request_id,
            caller.identity,
            caller.key_hash,
            caller.key_alias,
            caller.team_id,
            caller.user_id,
            self.progress.model_group,
            deployment.id if deployment else None,
            deployment.params.model if deployment else None,
            status,
            self.stream,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.source,
            cost,
            end - elapsed,  # start_time
            end,
            round(elapsed * 1000, 3),  # latency_ms
            round(self.ttft * 1000, 3) if self.ttft is not None else None,
            cancelled,
            secrets.redact(error.message) if error else None,
            context.client_request_id,
            context.response_id,
            caller.end_user_id,
            caller.organization_id,
        )
        if self.attempted is not None:
            record = self.attempted.annotated(record)
        if self.cache_ticket is not None:
            self.cache_ticket.annotate(record)
        # --- export sinks (trigate.export, issue 28): what they read beyond the row ---
        own = own_logging(caller)
        if own is not None or self.gateway.exports.configured:
            answer = self.answered.body if self.answered is not None else None
            record.details = record_details(self, answer, error, own)
        # ---------------------------------------------------------------------------
        if self.hooks is not None:
            # Masked by logging_only guardrails, the export details included, before
            # the record is stored or any sink sees it.
            record = self.hooks.redacted(self, record)
        self.cost = cost
        self.telemetry.finished(self.context, caller, record, deployment, error)
        await self.gateway.record(record)
        return usage


class _AnsweredStream:
    """A hook's answer to a streamed request, as a stream of one chunk: it goes through
    the relay like an upstream's, so the client gets it in its own stream format."""

    async def __aiter__(self) -> Any:
        return
        yield

    def waits_next(self) -> bool:
        return False

    async def aclose(self) -> None:
        pass


def _completion_id(completion: Completion) -> str | None:
    """A whole answer's id (`_answer_id`): a cache hit's as its entry kept it while its
    body is unread, for then nothing (no hook) can have changed it."""
    if isinstance(completion, KeptCompletion) and completion.unread:
        kept = completion.answer_id
        if kept is not None:
            return kept
    return _answer_id(completion.body)


def _answer_id(answer: Any) -> str | None:
    """The id a client's answer carries, by which LiteLLM's users look its spend row up:
    a whole answer's own (a chat completion's, a Message's, a Response's), or a stream's,
    from its first chunk or opening event (`message_start`, `response.created`)."""
    data = answer.data if isinstance(answer, NativeEvent) else answer
    if isinstance(data, bytes):
        # Plain events passed through unparsed (`SSEDecoder.plain`): the first one's.
        # Only shaped like JSON objects: an upstream's malformed one names no id.
        try:
            data = orjson.loads(next(plain_payloads(data), b"null"))
        except orjson.JSONDecodeError:
            return None
    if not isinstance(data, dict):
        return None
    found = data.get("id")
    if found is None:
        opening = data.get("message") or data.get("response")
        found = opening.get("id") if isinstance(opening, dict) else None
    return found if isinstance(found, str) and found else None


def _as_chunk(answer: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as one `chat.completion.chunk`: each message becomes a delta.
    A text completion's stream chunks have its own shape."""
    if answer.get("object") == "text_completion":
        return answer
    choices = [
        {
            "index": choice.get("index", 0),
            "delta": choice.get("message") or {},
            "finish_reason": choice.get("finish_reason") or "stop",
        }
        for choice in answer.get("choices") or ()
        if isinstance(choice, dict)
    ]
    chunk = {
        "id": answer.get("id", ""),
        "object": "chat.completion.chunk",
        "created": answer.get("created", int(wall_time())),
        "model": answer.get("model", ""),
        "choices": choices,
    }
    if isinstance(answer.get("usage"), dict):
        chunk["usage"] = answer["usage"]
    return chunk

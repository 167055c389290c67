"""One pass-through call (passthrough_routes.py): authenticated, admitted, relayed, recorded.

The virtual key is read where the client's SDK put it and checked as on the unified
routes: the key's `models` against the model the body or path names, then its rate
limits and budgets, a budget reserving the call's most expensive outcome at the
model's price. The hooks that apply to the call run on it in the provider's own API
(passthrough_guard.py). The request goes to its upstream (passthrough_targets.py) with
the provider's credential in place of the key; the answer goes back as it came (or as
the hooks let it), its usage read as it passes (passthrough_usage.py). However the
call ends it is one spend row, written shielded under a bound, that settles what the
admission held: at the usage read, else (failing closed) at what was reserved; an
answer that came whole ends only once its row is written, as on the model API. Only
the paths that call a model are open to every key; the rest, which act on the
provider's account, need an admin.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
import trio

from trigate.api.context import current_request
from trigate.api.envelopes import ANTHROPIC, GOOGLE, OPENAI
from trigate.api.jsonio import check_nesting
from trigate.api.model_api import NEVER_FORWARDED, error_reply, send_reply, unexpected_failure
from trigate.api.passthrough_formats import native_api, unreadable_reason
from trigate.api.passthrough_guard import (
    MAX_ANSWER_BYTES,
    PassGuard,
    PassRequest,
    WatchedStream,
    guard_for,
    read_whole,
    refuse_unconfigured,
    requested_guardrails,
)
from trigate.api.passthrough_targets import (
    VERTEX_ROUTES,
    Upstream,
    calls_model,
    requested_model,
    route_prefixes,
    serving,
    upstream_for,
)
from trigate.api.passthrough_usage import UsageChunkDropper, UsageReader, gemini_embedded_texts
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.errors import AuthenticationFailed, GatewayError, secrets
from trigate.gateway import Gateway
from trigate.guardrails.text import request_slots
from trigate.hooks import hook_paths, run_beside
from trigate.limits import Admission, ModelNotAllowed, allows_model, check_model
from trigate.providers.base import translate_transport_error
from trigate.roles import NotPermitted, Role
from trigate.spend import RequestRecord
from trigate.spend.prices import ModelPrice, TokenCounts, cost, price_for
from trigate.usage import Usage, UsageMeter

if TYPE_CHECKING:
    from hypercorn.typing import ASGISendCallable

    from trigate.api.passthrough_routes import CustomEndpoint

# Never sent upstream: the client's credentials for the gateway, the connection's own
# framing, and compression (the gateway reads the answer's usage as it passes).
NOT_PASSED = frozenset(
    {
        *NEVER_FORWARDED, "x-goog-api-key", "host", "content-length", "connection",
        "transfer-encoding", "keep-alive", "te", "upgrade", "accept-encoding",
        "proxy-connection", "x-litellm-api-key", "api-key",
    }
)  # fmt: skip
# The upstream's framing, which the server redoes.
NOT_RETURNED = frozenset({"connection", "transfer-encoding", "keep-alive", "content-length"})
DEFAULT_TIMEOUT = 600.0
# The routes whose chat and completion streams take `stream_options.include_usage`.
USAGE_ASKED_ROUTES = frozenset({"openai", "vllm"})
# Token counting, which the providers do not charge for (Anthropic's, Gemini's, Vertex's).
FREE_PATHS = ("/messages/count_tokens", ":countTokens")
RECORD_TIMEOUT = 10.0
CLIENT_CLOSED = 499


class PassCall:
    """One pass-through call: authenticated, admitted, relayed and recorded."""

    def __init__(
        self,
        gateway: Gateway,
        method: str,
        route: str | None,
        custom: CustomEndpoint | None,
        path: str,
        headers: dict[str, str],
        query: str,
    ) -> None:
        self.gateway = gateway
        self.method = method
        self.route = route
        self.custom = custom
        self.path = path
        self.headers = headers
        self.body: Any = None
        # Gemini's SDKs may send the key as `?key=`: taken out, never sent on.
        pairs = parse_qsl(query, keep_blank_values=True)
        self.query_key = next((value for name, value in pairs if name == "key"), None)
        self.query = (
            urlencode([(n, v) for n, v in pairs if n != "key"]) if self.query_key else query
        )
        self.caller: Caller | None = None
        self.admission: Admission | None = None
        self.meter: UsageMeter | None = None
        self.reserved: float | None = None
        # Whether the gateway asked the stream for its usage, which the client did not.
        self.usage_asked = False
        self.model: str | None = None
        self.upstream: Upstream | None = None
        self.started = wall_time()
        self.ttft: float | None = None
        self.timeout = DEFAULT_TIMEOUT
        # Anthropic's SDKs (Claude on Vertex's too) read errors in Anthropic's envelope,
        # Google's (Gemini's, Vertex's) in Google's.
        claude = route == "anthropic" or (route in VERTEX_ROUTES and "/anthropic/" in path)
        google = route == "gemini" or route in VERTEX_ROUTES
        self.envelope = ANTHROPIC if claude else GOOGLE if google else OPENAI
        # The hooks on the call, when any applies to it (passthrough_guard.py).
        self.guard: PassGuard | None = None
        self.watched: WatchedStream | None = None
        # Whether the client's answer has started (an error is then the stream's own).
        self.replied = False
        # What the provider streamed of an answer cut short (None: none was): it and the
        # prompt are what is billed, at least.
        self.cut_short: list[str] | None = None
        # The body of the answer's last message, held back until the call is recorded
        # (None: the answer did not come whole, or went as an error reply).
        self.last_body: bytes | None = None

    async def authenticate(self) -> None:
        key = _presented_key(self.headers, self.query_key)
        if key is None:
            raise AuthenticationFailed(
                "No API key provided. Send your virtual key as your provider's SDK sends its "
                "key (`x-api-key`, `x-goog-api-key`, `Authorization: Bearer`)."
            )
        self.caller = await self.gateway.auth.authenticate({"authorization": f"Bearer {key}"})

    async def run(self, body: bytes, send: ASGISendCallable) -> None:
        """The call, recorded before its answer ends: the answer's last message goes once
        the `finally` has recorded it, so that a kept-alive client's next request, read at
        the answer's end (trigate/http1.py), waits for none of it. An answer cut short
        (the client gone, the upstream broken off) has no last message to hold."""
        status, error, usage, cancelled, stream = 500, None, None, False, False
        reader: UsageReader | None = None
        response: httpx.Response | None = None
        sent = relayed = False
        parsed = self.body = _json(body)
        try:
            self._check_path()
            check_nesting(parsed, body)  # guardrails and hooks walk it
            self.model = requested_model(self.path, parsed)
            self._check_model()
            named, popped = requested_guardrails(parsed)
            self.guard = self._guard(parsed, named)
            await self._admit(parsed)
            if self.guard is not None:
                body = await self.guard.before()
            elif popped:
                body = orjson.dumps(parsed)
            request = await self._request(self._asking_usage(parsed, body))
            sent = True
            response = await self._call(request)
            status = response.status_code
            content_type = response.headers.get("content-type", "")
            stream = "text/event-stream" in content_type
            reader = UsageReader(content_type)
            await self._relay(response, reader, stream, send)
            relayed = True
            usage = reader.usage()
            if self.guard is not None and stream and status < 400:
                await self.guard.stream_ended(_usage(usage))
        except GatewayError as failure:
            status, error = failure.status, failure
            usage = reader.usage() if reader is not None else None
            if not self.replied:
                await send_reply(send, error_reply(failure, self.envelope))
        except trio.Cancelled:
            status, cancelled = CLIENT_CLOSED, True
            if reader is not None:
                usage = reader.usage()
            raise
        except httpx.HTTPError as failure:
            # The upstream broke off mid-answer: the client's answer is cut short too.
            error = translate_transport_error(failure)
            status = error.status
        except Exception as failure:
            error = unexpected_failure(failure)
            status = error.status
            if not self.replied:
                await send_reply(send, error_reply(error, self.envelope))
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + RECORD_TIMEOUT):
                if response is not None:
                    await response.aclose()
                counted = None
                if stream and reader is not None and not relayed and _status_ok(response):
                    # A stream cut short (a block, the client gone, the upstream broken
                    # off): at least what the provider streamed, however little it reported.
                    self.cut_short = reader.streamed
                if self.cut_short is not None:
                    counted = await self._cut_short_usage(usage, parsed)
                elif usage is None and status < 400 and self.route == "gemini":
                    counted = await self._counted(gemini_embedded_texts(self.path, parsed))
                # A call the upstream may have served (it did not refuse it) is billed.
                billed = (
                    sent
                    and (response is None or response.status_code < 400)
                    and not self.path.endswith(FREE_PATHS)
                )
                await self._record(status, error, usage, stream, cancelled, counted, billed)
        if self.last_body is not None:
            await send({"type": "http.response.body", "body": self.last_body, "more_body": False})

    async def _call(self, request: httpx.Request) -> httpx.Response:
        """The upstream's answer (its head), beside what hooks run during the call."""
        beside = self.guard.beside() if self.guard is not None else None
        if beside is None:
            return await self._upstream(request)

        async def refused(response: httpx.Response | None) -> None:
            self.cut_short = []  # the upstream read the prompt: it is billed that
            if response is not None:
                await response.aclose()

        return await run_beside(functools.partial(self._upstream, request), beside, refused)

    async def _upstream(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.gateway.transport.handle_async_request(request)
        except httpx.HTTPError as failure:
            raise translate_transport_error(failure) from failure

    async def _relay(
        self,
        response: httpx.Response,
        reader: UsageReader,
        stream: bool,
        send: ASGISendCallable,
    ) -> None:
        """The answer to the client: past the hooks where they read it, else as it came;
        its last message held in `last_body`, sent once the call is recorded (`run`)."""
        upstream = response.stream
        assert isinstance(upstream, httpx.AsyncByteStream)
        guard = self.guard

        def arrived() -> None:
            if self.ttft is None:
                self.ttft = wall_time() - self.started

        def seen(piece: bytes) -> None:
            arrived()
            reader.feed(piece)

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        if guard is not None and response.status_code < 400:
            if not stream and guard.holds_answer():
                raw = await read_whole(upstream, seen)
                answer = await guard.answer(raw, _usage(reader.usage()))
                await self._reply_start(send, response)
                self.last_body = answer
                return
            # A watched stream's codec decodes its events once, for the reader too.
            watched = (
                guard.stream(drop_usage=self.usage_asked, heard=reader.read_event)
                if stream
                else None
            )
            self.watched = watched
            if watched is not None:
                await self._reply_start(send, response)
                try:
                    await watched.relay(upstream, arrived, write)
                except GatewayError:
                    # Ended by its error event: the stream closes cleanly after it.
                    self.last_body = b""
                    raise
                finally:
                    if watched.cut_short:
                        self.cut_short = reader.streamed
                self.last_body = b""
                return
        dropper = UsageChunkDropper() if stream and self.usage_asked else None
        # A whole answer that logging_only guardrails read once it went (bounded).
        logged = bytearray() if guard is not None and not stream and guard.logs_answer() else None
        await self._reply_start(send, response)
        async for piece in upstream:
            seen(piece)
            if logged is not None and len(logged) <= MAX_ANSWER_BYTES:
                logged += piece
            if dropper is not None:
                piece = dropper.feed(piece)
            await write(piece)
        self.last_body = dropper.end() if dropper is not None else b""
        if guard is not None and logged is not None and len(logged) <= MAX_ANSWER_BYTES:
            await guard.answer_went(bytes(logged), _usage(reader.usage()))

    async def _reply_start(self, send: ASGISendCallable, response: httpx.Response) -> None:
        self.replied = True
        await send(_start(response))

    def _check_path(self) -> None:
        """A provider route's paths other than its model calls reach the provider's
        account itself (its files, batches, fine-tuning jobs, a project's resources):
        an admin's only. A custom endpoint's target is the admin's own choice."""
        caller = self.caller
        if self.custom is not None or caller is None or calls_model(self.method, self.path):
            return
        if caller.is_master or caller.role is Role.PROXY_ADMIN:
            return
        raise NotPermitted(
            f"{self.method} /{self.route}{self.path} does not call a model: on the "
            "pass-through routes only an admin (the master key or a proxy_admin) may "
            "reach the rest of a provider's API, which holds the whole account's files, "
            "batches and jobs.",
            code="pass_through_admin_only",
        )

    def _asking_usage(self, parsed: Any, body: bytes) -> bytes:
        """An OpenAI chat or completion stream reports its usage only when asked: the
        body sent asks for it, so that the call is billed what it used."""
        if (
            self.route not in USAGE_ASKED_ROUTES
            or not self.path.endswith("/completions")
            or not isinstance(parsed, dict)
            or parsed.get("stream") is not True
        ):
            return body
        options = parsed.get("stream_options")
        options = options if isinstance(options, dict) else {}
        if options.get("include_usage") is True:
            return body
        self.usage_asked = True
        return orjson.dumps({**parsed, "stream_options": {**options, "include_usage": True}})

    def _guard(self, parsed: Any, named: list[str]) -> PassGuard | None:
        """The hooks on this call (passthrough_guard.py); None when none applies to it."""
        hooks = self.gateway.live.hooks
        if hooks is None:
            refuse_unconfigured(named)
            return None
        request = None
        if self.caller is not None:
            body = parsed if isinstance(parsed, dict) else {}
            model = self.model or self._route_name()
            request = PassRequest(self.caller, model, body, current_request.get(), named)
        api = native_api(self.route, self.method, self.path, self.query)
        if api is None:
            return guard_for(
                hooks, request, None, unreadable_reason(self.route, self.method, self.path)
            )
        callbacks = self.gateway.live.config.litellm_settings.get("callbacks")
        return guard_for(
            hooks,
            request,
            api if isinstance(parsed, dict) else None,
            "its body is not a JSON object",
            user_hooks=bool(hook_paths(callbacks)),
        )

    async def _cut_short_usage(self, usage: dict[str, Any] | None, parsed: Any) -> Usage:
        """What a call cut short is billed: its prompt (as the upstream reported it, else
        counted), and the larger of the completion the upstream reported so far and the
        count of the text it streamed (a stream cut off before its usage reports a
        fraction of it, or none)."""
        reported = _usage(usage)
        prompt = reported.prompt_tokens
        if not prompt and isinstance(parsed, dict):
            counted = await self._counted([slot.text for slot in request_slots(parsed)])
            prompt = counted.prompt_tokens if counted is not None else 0
        text = "".join(self.cut_short or ())
        completion = await self.gateway.counter.count_text_async(self.model or "", text)
        if completion <= reported.completion_tokens and prompt == reported.prompt_tokens:
            return reported
        completion = max(completion, reported.completion_tokens)
        return dataclasses.replace(
            reported, prompt_tokens=prompt, completion_tokens=completion, source="counted"
        )

    async def _counted(self, texts: list[str] | None) -> Usage | None:
        """The tokens of `texts`, by the gateway's count, for an answer that reports none."""
        if texts is None:
            return None
        counter, model = self.gateway.counter, self.model or ""
        prompt = sum([await counter.count_text_async(model, text) for text in texts])
        return Usage(prompt, 0, "counted")

    def _check_model(self) -> None:
        """A key's `models` bind the model the request names, by its own name or by the
        group of a deployment serving it; a key with a list must name one."""
        caller = self.caller
        if caller is None or caller.is_master:
            return
        covering = self.gateway.groups.access.covering
        model = self.model
        if model is not None:
            # Only the deployments whose credentials the call would use: a key allowed a
            # `vertex_ai/` group's model is not thereby allowed it on `/gemini`.
            prefixes = route_prefixes(self.route) if self.route is not None else ()
            groups = [d.model_group for d in serving(self.gateway, prefixes, model)
                      if model in (d.upstream_model, d.model_group)]  # fmt: skip
            if any(allows_model(caller, name, covering) for name in (model, *groups)):
                return
        try:
            check_model(caller, model or "", covering)
        except ModelNotAllowed:
            if model is None:
                raise ModelNotAllowed(
                    "This key may use only some models, and this pass-through request names "
                    "none (in its body's `model` or its path)."
                ) from None
            raise

    async def _admit(self, body: Any) -> None:
        caller, gateway = self.caller, self.gateway
        if caller is None:
            return
        proxy = await gateway.proxy_budget_row() if gateway.proxy_budget is not None else None
        if caller.is_master and proxy is None:
            return
        meter = self._meter(body)
        self.admission = await gateway.limits.admit(
            caller, meter.prompt_tokens, functools.partial(self._max_cost, body), proxy
        )

    def _meter(self, body: Any) -> UsageMeter:
        if self.meter is None:
            self.meter = UsageMeter(
                self.gateway.counter, self.model or "", body if isinstance(body, dict) else {}
            )
        return self.meter

    async def _max_cost(self, body: Any) -> float:
        """The most the call may cost: its prompt and its `max_tokens` (or
        `max_completion_tokens`) at the model's price. Admission reserves it, and a call
        whose usage stays unknown is billed it."""
        if self.reserved is None:
            named = body if isinstance(body, dict) else {}
            limits = [named.get(name) for name in ("max_tokens", "max_completion_tokens")]
            limit = next((value for value in limits if isinstance(value, int)), 0)
            counts = TokenCounts(await self._meter(body).prompt_tokens(), limit)
            self.reserved = cost(self._price(), counts)
        return self.reserved

    async def _request(self, body: bytes) -> httpx.Request:
        custom = self.custom
        if custom is not None:
            url = custom.target + self.path + (f"?{self.query}" if self.query else "")
            passed = self._client_headers() if custom.forward_headers else {}
            if "content-type" in self.headers:
                passed.setdefault("content-type", self.headers["content-type"])
            headers = {**passed, **custom.headers}
            sign = None
        else:
            assert self.route is not None
            self.upstream = upstream = await upstream_for(
                self.gateway, self.route, self.path, self.query, self.model
            )
            url = upstream.url
            passed = self._client_headers()
            sign = upstream.sign
            if sign is not None:
                # The client's own signature's parts (its date, token, payload hash) are not
                # the gateway's: SigV4 is made anew over what goes.
                passed = {k: v for k, v in passed.items() if not k.startswith("x-amz-")}
            headers = {**passed, **upstream.credentials}
        headers["accept-encoding"] = "identity"
        timeout = self.timeout
        connect = min(timeout, 10.0)
        extensions = {"timeout": {"connect": connect, "read": timeout, "write": timeout,
                                  "pool": timeout}}  # fmt: skip
        if sign is not None:
            headers["host"] = httpx.URL(url).netloc.decode()
            headers = sign(url, headers, body)
        return httpx.Request(self.method, url, headers=headers, content=body, extensions=extensions)

    def _client_headers(self) -> dict[str, str]:
        return {
            name: value
            for name, value in self.headers.items()
            if name not in NOT_PASSED and not name.startswith("x-litellm-")
        }

    def _price(self) -> ModelPrice | None:
        """The model's price: its deployment's (configured prices first), else the price
        table's for the route's provider; known before the call, so budgets reserve it."""
        if self.route is None or self.model is None:
            return None
        prefixes = route_prefixes(self.route)
        model = self.model
        for deployment in serving(self.gateway, prefixes, model):
            if model in (deployment.upstream_model, deployment.model_group):
                return deployment.price
        return price_for(prefixes[0], model, None, None, self.gateway.prices)

    def _route_name(self) -> str:
        if self.route is not None:
            return f"/{self.route}{self.path}"
        return self.custom.path if self.custom is not None else ""

    async def _record(
        self,
        status: int,
        error: GatewayError | None,
        usage: dict[str, Any] | None,
        stream: bool,
        cancelled: bool,
        counted: Usage | None,
        billed: bool,
    ) -> None:
        if counted is None:
            counted = _usage(usage)
        if counted.source != "unknown":
            spent = cost(self._price(), counted.priced_counts())
        elif billed:
            # Failing closed: a call whose usage cannot be read costs what was reserved
            # for it, its most expensive outcome; its row says its usage is unknown.
            spent = await self._max_cost(self.body)
        else:
            spent = 0.0
        if self.admission is not None:
            await self.admission.settle(counted.total_tokens, spent)
        caller = self.caller
        context = current_request.get()
        upstream = self.upstream
        lent = upstream.deployment if upstream is not None else None
        provider = upstream.provider if upstream else "custom"
        end = wall_time()
        route = (
            f"/{self.route}{self.path}" if self.route else (self.custom.path if self.custom else "")
        )
        record = RequestRecord(
            request_id=context.request_id,
            client_request_id=context.client_request_id,
            key_identity=caller.identity if caller else "unauthenticated",
            key_hash=caller.key_hash if caller else None,
            key_alias=caller.key_alias if caller else None,
            team_id=caller.team_id if caller else None,
            user_id=caller.user_id if caller else None,
            organization_id=caller.organization_id if caller else None,
            model_group=lent.model_group
            if lent and self.model in (lent.upstream_model, lent.model_group)
            else (self.model or route),
            deployment=lent.id if lent else None,
            model=f"{provider}/{self.model}" if self.model else None,
            status=status,
            stream=stream,
            prompt_tokens=counted.prompt_tokens,
            completion_tokens=counted.completion_tokens,
            # Never silently free: an answer whose usage was not read says so.
            usage_source=counted.source,
            cost=spent,
            start_time=self.started,
            end_time=end,
            latency_ms=round((end - self.started) * 1000, 3),
            ttft_ms=round(self.ttft * 1000, 3) if self.ttft is not None else None,
            cancelled_by_client=cancelled,
            error=secrets.redact(error.message) if error else None,
            metadata={"pass_through_route": route},
        )
        if self.guard is not None:
            # Masked by logging_only guardrails, with each guardrail's outcome.
            record = self.guard.redacted(record)
        await self.gateway.record(record)


def _status_ok(response: httpx.Response | None) -> bool:
    """Whether the upstream answered, and did not refuse."""
    return response is not None and response.status_code < 400


def _usage(usage: dict[str, Any] | None) -> Usage:
    if usage is None:
        return Usage(0, 0, "unknown")
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    written = usage.get("cache_creation_input_tokens")
    searches = usage.get("search_units")
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
        "upstream",
        cached_tokens=cached if isinstance(cached, int) else 0,
        cache_write_tokens=written if isinstance(written, int) else 0,
        search_units=searches if isinstance(searches, int) else 0,
    )


def _presented_key(headers: Mapping[str, str], query_key: str | None) -> str | None:
    """The virtual key, wherever the client's SDK put it."""
    for name in ("x-litellm-api-key", "x-api-key", "x-goog-api-key", "api-key"):
        value = headers.get(name, "").strip()
        if value:
            return value
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return query_key.strip() if query_key and query_key.strip() else None


def _json(body: bytes) -> Any:
    if not body or body[:1] not in (b"{", b"["):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _start(response: httpx.Response) -> Any:
    headers = [
        (name.lower(), value)
        for name, value in response.headers.raw
        if name.lower().decode("latin-1") not in NOT_RETURNED
    ]
    return {"type": "http.response.start", "status": response.status_code, "headers": headers}

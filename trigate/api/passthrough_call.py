"""One pass-through call (passthrough_routes.py): authenticated, admitted, relayed, recorded.

The virtual key is read where the client's SDK put it and checked as on the unified
routes: the key's `models` against the model the body or path names, then its rate
limits and budgets, a budget reserving the call's most expensive outcome at the
model's price. The request goes to its upstream (passthrough_targets.py) with the
provider's credential in place of the key; the answer goes back as it came, its
usage read as it passes (passthrough_usage.py). However the call ends it is one
spend row, written shielded under a bound, that settles what the admission held: at
the usage read, else (failing closed) at what was reserved. Only the paths that call
a model are open to every key; the rest, which act on the provider's account, need
an admin.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
import trio

from trigate.api.context import current_request
from trigate.api.envelopes import ANTHROPIC, OPENAI
from trigate.api.model_api import NEVER_FORWARDED, error_reply, send_reply, unexpected_failure
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
from trigate.hooks import Refused
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
        # Anthropic's SDKs (Claude on Vertex's too) read errors in Anthropic's envelope.
        claude = route == "anthropic" or (route in VERTEX_ROUTES and "/anthropic/" in path)
        self.envelope = ANTHROPIC if claude else OPENAI

    async def authenticate(self) -> None:
        key = _presented_key(self.headers, self.query_key)
        if key is None:
            raise AuthenticationFailed(
                "No API key provided. Send your virtual key as your provider's SDK sends its "
                "key (`x-api-key`, `x-goog-api-key`, `Authorization: Bearer`)."
            )
        self.caller = await self.gateway.auth.authenticate({"authorization": f"Bearer {key}"})

    async def run(self, body: bytes, send: ASGISendCallable) -> None:
        status, error, usage, cancelled, stream = 500, None, None, False, False
        reader: UsageReader | None = None
        dropper: UsageChunkDropper | None = None
        response: httpx.Response | None = None
        sent = False
        parsed = self.body = _json(body)
        try:
            self._check_path()
            self.model = requested_model(self.path, parsed)
            self._check_model()
            self._check_hooks()
            await self._admit(parsed)
            request = await self._request(self._asking_usage(parsed, body))
            sent = True
            try:
                response = await self.gateway.transport.handle_async_request(request)
            except httpx.HTTPError as failure:
                raise translate_transport_error(failure) from failure
            status = response.status_code
            content_type = response.headers.get("content-type", "")
            stream = "text/event-stream" in content_type
            reader = UsageReader(content_type)
            dropper = UsageChunkDropper() if stream and self.usage_asked else None
            await send(_start(response))
            upstream = response.stream
            assert isinstance(upstream, httpx.AsyncByteStream)
            async for piece in upstream:
                if self.ttft is None:
                    self.ttft = wall_time() - self.started
                reader.feed(piece)
                if dropper is not None:
                    piece = dropper.feed(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            rest = dropper.end() if dropper is not None else b""
            await send({"type": "http.response.body", "body": rest, "more_body": False})
            usage = reader.usage()
        except GatewayError as failure:
            status, error = failure.status, failure
            if response is None:
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
            if response is None:
                await send_reply(send, error_reply(error, self.envelope))
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + RECORD_TIMEOUT):
                if response is not None:
                    await response.aclose()
                counted = None
                if usage is None and status < 400 and self.route == "gemini":
                    counted = await self._counted(gemini_embedded_texts(self.path, parsed))
                # A call the upstream may have served (it did not refuse it) is billed.
                billed = (
                    sent
                    and (response is None or response.status_code < 400)
                    and not self.path.endswith(FREE_PATHS)
                )
                await self._record(status, error, usage, stream, cancelled, counted, billed)

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

    def _check_hooks(self) -> None:
        """Hooks read and rewrite requests in OpenAI's shapes, which a provider's own API
        is not: rather than let a call bypass a guardrail, none is made while any is set."""
        if self.gateway.live.hooks is not None:
            raise Refused(
                "Pass-through routes are closed while request hooks "
                "(litellm_settings.callbacks) are configured: they cannot run on a "
                "provider's own API, and no call may bypass them.",
                status=403,
                code="pass_through_closed_by_hooks",
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
        await self.gateway.record(record)


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

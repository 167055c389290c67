"""`/v1/realtime` (and `/realtime`): OpenAI's Realtime API, a WebSocket relayed to an
`openai/` or `azure/` deployment's.

The client's key is read from its head: `Authorization: Bearer` (the SDKs) or, as a
browser must send it, the `openai-insecure-api-key.<key>` subprotocol. The session's
model is the `model` query argument, resolved, checked against the key's models and
admitted (budgets, rate limits) before the upstream is opened; a refusal is the
WebSocket's denial, an HTTP answer in OpenAI's error envelope.

Once open, the two directions run as sibling tasks in one nursery: either side's close
ends the other, and the upstream's connection is closed with the session. Events go
through as they came; each `response.done` is billed as it passes (its `usage`, at the
deployment's token prices, one spend row per response), and a key whose budget that
exhausts has its session closed with code 1008 and the budget's reason.

The session is one `Exchange` (trigate.exchanges): one request to the proxy when it
ends, each billed response an LLM call counted as it passes, each upstream session an
attempt with its own span, whose context the upstream is sent in `traceparent`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from trigate.api.context import websocket_context
from trigate.api.envelopes import OPENAI
from trigate.api.pipeline import check_access
from trigate.auth import Caller
from trigate.errors import GatewayError, InvalidRequest, UpstreamUnreachable
from trigate.exchanges import CLIENT_CLOSED, Exchange
from trigate.gateway import Gateway
from trigate.limits import Admission
from trigate.providers.base import forwarded_headers
from trigate.router.deployments import Deployment
from trigate.spend import RequestRecord
from trigate.usage import Usage

if TYPE_CHECKING:
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, WebsocketScope

logger = logging.getLogger("trigate")

# The ASGI send callable, given the plain dicts of WebSocket events.
Sender = Callable[[dict[str, Any]], Awaitable[None]]

# The subprotocol a browser's client offers its key in, and the one it expects back.
KEY_PROTOCOL = "openai-insecure-api-key."
REALTIME_PROTOCOL = "realtime"
# WebSocket close codes: a policy's (the budget), and the upstream's failure.
POLICY_VIOLATION = 1008
UPSTREAM_FAILED = 1011
# A close frame's reason holds at most 123 bytes.
MAX_REASON = 123
# A session the upstream accepted counts as answered 200, as a model call's success.
ACCEPTED = 200
# Seconds to open an upstream session, and to close one.
CONNECT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 5.0


class RealtimeRoute:
    """The ASGI handler of one Realtime session."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def __call__(
        self, scope: WebsocketScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        offered = [str(p) for p in scope.get("subprotocols") or ()]
        telemetry = self._gateway.telemetry
        exchange = Exchange(telemetry, websocket_context(scope), scope["path"], "realtime")
        try:
            caller, group, deployments, admission = await self._admitted(scope, offered, exchange)
        except GatewayError as refusal:
            exchange.finished(refusal.status, refusal)
            await _deny(scope, cast(Sender, send), refusal)
            return
        session = Session(
            self._gateway, caller, group, receive, cast(Sender, send), admission, exchange
        )
        failure: GatewayError | None = None
        try:
            failure = await session.run(
                deployments, REALTIME_PROTOCOL if REALTIME_PROTOCOL in offered else None
            )
        except Exception:
            exchange.finished(500, None)  # a bug, or the upstream's socket failed mid-session
            raise
        except BaseException:
            exchange.finished(CLIENT_CLOSED, None, cancelled=True)
            raise
        finally:
            await session.release()
        exchange.finished(failure.status if failure is not None else ACCEPTED, failure)

    async def _admitted(
        self, scope: WebsocketScope, offered: list[str], exchange: Exchange
    ) -> tuple[Caller, str, list[Deployment], Admission | None]:
        gateway = self._gateway
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        key = next((p[len(KEY_PROTOCOL) :] for p in offered if p.startswith(KEY_PROTOCOL)), None)
        if key is not None and "authorization" not in headers:
            headers["authorization"] = f"Bearer {key}"
        caller = await gateway.auth.authenticate(headers)
        exchange.identify(caller)
        query = parse_qs(scope["query_string"].decode("latin-1"))
        # OpenAI's clients name the model; Azure's, the deployment.
        requested = (query.get("model") or query.get("deployment") or [""])[0]
        if not requested:
            raise InvalidRequest("Name the model: `?model=`.", param="model")
        group = caller.model_group(requested)
        deployments = gateway.groups.deployments(group)
        exchange.concerns(group)
        if not caller.is_master:
            check_access(caller, requested, group, gateway.groups.access.covering)
        if (hooks := gateway.live.hooks) is not None:
            hooks.refuse_unread(caller, group, "A Realtime session")
        served = [d for d in deployments if d.abilities.realtime is not None]
        if not served:
            raise InvalidRequest(
                f"No deployment of `{group}` serves the Realtime API (`openai/` and `azure/` "
                "ones do).",
                code="unsupported_operation",
            )
        return caller, group, served, await _admit(gateway, caller)


class Session:
    """One relayed session: the client's ASGI WebSocket and the upstream's."""

    def __init__(
        self,
        gateway: Gateway,
        caller: Caller,
        group: str,
        receive: ASGIReceiveCallable,
        send: Sender,
        admission: Admission | None,
        exchange: Exchange,
    ) -> None:
        self._gateway = gateway
        self._caller = caller
        # The session's metrics and span; each response billed is counted by it.
        self._exchange = exchange
        # What the next response is admitted under: settled with its cost when it is done.
        self._admission = admission
        self._group = group
        self._receive = receive
        self._send = send
        self._closed = False

    async def run(
        self, deployments: list[Deployment], subprotocol: str | None
    ) -> UpstreamUnreachable | None:
        """Open the first deployment that answers (the next on a failure to connect), accept
        the client, and relay until either side closes; the failure if none opened. Each
        upstream session is an attempt of the session's exchange."""
        for index, deployment in enumerate(deployments):
            try:
                async with self._exchange.attempt(deployment):
                    await self._open(deployment, subprotocol)
            except UpstreamUnreachable as failure:
                logger.warning("realtime: deployment %s did not open (%s)", deployment.id, failure)
                if index == len(deployments) - 1:
                    await _refuse_unopened(self._send, failure)
                    return failure
            else:
                return None
        return None

    async def _open(self, deployment: Deployment, subprotocol: str | None) -> None:
        endpoint = deployment.abilities.realtime.realtime_endpoint()  # type: ignore[union-attr]
        assert endpoint is not None
        headers = list(endpoint.headers)
        # The attempt's span context, as every provider sends it: the upstream joins the trace.
        if traceparent := forwarded_headers.get().get("traceparent"):
            headers.append(("traceparent", traceparent))
        opened = False
        try:
            async with open_websocket_url(
                endpoint.url,
                extra_headers=[(n.encode(), v.encode()) for n, v in headers],
                connect_timeout=min(deployment.params.timeout, CONNECT_TIMEOUT),
                disconnect_timeout=CLOSE_TIMEOUT,
            ) as upstream:
                opened = True
                self._exchange.concerns(deployment.model_group, deployment)
                await self._send({"type": "websocket.accept", "subprotocol": subprotocol})
                await self._relay(deployment, upstream)
        except (OSError, HandshakeError, ConnectionTimeout) as error:
            if opened:
                raise
            raise UpstreamUnreachable(
                f"The upstream's Realtime API could not be reached ({type(error).__name__})."
            ) from error

    async def release(self) -> None:
        """Give back what the session's unfinished response was admitted with."""
        admission, self._admission = self._admission, None
        if admission is not None:
            with trio.CancelScope(shield=True):
                await admission.settle(0, 0.0)

    async def _relay(self, deployment: Deployment, upstream: WebSocketConnection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._from_client, upstream, nursery.cancel_scope)
            nursery.start_soon(self._from_upstream, deployment, upstream, nursery.cancel_scope)

    async def _from_client(self, upstream: WebSocketConnection, ended: trio.CancelScope) -> None:
        """The client's events to the upstream; the client's close ends the session."""
        try:
            while True:
                message = await self._receive()
                if message["type"] != "websocket.receive":  # websocket.disconnect
                    self._closed = True
                    break
                text, data = message.get("text"), message.get("bytes")
                await upstream.send_message(text if text is not None else (data or b""))
        except ConnectionClosed:
            await self._close(UPSTREAM_FAILED, "The upstream closed the session.")
        ended.cancel()

    async def _from_upstream(
        self, deployment: Deployment, upstream: WebSocketConnection, ended: trio.CancelScope
    ) -> None:
        """The upstream's events to the client, each `response.done` billed as it passes."""
        try:
            while True:
                event = await upstream.get_message()
                if isinstance(event, bytes):
                    await self._send({"type": "websocket.send", "bytes": event})
                    continue
                await self._send({"type": "websocket.send", "text": event})
                if '"response.done"' in event:
                    refusal = await self._bill(deployment, event)
                    if refusal is not None:
                        await self._close(POLICY_VIOLATION, refusal.message)
                        break
        except ConnectionClosed as closed:
            reason = closed.reason
            code = reason.code if reason is not None and reason.code < 1015 else 1000
            await self._close(code, (reason.reason if reason is not None else None) or "")
        ended.cancel()

    async def _bill(self, deployment: Deployment, event: str) -> GatewayError | None:
        """Record a finished response's usage; the key's budget refusal, if it is now spent."""
        try:
            data = orjson.loads(event)
        except orjson.JSONDecodeError:
            return None
        response = data.get("response") if isinstance(data, dict) else None
        if not isinstance(response, dict) or data.get("type") != "response.done":
            return None
        usage = _usage(response.get("usage"))
        cost = self._gateway.cost(deployment, usage)
        with trio.CancelScope(shield=True):
            admission, self._admission = self._admission, None
            if admission is not None:
                await admission.settle(usage.total_tokens, cost)
            record = self._record(deployment, usage, cost, response.get("id"))
            await self._gateway.record(record)
            self._exchange.billed(record, self._exchange.labels, deployment)
        try:
            self._admission = await _admit(self._gateway, self._caller)
        except GatewayError as refusal:
            return refusal
        return None

    def _record(
        self, deployment: Deployment, usage: Usage, cost: float, response_id: Any
    ) -> RequestRecord:
        caller = self._caller
        now = time.time()
        return RequestRecord(
            request_id=uuid.uuid4().hex,
            key_identity=caller.identity,
            key_hash=caller.key_hash,
            key_alias=caller.key_alias,
            team_id=caller.team_id,
            user_id=caller.user_id,
            organization_id=caller.organization_id,
            end_user=caller.end_user_id,
            model_group=self._group,
            deployment=deployment.id,
            model=deployment.params.model,
            status=200,
            stream=True,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            usage_source=usage.source,
            cost=cost,
            start_time=now,
            end_time=now,
            latency_ms=0.0,
            ttft_ms=None,
            cancelled_by_client=False,
            response_id=response_id if isinstance(response_id, str) else None,
        )

    async def _close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        text = reason.encode()[:MAX_REASON].decode("utf-8", "ignore")
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": text})
        except Exception:
            logger.debug("realtime: the client left before its close")


def _usage(reported: Any) -> Usage:
    """A Realtime response's usage (text and audio tokens together), as the meter's."""
    if not isinstance(reported, dict):
        return Usage(0, 0, "none")
    given, made = reported.get("input_tokens"), reported.get("output_tokens")
    details = reported.get("input_token_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        given if isinstance(given, int) else 0,
        made if isinstance(made, int) else 0,
        "upstream",
        cached_tokens=cached if isinstance(cached, int) else 0,
    )


async def _admit(gateway: Gateway, caller: Caller) -> Admission | None:
    """The key's budgets and rate limits, as a model request's, for the session's next
    response (its cost is known when it is done, and settled then); None for the master
    key, which no budget binds here."""
    if caller.is_master:
        return None

    async def nothing() -> int:
        return 0

    async def unknown() -> float:
        return 0.0

    return await gateway.limits.admit(caller, nothing, unknown)


async def _deny(scope: WebsocketScope, send: Sender, error: GatewayError) -> None:
    """Refuse the handshake with the error's status and OpenAI's envelope, where the server
    can answer a WebSocket with HTTP; else close it at once."""
    extensions: Mapping[str, Any] = scope.get("extensions") or {}
    if "websocket.http.response" not in extensions:
        await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": ""})
        return
    body = OPENAI.render(error)
    headers = [(name.encode(), value.encode()) for name, value in OPENAI.headers(error).items()]
    await send(
        {"type": "websocket.http.response.start", "status": error.status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


async def _refuse_unopened(send: Sender, error: GatewayError) -> None:
    """No upstream opened: the handshake is refused (a close before the accept)."""
    await send({"type": "websocket.close", "code": UPSTREAM_FAILED, "reason": error.message})

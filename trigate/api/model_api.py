"""The model API, served straight on ASGI in front of Quart.

Proxied calls (chat and text completions, embeddings, Anthropic's Messages) are
the gateway's hot path, and they need nothing of Quart's per-request machinery:
no werkzeug request or headers objects, URL map, request and app contexts,
sessions or signals. Together those cost about a sixth of a proxied call's CPU
time, so these routes are served here and every other route by Quart.

What a proxied call does need is kept: the key is checked from the request's head
before its body is read (the pipeline's first stage: a client with no valid key is
answered and its connection closed without its body); the body is read under a
size cap and a time limit; the client's departure cancels the call, so no upstream
request outlives its client (heard from the server's `trigate.departure` signal as the
client's socket ends, or, on a server without it, by a sibling task watching for the
ASGI disconnect); and a streamed
answer is driven through the relay's `ResponseBody` protocol, `async with relay as
frames: async for frame in frames`, exactly as Quart drives it, so the relay owns
its nursery for as long as the response is being sent. The stages after reading
the body are the route's handler: `trigate.api.pipeline`.

Errors are rendered here for both sides: `error_reply` and `unexpected_failure`
serve this app's routes and Quart's error handlers (`trigate.api`) alike, so an
error has one body, status and headers whichever side answered it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from werkzeug.exceptions import HTTPException

from trigate.api.context import (
    RequestContext,
    current_request,
    direct_writer,
    queued_reader,
    whole_sender,
)
from trigate.api.envelopes import JSON_HEADERS, OPENAI, Envelope
from trigate.api.litellm_request import is_litellm_header
from trigate.errors import (
    BodyTooLarge,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    RequestTimeout,
)
from trigate.providers.base import forwarded_headers
from trigate.relay import StreamRelay
from trigate.serving import DEPARTURE_EXTENSION, REQUEST_SCOPE_EXTENSION, OnDeparture

if TYPE_CHECKING:
    from hypercorn.typing import (
        ASGIFramework,
        ASGIReceiveCallable,
        ASGISendCallable,
        HTTPScope,
        Scope,
    )

    from trigate.auth import Caller

logger = logging.getLogger("trigate")

# Never sent upstream, whatever `forward_client_headers_to_llm_api` says: the client's
# credentials for the gateway, and its cookies.
NEVER_FORWARDED = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie"})


@dataclass(slots=True)
class Reply:
    """A whole answer, or a relayed stream, with its status and headers. Never changed once
    made, yet not frozen: a frozen dataclass's `__init__` sets each field through
    `object.__setattr__`, which cost some 5 thousand instructions an answer."""

    body: bytes | StreamRelay
    status: int = 200
    # Shared, hence read-only.
    headers: Mapping[str, str] = field(default_factory=lambda: JSON_HEADERS)


# A route's handler: the authenticated caller, the request's headers (lower-case names)
# and its whole body, which the handler parses and drops; or, for a route that streams its
# body (`Route.streams_body`), a `RequestBody` to read it from as it arrives.
Handler = Callable[["Caller", Mapping[str, str], Any], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Route:
    """A POST endpoint of the model API, and the envelope its client expects errors in.
    `streams_body`: the handler reads the body as it arrives (an audio upload, sent on
    to the upstream as it comes) rather than whole."""

    handler: Handler
    envelope: Envelope = OPENAI
    streams_body: bool = False


class RequestBody:
    """A request body read part by part as the client sends it: the size cap is enforced
    as it is read, and so is the deadline for the whole body (`body_timeout`). Read by
    one task at a time; `done` is set once the body has ended (or failed), after which
    the request's other reader (the departure watch) may take the ASGI channel."""

    def __init__(self, receive: ASGIReceiveCallable, max_bytes: int, timeout: float) -> None:
        self._receive = receive
        self._left = max_bytes
        self._timeout = timeout
        self._deadline: float | None = None
        self.done = trio.Event()
        # The request's cancel scope, cancelled when the client leaves mid-body.
        self.scope: trio.CancelScope | None = None

    async def read(self) -> bytes:
        """The next part; b"" once the body has ended."""
        if self.done.is_set():
            return b""
        if self._deadline is None:
            self._deadline = trio.current_time() + self._timeout
        try:
            with trio.fail_at(self._deadline):
                message = await self._receive()
        except trio.TooSlowError:
            self.done.set()
            raise RequestTimeout(
                f"The request body did not arrive within {self._timeout:g} s."
            ) from None
        if message["type"] != "http.request":  # http.disconnect: the client left
            self.done.set()
            if self.scope is not None:
                self.scope.cancel()
                await trio.lowlevel.checkpoint()  # raises the cancellation
            raise ClientLeft
        part: bytes = message.get("body", b"")
        self._left -= len(part)
        if self._left < 0:
            self.done.set()
            raise BodyTooLarge()
        if not message.get("more_body", False):
            self.done.set()
        return part

    async def receive_after(self) -> Any:
        """The ASGI channel for the departure watch, once the body has been read."""
        await self.done.wait()
        return await self._receive()


class ClientLeft(Exception):
    """The client disconnected before its request body arrived."""


class ModelAPI:
    """ASGI app serving `routes` itself and passing every other request to `app`."""

    def __init__(
        self,
        app: ASGIFramework,
        routes: Mapping[str, Route],
        authenticate: Callable[[Mapping[str, str]], Awaitable[Caller]],
        *,
        max_body_bytes: int,
        body_timeout: float,
        response_timeout: float | None,
        forward_client_headers: bool = False,
        unaccounted: Callable[[RequestContext, GatewayError], None] | None = None,
        websockets: Mapping[str, ASGIFramework] | None = None,
    ) -> None:
        self._app = app
        # WebSocket routes (the Realtime API), each an ASGI app of its own.
        self._websockets = websockets or {}
        # Hears the errors of requests that failed before a call accounted for them.
        self._unaccounted = unaccounted or _ignore
        self._forward_client_headers = forward_client_headers
        self._routes = routes
        self._authenticate = authenticate
        self._max_body_bytes = max_body_bytes
        self._body_timeout = body_timeout
        self._response_timeout = response_timeout

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket" and (socket := self._websockets.get(scope["path"])):
            await socket(scope, receive, send)
        elif scope["type"] != "http" or (route := self._routes.get(scope["path"])) is None:
            await self._app(scope, receive, send)
        elif scope["method"] != "POST":
            error = MethodNotAllowed("This endpoint only accepts POST.", headers={"allow": "POST"})
            await send_reply(send, error_reply(error, route.envelope))
        else:
            await self._serve(route, scope, receive, send)

    async def _serve(
        self, route: Route, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """The pipeline's first stage, authentication, runs on the head alone: a client
        with no valid key is answered, and its connection closed, before a byte of its
        body is read, so it can neither hold the connection nor fill memory with a body
        (`Pipeline.serve` runs the stages after)."""
        headers = {}  # a loop, not a comprehension: in Python 3.11 that is a function made
        for name, value in scope["headers"]:
            headers[name.decode("latin-1")] = value.decode("latin-1")
        try:
            caller = await self._authenticate(headers)
        except Exception as error:
            reply = self._failed(route, error)
            await send_reply(send, error_reply_closing(reply))
            return
        if route.streams_body:
            await self._serve_streaming(route, scope, caller, headers, receive, send)
            return
        extensions: dict[str, Any] = scope.get("extensions") or {}
        given: trio.CancelScope | None = extensions.get(REQUEST_SCOPE_EXTENSION)
        if given is not None and self._response_timeout is None:
            await self._serve_in(given, route, scope, caller, headers, receive, send)
            return
        # One cancel scope for the request: the body's deadline while it is read, then the
        # client's departure, then `response_timeout` while the answer is sent. The body's
        # deadline is set only once a part of it must be waited for: most bodies came with
        # their head, and are read from the server's queue with no deadline to register
        # and remove (trio's context manager and heap, for each).
        body: bytes | bytearray | None = None
        refusal: GatewayError | None = None
        deadline = trio.current_time() + self._body_timeout
        with trio.CancelScope() as request:
            waited = functools.partial(_received_by, deadline, request, receive)
            try:
                body = await read_request_body(
                    headers, waited, self._max_body_bytes, queued_reader(send)
                )
            except ClientLeft:
                return
            except GatewayError as error:
                refusal = error
            else:
                if request.deadline != math.inf:
                    request.deadline = math.inf
                await self._call(route, scope, caller, headers, body, receive, send, request)
        if body is None:
            timeout = f"The request body did not arrive within {self._body_timeout:g} s."
            failure = refusal or RequestTimeout(timeout)
            await send_reply(send, error_reply(failure, route.envelope))

    async def _serve_in(
        self,
        request: trio.CancelScope,
        route: Route,
        scope: HTTPScope,
        caller: Caller,
        headers: dict[str, str],
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
    ) -> None:
        """`_serve` in the scope the server gives the request (`REQUEST_SCOPE_EXTENSION`:
        the lean connection's, its body whole in the queue, so read with no deadline),
        not one of its own: entering one is some 45 thousand instructions, a fourteenth
        of a cached answer's. Only the client's departure cancels it, ending the
        connection too, as the departure does anyway. Not under a `response_timeout`:
        a deadline that passed while a shielded write waited would leave the connection's
        scope cancelled after a whole answer, and cut off its next request."""
        try:
            body = await read_request_body(
                headers, receive, self._max_body_bytes, queued_reader(send)
            )
        except ClientLeft:
            return
        except GatewayError as error:
            await send_reply(send, error_reply(error, route.envelope))
            return
        await self._call(route, scope, caller, headers, body, receive, send, request)

    async def _serve_streaming(
        self,
        route: Route,
        scope: HTTPScope,
        caller: Caller,
        headers: dict[str, str],
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
    ) -> None:
        """A route that reads its own body (`Route.streams_body`): the handler is given a
        `RequestBody` at once, under the request's cancel scope, so the client's
        departure mid-upload cancels the call (and its upstream upload) as it does any
        other; the size cap and the body's deadline are the `RequestBody`'s."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body_bytes:
            refusal = error_reply(BodyTooLarge(), route.envelope)
            await send_reply(send, error_reply_closing(refusal))
            return
        body = RequestBody(receive, self._max_body_bytes, self._body_timeout)
        with trio.CancelScope() as request:
            body.scope = request
            try:
                await self._call(
                    route, scope, caller, headers, body, body.receive_after, send, request
                )
            except ClientLeft:
                return

    async def _call(
        self,
        route: Route,
        scope: HTTPScope,
        caller: Caller,
        headers: dict[str, str],
        body: bytes | bytearray | RequestBody,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        request: trio.CancelScope,
    ) -> None:
        """The stages after the body (`Pipeline.serve`), cancelled by the client's departure,
        then the answer sent."""
        forwarded = client_headers_to_forward(headers) if self._forward_client_headers else {}
        token = forwarded_headers.set(forwarded)
        try:
            on_departure = _departure_signal(scope)
            if on_departure is None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                    await self._send(
                        send, await self._answer(route, caller, headers, body), request
                    )
                    nursery.cancel_scope.cancel()
                return
            # Replaces the departure `RequestScope` registered, doing what it did (a relayed
            # stream's upstream closed at once) and cancelling the call too.
            on_departure(functools.partial(_client_gone, current_request.get(), request))
            # `_answer`, inline: its coroutine cost some 1,200 instructions a call.
            try:
                reply = await route.handler(caller, headers, body)
            except ClientLeft:
                raise
            except Exception as error:
                reply = self._failed(route, error)
            await self._send(send, reply, request)
        finally:
            forwarded_headers.reset(token)

    def _send(
        self, send: ASGISendCallable, reply: Reply, request: trio.CancelScope
    ) -> Awaitable[None]:
        """`response_timeout`, when set, cuts off sending an answer (a stream included), not
        computing it, as Quart's RESPONSE_TIMEOUT does for Quart's routes. Not a coroutine
        of its own: it only sets the deadline, and one more coroutine cost some 1,200
        instructions an answer."""
        if self._response_timeout is not None:
            request.deadline = trio.current_time() + self._response_timeout
        return send_reply(send, reply)

    async def _answer(
        self,
        route: Route,
        caller: Caller,
        headers: dict[str, str],
        body: bytes | bytearray | RequestBody,
    ) -> Reply:
        try:
            return await route.handler(caller, headers, body)
        except ClientLeft:
            raise
        except Exception as error:
            return self._failed(route, error)

    def _failed(self, route: Route, error: Exception) -> Reply:
        """The reply to a request that failed before a call accounted for it: its error,
        or, for anything but a `GatewayError`, a bug's logged 500."""
        failure = error if isinstance(error, GatewayError) else unexpected_failure(error)
        self._unaccounted(current_request.get(), failure)
        return error_reply(failure, route.envelope)


async def read_request_body(
    headers: Mapping[str, str],
    receive: ASGIReceiveCallable,
    max_body_bytes: int,
    queued: Callable[[], Any] | None = None,
) -> bytes | bytearray:
    """A request's whole body, refused past `max_body_bytes`; `ClientLeft` if the client
    left before it all came (the pass-through routes read theirs by it too). Each part
    is taken from `queued` (the server's, `queued_reader`) while it has one, else from
    `receive`, which may wait."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise BodyTooLarge()
    body: bytes | bytearray = b""
    while True:  # under the request's deadline for its body, once one must be waited for
        message: Any = queued() if queued is not None else None
        if message is None:
            message = await receive()
        if message["type"] != "http.request":  # http.disconnect, HTTP's only other
            raise ClientLeft
        part = message.get("body", b"")
        if len(body) + len(part) > max_body_bytes:
            raise BodyTooLarge()
        body = _appended(body, part) if body else part
        if not message.get("more_body", False):
            return body


async def _received_by(
    deadline: float, request: trio.CancelScope, receive: ASGIReceiveCallable
) -> Any:
    """`receive`, waited for under the body's `deadline` (the request's scope keeps it
    until the whole body is in)."""
    if request.deadline != deadline:
        request.deadline = deadline
    return await receive()


def client_headers_to_forward(headers: Mapping[str, str]) -> dict[str, str]:
    """LiteLLM's allow-list for `forward_client_headers_to_llm_api`: `x-` headers and
    `anthropic-beta`, so tracing ids and provider features reach the upstream; never
    credentials or cookies, nor the SDKs' `x-stainless-*`, which describe the client's
    SDK, not the gateway's request, nor LiteLLM's own `x-litellm-*` (its key among them)."""
    return {
        name: value
        for name, value in headers.items()
        if (name.startswith("x-") or name == "anthropic-beta")
        and name not in NEVER_FORWARDED
        and not name.startswith("x-stainless-")
        and not is_litellm_header(name)
    }


def _appended(body: bytes | bytearray, part: bytes) -> bytearray:
    """`body` and `part` in one buffer that grows in place: a body that came in many parts
    is held once, not as its parts and then their join (a small body is one part, kept as
    it came)."""
    buffer = body if isinstance(body, bytearray) else bytearray(body)
    buffer += part
    return buffer


def _ignore(context: RequestContext, error: GatewayError) -> None:
    pass


def error_reply(error: GatewayError, envelope: Envelope = OPENAI) -> Reply:
    """The one rendering of an error: its body in the envelope the client expects
    (OpenAI's unless the route says otherwise), its status, and its headers."""
    return Reply(envelope.render(error), error.status, envelope.headers(error))


def error_reply_closing(reply: Reply) -> Reply:
    """`reply` for a request whose body was never read: the connection cannot carry
    another request after it, and says so."""
    return Reply(reply.body, reply.status, {**reply.headers, "connection": "close"})


def unexpected_failure(error: Exception) -> GatewayError:
    """A bug's 500: logged with its traceback, shown to the client only by request id."""
    request_id = current_request.get().reference
    logger.error("unhandled error in request %s", request_id, exc_info=error)
    return GatewayError(f"The gateway failed unexpectedly (request id {request_id}).")


def _departure_signal(scope: HTTPScope) -> OnDeparture | None:
    """The server's signal of the client's departure (`trigate.serving`), where it tells
    this request's departure apart: HTTP/1, whose connection carries one request at a
    time. HTTP/2's streams share one connection and can each be reset alone, which only
    the ASGI disconnect tells (as on any other server)."""
    if scope["http_version"] == "2":
        return None
    extensions: dict[str, Any] = scope.get("extensions") or {}
    signal: OnDeparture | None = extensions.get(DEPARTURE_EXTENSION)
    return signal


async def _client_gone(context: RequestContext, request: trio.CancelScope) -> None:
    """The client's socket ended: cancel the call, as `_cancel_on_disconnect` does, without
    a task per request waiting to hear it. Run by the server's reader as it reads the
    end-of-file, before hypercorn processes it."""
    relay = context.relay
    if relay is not None and relay.entered:
        await relay.client_left(request)
    request.cancel()


async def _cancel_on_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    """The client left: cancel the call. A stream's relay closes its upstream first and
    cancels when its teardown lane has room (`StreamRelay.client_left`)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    relay = current_request.get().relay
    if relay is not None and relay.entered:
        await relay.client_left(scope)
    scope.cancel()


# Most answers' headers, encoded once.
_JSON_HEADER_LIST = [(name.encode(), value.encode()) for name, value in JSON_HEADERS.items()]


async def send_reply(send: ASGISendCallable, reply: Reply) -> None:
    if reply.headers is JSON_HEADERS:
        headers = _JSON_HEADER_LIST.copy()  # extended below, and by the sender after
    else:
        headers = [(name.encode(), value.encode()) for name, value in reply.headers.items()]
    body = reply.body
    if not isinstance(body, StreamRelay):
        headers.append((b"content-length", b"%d" % len(body)))
        whole = whole_sender(send)
        if whole is not None:  # the start and the body in one call, as one write
            await whole(reply.status, headers, body)
            return
        await send(_start(reply.status, headers))
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    await send(_start(reply.status, headers))
    # Once the headers are out, a frame can go straight to the connection: hypercorn's
    # path for each message was most of the writer's work.
    writer = direct_writer(send)
    async with body as frames:
        if writer is None:
            async for frame in frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        else:
            await frames.write_to(writer)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _start(status: int, headers: list[tuple[bytes, bytes]]) -> Any:
    return {"type": "http.response.start", "status": status, "headers": headers}


def from_http_exception(error: HTTPException) -> GatewayError:
    """One of Quart's own errors (werkzeug's: an unknown path, a body over the size cap)
    as the gateway's, to be answered and counted as every error is."""
    status = error.code or 500
    if status == 404:
        return NotFound("No such endpoint.", code="not_found")
    if status == 413:
        return BodyTooLarge()
    kind = "invalid_request_error" if status < 500 else "api_error"
    return GatewayError(error.description or error.name, status=status, type=kind)

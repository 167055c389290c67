"""The per-request context, set by an ASGI layer wrapped around Quart.

Working at the ASGI level lets every response, Quart's own 404s included,
carry `x-request-id` and the gateway's own headers (`trigate.api.response_headers`)
without per-route code. It
also closes a stream that was opened upstream but never started sending (the
client left between the upstream's first token and our response headers),
which no response body could do for itself.

Every request gets the gateway's own id, which keys its spend-log row: a
client's `x-request-id` is for correlation only (echoed, logged and stored
beside it), since clients may send one id many times. The same layer sees
every request's raw header list, so it refuses an ambiguous credential (a
repeated `Authorization` or `x-api-key`, or both naming different keys) for
every route at once, before any route would pick one of them.
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from trigate.api import response_headers
from trigate.api.envelopes import ANTHROPIC, OPENAI
from trigate.errors import InvalidRequest
from trigate.metrics import tally
from trigate.serving import (
    BODY_WRITER_EXTENSION,
    DEPARTURE_EXTENSION,
    QUEUED_EVENT_EXTENSION,
    WHOLE_RESPONSE_EXTENSION,
    BodyWriter,
    CheckedTail,
    OnDeparture,
    QueuedEvent,
    WholeWriter,
    vouched,
)

if TYPE_CHECKING:
    from hypercorn.typing import (
        ASGIFramework,
        ASGIReceiveCallable,
        ASGISendCallable,
        Scope,
        WebsocketScope,
    )
    from prometheus_client import Gauge

    from trigate.api.pipeline import Call
    from trigate.relay import StreamRelay
    from trigate.router.router import RouteProgress

MAX_REQUEST_ID_LENGTH = 128
_CREDENTIAL_HEADERS = (b"authorization", b"x-api-key", b"x-litellm-api-key")
# Every name `_scan` reads a field of.
_SCANNED = frozenset(
    {*_CREDENTIAL_HEADERS, b"x-request-id", b"traceparent", b"content-length", b"transfer-encoding"}
)
# Routes whose clients expect Anthropic's error envelope.
_ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")


@dataclass(slots=True)
class RequestContext:
    # The gateway's own id, unique per request: it keys the request's spend-log row.
    request_id: str
    started: float
    # The client's `x-request-id`, if it sent a usable one: echoed, logged, stored.
    client_request_id: str | None = None
    # The id the client's answer carries (chatcmpl-..., msg_..., resp_...): stored in
    # the spend row, where LiteLLM's users look a request up by it.
    response_id: str | None = None
    # Time spent waiting on the upstream before the response started; None if not proxied.
    upstream_wait: float | None = None
    relay: StreamRelay | None = None
    route: RouteProgress | None = None
    # Extra response headers decided along the way (rate-limit state, for one).
    headers: dict[str, str] = field(default_factory=dict)
    # The request's path; metrics read it only for the model API's own routes.
    path: str = ""
    # The client's W3C `traceparent`, continued by the request's span when tracing is on.
    traceparent: str | None = None
    # Set once the request's metrics (and access line) are recorded.
    accounted: bool = False
    # The model call the request became, if it did: LiteLLM's response headers read it.
    call: Call | None = None

    def elapsed(self) -> float:
        return trio.current_time() - self.started

    @property
    def reference(self) -> str:
        """How error messages and logs name the request: both ids, when the client sent one."""
        if self.client_request_id is None:
            return self.request_id
        return f"{self.request_id}, x-request-id {self.client_request_id}"


current_request: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("request")


class RequestScope:
    """ASGI middleware giving each HTTP request its `RequestContext`."""

    def __init__(self, app: ASGIFramework, in_flight: Gauge | None = None) -> None:
        self._app = app
        # LiteLLM's `litellm_in_flight_requests`: every HTTP request, whatever its route.
        self._in_flight = None if in_flight is None else tally(in_flight)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        client_id, traceparent, ambiguous, has_body, length = _scan(scope["headers"])
        context = RequestContext(os.urandom(16).hex(), trio.current_time(), client_id)
        context.path = scope["path"]
        context.traceparent = traceparent
        token = current_request.set(context)
        in_flight = self._in_flight
        if in_flight is not None:
            in_flight.inc(1)
        extensions: dict[str, Any] = scope.get("extensions") or {}
        on_departure: OnDeparture | None = extensions.get(DEPARTURE_EXTENSION)
        if on_departure is not None:
            on_departure(functools.partial(_departed, context))
        try:
            sender = _ResponseSender(send, receive, context, has_body, length)
            sender.body_writer = extensions.get(BODY_WRITER_EXTENSION)
            sender.whole_writer = extensions.get(WHOLE_RESPONSE_EXTENSION)
            sender.queued_event = extensions.get(QUEUED_EVENT_EXTENSION)
            if ambiguous:
                await _refuse(AMBIGUOUS_CREDENTIALS, scope["path"], sender)
                return
            if _disguised_path(scope.get("raw_path") or b""):
                await _refuse(DISGUISED_PATH, scope["path"], sender)
                return
            await self._app(scope, sender.receive, sender)
        finally:
            current_request.reset(token)
            # The call and its context refer to each other: parted here, the request's
            # objects are freed as it ends rather than left to the cyclic collector,
            # whose passes grow more frequent with every cycle a request leaves.
            context.call = None
            relay = context.relay
            if relay is not None and not relay.entered:
                # Opened upstream, never sent: the client left before the headers went out.
                relay.outcome.cancelled_by_client = True
                await relay.close()
            if in_flight is not None:
                in_flight.inc(-1)


def websocket_context(scope: WebsocketScope) -> RequestContext:
    """A WebSocket session's context (`RequestScope` gives HTTP requests theirs): its id,
    the client's `x-request-id` and `traceparent`, its path."""
    client_id, traceparent, *_ = _scan(scope["headers"])
    context = RequestContext(os.urandom(16).hex(), trio.current_time(), client_id)
    context.path = scope["path"]
    context.traceparent = traceparent
    return context


async def _departed(context: RequestContext) -> None:
    """The client's connection ended (heard by the server as it happened, before the
    disconnect reaches the app): a stream's upstream is closed at once, and the server
    goes on only when the stream has its place in the teardown lane."""
    relay = context.relay
    if relay is not None and relay.entered:
        await relay.depart()


class _ResponseSender:
    """Adds the gateway's headers, writes a fixed-length body in one piece, and lets the
    last message of a response finish before the app hears that the request is over.

    Quart sends a body as its data and then an empty closing message; each costs
    hypercorn a pass through its protocol stack. With a Content-Length there is
    nothing to stream, so the two become one, and where the server offers it
    (`trigate.serving.WHOLE_RESPONSE_EXTENSION`) the start is held and goes out with
    the body in one write, past hypercorn's per-event path. Streams pass through
    untouched.

    An answer that starts before the request's body has all arrived (a refusal that
    never reads it) leaves the connection unable to carry another request: the rest
    of the body is still coming. The answer says `Connection: close`, so that the
    client knows why the connection ends (h11 then closes it after the answer).

    The last message is where hypercorn finishes the exchange: it closes the
    connection (`Connection: close`, HTTP/1.0) or restarts its keep-alive timer,
    and on the way it hands the app `http.disconnect`. Quart-Trio and the model API
    both answer a disconnect by cancelling the task that is still inside that send,
    which cut off the close and the timer, so every connection stayed open until its
    client left. `receive` therefore holds a disconnect back until the send is done.

    A body with a Content-Length is handed to the app as ended with the part that
    completes it: the server (h11, h2) delivers exactly that many bytes, then an empty
    closing part of its own, which `receive` drops. Waiting for that part cost every
    request another trip through the scheduler.
    """

    __slots__ = (
        "_body_pending",
        "_context",
        "_ended",
        "_finished",
        "_finishing",
        "_fixed_length",
        "_held",
        "_receive",
        "_send",
        "_start",
        "_unread",
        "body_writer",
        "queued_event",
        "whole_writer",
    )

    def __init__(
        self,
        send: ASGISendCallable,
        receive: ASGIReceiveCallable,
        context: RequestContext,
        body_pending: bool = False,
        body_length: int | None = None,
    ) -> None:
        self._send = send
        self._receive = receive
        self._context = context
        self._body_pending = body_pending
        self._unread = body_length
        self._ended = False
        # The server's offer of a direct writer for a streamed body (`direct_writer`).
        self.body_writer: Callable[[], BodyWriter | None] | None = None
        # The server's offer to write a fixed-length response whole, and the start
        # message held for it until the body comes.
        self.whole_writer: WholeWriter | None = None
        # The server's offer of the request's next event when it holds it (`queued`).
        self.queued_event: QueuedEvent | None = None
        self._start: Any = None
        self._fixed_length = False
        self._held: Any = None
        # While the last message is being sent; `_finished` is made only for a disconnect
        # that arrives meanwhile (rare), not an event per response.
        self._finishing = False
        self._finished: trio.Event | None = None

    async def receive(self) -> Any:
        while True:
            message: Any = await self._receive()
            if message["type"] == "http.disconnect":
                if self._finishing:
                    if self._finished is None:
                        self._finished = trio.Event()
                    await self._finished.wait()
                return message
            part = self._part(message)
            if part is not None:
                return part

    def queued(self) -> Any:
        """What `receive` would return next, when the server holds it already; else
        None, having waited for nothing (for a body that came with its head, read with
        no deadline of its own: `trigate.api.model_api`)."""
        take = self.queued_event
        while take is not None:
            message: Any = take()
            if message is None or message["type"] == "http.disconnect":
                return message
            part = self._part(message)
            if part is not None:
                return part
        return None

    def _part(self, message: Any) -> Any:
        """A part of the request's body as the app gets it, or None: the server's closing
        part of a body already handed over whole."""
        if not message.get("more_body", False):
            self._body_pending = False
            return None if self._ended else message
        unread = self._unread
        if unread is not None:
            unread -= len(message.get("body", b""))
            self._unread = unread
            if unread <= 0:
                # The declared Content-Length is all here, so this part ends the body:
                # the app need not wait for the server's empty closing part.
                self._ended = True
                self._body_pending = False
                return {**message, "more_body": False}
        return message

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            headers = message["headers"]
            # A loop, not `any` of a generator: that is a function and a generator made.
            for name, _ in headers:
                if name.lower() == b"content-length":
                    self._fixed_length = True
                    break
            message = {**message, "headers": self._fields(headers)}
            if self._fixed_length and self.whole_writer is not None:
                self._start = message  # goes out with the body
                return
        elif message["type"] == "http.response.body" and self._fixed_length:
            if message.get("more_body", False):
                if self._held is not None:
                    await self._send_start()
                    await self._send(self._held)
                self._held = message
                return
            if self._held is not None:
                body = self._held["body"] + message.get("body", b"")
                message, self._held = {**message, "body": body}, None
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._finishing = True
            try:
                await self._send_last(message)
            finally:
                self._finishing = False
                if self._finished is not None:
                    self._finished.set()
            return
        await self._send(message)

    async def send_whole(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """`__call__` of a start whose `headers` hold a Content-Length, then of the body's
        one and last message, as one call (`whole_sender`, where the server writes a
        whole answer): the gateway's headers added as `__call__` adds them, the start held
        for the body, and the disconnect held back while they go. Two messages built and
        dispatched, and three coroutines, cost some 6 thousand instructions an answer."""
        fields = self._fields(headers)
        self._fixed_length = True
        self._finishing = True
        try:
            assert self.whole_writer is not None  # offered only with one (`whole_sender`)
            if not await self.whole_writer(status, fields, body):
                await self._send(
                    {"type": "http.response.start", "status": status, "headers": fields}
                )
                await self._send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            self._finishing = False
            if self._finished is not None:
                self._finished.set()

    def _fields(self, headers: list[tuple[bytes, bytes]]) -> CheckedTail:
        """A response's fields: the app's, then the gateway's (`build_parts`), its own
        last and vouched for (the lean server checks the rest); and the connection's
        close, when the request's body is still unread."""
        outside, own = response_headers.build_parts(self._context)
        if self._body_pending:
            outside.append((b"connection", b"close"))
        return vouched([*headers, *outside, *own], own)

    async def _send_last(self, message: Any) -> None:
        """A response's last message, with its held start when there is one: both in
        one write when the server can, else one after the other."""
        start = self._start
        if start is not None:
            assert self.whole_writer is not None  # a start is held only for it
            body = message.get("body", b"")
            if await self.whole_writer(start["status"], start["headers"], body):
                self._start = None
                return
            await self._send_start()
        await self._send(message)

    async def _send_start(self) -> None:
        start, self._start = self._start, None
        if start is not None:
            await self._send(start)


def queued_reader(send: ASGISendCallable) -> Callable[[], Any] | None:
    """The request's next event when the server holds it already (`_ResponseSender.queued`),
    for an app that sends through this sender; None where the server offers no such read."""
    if isinstance(send, _ResponseSender) and send.queued_event is not None:
        return send.queued
    return None


def whole_sender(
    send: ASGISendCallable,
) -> Callable[[int, list[tuple[bytes, bytes]], bytes], Awaitable[None]] | None:
    """`_ResponseSender.send_whole`, for an app that sends through this sender to a server
    that writes a fixed-length answer whole (`trigate.serving.WHOLE_RESPONSE_EXTENSION`);
    None elsewhere, where the answer's two messages are sent as they are."""
    if isinstance(send, _ResponseSender) and send.whole_writer is not None:
        return send.send_whole
    return None


def direct_writer(send: ASGISendCallable) -> BodyWriter | None:
    """A writer for the rest of a streamed body, straight to the client's connection, once
    the response has started (`trigate.serving.BODY_WRITER_EXTENSION`); None where the
    server offers none (another server, HTTP/2, a fixed-length body).

    Each piece then skips hypercorn's per-message path and this sender's own, which
    has nothing to do for a stream's middle: its headers are out, and its end still
    comes through here."""
    offer = send.body_writer if isinstance(send, _ResponseSender) else None
    return offer() if offer is not None else None


def _scan(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[str | None, str | None, bool, bool, int | None]:
    """One pass over the raw headers: the client's usable `x-request-id`, its
    `traceparent`, whether its credentials are ambiguous (a credential header
    repeated, or the two naming different keys), and whether it has a body to send.
    Hypercorn gives header names in lower case."""
    client_id: str | None = None
    traceparent: str | None = None
    seen_id = False
    has_body = chunked = False
    declared = b""
    credentials: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name not in _SCANNED:
            continue  # one look-up in a set, where the tests below compare it six times
        if name in _CREDENTIAL_HEADERS:
            credentials.append((name, value))
        elif name == b"x-request-id" and not seen_id:
            seen_id = True
            given = value.decode("latin-1").strip()
            if 0 < len(given) <= MAX_REQUEST_ID_LENGTH and given.isprintable():
                client_id = given
        elif name == b"traceparent":
            traceparent = value.decode("latin-1")
        elif name == b"content-length":
            declared = value.strip()
            has_body = declared != b"0"
        elif name == b"transfer-encoding":
            has_body = chunked = True
    ambiguous = len(credentials) > 1 and _ambiguous(credentials)
    length = int(declared) if has_body and not chunked and declared.isdigit() else None
    return client_id, traceparent, ambiguous, has_body, length


def _ambiguous(credentials: list[tuple[bytes, bytes]]) -> bool:
    """A repeated header is ambiguous. LiteLLM's `x-litellm-api-key` names the gateway's
    key whatever else is sent (`trigate.auth.presented_key`). `Authorization: Bearer K`
    beside `x-api-key: K` (some SDKs send both) is not, unless the two keys differ."""
    names = [name for name, _ in credentials]
    if len(set(names)) != len(names):
        return True
    values = dict(credentials)
    if b"x-litellm-api-key" in values:
        return False
    scheme, _, token = values[b"authorization"].partition(b" ")
    return scheme.lower() != b"bearer" or token.strip() != values[b"x-api-key"].strip()


AMBIGUOUS_CREDENTIALS = InvalidRequest(
    "The request carries more than one API key (a repeated `Authorization`, `x-api-key` "
    "or `x-litellm-api-key` header, or the first two naming different keys). Send exactly one.",
    code="ambiguous_credentials",
)
DISGUISED_PATH = InvalidRequest(
    "The request path holds an encoded `/` or `\\`, or a `.` or `..` segment. "
    "Send the path as the route is written.",
    code="invalid_request_path",
)


async def _refuse(error: InvalidRequest, path: str, send: _ResponseSender) -> None:
    """Refuse a request before any route sees it, in the envelope its route's clients
    expect."""
    envelope = ANTHROPIC if path in _ANTHROPIC_PATHS else OPENAI
    body = envelope.render(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


_PERCENT = ord("%")


def _disguised_path(raw_path: bytes) -> bool:
    """Whether the path, as sent, hides a separator or a dot segment: an encoded `/` or
    `\\` (`%2fkey%2finfo` decodes to `/key/info`), or a `.` or `..` segment, plain or
    encoded. A fronting proxy matches its path rules against the path as sent, and
    would not recognise the route such a path decodes to. No route of the gateway needs
    either."""
    # `find`, not `in`: see `trigate.request_head`; but a byte by its value (`_PERCENT
    # in`), which goes straight to `memchr` with no arguments to parse.
    if _PERCENT not in raw_path and raw_path.find(b"/.") < 0:
        return False
    lowered = raw_path.lower()
    if lowered.find(b"%2f") >= 0 or lowered.find(b"%5c") >= 0:
        return True
    segments = lowered.replace(b"%2e", b".").split(b"/")
    return b"." in segments or b".." in segments

"""Hooks and guardrails on a pass-through call, in the provider's own API.

A pass-through call's request, answer and stream are the provider's, sent on as they
came; the hooks (`trigate.hooks`, the configured guardrails first) run on them at the
pipeline's points all the same, reading them in that API's shapes
(passthrough_formats.py says which the gateway reads):

- before the call, on the request body: a hook may refuse it (in the provider's error
  envelope, with its status: a guardrail's block is LiteLLM's 400) or rewrite it in
  place (a guardrail's mask), and the rewritten body is what the provider is sent;
- beside the call, the `during_call` guardrails: the answer is held until they pass, and
  a block closes the upstream;
- on a whole answer, before the client has any of it: refused, or rewritten;
- on a stream, each event past the chunk hooks as it is read (a guardrail's windows
  held and checked as on the gateway's own streams): a block ends the stream with one
  error event in the API's format, and the upstream is closed;
- on the record: masked as `logging_only` guardrails found, with each guardrail's outcome.

A hook sees the call as LiteLLM's `pass_through_endpoint` call type, its body the
provider's own; a hook may refuse a pass-through call but not answer one in the
provider's place. A call the gateway cannot read is refused while a hook applies to it
(`guard_for`); one no hook applies to goes on unwatched, at no cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import trio

from trigate.api.context import RequestContext
from trigate.api.litellm_request import guardrail_names
from trigate.api.passthrough_formats import EventCodec, NativeAPI, UnreadableAnswer, unread_answer
from trigate.errors import GatewayError, InvalidRequest
from trigate.guardrails.config import Mode
from trigate.guardrails.runner import RUN_ATTRIBUTE, GuardrailRun
from trigate.hooks import END_STREAM, STREAM_END, Beside, Hooks, Refused
from trigate.spend import RequestRecord
from trigate.usage import Usage

if TYPE_CHECKING:
    from trigate.auth import Caller

# LiteLLM's call type for a pass-through call, which its hooks are given.
CALL_TYPE = "pass_through_endpoint"
# A whole answer is held, to be checked before the client has it, up to this size.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# A stream's `after_answer` hooks, which hear its usage once it went out, are bounded.
STREAM_HOOK_TIMEOUT = 5.0

Send = Callable[[bytes], Awaitable[None]]


class PassRequest:
    """What hooks see of a pass-through call (`trigate.hooks.HookedRequest`): its caller,
    its model (or route), the provider's own request body, which they may rewrite in
    place, and the guardrails the request names."""

    call_type = CALL_TYPE
    telemetry = None

    def __init__(
        self,
        caller: Caller,
        model_group: str,
        body: dict[str, Any],
        context: RequestContext,
        requested_guardrails: list[str],
    ) -> None:
        self.caller = caller
        self.model_group = model_group
        self.body = body
        self.context = context
        self.requested_guardrails = requested_guardrails

    def native_request(self) -> dict[str, Any]:
        """The request in the client's own API, as a deployment is sent it: the body
        itself, which goes upstream as it is, so guardrails read every text of it
        (metadata, tools' descriptions and items of any kind included), not only what
        they read of a chat request (`trigate.guardrails.text.every_slot`)."""
        return self.body


def requested_guardrails(body: Any) -> tuple[list[str], bool]:
    """The guardrails the request names by LiteLLM's `guardrails` (in the body, or in its
    `metadata`), taken out of the body, which is the provider's; and whether any was."""
    if not isinstance(body, dict):
        return [], False
    names: list[str] = []
    popped = "guardrails" in body
    if popped:
        names += guardrail_names(body.pop("guardrails"), "guardrails")
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and "guardrails" in metadata:
        popped = True
        names += guardrail_names(metadata.pop("guardrails"), "metadata.guardrails")
    return names, popped


def refuse_unconfigured(named: list[str]) -> None:
    """With no hook configured, a guardrail the request names cannot run: refused, as on
    every route, rather than served without it."""
    if named:
        raise InvalidRequest(
            f"No guardrail named {', '.join(f'`{n}`' for n in named)} is configured; "
            "the request is refused rather than served without it.",
            param="guardrails",
        )


def guard_for(
    hooks: Hooks,
    request: PassRequest | None,
    api: NativeAPI | None,
    unreadable: str,
    *,
    user_hooks: bool = True,
) -> PassGuard | None:
    """The hooks on a call, when any applies to it: on a call in an API the gateway reads
    (`api`); any other (`unreadable` says why) is refused rather than let through unseen.
    A call without a virtual key (a custom endpoint's without `auth`) has no key or team
    to choose its guardrails by: refused while any hook is configured. None: no hook
    applies, and the call goes as it came. `user_hooks`: whether hooks of the user's own
    are configured besides the guardrails."""
    if request is not None and not hooks.applies(request):
        return None
    if request is None:
        unreadable = "the call has no virtual key to choose its guardrails by"
    if request is None or api is None:
        raise Refused(
            "This pass-through call is refused: request hooks or guardrails apply to it, and "
            f"they cannot read it ({unreadable}). No call may bypass them.",
            status=403,
            code="pass_through_closed_by_hooks",
        )
    return PassGuard(hooks, api, request, user_hooks=user_hooks)


class PassGuard:
    """The hooks on one pass-through call the gateway reads."""

    def __init__(
        self, hooks: Hooks, api: NativeAPI, request: PassRequest, *, user_hooks: bool = True
    ) -> None:
        self._hooks = hooks
        self.api = api
        self.request = request
        self._user_hooks = user_hooks

    def holds_answer(self) -> bool:
        """Whether a whole answer must be held until the hooks have read it, before the
        client has any of it: a user's hook may refuse or rewrite it (whether it reads
        answers the gateway cannot tell), a `post_call` guardrail checks and masks it, and
        one that masked the request may put back in it what it masked. `during_call`
        holds the answer's head, not its body, until it passes (`run_beside`); a call met
        only by `pre_call` or `logging_only` guardrails has its answer relayed as it
        comes, as when no guardrail applies (`logs_answer`)."""
        run = self._run()
        return self._user_hooks or run is None or run.runs(Mode.POST_CALL) or run.unmasks

    def logs_answer(self) -> bool:
        """Whether a `logging_only` guardrail reads the answer once it went out."""
        run = self._run()
        return run is not None and run.runs(Mode.LOGGING_ONLY)

    async def answer_went(self, raw: bytes, usage: Usage) -> None:
        """An answer relayed as it came (`holds_answer` False), past the hooks, which only
        log it: its record masked as they found."""
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(answer, dict):
            await self._hooks.after_answer(self.request, answer, usage)

    def _run(self) -> GuardrailRun | None:
        run: GuardrailRun | None = getattr(self.request, RUN_ATTRIBUTE, None)
        return run

    async def before(self) -> bytes:
        """The hooks before the call; the body to send: always the body as the hooks read
        it (and may have rewritten it), serialised anew, never the client's bytes. JSON
        the client wrote with a key twice is read here by its last; the provider's parser
        may read the first, which no hook saw. Refusing such a body (400) would need a
        second, slower parse that reports duplicates, and would still leave any other
        difference between two parsers (escapes, numbers) open; what is sent as read has
        none by construction, at the cost of one serialisation the hooks needed anyway.
        A body holding a part, block or item the guardrails do not read is refused."""
        unknown = self.api.unknown_in_request(self.request.body)
        if unknown is not None:
            raise InvalidRequest(
                f"This request holds {unknown}, which the guardrails on this call do not "
                "read: it is refused rather than sent past them.",
                code="pass_through_unread_content",
            )
        await self._hooks.before_route(self.request)
        return orjson.dumps(self.request.body)

    def beside(self) -> Beside | None:
        """What runs beside the upstream call (`during_call` guardrails)."""
        return self._hooks.beside_route(self.request)

    def stream(
        self, *, drop_usage: bool, heard: Callable[[dict[str, Any]], None]
    ) -> WatchedStream | None:
        """The stream's watch, when a hook reads its events (None: it goes as it came);
        `heard` hears each event's data as it is decoded."""
        on_chunk = self._hooks.chunk_hook(self.request)
        if on_chunk is None:
            return None
        codec = self.api.events()
        codec.drop_usage = drop_usage
        codec.heard = heard
        codec.unknown = self.api.unknown_in_event
        return WatchedStream(on_chunk, codec)

    async def answer(self, raw: bytes, usage: Usage) -> bytes:
        """A whole answer past the hooks: as it came, or as a hook rewrote it."""
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise UnreadableAnswer(
                "The provider's answer is not a JSON object, which the hooks cannot read."
            )
        unknown = self.api.unknown_in_answer(answer)
        if unknown is not None:
            raise UnreadableAnswer(unread_answer(unknown))
        changed = await self._hooks.after_answer(self.request, answer, usage)
        return orjson.dumps(answer) if changed else raw

    async def stream_ended(self, usage: Usage) -> None:
        """A stream's `after_answer` hooks, with its usage, once its events went out (its
        last message waits for the record): a refusal is the call's recorded error.
        Bounded, so that the record always follows."""
        try:
            with trio.fail_after(STREAM_HOOK_TIMEOUT):
                await self._hooks.after_answer(self.request, {}, usage)
        except trio.TooSlowError:
            raise GatewayError("A response hook did not finish in time.") from None

    def redacted(self, record: RequestRecord) -> RequestRecord:
        return self._hooks.redacted(self.request, record)  # type: ignore[no-any-return]


async def read_whole(upstream: httpx.AsyncByteStream, seen: Callable[[bytes], None]) -> bytes:
    """A whole answer, each piece `seen` as it arrives; one too large to hold is refused."""
    pieces = bytearray()
    async for piece in upstream:
        seen(piece)
        pieces += piece
        if len(pieces) > MAX_ANSWER_BYTES:
            raise UnreadableAnswer(
                f"The provider's answer is larger than {MAX_ANSWER_BYTES} bytes, more than "
                "the hooks may hold to check it."
            )
    return bytes(pieces)


@dataclass(slots=True)
class WatchedStream:
    """One stream's events past the chunk hooks. `cut_short`: the stream ended before
    the upstream's did (a block, or a hook's end)."""

    on_chunk: Callable[[Any], Awaitable[Any]]
    codec: EventCodec
    cut_short: bool = False

    async def relay(
        self, upstream: httpx.AsyncByteStream, seen: Callable[[], None], send: Send
    ) -> None:
        """Relay the stream, `seen` called as each upstream piece arrives. A block (a
        `GatewayError`) is sent as the API's error event, then raised, for the call's
        record."""
        codec = self.codec
        try:
            async for piece in upstream:
                seen()
                ended = await self._pass(codec.feed(piece), send)
                if codec.failure is not None:
                    raise codec.failure
                if ended:
                    self.cut_short = True
                    break
            else:
                chunks = codec.flush()
                if codec.failure is not None:
                    await self._pass(chunks, send)
                    raise codec.failure
                await self._pass([*chunks, STREAM_END], send)
        except GatewayError as error:
            self.cut_short = True
            await send(codec.error(error))
            raise
        await send(codec.end())

    async def _pass(self, chunks: list[Any], send: Send) -> bool:
        """`chunks` past the hooks, what they released sent in one write; whether a hook
        ended the stream. What was released before a block is sent before it raises."""
        frames: list[bytes] = []
        ended = False
        try:
            for chunk in chunks:
                released, ended = _released(await self.on_chunk(chunk))
                frames.extend(self.codec.frame(item) for item in released)
                if ended:
                    break
        except GatewayError:
            if frames:
                await send(b"".join(frames))
            raise
        if frames:
            await send(b"".join(frames))
        return ended


def _released(result: Any) -> tuple[list[Any], bool]:
    """The chunks a chunk hook released, and whether it ended the stream after them."""
    if result is None:
        return [], False
    if result is END_STREAM:
        return [], True
    if type(result) is list:
        if result and result[-1] is END_STREAM:
            return result[:-1], True
        return result, False
    return [result], False

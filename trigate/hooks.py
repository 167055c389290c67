"""Hook points in the pipeline: before routing, on each streamed chunk, after the answer.

A hook is any object with some of `Hook`'s three methods (`BaseHook` gives the ones it
leaves out as pass-throughs):

- `before_route(request)` runs after admission, before any upstream is chosen. It
  returns None to let the request go on, or an answer (a chat completion, in OpenAI's
  shape) that the client gets instead, rendered in its own API, with its spend row
  written and no upstream called: a cache hit. It refuses by raising a `GatewayError`
  (`Refused` by default): a guardrail's block, answered in the client's envelope.
- `on_chunk(request, chunk)` sees each streamed chunk before it is encoded for the
  client, and returns it, a rewritten one, None to send nothing, or `END_STREAM` to end
  the stream there: the client gets the stream's normal end, and the upstream is closed
  as when a client departs.
- `after_answer(request, answer, usage)` sees a whole answer before the client does,
  with its final usage, and refuses it by raising. A stream's answer has already gone
  out when it ends, so for a stream it hears the final usage only, and a refusal is
  the request's recorded error.

Four more points serve guardrails (`trigate.guardrails`), each optional on a hook:

- `beside_route(request)` returns None, or a coroutine function the pipeline runs beside
  the upstream call (its retries and fallbacks included); the answer is held until it
  returns, and its refusal cancels the call (LiteLLM's `during_call`);
- `watches_stream(request)` says whether this request's stream needs the hook's
  `on_chunk` at all; `on_chunk` may also return a list of chunks (chunks it held back,
  released at once), and `on_stream_end(request)` returns the chunks still held when
  the upstream's stream ends;
- `redacted(request, record)` returns the spend record as it may be stored and exported
  (masked by `logging_only` guardrails), before the record stage writes or exports it;
- `applies(request)` says whether the hook acts on the request at all (a pass-through
  call the gateway cannot read is refused only while a hook applies to it).

`after_answer` may change the answer in place and return True when it did, so that the
upstream's own bytes are not sent instead.

Hooks run in their configured order; the first answer before routing wins. A request
with no hook configured pays nothing for any of this: the pipeline's hooks are None,
which it tests, and the relay is given no chunk callback.

A user's own hook is loaded by dotted path from `litellm_settings.callbacks`, as
LiteLLM's proxy loads its `CustomLogger` instances (`module.instance`). An object with
LiteLLM's proxy hook methods instead of these is adapted (`LiteLLMHook`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar, cast

import trio

from trigate.clock import wall_time
from trigate.errors import GatewayError
from trigate.litellm_keys import callback_names
from trigate.relay import END_STREAM, STREAM_END

if TYPE_CHECKING:
    from trigate.api.context import RequestContext
    from trigate.auth import Caller
    from trigate.usage import Usage

logger = logging.getLogger("trigate")

# The built-in exporters LiteLLM's `callbacks` name; every other entry is a dotted path.
BUILT_IN_CALLBACKS = frozenset({"otel"})

__all__ = [
    "END_STREAM",
    "STREAM_END",
    "BaseHook",
    "Hook",
    "HookedRequest",
    "Hooks",
    "Refused",
    "load_hooks",
]


class Refused(GatewayError):
    """A hook's refusal of a request or an answer: the client's 400 unless it says."""

    status = 400
    type = "invalid_request_error"
    code = "refused_by_hook"


# What a `before_route` answer must be, by the request's call type: the object the
# client's own API answers with (Messages and Responses requests are `completion`s,
# rendered in their API by their surface).
ANSWER_OBJECTS = {
    "completion": "chat.completion",
    "text_completion": "text_completion",
    "embeddings": "list",
}


class HookedRequest(Protocol):
    """What a hook sees of the request in hand."""

    @property
    def caller(self) -> Caller: ...

    @property
    def model_group(self) -> str:
        """The model group the request resolved to."""

    @property
    def body(self) -> dict[str, Any]:
        """The request in OpenAI's shapes (a Messages or Responses request translated)."""

    @property
    def context(self) -> RequestContext: ...

    @property
    def call_type(self) -> str:
        """LiteLLM's name of the call: `completion`, `text_completion`, `embeddings` or
        `rerank`."""


class Hook(Protocol):
    async def before_route(self, request: HookedRequest) -> dict[str, Any] | None: ...

    async def on_chunk(self, request: HookedRequest, chunk: Any) -> Any: ...

    async def after_answer(
        self, request: HookedRequest, answer: dict[str, Any], usage: Usage
    ) -> bool | None: ...


class BaseHook:
    """A hook that does nothing: subclass it and override what you need. A hook whose
    `on_chunk` is this one's is never called per chunk."""

    async def before_route(self, request: HookedRequest) -> dict[str, Any] | None:
        return None

    async def on_chunk(self, request: HookedRequest, chunk: Any) -> Any:
        return chunk

    async def after_answer(
        self, request: HookedRequest, answer: dict[str, Any], usage: Usage
    ) -> bool | None:
        """Refuse the answer by raising; return True only if it was changed in place."""
        return None


ChunkHook = Callable[[Any], Awaitable[Any]]
Beside = Callable[[], Awaitable[None]]


T = TypeVar("T")
# Releasing a result whose client has left must not hold the request's task forever.
DISCARD_TIMEOUT = 5.0


async def run_beside(
    call: Callable[[], Awaitable[T]],
    beside: Beside,
    discard: Callable[[T | None], Awaitable[None]],
) -> T:
    """`call`'s result, while `beside` runs (LiteLLM's during_call guardrails): it waits
    for `beside` to pass. A refusal cancels `call`, or has `discard` release its result
    if it came first (None if it did not), and is raised as it came."""
    results: list[T] = []
    failure: Exception | None = None
    refusal: Exception | None = None

    async def check(scope: trio.CancelScope) -> None:
        nonlocal refusal
        try:
            await beside()
        except Exception as error:
            refusal = error
            scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(check, nursery.cancel_scope)
            try:
                results.append(await call())
            except Exception as error:
                failure = error
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the client left: Cancelled, as it came
        if results:  # the call's result came while the check still ran: nobody takes it
            with trio.CancelScope(shield=True), trio.move_on_after(DISCARD_TIMEOUT):
                await discard(results[0])
        raise _first(group) from None
    if refusal is not None:
        await discard(results[0] if results else None)
        raise refusal
    if failure is not None:
        raise failure
    return results[0]


class _Unread:
    """What `Hooks.applies` asks of a call no hook can read: its caller and model."""

    call_type = "unread"
    requested_guardrails = ()

    def __init__(self, caller: Caller, model_group: str) -> None:
        self.caller = caller
        self.model_group = model_group


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception a group of one task's stands for: its first failure, else its first
    cancellation (re-raised, so the scope that was cancelled catches it)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        found = pending.pop(0)
        if isinstance(found, BaseExceptionGroup):
            pending.extend(found.exceptions)
        else:
            leaves.append(found)
    return next((e for e in leaves if not isinstance(e, trio.Cancelled)), leaves[0])


class Hooks:
    """The configured hooks, in order; never empty: with none configured the pipeline
    holds None instead, and a request asks only `hooks is not None`."""

    __slots__ = ("_all", "_beside", "_chunk", "_personal", "_redacting")

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self._all = tuple(hooks)
        self._chunk = tuple(hook for hook in self._all if _sees_chunks(hook))
        self._beside = tuple(hook for hook in self._all if hasattr(hook, "beside_route"))
        self._redacting = tuple(hook for hook in self._all if hasattr(hook, "redacted"))
        self._personal = tuple(hook for hook in self._all if hasattr(hook, "personalises"))

    def personalises(self, request: HookedRequest) -> bool:
        """Whether a hook makes `request`'s answer its own, so that it may be neither
        cached nor shared with an identical request: a guardrail that puts back what it
        masked (Presidio's `output_parse_pii`) answers each caller with its own text,
        where the cache would see only the placeholders all of them share."""
        return any(getattr(hook, "personalises")(request) for hook in self._personal)  # noqa: B009

    def applies(self, request: HookedRequest) -> bool:
        """Whether any hook acts on `request`: a hook with an `applies` of its own says
        (the guardrails' hook, by the guardrails the request meets); any other does."""
        for hook in self._all:
            applies = getattr(hook, "applies", None)
            if applies is None or applies(request):
                return True
        return False

    def refuse_unread(self, caller: Caller, model_group: str, what: str) -> None:
        """Refuse a call whose content no hook reads (a Realtime session, a batch of
        requests in a file) while any hook applies to `caller`'s calls to `model_group`:
        guardrails fail closed, and no call may bypass them."""
        # `applies` reads a request's caller and the guardrails it names, all there is of
        # a call no hook can read.
        if self.applies(cast(HookedRequest, _Unread(caller, model_group))):
            raise Refused(
                f"{what} is refused: request hooks or guardrails apply to this key's calls, "
                "and they cannot read it. No call may bypass them.",
                status=403,
                code="closed_by_hooks",
            )

    def beside_route(self, request: HookedRequest) -> Beside | None:
        """What runs beside the upstream call for `request` (None: nothing)."""
        besides = [found for hook in self._beside if (found := _beside(hook, request)) is not None]
        if not besides:
            return None
        if len(besides) == 1:
            return besides[0]

        async def all_of() -> None:
            for beside in besides:
                await beside()

        return all_of

    def redacted(self, request: HookedRequest, record: Any) -> Any:
        """The record as the hooks let it be stored and exported."""
        for hook in self._redacting:
            record = getattr(hook, "redacted")(request, record)  # noqa: B009 (no Hook method)
        return record

    async def before_route(self, request: HookedRequest) -> dict[str, Any] | None:
        for hook in self._all:
            answer: object = await hook.before_route(request)
            if answer is None:
                continue
            if _client_reads(answer, request.call_type):
                return answer
            # The client's SDK could not read it: the hook's bug, a logged 500.
            raise TypeError(
                f"{hook!r}.before_route answered a {request.call_type} request "
                "with other than the object its API answers with"
            )
        return None

    def chunk_hook(self, request: HookedRequest) -> ChunkHook | None:
        """The relay's per-chunk callback for `request`; None when no hook reads chunks
        (or none watches this request's stream). Given `STREAM_END`, it returns the
        chunks hooks still held."""
        hooks = tuple(hook for hook in self._chunk if _watches(hook, request))
        if not hooks:
            return None

        async def through(chunk: Any, start: int) -> Any:
            """`chunk` past the hooks from `start` on; a list where one released many."""
            for index in range(start, len(hooks)):
                if chunk is STREAM_END:
                    ending = getattr(hooks[index], "on_stream_end", None)
                    held = [] if ending is None else await ending(request)
                    later = await through(STREAM_END, index + 1)
                    return [*(await _each(held, index + 1)), *later]
                chunk = await hooks[index].on_chunk(request, chunk)
                if type(chunk) is list:
                    return await _each(chunk, index + 1)
                if chunk is None or chunk is END_STREAM:
                    return chunk
            return [] if chunk is STREAM_END else chunk

        async def _each(chunks: list[Any], start: int) -> list[Any]:
            passed: list[Any] = []
            for item in chunks:
                result = await through(item, start)
                if result is END_STREAM:
                    raise _EndedInList(passed)
                if type(result) is list:
                    passed.extend(result)
                elif result is not None:
                    passed.append(result)
            return passed

        async def on_chunk(chunk: Any) -> Any:
            try:
                chunk = await through(chunk, 0)
            except _EndedInList as ended:
                return [*ended.passed, END_STREAM]
            except GatewayError:
                raise
            except Exception as error:
                # A bug in a hook: logged with its traceback; the client's stream ends
                # with an error event, as for an upstream that fails mid-stream.
                reference = request.context.reference
                logger.exception("a chunk hook failed in request %s", reference)
                raise GatewayError(
                    f"The gateway failed unexpectedly (request id {reference})."
                ) from error
            return chunk

        return on_chunk

    async def after_answer(
        self, request: HookedRequest, answer: dict[str, Any], usage: Usage
    ) -> bool:
        """The hooks on a whole answer; whether one changed it (and said so)."""
        changed = False
        for hook in self._all:
            changed = bool(await hook.after_answer(request, answer, usage)) or changed
        return changed


class _EndedInList(Exception):
    """A hook ended the stream within chunks another hook released together."""

    def __init__(self, passed: list[Any]) -> None:
        self.passed = passed


def _beside(hook: Hook, request: HookedRequest) -> Beside | None:
    found: Beside | None = getattr(hook, "beside_route")(request)  # noqa: B009 (optional)
    return found


def _watches(hook: Hook, request: HookedRequest) -> bool:
    watches = getattr(hook, "watches_stream", None)
    return watches is None or bool(watches(request))


def _client_reads(answer: object, call_type: str) -> TypeGuard[dict[str, Any]]:
    """Whether a hook's `answer` is what a client of `call_type` reads: a rerank answer
    (Cohere's shape) names no `object` but lists `results`; an image, moderation or
    speech request has no answer a hook makes."""
    if not isinstance(answer, dict):
        return False
    if call_type == "rerank":
        return isinstance(answer.get("results"), list)
    expected = ANSWER_OBJECTS.get(call_type)
    return expected is not None and answer.get("object") == expected


def _sees_chunks(hook: Hook) -> bool:
    """Whether `hook` has an `on_chunk` of its own, not `BaseHook`'s pass-through."""
    method = getattr(hook, "on_chunk", None)
    return method is not None and getattr(method, "__func__", None) is not BaseHook.on_chunk


# --- user hooks, by dotted path ------------------------------------------------------


def load_hooks(callbacks: Any, first: Sequence[Hook] = ()) -> Hooks | None:
    """The hooks `litellm_settings.callbacks` names by dotted path (`module.instance`,
    the module found on Python's path), each adapted when it has LiteLLM's methods
    rather than `Hook`'s. A dotted path that cannot be loaded stops the start: a
    guardrail that silently did not load would fail open. `first` run before them (the
    configured guardrails, `trigate.guardrails`). A name without a dot is one of
    LiteLLM's own integrations, not loaded here: a logging callback trigate sends to
    (`langfuse`, `s3`, ...) is the export path's (trigate.export), and any other is
    named by the config's start-up warning, or refused if it is a guardrail
    (litellm_keys.py)."""
    hooks = [*first, *(as_hook(_load(path), path) for path in hook_paths(callbacks))]
    return Hooks(hooks) if hooks else None


def hook_paths(callbacks: Any) -> list[str]:
    """The entries of `litellm_settings.callbacks` that `load_hooks` loads: whether a
    request meets hooks is known from the config, before any pipeline is asked."""
    return [
        entry
        for entry in callback_names(callbacks)
        if isinstance(entry, str) and entry not in BUILT_IN_CALLBACKS and "." in entry
    ]


def _load(path: str) -> object:
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"callback `{path}` cannot be loaded: {error}") from error


def as_hook(target: object, name: str) -> Hook:
    if any(hasattr(target, method) for method in ("before_route", "on_chunk", "after_answer")):
        return _Completed(target)
    if any(hasattr(target, method) for method in LITELLM_METHODS):
        return LiteLLMHook(target)
    raise ValueError(f"callback `{name}` has none of the hook methods")


class _Completed(BaseHook):
    """A user's hook object with only some of `Hook`'s methods: the rest pass."""

    def __init__(self, target: object) -> None:
        self._target = target
        for method in ("before_route", "on_chunk", "after_answer"):
            if hasattr(target, method):
                setattr(self, method, getattr(target, method))

    def __repr__(self) -> str:
        return repr(self._target)


# --- LiteLLM's proxy hooks -------------------------------------------------------------

LITELLM_METHODS = (
    "async_pre_call_hook",
    "async_post_call_success_hook",
    "async_post_call_streaming_hook",
)


@dataclass(frozen=True, slots=True)
class UserAPIKeyAuth:
    """What LiteLLM's hooks are given as `user_api_key_dict`: the caller's key, by the
    names LiteLLM's `UserAPIKeyAuth` uses (the key itself only as its hash)."""

    api_key: str | None
    token: str | None
    key_alias: str | None
    team_id: str | None
    user_id: str | None
    models: list[str]
    metadata: dict[str, Any]

    @classmethod
    def of(cls, caller: Caller) -> UserAPIKeyAuth:
        key = caller.key or {}
        return cls(
            api_key=caller.key_hash,
            token=caller.key_hash,
            key_alias=caller.key_alias,
            team_id=caller.team_id,
            user_id=caller.user_id,
            models=list(key.get("models") or ()),
            metadata=dict(key.get("metadata") or {}),
        )


class LiteLLMHook(BaseHook):
    """A LiteLLM `CustomLogger`'s proxy hooks on this pipeline's points:

    - `async_pre_call_hook(user_api_key_dict, cache, data, call_type)` before routing:
      it may change `data` (the request body, in OpenAI's shapes) in place or return a
      changed dict; a returned string answers the request with that text (LiteLLM's
      rejection message, sent as the assistant's reply); a raised exception with a
      `status_code` (FastAPI's `HTTPException`, as LiteLLM's examples raise) refuses it
      with that status. `cache` is None: the gateway has no DualCache to lend.
    - `async_post_call_streaming_hook(user_api_key_dict, response)` on each chunk: a
      returned dict replaces the chunk, a returned string ends the stream with an error
      event, None passes the chunk.
    - `async_post_call_success_hook(data, user_api_key_dict, response)` after the answer:
      it may raise to refuse it, change `response` in place, or return a changed dict;
      either change is what the client gets, as LiteLLM sends it.

    LiteLLM's `async_post_call_streaming_iterator_hook`, which wraps the whole chunk
    iterator, has no per-chunk equivalent here and is not called (LiteLLM's own base
    class defines it as a pass-through, so its presence says nothing).
    """

    def __init__(self, target: Any) -> None:
        self._target = target
        self._pre = getattr(target, "async_pre_call_hook", None)
        self._success = getattr(target, "async_post_call_success_hook", None)
        if hasattr(target, "async_post_call_streaming_hook"):
            self.on_chunk = self._on_chunk  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return repr(self._target)

    async def before_route(self, request: HookedRequest) -> dict[str, Any] | None:
        if self._pre is None:
            return None
        caller = UserAPIKeyAuth.of(request.caller)
        try:
            changed = await self._pre(caller, None, request.body, request.call_type)
        except Exception as error:
            if (refusal := _refusal(error)) is None:
                raise  # a bug in the hook: a logged 500, as LiteLLM answers it
            raise refusal from error
        if isinstance(changed, str):
            return _text_answer(request, changed)
        if isinstance(changed, dict) and changed is not request.body:
            request.body.clear()
            request.body.update(changed)
        return None

    async def _on_chunk(self, request: HookedRequest, chunk: Any) -> Any:
        changed = await self._target.async_post_call_streaming_hook(
            UserAPIKeyAuth.of(request.caller), chunk
        )
        if isinstance(changed, str):
            raise Refused(changed)
        return chunk if changed is None else changed

    async def after_answer(
        self, request: HookedRequest, answer: dict[str, Any], usage: Usage
    ) -> bool:
        """True whenever the success hook ran: LiteLLM's hooks change `response` in place
        without saying so (its guardrails mask that way), so the answer is written from
        the dict the hook saw, never from the upstream's bytes."""
        if self._success is None:
            return False
        try:
            changed = await self._success(request.body, UserAPIKeyAuth.of(request.caller), answer)
        except Exception as error:
            if (refusal := _refusal(error)) is None:
                raise
            raise refusal from error
        if isinstance(changed, dict) and changed is not answer:
            answer.clear()
            answer.update(changed)
        return True


def _refusal(error: Exception) -> GatewayError | None:
    """A LiteLLM hook's deliberate answer as the client's: an exception that carries an
    HTTP `status_code` (FastAPI's `HTTPException`, as LiteLLM's examples raise), with
    its `detail`. Any other exception is the hook's bug (None): LiteLLM answers it 500,
    and so does the gateway, logged, without echoing its text."""
    if isinstance(error, GatewayError):
        return error
    status = getattr(error, "status_code", None)
    if not isinstance(status, int) or not 400 <= status < 600:
        return None
    detail = getattr(error, "detail", None) or str(error) or "Refused by a hook."
    if isinstance(detail, dict):
        detail = detail.get("error") or detail.get("message") or str(detail)
    if status >= 500:
        return GatewayError(str(detail), status=status)
    return Refused(str(detail), status=status)


def _text_answer(request: HookedRequest, text: str) -> dict[str, Any]:
    """LiteLLM answers a pre-call hook's string as the assistant's reply; an embeddings
    (or image, moderation, speech) request has no reply to give, so there it is a
    refusal with that text."""
    call_type = request.call_type
    if call_type not in ("completion", "text_completion"):
        raise Refused(text)
    identity = {"model": request.model_group, "created": int(wall_time())}
    if call_type == "text_completion":
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop"}
        return {
            "id": f"cmpl-{request.context.request_id}",
            "object": "text_completion",
            **identity,
            "choices": [choice],
        }
    message = {"role": "assistant", "content": text}
    return {
        "id": f"chatcmpl-{request.context.request_id}",
        "object": "chat.completion",
        **identity,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }

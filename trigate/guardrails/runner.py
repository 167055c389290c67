"""The guardrails of one request, run at the pipeline's hook points.

- before routing: which guardrails the request meets (`default_on`, the request's own
  `guardrails`, its key's and its team's), then each `pre_call` one on the request,
  which may block it or mask it; `logging_only` ones find what is to be masked in what
  is logged;
- beside the upstream call: the `during_call` ones (the pipeline holds the answer until
  they pass, and a block cancels the call);
- on the answer: the `post_call` ones on a whole answer, or on a stream's text as it
  grows, a window at a time (`stream_window` characters): the client gets no text that
  was not checked, and a block ends the stream there; then the masks a guardrail minted
  (`output_parse_pii`) are given back in the answer;
- on the record: what `logging_only` guardrails found is masked in the spend row and the
  trace, and each guardrail's outcome is its `guardrail_information`.

Each guardrail runs once per request and mode: the router's retries and fallbacks happen
between these points, never around them. A guardrail that fails (an error, its timeout,
an answer it cannot read) blocks the request unless it is `fail_open`; either way it is
counted and logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from trigate.clock import wall_time
from trigate.errors import GatewayError, InvalidRequest
from trigate.guardrails.base import Guardrail, GuardrailBlocked, GuardrailFailed, Step, Verdict
from trigate.guardrails.config import GuardrailConfig, Mode, names_in
from trigate.guardrails.masking import Vault, replacements
from trigate.guardrails.observe import Observer
from trigate.guardrails.text import (
    Slot,
    answer_slots,
    chunk_slots,
    every_slot,
    request_slots,
    rewritten,
)
from trigate.guardrails.windows import redistribute

logger = logging.getLogger("trigate")

# Where a request's run is kept, on the request the pipeline hands its hooks.
RUN_ATTRIBUTE = "guardrail_run"
APPLIED_HEADER = "x-litellm-applied-guardrails"


class GuardrailUnavailable(GatewayError):
    """A guardrail that fails closed could not check the request: it is not served."""

    status = 503
    code = "guardrail_unavailable"


@dataclass(slots=True)
class GuardrailSet:
    """The configured guardrails, by name, built once per configuration."""

    configs: tuple[GuardrailConfig, ...]
    guardrails: dict[str, Guardrail]
    observer: Observer

    @property
    def by_name(self) -> Mapping[str, GuardrailConfig]:
        return {config.name: config for config in self.configs}

    def selected(self, requested: Sequence[str], key: Any, team: Any) -> list[Guardrail]:
        """The request's guardrails, in the config's order: every `default_on` one, and
        each that the request, its key or its team names. A name nobody configured is
        the client's 400: a guardrail asked for must never silently not run."""
        names = set(requested)
        for row, whose in ((key, "key"), (team, "team")):
            metadata = row.get("metadata") if isinstance(row, Mapping) else None
            if isinstance(metadata, Mapping):
                names.update(names_in(metadata.get("guardrails"), f"{whose} guardrails", _bad))
        missing = sorted(names - self.guardrails.keys())
        if missing:
            raise InvalidRequest(
                f"No guardrail named {', '.join(f'`{n}`' for n in missing)} is configured; "
                "the request is refused rather than served without it.",
                param="guardrails",
            )
        return [
            guardrail
            for config in self.configs
            if config.default_on or config.name in names
            for guardrail in (self.guardrails[config.name],)
        ]

    async def aclose(self) -> None:
        for guardrail in self.guardrails.values():
            await guardrail.aclose()


def _bad(message: str) -> Exception:
    return InvalidRequest(message, param="guardrails")


@dataclass(slots=True)
class _Held:
    """A stream's chunks held back until their window is checked."""

    chunks: list[Any] = field(default_factory=list)
    # The text the client has been sent so far, as the guardrails passed it (masked, not
    # yet unmasked): what the next check reads before the held text.
    sent: str = ""
    # Characters that arrived since the last check.
    fresh: int = 0


# What stays held after a window is checked: the text a pattern may still be growing in,
# so that none of one goes out before it is seen whole (longer than any PII or key the
# content filter knows, and than a placeholder). A smaller window holds less (its size
# less one): a window of 1 releases every chunk as soon as it is checked.
TAIL = 64

# The modes, listed once: iterating an enum runs Python on every request.
MODES = tuple(Mode)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a list of guardrails makes of every request that meets it: each mode's
    guardrails in the request's order, whether any unmasks, a stream's window and tail,
    their names."""

    by_mode: dict[Mode, tuple[Guardrail, ...]]
    unmasks: bool
    window: int
    tail: int
    applied: tuple[str, ...]


# How many lists of guardrails a guardrail keeps the plans of (a request meets one list
# per combination of its own, its key's and its team's guardrails: few).
PLANS = 64


def _plan_of(guardrails: list[Guardrail]) -> _Plan:
    """The plan of a list of guardrails, made once for every request that meets the same
    ones (most meet one list, their config's `default_on` guardrails), not on each. It is
    kept on the list's first guardrail, so that it lives as long as the configuration it
    belongs to: a cache of its own would keep a reloaded configuration's guardrails (and
    the content filter's compiled databases) alive."""
    key = tuple(guardrails)
    if not key:
        return _make_plan(key)
    plans = guardrails[0].plans
    plan = plans.get(key)
    if plan is None:
        plan = _make_plan(key)
        if len(plans) < PLANS:
            plans[key] = plan
    return plan


def _make_plan(guardrails: tuple[Guardrail, ...]) -> _Plan:
    by_mode = {mode: tuple(g for g in guardrails if mode in g.config.modes) for mode in MODES}
    window = min((g.config.stream_window for g in by_mode[Mode.POST_CALL]), default=0)
    return _Plan(
        by_mode,
        any(g.unmasks for g in guardrails),
        window,
        min(TAIL, max(window - 1, 0)),
        tuple(g.name for g in guardrails),
    )


class GuardrailRun:
    """One request's guardrails and what they did to it."""

    def __init__(
        self,
        guardrails: list[Guardrail],
        observer: Observer,
        model: str,
        span: Any,
        request_data: Mapping[str, Any],
    ) -> None:
        self._observer = observer
        self._model = model
        self._request_data = request_data
        self._span = span
        plan = _plan_of(guardrails)
        self._by_mode = plan.by_mode
        self._unmasks = plan.unmasks
        self._window = plan.window
        self._tail = plan.tail
        self.applied = plan.applied
        self._vault = Vault()
        self.information: list[dict[str, Any]] = []
        # (original, mask) pairs that logging_only guardrails found: masked wherever logged.
        self.redactions: list[tuple[str, str]] = []
        self._held = _Held()
        # The text of a stream as it was sent, for the logging_only guardrails at its end.
        self._streamed: list[str] = []

    def runs(self, mode: Mode) -> bool:
        return bool(self._by_mode[mode])

    @property
    def unmasks(self) -> bool:
        """Whether a guardrail of the run puts back in the answer what it masked."""
        return self._unmasks

    @property
    def watches_stream(self) -> bool:
        """Whether a stream's chunks must pass through this run (held, unmasked, kept)."""
        return self._unmasks or self.runs(Mode.POST_CALL) or self.runs(Mode.LOGGING_ONLY)

    # --- the request ---------------------------------------------------------------------

    async def pre_call(self, body: dict[str, Any], native: dict[str, Any] | None = None) -> None:
        """`body` checked and masked in place; and `native`, the same request in the
        client's own API (`GuardrailHook`), alike: each text is checked once, and its
        verdict written wherever it is, in whichever shape."""
        slots = _both(body, native)
        for guardrail in self._by_mode[Mode.PRE_CALL]:
            verdict = await self._run(guardrail, Mode.PRE_CALL, slots, reads_input=True)
            _write(slots, verdict)

    async def log_request(self, body: dict[str, Any]) -> None:
        if self._by_mode[Mode.LOGGING_ONLY]:  # the request's texts are read only for them
            await self._log(request_slots(body), reads_input=True)

    async def during_call(self, body: dict[str, Any], native: dict[str, Any] | None = None) -> None:
        """The request has gone upstream as it is: a mask cannot be applied any more, so
        a guardrail that would mask it blocks it."""
        slots = _both(body, native)
        for guardrail in self._by_mode[Mode.DURING_CALL]:
            verdict = await self._run(guardrail, Mode.DURING_CALL, slots, reads_input=True)
            if verdict.texts is not None and verdict.texts != [s.text for s in slots]:
                raise self._blocked(guardrail, "it masks content of a request already sent")

    # --- a whole answer ------------------------------------------------------------------

    async def post_call(self, answer: dict[str, Any]) -> bool:
        """The answer checked, masked and unmasked in place; whether it changed."""
        slots = answer_slots(answer)
        before = [slot.text for slot in slots]
        for guardrail in self._by_mode[Mode.POST_CALL]:
            verdict = await self._run(guardrail, Mode.POST_CALL, slots, reads_input=False)
            _write(slots, verdict)
        if self._unmasks:
            for slot in slots:
                slot.replace(self._vault.unmask(slot.text))
        if self._by_mode[Mode.LOGGING_ONLY]:  # (a coroutine that does nothing still costs)
            await self._log(slots, reads_input=False)
        return [slot.text for slot in slots] != before

    # --- a stream --------------------------------------------------------------------------

    async def on_chunk(self, chunk: Any) -> Any:
        """None while the chunk's window is held, or the chunks released once checked."""
        held = self._held
        held.chunks.append(chunk)
        held.fresh += sum(len(slot.text) for slot in chunk_slots(chunk))
        if held.fresh < self._window:
            return None
        return await self._release(final=False)

    async def on_stream_end(self) -> list[Any]:
        released = await self._release(final=True) if self._held.chunks else []
        await self._log([_Text("".join(self._streamed))], reads_input=False)
        return released

    async def _release(self, *, final: bool) -> list[Any]:
        """Check the held text after what was sent, mask it where a guardrail masks, and
        release the chunks before the last `TAIL` characters (all of them at the end),
        their placeholders given back their values."""
        held = self._held
        held.fresh = 0
        chunks = await self._checked(held.chunks, held.sent)
        lengths = [sum(len(slot.text) for slot in chunk_slots(chunk)) for chunk in chunks]
        go = len(chunks) if final else _before_tail(lengths, self._tail)
        if self._unmasks and not final:
            while go and _opens_placeholder([_text_of(chunk) for chunk in chunks[:go]]):
                go -= 1  # a placeholder cut by the release: it goes out whole, later
        released, held.chunks = chunks[:go], chunks[go:]
        held.sent += "".join(_text_of(chunk) for chunk in released)
        if self._unmasks:
            released = _rewrite(released, self._vault.unmask)
        self._streamed.append("".join(_text_of(chunk) for chunk in released))
        held.fresh = sum(lengths[go:])
        return released

    async def _checked(self, chunks: list[Any], sent: str) -> list[Any]:
        """The held chunks as the post_call guardrails pass them (a block raises)."""
        original = "".join(_text_of(chunk) for chunk in chunks)
        text = original
        for guardrail in self._by_mode[Mode.POST_CALL]:
            whole = [_Text(sent + text)]
            verdict = await self._run(guardrail, Mode.POST_CALL, whole, reads_input=False)
            if verdict.texts is not None:
                masked = verdict.texts[0]
                if masked.startswith(sent):
                    text = masked[len(sent) :]
                else:  # a mask across what was sent already: the held text's own
                    window = [_Text(text)]
                    again = await self._run(guardrail, Mode.POST_CALL, window, reads_input=False)
                    text = again.texts[0] if again.texts is not None else text
        if text == original:
            return chunks
        return _rewrite(chunks, lambda _: text)

    # --- running one guardrail --------------------------------------------------------------

    async def _log(self, slots: Sequence[Slot | _Copies | _Text], *, reads_input: bool) -> None:
        """The logging_only guardrails on `slots`: what they would mask is kept, to be
        masked in the record and the trace; the request and answer stay as they are."""
        for guardrail in self._by_mode[Mode.LOGGING_ONLY]:
            texts = [slot.text for slot in slots]
            verdict = await self._run(guardrail, Mode.LOGGING_ONLY, slots, reads_input=reads_input)
            for original, masked in zip(texts, verdict.texts or (), strict=False):
                self.redactions.extend(replacements(original, masked))

    async def _run(
        self,
        guardrail: Guardrail,
        mode: Mode,
        slots: Sequence[Slot | _Copies | _Text],
        *,
        reads_input: bool,
    ) -> Verdict:
        texts = [slot.text for slot in slots]
        kinds = [slot.kind for slot in slots]
        step = Step(mode, reads_input, self._vault, self._model, kinds, self._request_data)
        config = guardrail.config
        clock = trio.current_time()
        started = wall_time(clock)  # one reading of the clock serves both
        # (A verdict is made here only for a failure: a dataclass made on every run costs.)
        status, error_type = "success", None
        try:
            if guardrail.immediate:
                verdict = _checked(guardrail.check_now(texts, step), len(texts))
            else:
                with trio.fail_after(config.timeout):
                    verdict = _checked(await guardrail.check(texts, step), len(texts))
        except GuardrailBlocked as blocked:
            status, verdict = "guardrail_intervened", Verdict(blocked=blocked.message)
        except trio.TooSlowError:
            status, error_type, verdict = "guardrail_failed_to_respond", "timeout", Verdict()
        except Exception as error:
            status, error_type = "guardrail_failed_to_respond", type(error).__name__
            verdict = Verdict()
            logger.warning("guardrail %s (%s) failed: %s", guardrail.name, mode.value, error)
        if verdict.blocked is not None:
            status = "guardrail_intervened"
        elapsed = trio.current_time() - clock
        self._observe(guardrail, mode, status, error_type, verdict, started, elapsed)
        if error_type is not None:
            if config.fail_open:
                logger.warning(
                    "guardrail %s failed (%s) and fails open: the request goes on unchecked",
                    guardrail.name, error_type,
                )  # fmt: skip
                return Verdict()
            raise GuardrailUnavailable(
                f"Guardrail `{guardrail.name}` could not check this request ({error_type}), "
                "and it fails closed."
            )
        if verdict.blocked is not None:
            raise self._blocked(guardrail, verdict.blocked)
        return verdict

    def _observe(
        self,
        guardrail: Guardrail,
        mode: Mode,
        status: str,
        error_type: str | None,
        verdict: Verdict,
        started: float,
        elapsed: float,
    ) -> None:
        hook = str(mode)  # the mode's value (`.value` is a property in Python)
        self.information.append(
            {
                "guardrail_name": guardrail.name,
                "guardrail_provider": guardrail.provider,
                "guardrail_mode": hook,
                "guardrail_status": status,
                "guardrail_response": verdict.blocked or verdict.response,
                "start_time": started,
                "end_time": started + elapsed,
                "duration": elapsed,
                "masked_entity_count": verdict.masked_entity_count or None,
            }
        )
        self._observer.observed(guardrail.name, hook, status, error_type, elapsed, self._span)

    def _blocked(self, guardrail: Guardrail, reason: str) -> GuardrailBlocked:
        return GuardrailBlocked(f"Violated guardrail policy `{guardrail.name}`: {reason}")


class _Copies:
    """One text that a request's two forms both hold (its chat form and the client's own
    API's), of one kind: checked once, a mask written to each place it is."""

    __slots__ = ("kind", "slots")

    def __init__(self, slot: Slot) -> None:
        self.kind = slot.kind
        self.slots = [slot]

    @property
    def text(self) -> str:
        return self.slots[0].text

    def replace(self, text: str) -> None:
        for slot in self.slots:
            slot.replace(text)


def _both(body: dict[str, Any], native: dict[str, Any] | None) -> Sequence[Slot | _Copies]:
    """The slots of `body`, as a guardrail reads them alone; then those of `native` that
    hold a text (of a kind) `body` does not, each other one joined to the first of
    `body`'s that holds it: the masks of a text both hold are counted once, and a
    guardrail's service is asked once.

    With `native`, every text of each form is read (`every_slot`), not only what a
    guardrail reads of a chat request: the client's own form goes upstream as it is, its
    metadata, tools' descriptions and items of any kind included, and a text both forms
    hold (a tool's description) is masked alike in both. A `native` that is `body`
    itself (a pass-through call's) is read once, whole."""
    if native is None:
        return request_slots(body)
    if native is body:  # the body is the client's own form (a pass-through call)
        return every_slot(body)
    slots: list[Slot | _Copies] = list(every_slot(body))
    first: dict[tuple[str, str], int] = {}
    for index, slot in enumerate(slots):
        first.setdefault((slot.text, slot.kind), index)
    for slot in every_slot(native):
        index = first.setdefault((slot.text, slot.kind), len(slots))
        if index == len(slots):
            slots.append(slot)
            continue
        held = slots[index]
        if isinstance(held, Slot):
            held = slots[index] = _Copies(held)
        held.slots.append(slot)
    return slots


class _Text:
    """A text that is nowhere in a document (a stream's window): read, never written."""

    __slots__ = ("text",)
    kind = "text"

    def __init__(self, text: str) -> None:
        self.text = text


def _text_of(chunk: Any) -> str:
    return "".join(slot.text for slot in chunk_slots(chunk))


def _rewrite(chunks: list[Any], change: Callable[[str], str]) -> list[Any]:
    """`chunks` with their joined text changed by `change`, cut back into the chunks it
    came in (`redistribute`); a native event's frame made anew."""
    slots = [slot for chunk in chunks for slot in chunk_slots(chunk)]
    parts = [slot.text for slot in slots]
    joined = "".join(parts)
    changed = change(joined)
    if changed == joined:
        return chunks
    for slot, part in zip(slots, redistribute(parts, changed), strict=True):
        slot.replace(part)
    return [rewritten(chunk) for chunk in chunks]


def _before_tail(lengths: list[int], tail: int) -> int:
    """How many of the chunks (of these text lengths) end before the last `tail`
    characters."""
    limit = sum(lengths) - tail
    count = total = 0
    for length in lengths:
        if total + length > limit:
            break
        total += length
        count += 1
    return count


def _checked(verdict: Verdict, count: int) -> Verdict:
    """A verdict that masks must give one text for each it was given."""
    if verdict.texts is not None and len(verdict.texts) != count:
        raise GuardrailFailed(f"answered {len(verdict.texts)} texts for {count}")
    return verdict


_PLACEHOLDER_START = re.compile(r"<[A-Z_0-9]{0,40}\Z")


def _opens_placeholder(parts: list[str]) -> bool:
    """Whether held text ends in what may be the start of a placeholder (`<EMAIL_AD`):
    held until it is whole, so that it is given back its value."""
    tail = "".join(parts[-8:])[-42:]
    return _PLACEHOLDER_START.search(tail) is not None


def _write(slots: Sequence[Slot | _Copies], verdict: Verdict) -> None:
    if verdict.texts is not None:
        for slot, text in zip(slots, verdict.texts, strict=True):
            slot.replace(text)


# What the pipeline's hook points call on a request (`trigate.guardrails.hook`).
Beside = Callable[[], Awaitable[None]]

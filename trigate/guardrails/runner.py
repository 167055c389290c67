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
from trigate.guardrails.observe import Observer, Series
from trigate.guardrails.text import (
    Slot,
    answer_slots,
    chunk_slots,
    every_slot,
    plain_answer_texts,
    plain_request_texts,
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
    # What most requests meet, found once: the `default_on` guardrails, in order.
    default_on: list[Guardrail] = field(init=False)

    def __post_init__(self) -> None:
        self.default_on = [self.guardrails[c.name] for c in self.configs if c.default_on]

    @property
    def by_name(self) -> Mapping[str, GuardrailConfig]:
        return {config.name: config for config in self.configs}

    def selected(self, requested: Sequence[str], key: Any, team: Any) -> Sequence[Guardrail]:
        """The request's guardrails, in the config's order: every `default_on` one, and
        each that the request, its key or its team names. A name nobody configured is
        the client's 400: a guardrail asked for must never silently not run."""
        if not requested and _names_none(key) and _names_none(team):
            return self.default_on  # most requests: nothing named, nothing to look up
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


def _names_none(row: Any) -> bool:
    """Whether a key's or team's row names no guardrail (as `selected` reads it)."""
    if row is None:
        return True
    metadata = row.get("metadata") if isinstance(row, Mapping) else None
    return not isinstance(metadata, Mapping) or metadata.get("guardrails") is None


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
    # The text of the stream as it was sent, for the logging_only guardrails at its end.
    streamed: list[str] = field(default_factory=list)


# What stays held after a window is checked: the text a pattern may still be growing in,
# so that none of one goes out before it is seen whole (longer than any PII or key the
# content filter knows, and than a placeholder). A smaller window holds less (its size
# less one): a window of 1 releases every chunk as soon as it is checked.
TAIL = 64

# The modes, listed once: iterating an enum runs Python on every request.
MODES = tuple(Mode)
INTERVENED = "guardrail_intervened"
FAILED = "guardrail_failed_to_respond"


@dataclass(slots=True)
class _Entry:
    """One guardrail in one mode, as each of its runs reports it: its names, the mode's
    (`hook`), and the metrics a successful run counts into, found at its first (a
    series is made only for a run that happened, as LiteLLM's: `/metrics` shows no
    zero for a mode that never ended so)."""

    guardrail: Guardrail
    name: str
    provider: str
    hook: str
    observer: Observer
    # Whether it is run on the texts alone, at once (`immediate`, and it is given no
    # `Step`): no step is made for it, and a plain chat request's or answer's texts are
    # read without their slots.
    lean: bool
    _success: Series | None = None

    def succeeded(self, elapsed: float) -> None:
        """A successful run counted."""
        series = self._success
        if series is None:
            series = self._success = self.observer.series(self.name, self.hook, "success", None)
        series.count(elapsed)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a list of guardrails makes of every request that meets it: each mode's
    guardrails in the request's order, whether any unmasks, a stream's window and tail,
    their names."""

    by_mode: dict[Mode, tuple[_Entry, ...]]
    # Two of them, as every request reads them.
    pre_call: tuple[_Entry, ...]
    post_call: tuple[_Entry, ...]
    unmasks: bool
    window: int
    tail: int
    applied: tuple[str, ...]
    # `applied` as the response's header gives it.
    header: str
    observer: Observer
    # Whether a plain chat request's pre_call, and a plain chat answer's post_call, read
    # its texts alone (`_Entry.lean`): every guardrail of the mode is lean, and (an
    # answer) none unmasks and none only logs, which read its slots.
    pre_call_lean: bool
    post_call_lean: bool


# How many lists of guardrails a guardrail keeps the plans of (a request meets one list
# per combination of its own, its key's and its team's guardrails: few).
PLANS = 64


def _plan_of(guardrails: Sequence[Guardrail], observer: Observer) -> _Plan:
    """The plan of a list of guardrails, made once for every request that meets the same
    ones (most meet one list, their config's `default_on` guardrails), not on each. It is
    kept on the list's first guardrail, so that it lives as long as the configuration it
    belongs to: a cache of its own would keep a reloaded configuration's guardrails (and
    the content filter's compiled databases) alive."""
    key = tuple(guardrails)
    if not key:
        return _make_plan(key, observer)
    plans = guardrails[0].plans
    plan = plans.get(key)
    if plan is None or plan.observer is not observer:
        plan = _make_plan(key, observer)
        if len(plans) < PLANS or key in plans:
            plans[key] = plan
    return plan


def _make_plan(guardrails: tuple[Guardrail, ...], observer: Observer) -> _Plan:
    by_mode = {
        mode: tuple(_entry(g, mode, observer) for g in guardrails if mode in g.config.modes)
        for mode in MODES
    }
    window = min((e.guardrail.config.stream_window for e in by_mode[Mode.POST_CALL]), default=0)
    unmasks = any(g.unmasks for g in guardrails)
    applied = tuple(g.name for g in guardrails)
    return _Plan(
        by_mode,
        by_mode[Mode.PRE_CALL],
        by_mode[Mode.POST_CALL],
        unmasks,
        window,
        min(TAIL, max(window - 1, 0)),
        applied,
        ",".join(applied),
        observer,
        all(e.lean for e in by_mode[Mode.PRE_CALL]),
        all(e.lean for e in by_mode[Mode.POST_CALL])
        and not unmasks
        and not by_mode[Mode.LOGGING_ONLY],
    )


def _entry(guardrail: Guardrail, mode: Mode, observer: Observer) -> _Entry:
    hook = mode.value
    return _Entry(
        guardrail,
        guardrail.name,
        guardrail.provider,
        hook,
        observer,
        guardrail.immediate and not (guardrail.reads_step or guardrail.unmasks),
    )


# Who asked, by LiteLLM's names, for a guardrail's `Step`: given, or read when a step is
# first made (most runs make none).
RequestData = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


class GuardrailRun:
    """One request's guardrails and what they did to it."""

    # (original, mask) pairs that logging_only guardrails found: masked wherever logged.
    redactions: Sequence[tuple[str, str]] = ()
    # Made when first needed: most requests mint no placeholder and stream nothing.
    _vault: Vault | None = None
    _held: _Held | None = None
    # Trio's clock, and the wall clock's offset from it, read at the first run.
    _time: Callable[[], float] | None = None
    _epoch = 0.0

    def __init__(
        self,
        guardrails: Sequence[Guardrail],
        observer: Observer,
        model: str,
        span: Any,
        request_data: RequestData,
    ) -> None:
        self._plan = _plan_of(guardrails, observer)
        self._model = model
        self._request_data = request_data
        self._span = span
        self.information: list[dict[str, Any]] = []

    @property
    def applied(self) -> tuple[str, ...]:
        """The run's guardrails' names, in order."""
        return self._plan.applied

    @property
    def header(self) -> str:
        """The run's guardrails' names, as `x-litellm-applied-guardrails` gives them."""
        return self._plan.header

    def runs(self, mode: Mode) -> bool:
        return bool(self._plan.by_mode[mode])

    @property
    def unmasks(self) -> bool:
        """Whether a guardrail of the run puts back in the answer what it masked."""
        return self._plan.unmasks

    @property
    def watches_stream(self) -> bool:
        """Whether a stream's chunks must pass through this run (held, unmasked, kept)."""
        return self.unmasks or self.runs(Mode.POST_CALL) or self.runs(Mode.LOGGING_ONLY)

    @property
    def vault(self) -> Vault:
        """The request's placeholders and what they stand for."""
        if self._vault is None:
            self._vault = Vault()
        return self._vault

    # --- the request ---------------------------------------------------------------------

    async def pre_call(self, body: dict[str, Any], native: dict[str, Any] | None = None) -> None:
        """`body` checked and masked in place; and `native`, the same request in the
        client's own API (`GuardrailHook`), alike: each text is checked once, and its
        verdict written wherever it is, in whichever shape."""
        plan = self._plan
        entries = plan.pre_call
        if not entries:
            return
        if native is None and plan.pre_call_lean:
            texts = plain_request_texts(body)
            if texts is not None:  # (the slots are read only to write a mask)
                for entry in entries:
                    verdict = self._run_now(entry, texts)
                    if verdict.texts is not None:
                        written = request_slots(body)
                        _write(written, verdict)
                        texts = [slot.text for slot in written]
                return
        slots = _both(body, native)
        for entry in entries:
            verdict = await self._run(entry, Mode.PRE_CALL, slots, reads_input=True)
            _write(slots, verdict)

    async def log_request(self, body: dict[str, Any]) -> None:
        if self._plan.by_mode[Mode.LOGGING_ONLY]:  # the request's texts are read only for them
            await self._log(request_slots(body), reads_input=True)

    async def during_call(self, body: dict[str, Any], native: dict[str, Any] | None = None) -> None:
        """The request has gone upstream as it is: a mask cannot be applied any more, so
        a guardrail that would mask it blocks it."""
        slots = _both(body, native)
        for entry in self._plan.by_mode[Mode.DURING_CALL]:
            verdict = await self._run(entry, Mode.DURING_CALL, slots, reads_input=True)
            if verdict.texts is not None and verdict.texts != [s.text for s in slots]:
                raise self._blocked(entry.guardrail, "it masks content of a request already sent")

    # --- a whole answer ------------------------------------------------------------------

    async def post_call(self, answer: dict[str, Any]) -> bool:
        """The answer checked, masked and unmasked in place; whether it changed."""
        plan = self._plan
        entries = plan.post_call
        if plan.post_call_lean:
            before = plain_answer_texts(answer)
            if before is not None:  # (the slots are read only to write a mask)
                texts, slots = before, None
                for entry in entries:
                    verdict = self._run_now(entry, texts)
                    if verdict.texts is not None:
                        slots = slots or answer_slots(answer)
                        _write(slots, verdict)
                        texts = [slot.text for slot in slots]
                return texts != before
        slots = answer_slots(answer)
        before = [slot.text for slot in slots]
        for entry in entries:
            verdict = await self._run(entry, Mode.POST_CALL, slots, reads_input=False)
            _write(slots, verdict)
        if plan.unmasks:
            vault = self.vault
            for slot in slots:
                slot.replace(vault.unmask(slot.text))
        if plan.by_mode[Mode.LOGGING_ONLY]:  # (a coroutine that does nothing still costs)
            await self._log(slots, reads_input=False)
        return [slot.text for slot in slots] != before

    # --- a stream --------------------------------------------------------------------------

    async def on_chunk(self, chunk: Any) -> Any:
        """None while the chunk's window is held, or the chunks released once checked."""
        held = self._held
        if held is None:
            held = self._held = _Held()
        held.chunks.append(chunk)
        held.fresh += sum(len(slot.text) for slot in chunk_slots(chunk))
        if held.fresh < self._plan.window:
            return None
        return await self._release(held, final=False)

    async def on_stream_end(self) -> list[Any]:
        held = self._held
        released = await self._release(held, final=True) if held and held.chunks else []
        streamed = "".join(held.streamed) if held else ""
        await self._log([_Text(streamed)], reads_input=False)
        return released

    async def _release(self, held: _Held, *, final: bool) -> list[Any]:
        """Check the held text after what was sent, mask it where a guardrail masks, and
        release the chunks before the last `TAIL` characters (all of them at the end),
        their placeholders given back their values."""
        held.fresh = 0
        chunks = await self._checked(held.chunks, held.sent)
        lengths = [sum(len(slot.text) for slot in chunk_slots(chunk)) for chunk in chunks]
        go = len(chunks) if final else _before_tail(lengths, self._plan.tail)
        unmasks = self._plan.unmasks
        if unmasks and not final:
            while go and _opens_placeholder([_text_of(chunk) for chunk in chunks[:go]]):
                go -= 1  # a placeholder cut by the release: it goes out whole, later
        released, held.chunks = chunks[:go], chunks[go:]
        held.sent += "".join(_text_of(chunk) for chunk in released)
        if unmasks:
            released = _rewrite(released, self.vault.unmask)
        held.streamed.append("".join(_text_of(chunk) for chunk in released))
        held.fresh = sum(lengths[go:])
        return released

    async def _checked(self, chunks: list[Any], sent: str) -> list[Any]:
        """The held chunks as the post_call guardrails pass them (a block raises)."""
        original = "".join(_text_of(chunk) for chunk in chunks)
        text = original
        for entry in self._plan.by_mode[Mode.POST_CALL]:
            whole = [_Text(sent + text)]
            verdict = await self._run(entry, Mode.POST_CALL, whole, reads_input=False)
            if verdict.texts is not None:
                masked = verdict.texts[0]
                if masked.startswith(sent):
                    text = masked[len(sent) :]
                else:  # a mask across what was sent already: the held text's own
                    window = [_Text(text)]
                    again = await self._run(entry, Mode.POST_CALL, window, reads_input=False)
                    text = again.texts[0] if again.texts is not None else text
        if text == original:
            return chunks
        return _rewrite(chunks, lambda _: text)

    # --- running one guardrail --------------------------------------------------------------

    async def _log(self, slots: Sequence[Slot | _Copies | _Text], *, reads_input: bool) -> None:
        """The logging_only guardrails on `slots`: what they would mask is kept, to be
        masked in the record and the trace; the request and answer stay as they are."""
        for entry in self._plan.by_mode[Mode.LOGGING_ONLY]:
            texts = [slot.text for slot in slots]
            verdict = await self._run(entry, Mode.LOGGING_ONLY, slots, reads_input=reads_input)
            for original, masked in zip(texts, verdict.texts or (), strict=False):
                self.redactions = [*self.redactions, *replacements(original, masked)]

    async def _run(
        self,
        entry: _Entry,
        mode: Mode,
        slots: Sequence[Slot | _Copies | _Text],
        *,
        reads_input: bool,
    ) -> Verdict:
        texts = [slot.text for slot in slots]
        if entry.lean:
            return self._run_now(entry, texts)
        guardrail = entry.guardrail
        kinds = [slot.kind for slot in slots]
        data = self._request_data
        if callable(data):
            data = self._request_data = data()
        step = Step(mode, reads_input, self.vault, self._model, kinds, data)
        time = self._time or self._start_clock()
        begun = time()
        try:
            if guardrail.immediate:
                verdict = _checked(guardrail.check_now(texts, step), len(texts))
            else:
                with trio.fail_after(guardrail.config.timeout):
                    verdict = _checked(await guardrail.check(texts, step), len(texts))
        except Exception as error:
            failure = error
        else:
            return self._finished(entry, verdict, begun, time() - begun)
        return self._failed(entry, failure, begun, time() - begun)

    def _run_now(self, entry: _Entry, texts: list[str]) -> Verdict:
        """A lean guardrail's run (`_Entry.lean`): its verdict at once, with no step, no
        timeout (which could never fire) and no coroutine."""
        time = self._time or self._start_clock()
        begun = time()
        try:
            verdict = entry.guardrail.check_now(texts, None)
            if verdict.texts is not None:
                verdict = _checked(verdict, len(texts))
        except Exception as error:
            failure = error
        else:
            return self._finished(entry, verdict, begun, time() - begun)
        return self._failed(entry, failure, begun, time() - begun)

    def _start_clock(self) -> Callable[[], float]:
        """Trio's clock, found once for the request's runs (`trio.current_time` finds it
        on each reading), and the wall clock's offset from it (`wall_time`)."""
        time = self._time = trio.lowlevel.current_clock().current_time
        self._epoch = wall_time(0.0)
        return time

    def _finished(self, entry: _Entry, verdict: Verdict, begun: float, elapsed: float) -> Verdict:
        """A run that gave a verdict, reported; a block raised."""
        if verdict.blocked is None:
            self._inform(entry, "success", verdict, begun, elapsed)
            entry.succeeded(elapsed)
            if self._span is not None:
                Observer.traced(self._span, entry.name, entry.hook, "success", elapsed)
            return verdict
        self._observe(entry, INTERVENED, None, verdict, begun, elapsed)
        raise self._blocked(entry.guardrail, verdict.blocked)

    def _failed(self, entry: _Entry, error: Exception, begun: float, elapsed: float) -> Verdict:
        """A run that raised: a block, or the guardrail's failure (its timeout, an error),
        which blocks the request unless it fails open."""
        guardrail = entry.guardrail
        if isinstance(error, GuardrailBlocked):
            verdict = Verdict(blocked=error.message)
            self._observe(entry, INTERVENED, None, verdict, begun, elapsed)
            raise self._blocked(guardrail, error.message)
        if isinstance(error, trio.TooSlowError):
            error_type = "timeout"
        else:
            error_type = type(error).__name__
            logger.warning("guardrail %s (%s) failed: %s", guardrail.name, entry.hook, error)
        self._observe(entry, FAILED, error_type, Verdict(), begun, elapsed)
        if guardrail.config.fail_open:
            logger.warning(
                "guardrail %s failed (%s) and fails open: the request goes on unchecked",
                guardrail.name, error_type,
            )  # fmt: skip
            return Verdict()
        raise GuardrailUnavailable(
            f"Guardrail `{guardrail.name}` could not check this request ({error_type}), "
            "and it fails closed."
        )

    def _inform(
        self, entry: _Entry, status: str, verdict: Verdict, begun: float, elapsed: float
    ) -> None:
        """The run's `guardrail_information` entry, as LiteLLM logs it."""
        started = self._epoch + begun
        self.information.append(
            {
                "guardrail_name": entry.name,
                "guardrail_provider": entry.provider,
                "guardrail_mode": entry.hook,
                "guardrail_status": status,
                "guardrail_response": verdict.blocked or verdict.response,
                "start_time": started,
                "end_time": started + elapsed,
                "duration": elapsed,
                "masked_entity_count": verdict.masked_entity_count or None,
            }
        )

    def _observe(
        self,
        entry: _Entry,
        status: str,
        error_type: str | None,
        verdict: Verdict,
        begun: float,
        elapsed: float,
    ) -> None:
        self._inform(entry, status, verdict, begun, elapsed)
        self._plan.observer.observed(
            entry.name, entry.hook, status, error_type, elapsed, self._span
        )

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

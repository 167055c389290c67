"""The spend ledger: every request's record, logged at once and persisted in batches.

The request path only appends to an in-memory queue; a background task owned
by the app writes batches to the store every `flush_interval` seconds or
`batch_size` rows, and once more at shutdown. While the database is down,
rows stay queued (up to `max_queued` of them) and the writer retries with
backoff. Past that bound the oldest rows are dropped, each drop logged; the
in-memory spend that budgets read still counts them until the process ends (but
a row refused alone, settled as a row dropped as refused is).
A batch the database refuses for what a row holds (`Refused`, not an outage)
is written in halves, so that only a row refused alone is dropped, as a
logged error (its cost settled: it will never reach the store's counters), and
never holds back the rows queued behind it.

Until a row is flushed, its cost is "unflushed" spend, which budget checks add
to the store's counters, so a budget holds even before the database has heard.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import trio

from trigate.spend.records import RequestRecord
from trigate.store import (
    MEMBERS,
    OWNERS,
    Refused,
    Store,
    StoreUnavailable,
    member_ident,
    storable_text,
)

logger = logging.getLogger("trigate.usage")
errors = logging.getLogger("trigate.spend")

# A batch is one INSERT: 500 rows x 20 columns stays far below the bound-parameter
# limits of SQLite (32766) and PostgreSQL (65535).
BATCH_SIZE = 500
FLUSH_INTERVAL = 0.5
MAX_QUEUED = 100_000
MAX_BACKOFF = 30.0
SHUTDOWN_FLUSH_TIMEOUT = 10.0


class SpendLedger:
    def __init__(
        self,
        store: Store | None,
        *,
        batch_size: int = BATCH_SIZE,
        flush_interval: float = FLUSH_INTERVAL,
        max_queued: int = MAX_QUEUED,
        also_users: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        # Users every request's cost is added to, whoever made it (the proxy budget's).
        self._also_users = also_users
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: deque[dict[str, Any]] = deque()
        self._max_queued = max_queued
        self._unflushed: defaultdict[tuple[str, str], float] = defaultdict(float)
        # Set while rows wait; the writer holds no timer at all while the queue is empty.
        self._work = trio.Event()
        self._batch_full = trio.Event()
        # One flush at a time: a batch leaves the queue only after its own write succeeded.
        self._flushing = trio.Lock()
        # Rows dropped from a full queue, and rows dropped because the database refuses
        # what they hold.
        self.dropped = 0
        self.refused = 0
        # Rows refused alone and taken out of the queue by the flush under way, until it
        # ends (`_Flush.held`): still waiting, so counted as queued.
        self._held: list[tuple[dict[str, Any], Refused]] = []
        # The request ids of the rows the last flush kept, refused alone with no other row
        # written: refused again with nothing new tried, they are no news of the store.
        self._kept_ids: frozenset[str] = frozenset()
        # Told when a write to the store fails (the alerts' `db_exceptions`).
        self.on_failure: Callable[[str], None] | None = None

    async def write(self, record: RequestRecord) -> None:
        """Log the record and queue its row; never waits on the database, nor reaches a
        checkpoint: a request is recorded without a shielding scope when nothing else
        its record awaits can block (`Gateway.records_at_once`)."""
        if logger.isEnabledFor(logging.DEBUG):
            fields = asdict(record)
            fields.pop("details", None)  # messages and answers are for sinks, not logs
            logger.debug(orjson.dumps(fields).decode())
        if self._store is None:
            return
        row = _row(record)
        for owner in self._owners(row):
            self._unflushed[owner] += row["cost"]
        self._queue.append(row)
        self._work.set()
        # `while`: rows a flush held out of the queue come back to its head at once.
        while self.queued > self._max_queued:
            self._drop_oldest()
        if len(self._queue) >= self._batch_size:
            self._batch_full.set()

    def unflushed(self, kind: str, key: str) -> float:
        """Spend billed in this process but not yet in the store."""
        return self._unflushed.get((kind, key), 0.0)

    @property
    def queued(self) -> int:
        """Rows waiting for the store: queued, or held by the flush under way."""
        return len(self._queue) + len(self._held)

    async def run(self) -> None:
        """The writer: once rows wait, flush after `flush_interval` or a full batch,
        whichever comes first; back off while the store fails."""
        backoff: float | None = None
        try:
            while True:
                await self._work.wait()
                if backoff is None:
                    with trio.move_on_after(self._flush_interval):
                        await self._batch_full.wait()
                else:
                    # A failing store waits out the whole backoff: full batches queued
                    # meanwhile must not bring the next attempt forward.
                    await trio.sleep(backoff)
                self._batch_full = trio.Event()
                outcome = await self._flush()
                # No checkpoint since the flush read the queue: a row written meanwhile
                # has set `_work`, and is tried at the usual pace. Only the writer
                # replaces the Event it waits on: replaced by another caller's flush, it
                # would wait on the old one for ever.
                if not self._queue or outcome is _Outcome.KEPT:
                    self._work = trio.Event()
                failed_wait = min(2 * (backoff or self._flush_interval), MAX_BACKOFF)
                # Rows kept only because the store had no other row to take are no store
                # failure: tried again with the next row, at the usual pace (`_kept`).
                backoff = failed_wait if outcome is _Outcome.FAILED else None
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_FLUSH_TIMEOUT):
                while self._queue and await self.flush():
                    pass

    async def flush(self) -> bool:
        """Write what is queued, batch by batch; False if any row is still queued for
        the store's fault (it failed) or a row's (refused alone, no other row written)."""
        return await self._flush() is _Outcome.WRITTEN

    async def _flush(self) -> _Outcome:
        async with self._flushing:
            return await self._flush_batches()

    async def _flush_batches(self) -> _Outcome:
        if self._store is None:  # `write` queues nothing without a store
            return _Outcome.WRITTEN
        flush = _Flush(held=self._held)
        try:
            while self._queue:
                batch = [self._queue[i] for i in range(min(self._batch_size, len(self._queue)))]
                if not await self._write(batch, flush):
                    return _Outcome.FAILED
                if flush.held and not flush.stored:
                    # A whole batch written, and no row of it taken: the store may refuse
                    # every row (a schema they no longer fit). Trying the rest row by row
                    # would take two transactions a row, for the same news: one row is
                    # tried, the newest (`_probe`). Taken, the rows held are the rows'
                    # fault, dropped, and the flush goes on; else it ends. Without it a
                    # batch of rows refused alone would be read again at every attempt,
                    # and every row behind it never tried. (Rows behind a batch short of
                    # full came while it was written: not cut short.)
                    if self._queue and not await self._probe(flush):
                        return _Outcome.FAILED
                    if not flush.held:  # the row taken: the held ones dropped
                        continue
                    flush.cut_short = len(batch) == self._batch_size and bool(self._queue)
                    break
        finally:
            # Rows refused alone while the store took no other row: back at the queue's
            # head, whatever ended the flush (a cancellation too), to be tried again.
            self._queue.extendleft(reversed([row for row, _ in flush.held]))
            flush.kept = flush.held.copy()
            flush.held.clear()
            flush.last_kept_ids, self._kept_ids = self._kept_ids, _request_ids(flush.kept)
            while len(self._queue) > self._max_queued:
                self._drop_oldest()
        return self._kept(flush)

    def _kept(self, flush: _Flush) -> _Outcome:
        """How a flush that met no outage ended: every row written (or refused and dropped),
        or rows kept, refused alone with no other row written (`flush.kept`, at the
        queue's head). A lone row refused, or rows the last flush kept refused again, tell
        nothing of the store: the writer tries again once another row is queued, which
        shows whether the store takes any, with no back-off and no alert. Rows behind not
        tried (`cut_short`), or more than one row newly refused with none taken, are a
        failure of the store's, for all it can tell (a schema no row fits): backed off,
        and told."""
        if not flush.kept:
            return _Outcome.WRITTEN
        refusal = flush.kept[0][1]
        doing = f"{len(flush.kept)} rows refused alone, and no other row written"
        newly_refused = not self._kept_ids <= flush.last_kept_ids
        if flush.cut_short or (newly_refused and len(flush.kept) > 1):
            self._failed(doing, refusal, len(self._queue))
            return _Outcome.FAILED
        errors.warning("%s, kept until another is (%s)", doing, refusal)
        if len(self._queue) > len(flush.kept):
            return _Outcome.RETRY  # rows written while it flushed: tried next
        return _Outcome.KEPT

    async def _write(self, rows: list[dict[str, Any]], flush: _Flush) -> bool:
        """Write `rows` (the queue's head, in order) and take them out of the queue. A batch
        the database refuses for what a row holds (`Refused`) is written in halves, and
        those in halves, so that its other rows are written and only a row refused alone
        is dropped (`_refused_alone`). False when anything else stopped it (an outage, or
        a bug of ours): every row not yet written stays queued, for the writer to retry."""
        try:
            await self._record(rows)
        except Refused as refusal:
            if len(rows) == 1:
                self._refused_alone(rows[0], refusal, flush)
                return True
            if not flush.halved:
                flush.halved = True
                errors.warning(
                    "spend log batch of %d rows refused (%s): written in halves to find "
                    "the rows refused", len(rows), refusal,
                )  # fmt: skip
            middle = len(rows) // 2
            return await self._write(rows[:middle], flush) and await self._write(
                rows[middle:], flush
            )
        except Exception as error:
            self._failed("spend log write failed", error, len(self._queue) + len(flush.held))
            return False
        for row in rows:
            self._dequeue(row)
        self._stored(rows, flush)
        return True

    async def _probe(self, flush: _Flush) -> bool:
        """Write the newest row queued, alone, out of turn, after a batch whose every row
        was refused alone: whether the store takes any row. The newest, as a run of rows
        refused (a burst of an upstream's wild counts) longer than a batch would be met
        again by a row nearer the head. Refused, it stays queued in its place, for its
        turn. False, as `_write`, when anything else stopped it."""
        row = self._queue[-1]
        try:
            await self._record([row])
        except Refused:
            return True
        except Exception as error:
            self._failed("spend log write failed", error, len(self._queue) + len(flush.held))
            return False
        self._take(row)
        self._stored([row], flush)
        return True

    def _stored(self, rows: list[dict[str, Any]], flush: _Flush) -> None:
        """`rows`, out of the queue, are in the store: their cost settled (the store's
        counters hold it). The store takes rows: a row refused alone is refused for what
        it holds, dropped."""
        flush.stored = True
        for row, held_refusal in flush.held:
            self._drop_refused(row, held_refusal)
        flush.held.clear()
        for row in rows:
            self._settle(row)

    async def _record(self, rows: list[dict[str, Any]]) -> None:
        assert self._store is not None  # `write` queues nothing without a store
        if self._also_users:
            await self._store.record_spend(rows, self._also_users)
        else:  # the plain call, as stores without a proxy budget are asked
            await self._store.record_spend(rows)

    def _refused_alone(self, row: dict[str, Any], refusal: Refused, flush: _Flush) -> None:
        """A row the database refused written alone: dropped once the store has taken
        another row of this flush, which shows the refusal is the row's; held until then,
        since a store that refuses every row (a schema its rows no longer fit) is not the
        rows' fault, and dropping them all would lose every request's spend."""
        if not self._dequeue(row):
            return  # dropped meanwhile from a full queue
        if flush.stored:
            self._drop_refused(row, refusal)
        else:
            flush.held.append((row, refusal))

    def _drop_refused(self, row: dict[str, Any], refusal: Refused) -> None:
        """Drop a row the database refuses, which would fail its batch at every retry and
        hold back every row queued behind it: an error naming its request and what refused
        it, never what it holds (a client's text, which may be a secret), and counted."""
        # Settled: its cost is dropped from the unflushed spend budgets read, as the store
        # will never count it; else a wild cost (an upstream's 2**63 tokens) would bust a
        # key's or the proxy's budget, turning every request away, until a restart.
        self._settle(row)
        self.refused += 1
        errors.error(
            "spend row %s dropped: the database refuses it (%s); %d refused so far; "
            "its cost is not counted against budgets",
            row.get("request_id"), refusal, self.refused,
        )  # fmt: skip

    def _dequeue(self, row: dict[str, Any]) -> bool:
        """Take `row`, the queue's head, out of it; False if a full queue dropped it."""
        if self._queue and self._queue[0] is row:
            self._queue.popleft()
            return True
        return False

    def _take(self, row: dict[str, Any]) -> None:
        """Take `row` out of the queue wherever it is, from its newest end (rows queued
        since it came after it); nothing if a full queue dropped it."""
        for index in range(len(self._queue) - 1, -1, -1):
            if self._queue[index] is row:
                del self._queue[index]
                return

    def _failed(self, doing: str, error: Exception, kept: int) -> None:
        """A write the store did not take: its rows, and every row after them (`kept` in
        all), stay queued. An outage is to be expected; anything else is a bug of ours,
        logged as an error with its traceback, and never a reason to drop a row."""
        if isinstance(error, (StoreUnavailable, Refused, OSError)):
            errors.warning("%s, %d rows kept for retry: %s", doing, kept, error)
        else:
            errors.error("%s, %d rows kept for retry: %r", doing, kept, error, exc_info=error)
        if self.on_failure is not None:
            self.on_failure(str(error))

    def _owners(self, row: dict[str, Any]) -> list[tuple[str, str]]:
        owners = _owners(row)
        if self._also_users:
            owners += (("users", user) for user in self._also_users)
        return owners

    def _settle(self, row: dict[str, Any]) -> None:
        for owner in self._owners(row):
            remaining = self._unflushed[owner] - row["cost"]
            if not remaining > 1e-12:  # not: a NaN (an infinite cost settled) is none
                del self._unflushed[owner]
            else:
                self._unflushed[owner] = remaining

    def _drop_oldest(self) -> None:
        """Drop the oldest row waiting. Its cost still counts against budgets (the spend
        was made), unless it was refused alone (held, or kept at the queue's head): such
        a row's cost may be what the database refuses (an upstream's 2**63 tokens), which
        would bust a budget until a restart, as a row dropped as refused would."""
        # Rows a flush holds out of the queue came before every row in it.
        if self._held:
            row = self._held.pop(0)[0]
            refused_alone = True
        else:
            row = self._queue.popleft()
            refused_alone = (row.get("request_id") or "") in self._kept_ids
        if refused_alone:
            self._settle(row)
        self.dropped += 1
        errors.error(
            "spend log queue full (%d rows): dropped the oldest row (%d dropped so far)",
            self._max_queued,
            self.dropped,
        )


@dataclass(slots=True)
class _Flush:
    """What one flush has learnt of the store: whether it took a row (`stored`), and the
    rows it refused alone before it did (`held`, with their refusals, out of the queue
    until the flush ends)."""

    stored: bool = False
    halved: bool = False  # a batch was refused: written in halves (logged once)
    # Ended after a full batch with none of it taken, rows queued behind it not tried.
    cut_short: bool = False
    held: list[tuple[dict[str, Any], Refused]] = field(default_factory=list)
    # The rows held when the flush ended, back in the queue: kept for the next flush.
    kept: list[tuple[dict[str, Any], Refused]] = field(default_factory=list)
    # The request ids of the rows the flush before kept.
    last_kept_ids: frozenset[str] = frozenset()


class _Outcome(enum.Enum):
    """How a flush ended, which tells the writer when to try again."""

    WRITTEN = "every row written, or refused and dropped"
    KEPT = "rows refused alone kept, none behind them: tried again once a row is queued"
    RETRY = "rows refused alone kept, rows queued behind them: tried at the usual pace"
    FAILED = "the store failed: rows kept for retry"


def _request_ids(rows: list[tuple[dict[str, Any], Refused]]) -> frozenset[str]:
    return frozenset(row.get("request_id") or "" for row, _ in rows)


# Each owner's kind and the spend-log column naming it, read once rather than per row.
_OWNER_COLUMNS = tuple((owner.kind, owner.spend_column) for owner in OWNERS)


def _owners(row: dict[str, Any]) -> list[tuple[str, str]]:
    # A loop, not a comprehension: in Python 3.11 that is a function made and called
    # for every row, which costs more than the loop's five steps.
    owners = []
    for kind, column in _OWNER_COLUMNS:
        owner = row.get(column)
        if owner:
            owners.append((kind, owner))
    # A key of a user in a team also spends in that user's membership of the team.
    if row.get("team_id") and row.get("user_id"):
        owners.append((MEMBERS, member_ident(row["team_id"], row["user_id"])))
    return owners


def _row(record: RequestRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "client_request_id": storable_text(record.client_request_id),
        "response_id": storable_text(record.response_id),
        "key_hash": record.key_hash,
        "key_alias": record.key_alias,
        "team_id": record.team_id,
        "user_id": record.user_id,
        # A pass-through call's model is the one its body names, as the client sent it.
        "model_group": storable_text(record.model_group) or "",
        "deployment": record.deployment,
        "model": storable_text(record.model),
        "prompt_tokens": _integer(record.prompt_tokens),
        "completion_tokens": _integer(record.completion_tokens),
        "cost": record.cost,
        "status": _integer(record.status),
        "stream": record.stream,
        "cancelled_by_client": record.cancelled_by_client,
        "start_time": record.start_time,
        "end_time": record.end_time,
        "ttft_ms": record.ttft_ms,
        "metadata": record.metadata,
        "request_tags": record.request_tags,
        "session_id": storable_text(record.session_id),
        "cache_hit": record.cache_hit,
        "cache_key": record.cache_key,
        "end_user": storable_text(record.end_user),
        "organization_id": record.organization_id,
    }


def _integer(count: int) -> int:
    """An integer column's value as every database takes it: a bool (an upstream's JSON
    `true` for a count) as 0 or 1, which PostgreSQL refuses for an INTEGER at every try."""
    return int(count) if isinstance(count, bool) else count

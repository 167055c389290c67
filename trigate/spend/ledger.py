"""The spend ledger: every request's record, logged at once and persisted in batches.

The request path only appends to an in-memory queue; a background task owned
by the app writes batches to the store every `flush_interval` seconds or
`batch_size` rows, and once more at shutdown. While the database is down,
rows stay queued (up to `max_queued` of them) and the writer retries with
backoff. Past that bound the oldest rows are dropped, each drop logged; the
in-memory spend that budgets read still counts them until the process ends.

Until a row is flushed, its cost is "unflushed" spend, which budget checks add
to the store's counters, so a budget holds even before the database has heard.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson
import trio

from trigate.spend.records import RequestRecord
from trigate.store import MEMBERS, OWNERS, Store, member_ident

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
        self.dropped = 0
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
        if len(self._queue) > self._max_queued:
            self._drop_oldest()
        if len(self._queue) >= self._batch_size:
            self._batch_full.set()

    def unflushed(self, kind: str, key: str) -> float:
        """Spend billed in this process but not yet in the store."""
        return self._unflushed.get((kind, key), 0.0)

    @property
    def queued(self) -> int:
        return len(self._queue)

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
                written = await self.flush()
                if not self._queue:
                    self._work = trio.Event()
                failed_wait = min(2 * (backoff or self._flush_interval), MAX_BACKOFF)
                backoff = None if written else failed_wait
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_FLUSH_TIMEOUT):
                while self._queue and await self.flush():
                    pass

    async def flush(self) -> bool:
        """Write what is queued, batch by batch; False if the store failed."""
        async with self._flushing:
            return await self._flush_batches()

    async def _flush_batches(self) -> bool:
        if self._store is None:  # `write` queues nothing without a store
            return True
        while self._queue:
            batch = [self._queue[i] for i in range(min(self._batch_size, len(self._queue)))]
            try:
                if self._also_users:
                    await self._store.record_spend(batch, self._also_users)
                else:  # the plain call, as stores without a proxy budget are asked
                    await self._store.record_spend(batch)
            except Exception as error:
                errors.warning(
                    "spend log write failed, %d rows kept for retry: %s", len(self._queue), error
                )
                if self.on_failure is not None:
                    self.on_failure(str(error))
                return False
            for row in batch:
                # A full queue may have dropped the head meanwhile; remove only this batch.
                if self._queue and self._queue[0] is row:
                    self._queue.popleft()
                self._settle(row)
        return True

    def _owners(self, row: dict[str, Any]) -> list[tuple[str, str]]:
        owners = _owners(row)
        owners += (("users", user) for user in self._also_users)
        return owners

    def _settle(self, row: dict[str, Any]) -> None:
        for owner in self._owners(row):
            remaining = self._unflushed[owner] - row["cost"]
            if remaining <= 1e-12:
                del self._unflushed[owner]
            else:
                self._unflushed[owner] = remaining

    def _drop_oldest(self) -> None:
        self._queue.popleft()
        self.dropped += 1
        errors.error(
            "spend log queue full (%d rows): dropped the oldest row (%d dropped so far)",
            self._max_queued,
            self.dropped,
        )


# Each owner's kind and the spend-log column naming it, read once rather than per row.
_OWNER_COLUMNS = tuple((owner.kind, owner.spend_column) for owner in OWNERS)


def _owners(row: dict[str, Any]) -> list[tuple[str, str]]:
    owners = [(kind, row[column]) for kind, column in _OWNER_COLUMNS if row.get(column)]
    # A key of a user in a team also spends in that user's membership of the team.
    if row.get("team_id") and row.get("user_id"):
        owners.append((MEMBERS, member_ident(row["team_id"], row["user_id"])))
    return owners


def _row(record: RequestRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "client_request_id": _storable(record.client_request_id),
        "response_id": record.response_id,
        "key_hash": record.key_hash,
        "key_alias": record.key_alias,
        "team_id": record.team_id,
        "user_id": record.user_id,
        # A pass-through call's model is the one its body names, as the client sent it.
        "model_group": _storable(record.model_group) or "",
        "deployment": record.deployment,
        "model": _storable(record.model),
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost": record.cost,
        "status": record.status,
        "stream": record.stream,
        "cancelled_by_client": record.cancelled_by_client,
        "start_time": record.start_time,
        "end_time": record.end_time,
        "ttft_ms": record.ttft_ms,
        "metadata": record.metadata,
        "request_tags": record.request_tags,
        "session_id": _storable(record.session_id),
        "cache_hit": record.cache_hit,
        "cache_key": record.cache_key,
        "end_user": _storable(record.end_user),
        "organization_id": record.organization_id,
    }


# The most of a text a client names (its end user, session, request id) a spend row
# keeps: PostgreSQL refuses an index entry over 2,704 bytes (`end_user` is indexed), and
# this many characters are at most 2,048 bytes.
MAX_CLIENT_TEXT = 512


def _storable(text: str | None) -> str | None:
    """A text a client names (a pass-through's model too), as every database takes it:
    PostgreSQL's text holds no NUL (made U+FFFD), nor an index entry past its limit (cut
    at `MAX_CLIENT_TEXT`). A row the database refused would fail its batch at every
    retry, and every row queued behind it with it: no spend would be recorded again."""
    if text is None or (len(text) <= MAX_CLIENT_TEXT and "\x00" not in text):
        return text
    return text[:MAX_CLIENT_TEXT].replace("\x00", "\ufffd")

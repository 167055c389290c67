"""The gateway's durable state: virtual keys, teams, users, spend logs, stored
Responses API responses and deployments added through the admin API.

`Store` is the async face of a blocking backend. Every call runs in a worker
thread under a capacity limiter, so the event loop never waits on a disk or
a socket to the database. Rows are plain dicts; JSON columns (models,
metadata) are decoded on the way out and encoded on the way in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import trio

from trigate.durations import parse_duration
from trigate.errors import GatewayError
from trigate.store.backends import Backend, Conflict, Cursor, Refused, Unavailable, connect
from trigate.store.backends import Row as Row
from trigate.store.migrations import BILLED, MIGRATIONS, SETTLED_UNBILLED, UNBILLED

__all__ = [
    "ChainTooLarge", "Conflict", "Refused", "ResponseViewer", "Row", "Store", "StoreUnavailable",
]  # fmt: skip

T = TypeVar("T")
logger = logging.getLogger("trigate")
_OUTAGE = "The gateway cannot reach its database just now. Try again shortly."

IN_MEMORY_URL = "sqlite://:memory:"
# Concurrent database calls per worker; PostgreSQL's pool is sized to match.
MAX_CONCURRENT_CALLS = 10
# Every route fails fast when the database is down, as the key check does:
# - a call waits at most this long for its turn among the concurrent calls;
CALL_WAIT = 2.0
# - a read (which may be abandoned) is given up after this long in all;
READ_TIMEOUT = 10.0
# - after a lasting failure (a lost connection, a read given up) the database is left
#   alone this long: calls fail at once rather than each waiting to find out again.
OUTAGE_MEMORY = 2.0

JSON_COLUMNS = {
    "models",
    "metadata",
    "model_aliases",
    "response",
    "input_items",
    "litellm_params",
    "model_info",
    "model_max_budget",
    "request_tags",
    "object_permission",
    "definition",
}
_LIST_COLUMNS = {"models", "request_tags"}
BOOL_COLUMNS = {"blocked", "stream", "cancelled_by_client", "native", "cache_hit"}
# The columns keys, teams and users share. Each table accepts from callers only its
# owner's `columns`; anything else is a programming error.
_LIMIT_COLUMNS = frozenset({
    "models", "max_budget", "soft_budget", "budget_duration", "budget_reset_at", "spend",
    "rpm_limit", "tpm_limit", "max_parallel_requests", "metadata", "blocked",
    "created_at", "updated_at",
})  # fmt: skip


class StoreUnavailable(GatewayError):
    """The database cannot serve the call now: a 503 the client may retry, answered fast."""

    status = 503
    type = "api_error"
    code = "store_unavailable"


# The owner of the responses the master key made (which have no key hash).
MASTER_OWNER = ""


@dataclass(frozen=True, slots=True)
class ResponseViewer:
    """Whose stored responses, files and batches a reader may see: its own (`key_hash`
    is its owner, `trigate.auth.Caller.owner`: a key's hash or a keyless user's
    `user:{id}`), and its team's."""

    key_hash: str | None
    team_id: str | None


class ChainTooLarge(Exception):
    """A `previous_response_id` chain holds more stored JSON than its reader's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the stored conversation is larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Owner:
    """What limits and spend belong to: a key, a team or a user. The one place that says
    which table holds its rows, their primary key, the columns callers may write, and
    the spend-log column naming it. `kind` is what callers name it by (`"teams"`)."""

    kind: str
    table: str
    primary: str
    spend_column: str
    columns: frozenset[str]


KEYS = Owner(
    "keys", "trigate_keys", "token_hash", "key_hash",
    _LIMIT_COLUMNS
    | {"token_hash", "key_alias", "key_name", "user_id", "team_id", "expires", "object_permission"},
)  # fmt: skip
TEAMS = Owner(
    "teams", "trigate_teams", "team_id", "team_id",
    _LIMIT_COLUMNS
    | {"team_id", "team_alias", "model_aliases", "organization_id", "object_permission"},
)  # fmt: skip
USERS = Owner(
    "users", "trigate_users", "user_id", "user_id",
    _LIMIT_COLUMNS | {"user_id", "user_email", "user_role"},
)  # fmt: skip
# LiteLLM's customers (end users): named by a request's `user`, not by a key. Their limit
# columns are a copy of their budget's (`budget_id`), written with it.
CUSTOMERS = Owner(
    "customers", "trigate_customers", "user_id", "end_user",
    _LIMIT_COLUMNS | {"user_id", "alias", "budget_id", "allowed_model_region", "default_model"},
)  # fmt: skip
# LiteLLM's organizations: they own teams, and their limits bind every key of those teams.
ORGANIZATIONS = Owner(
    "organizations", "trigate_organizations", "organization_id", "organization_id",
    _LIMIT_COLUMNS | {"organization_id", "organization_alias", "budget_id", "created_by",
                      "updated_by"},
)  # fmt: skip
OWNERS = (KEYS, TEAMS, USERS, CUSTOMERS, ORGANIZATIONS)
# LiteLLM's budget table: limits, and no spend of their own; customers and organizations
# link to one. Reached through the same calls as owners (`insert`, `get`, ...), it is
# no owner: nothing is billed to it.
BUDGET_LIMITS = ("max_budget", "soft_budget", "max_parallel_requests", "tpm_limit", "rpm_limit",
                 "budget_duration")  # fmt: skip
BUDGETS = Owner(
    "budgets", "trigate_budgets", "budget_id", "",
    frozenset({"budget_id", *BUDGET_LIMITS, "model_max_budget", "budget_reset_at", "created_by",
               "updated_by", "created_at", "updated_at"}),
)  # fmt: skip
# What links to a budget: the kinds whose rows carry a copy of its limits.
BUDGETED = (CUSTOMERS, ORGANIZATIONS)
OWNER_OF_KIND = {owner.kind: owner for owner in (*OWNERS, BUDGETS)}
OWNER_KINDS = tuple(OWNER_OF_KIND)
# The kind a write of a stored deployment is reported as (`Store.watch`).
MODELS = "models"
# The kind a write of a stored MCP server is reported as.
MCP_SERVERS = "mcp_servers"
# Told of each row an admin write changed: `(kind, its primary key)`.
Watcher = Callable[[str, str], None]

SPEND_COLUMNS = (
    "request_id", "key_hash", "key_alias", "team_id", "user_id", "model_group", "deployment",
    "model", "prompt_tokens", "completion_tokens", "cost", "status", "stream",
    "cancelled_by_client", "start_time", "end_time", "ttft_ms", "client_request_id",
    "response_id",
    "end_user", "organization_id",
    "metadata", "request_tags", "session_id",
    "cache_hit", "cache_key",
)  # fmt: skip


RESPONSE_COLUMNS = (
    "response_id", "response", "input_items", "model_group", "deployment", "key_hash",
    "team_id", "previous_response_id", "native", "created_at", "expires_at",
)  # fmt: skip
# How many stored responses a `previous_response_id` chain may reach back through.
MAX_RESPONSE_CHAIN = 1000


# A team member's roles, LiteLLM's: an `admin` manages the team's members.
MEMBER_ROLES = ("admin", "user")
MEMBER_COLUMNS = (
    "team_id", "user_id", "user_email", "role", "created_at", "max_budget", "tpm_limit",
    "rpm_limit",
)  # fmt: skip
# A membership's limits within its team (LiteLLM's `max_budget_in_team`, and the member's
# `tpm_limit`/`rpm_limit`), which bind the requests of the user's keys in that team.
MEMBER_LIMITS = ("max_budget", "tpm_limit", "rpm_limit")
# The kind a membership is cached, announced and budgeted as; its id is `member_ident`.
MEMBERS = "members"


def member_ident(team_id: str, user_id: str) -> str:
    """One id for a (team, user) membership, unambiguous whatever the two ids hold."""
    return orjson.dumps([team_id, user_id]).decode()


# The most of a text a client or an upstream names (its end user, session, request id;
# the upstream's response id) a spend row keeps: PostgreSQL refuses an index entry over
# 2,704 bytes (`end_user` and `response_id` are indexed), and this many characters are at
# most 2,048 bytes.
MAX_CLIENT_TEXT = 512


def storable_text(text: str | None) -> str | None:
    """A text a client or an upstream names (a pass-through's model too), as every
    database takes it in a spend row: PostgreSQL's text holds no NUL (made U+FFFD), nor
    an index entry past its limit (cut at `MAX_CLIENT_TEXT`). A row the database refused
    would be dropped, and its spend with it. A spend-log query matches the value as
    stored (`_spend_where`)."""
    if text is None or (len(text) <= MAX_CLIENT_TEXT and "\x00" not in text):
        return text
    return text[:MAX_CLIENT_TEXT].replace("\x00", "\ufffd")


ORGANIZATION_MEMBER_COLUMNS = (
    "organization_id", "user_id", "user_email", "user_role", "created_at", "updated_at",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SpendFilter:
    request_id: str | None = None
    key_hash: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    start: float | None = None
    end: float | None = None
    limit: int = 1000


class Store:
    def __init__(self, backend: Backend, *, multiprocess: bool = True) -> None:
        self._backend = backend
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_CALLS)
        # Until when (trio's clock) a lasting failure makes calls fail at once.
        self._outage_until = -float("inf")
        # False for an in-memory SQLite database, which no other process can open: nothing
        # in it changes but through this process.
        self.multiprocess = multiprocess
        self._watchers: list[Watcher] = []

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect and bring the schema up to date."""
        backend = await trio.to_thread.run_sync(connect, url)
        store = cls(backend, multiprocess=url != IN_MEMORY_URL)
        await store._run(_migrate)
        return store

    def watch(self, watcher: Watcher) -> None:
        """Call `watcher(kind, key)` after every write that changed a key, team, user
        (`OWNER_KINDS`) or stored deployment (`MODELS`), once per row: the one place
        caches are told of admin changes, whichever call made them."""
        self._watchers.append(watcher)

    def _changed(self, kind: str, keys: Sequence[str]) -> None:
        for key in keys:
            for watcher in self._watchers:
                watcher(kind, key)

    @property
    def dialect(self) -> str:
        return self._backend.dialect

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._backend.close)

    async def _run(self, work: Callable[[Cursor], T]) -> T:
        """A write. Its wait for a turn is bounded; once running it is not abandoned (its
        outcome must be known), and the backend bounds its wait for a connection."""
        return await self._call(self._backend.transaction, work, CALL_WAIT, abandon=False)

    async def _read(self, work: Callable[[Cursor], T]) -> T:
        """A read its caller may stop waiting for (a database that hangs must not hang
        requests); the abandoned thread finishes on its own and changes nothing."""
        return await self._call(self._backend.read, work, READ_TIMEOUT, abandon=True)

    async def _call(
        self,
        call: Callable[[Callable[[Cursor], T]], T],
        work: Callable[[Cursor], T],
        bound: float,
        *,
        abandon: bool,
    ) -> T:
        """Run `call(work)` in a thread; a database that cannot serve it now is a
        `StoreUnavailable` (503) within `bound`, never a 500 after a long wait. A write
        cancelled while it runs still returns its result: the scope only bounds its
        wait for a turn."""
        if trio.current_time() < self._outage_until:
            raise StoreUnavailable(_OUTAGE)
        # A call that arrives to find every turn taken may spend its bound queued behind
        # slow calls on a healthy database: its timeout says nothing of an outage.
        queued = self._limiter.available_tokens == 0
        with trio.move_on_after(bound):
            try:
                return await trio.to_thread.run_sync(
                    call, work, limiter=self._limiter, abandon_on_cancel=abandon
                )
            except Unavailable as error:
                if error.lasting:
                    self._outage_until = trio.current_time() + OUTAGE_MEMORY
                logger.warning("database unavailable: %s", error)
                raise StoreUnavailable(_OUTAGE) from None
        if not queued:
            self._outage_until = trio.current_time() + OUTAGE_MEMORY
        logger.warning("database unavailable: no answer within %g s", bound)
        raise StoreUnavailable(_OUTAGE)

    # Keys, teams and users share one shape of access.

    async def insert(self, kind: str, row: Row) -> None:
        owner = OWNER_OF_KIND[kind]
        columns = _checked(owner, row)
        sql = _insert(owner.table, columns)
        values = [_encode(c, row[c]) for c in columns]
        await self._run(lambda cursor: cursor.execute(sql, values))
        self._changed(kind, [row[owner.primary]])

    async def get(self, kind: str, key: str) -> Row | None:
        rows = await self.select(kind, {OWNER_OF_KIND[kind].primary: key})
        return rows[0] if rows else None

    async def select(self, kind: str, where: dict[str, Any], limit: int = 1000) -> list[Row]:
        owner = OWNER_OF_KIND[kind]
        clause, values = _where(owner, where)
        sql = (
            f"SELECT * FROM {owner.table}{clause} ORDER BY created_at, {owner.primary} "
            f"LIMIT {int(limit)}"
        )
        rows = await self._read(lambda cursor: cursor.query(sql, values))
        return [_decode(row) for row in rows]

    async def update(self, kind: str, key: str, fields: Row) -> bool:
        owner = OWNER_OF_KIND[kind]
        columns = _checked(owner, fields)
        if not columns:
            return await self.get(kind, key) is not None
        assignments = ", ".join(f"{c} = ?" for c in columns)
        values = [*(_encode(c, fields[c]) for c in columns), key]
        sql = f"UPDATE {owner.table} SET {assignments} WHERE {owner.primary} = ?"
        updated = bool(await self._run(lambda cursor: cursor.execute(sql, values)))
        if updated:
            self._changed(kind, [key])
        return updated

    async def delete(self, kind: str, column: str, values: Sequence[str]) -> int:
        owner = OWNER_OF_KIND[kind]
        _checked(owner, {column: None})
        if not values:
            return 0
        where = f"WHERE {column} IN ({', '.join('?' * len(values))})"

        def work(cursor: Cursor) -> list[str]:
            rows = cursor.query(f"SELECT {owner.primary} FROM {owner.table} {where}", list(values))
            cursor.execute(f"DELETE FROM {owner.table} {where}", list(values))
            return [row[owner.primary] for row in rows]

        deleted = await self._run(work)
        self._changed(kind, deleted)
        return len(deleted)

    async def delete_with_keys(self, kind: str, ids: Sequence[str]) -> tuple[int, list[str]]:
        """Delete teams (or users) with every key of theirs and their memberships, in one
        transaction, as LiteLLM's `/team/delete` and `/user/delete` do: a key outliving
        its team or user would lose their limits. Returns the number of teams (or users)
        deleted and the hashes of the keys deleted."""
        owner = OWNER_OF_KIND[kind]
        if owner not in (TEAMS, USERS):
            raise ValueError(f"{kind} own no keys")
        # A team's and a user's primary column is also the one naming them in keys and
        # memberships.
        where = f"WHERE {owner.primary} IN ({', '.join('?' * len(ids))})"
        values = list(ids)

        def work(cursor: Cursor) -> tuple[int, list[str]]:
            keys = cursor.query(f"SELECT {KEYS.primary} FROM {KEYS.table} {where}", values)
            cursor.execute(f"DELETE FROM {KEYS.table} {where}", values)
            cursor.execute(f"DELETE FROM trigate_team_members {where}", values)
            deleted = cursor.execute(f"DELETE FROM {owner.table} {where}", values)
            return deleted, [row[KEYS.primary] for row in keys]

        deleted, keys = await self._run(work)
        self._changed(kind, ids)
        self._changed(KEYS.kind, keys)
        return deleted, keys

    async def replace_key(self, old_hash: str, row: Row) -> bool:
        """Swap a key's hash for a new one in one transaction (regeneration)."""
        columns = _checked(KEYS, row)
        insert = _insert(KEYS.table, columns)
        values = [_encode(c, row[c]) for c in columns]

        def work(cursor: Cursor) -> bool:
            if not cursor.execute(f"DELETE FROM {KEYS.table} WHERE {KEYS.primary} = ?", [old_hash]):
                return False
            cursor.execute(insert, values)
            return True

        replaced = await self._run(work)
        if replaced:
            # The new hash too: a lookup of the key before it existed is cached as absent.
            self._changed(KEYS.kind, [old_hash, row[KEYS.primary]])
        return replaced

    # Team members.

    async def team_members(self, team_id: str) -> list[Row]:
        sql = (
            "SELECT user_id, user_email, role FROM trigate_team_members WHERE team_id = ? "
            "ORDER BY created_at, user_id"
        )
        return await self._read(lambda cursor: cursor.query(sql, [team_id]))

    async def member_teams(self, user_id: str) -> list[Row]:
        """The teams a user is a member of, each with the user's role in it."""
        sql = (
            "SELECT team_id, role FROM trigate_team_members WHERE user_id = ? "
            "ORDER BY created_at, team_id"
        )
        return await self._read(lambda cursor: cursor.query(sql, [user_id]))

    async def memberships(self, user_id: str) -> list[Row]:
        """A user's memberships, each with its role, limits and spend in the team."""
        sql = (
            "SELECT team_id, user_id, role, spend, max_budget, tpm_limit, rpm_limit "
            "FROM trigate_team_members WHERE user_id = ? ORDER BY created_at, team_id"
        )
        return await self._read(lambda cursor: cursor.query(sql, [user_id]))

    async def member(self, ident: str) -> Row | None:
        """The membership `member_ident` names, with its limits and spend in the team and
        `member_id` (the ident); None if the user is not in the team."""
        team_id, user_id = orjson.loads(ident)
        sql = (
            "SELECT team_id, user_id, role, spend, max_budget, tpm_limit, rpm_limit "
            "FROM trigate_team_members WHERE team_id = ? AND user_id = ?"
        )
        rows = await self._read(lambda cursor: cursor.query(sql, [team_id, user_id]))
        return {**rows[0], "member_id": ident} if rows else None

    async def set_member_limits(self, team_id: str, user_id: str, fields: Row) -> bool:
        """Change a membership's `MEMBER_LIMITS` (None: no limit)."""
        unknown = set(fields) - set(MEMBER_LIMITS)
        if unknown:
            raise ValueError(f"unknown membership columns: {sorted(unknown)}")
        if not fields:
            return True
        assignments = ", ".join(f"{c} = ?" for c in fields)
        sql = f"UPDATE trigate_team_members SET {assignments} WHERE team_id = ? AND user_id = ?"
        values = [*fields.values(), team_id, user_id]
        updated = bool(await self._run(lambda cursor: cursor.execute(sql, values)))
        self._changed(MEMBERS, [member_ident(team_id, user_id)])
        return updated

    async def add_members(self, members: Sequence[Row]) -> None:
        """Insert memberships in one transaction: all of them, or (a `Conflict`) none."""
        await self._insert_all("trigate_team_members", MEMBER_COLUMNS, members)
        # A key of the user in the team may be cached as having no membership.
        self._changed(MEMBERS, [member_ident(m["team_id"], m["user_id"]) for m in members])

    async def remove_member(self, team_id: str, user_id: str) -> bool:
        sql = "DELETE FROM trigate_team_members WHERE team_id = ? AND user_id = ?"
        removed = bool(await self._run(lambda cursor: cursor.execute(sql, [team_id, user_id])))
        self._changed(MEMBERS, [member_ident(team_id, user_id)])
        return removed

    async def set_member_role(self, team_id: str, user_id: str, role: str) -> bool:
        sql = "UPDATE trigate_team_members SET role = ? WHERE team_id = ? AND user_id = ?"
        return bool(await self._run(lambda cursor: cursor.execute(sql, [role, team_id, user_id])))

    # Budgets, organizations and their members (LiteLLM's tables).

    async def update_budget(self, budget_id: str, fields: Row, copied: Row) -> bool:
        """Write `fields` to a budget and, in the same transaction, `copied` (its limits as
        its customers and organizations carry them) to every row linked to it, so that no
        request is admitted under a mix of the old limits and the new. False if there is
        no such budget."""
        columns = _checked(BUDGETS, fields)
        assignments = ", ".join(f"{c} = ?" for c in columns)
        values = [*(_encode(c, fields[c]) for c in columns), budget_id]
        linked_columns = list(copied)
        linked = ", ".join(f"{c} = ?" for c in linked_columns)

        def work(cursor: Cursor) -> dict[str, list[str]] | None:
            sql = f"UPDATE {BUDGETS.table} SET {assignments} WHERE budget_id = ?"
            if not cursor.execute(sql, values):
                return None
            changed: dict[str, list[str]] = {}
            for owner in BUDGETED:
                _checked(owner, copied)
                rows = cursor.query(
                    f"SELECT {owner.primary} FROM {owner.table} WHERE budget_id = ?", [budget_id]
                )
                if rows and linked_columns:
                    cursor.execute(
                        f"UPDATE {owner.table} SET {linked} WHERE budget_id = ?",
                        [*(_encode(c, copied[c]) for c in linked_columns), budget_id],
                    )
                changed[owner.kind] = [row[owner.primary] for row in rows]
            return changed

        changed = await self._run(work)
        if changed is None:
            return False
        self._changed(BUDGETS.kind, [budget_id])
        for kind, keys in changed.items():
            self._changed(kind, keys)
        return True

    async def delete_organizations(self, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Delete organizations with their memberships, their teams, and those teams' keys
        and members, in one transaction, as LiteLLM's `/organization/delete` does: a team
        outliving its organization would escape the organization's limits. Returns the
        ids of the teams and the hashes of the keys deleted."""
        marks = ", ".join("?" * len(ids))
        values = list(ids)

        def work(cursor: Cursor) -> tuple[list[str], list[str]]:
            teams = [
                row["team_id"]
                for row in cursor.query(
                    f"SELECT team_id FROM {TEAMS.table} WHERE organization_id IN ({marks})", values
                )
            ]
            keys: list[str] = []
            if teams:
                team_marks = ", ".join("?" * len(teams))
                where = f"WHERE team_id IN ({team_marks})"
                keys = [
                    row[KEYS.primary]
                    for row in cursor.query(
                        f"SELECT {KEYS.primary} FROM {KEYS.table} {where}", teams
                    )
                ]
                cursor.execute(f"DELETE FROM {KEYS.table} {where}", teams)
                cursor.execute(f"DELETE FROM trigate_team_members {where}", teams)
                cursor.execute(f"DELETE FROM {TEAMS.table} {where}", teams)
            where = f"WHERE organization_id IN ({marks})"
            cursor.execute(f"DELETE FROM trigate_organization_members {where}", values)
            cursor.execute(f"DELETE FROM {ORGANIZATIONS.table} {where}", values)
            return teams, keys

        teams, keys = await self._run(work)
        self._changed(ORGANIZATIONS.kind, ids)
        self._changed(TEAMS.kind, teams)
        self._changed(KEYS.kind, keys)
        return teams, keys

    async def organization_members(self, organization_id: str) -> list[Row]:
        sql = (
            "SELECT organization_id, user_id, user_email, user_role, created_at, updated_at "
            "FROM trigate_organization_members WHERE organization_id = ? "
            "ORDER BY created_at, user_id"
        )
        return await self._read(lambda cursor: cursor.query(sql, [organization_id]))

    async def add_organization_members(self, members: Sequence[Row]) -> None:
        """Insert memberships in one transaction: all of them, or (a `Conflict`) none."""
        await self._insert_all("trigate_organization_members", ORGANIZATION_MEMBER_COLUMNS, members)

    async def _insert_all(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        """Insert `rows` in one transaction: all of them, or (a `Conflict`) none."""
        sql = _insert(table, columns)

        def work(cursor: Cursor) -> None:
            for row in rows:
                cursor.execute(sql, [row.get(c) for c in columns])

        await self._run(work)

    async def remove_organization_member(self, organization_id: str, user_id: str) -> bool:
        sql = "DELETE FROM trigate_organization_members WHERE organization_id = ? AND user_id = ?"
        return bool(await self._run(lambda cursor: cursor.execute(sql, [organization_id, user_id])))

    # Spend.

    async def record_spend(self, rows: Sequence[Row], also_users: Sequence[str] = ()) -> int:
        """Insert spend-log rows and add their cost to the key, team and user counters,
        and to each of `also_users` (the proxy budget's user, which every request spends).

        One transaction and one INSERT for the batch. A row already present (a batch
        retried after an unknown commit outcome) is not returned by the INSERT and adds
        nothing to the counters, so retrying is always safe. A value the database refuses
        fails the whole batch as a `Refused`, and writes nothing.
        """
        if not rows:
            return 0
        placeholders = "(" + ", ".join("?" * len(SPEND_COLUMNS)) + ")"
        insert = (
            f"INSERT INTO trigate_spend_logs ({', '.join(SPEND_COLUMNS)}) "
            f"VALUES {', '.join([placeholders] * len(rows))} "
            "ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
        )
        values = [value for row in rows for value in _spend_values(row)]

        def work(cursor: Cursor) -> int:
            inserted = {r["request_id"] for r in cursor.query(insert, values)}
            totals: dict[tuple[Owner, str], float] = {}
            for row in rows:
                if row["request_id"] not in inserted:
                    continue
                for owner in OWNERS:
                    if key := row.get(owner.spend_column):
                        totals[owner, key] = totals.get((owner, key), 0.0) + row["cost"]
                for user in also_users:
                    totals[USERS, user] = totals.get((USERS, user), 0.0) + row["cost"]
            for (owner, key), cost in totals.items():
                cursor.execute(
                    f"UPDATE {owner.table} SET spend = spend + ? WHERE {owner.primary} = ?",
                    [cost, key],
                )
            _add_member_spend(cursor, rows, inserted)
            return len(inserted)

        return await self._run(work)

    async def spend_logs(self, query: SpendFilter) -> list[Row]:
        where, values = _spend_where(query, "")
        sql = (
            f"SELECT * FROM trigate_spend_logs{where} ORDER BY start_time DESC "
            f"LIMIT {int(query.limit)}"
        )
        return [_decode(row) for row in await self._read(lambda c: c.query(sql, values))]

    async def spend_totals(self, query: SpendFilter) -> list[Row]:
        """Spend, requests and tokens per UTC day (YYYY-MM-DD), team, key, user and model
        group, each team with its alias: what LiteLLM's spend reports group by."""
        day = (
            "date(s.start_time, 'unixepoch')"
            if self.dialect == "sqlite"
            else "to_char(to_timestamp(s.start_time) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        )
        where, values = _spend_where(query, "s.")
        sql = (
            f"SELECT {day} AS day, s.team_id, t.team_alias, s.key_hash, s.user_id, "
            "s.model_group, SUM(s.cost) AS spend, COUNT(*) AS requests, "
            "SUM(s.prompt_tokens) AS prompt_tokens, SUM(s.completion_tokens) AS completion_tokens "
            f"FROM trigate_spend_logs s LEFT JOIN {TEAMS.table} t ON t.team_id = s.team_id{where} "
            "GROUP BY 1, s.team_id, t.team_alias, s.key_hash, s.user_id, s.model_group "
            "ORDER BY 1, s.team_id, s.key_hash, s.model_group"
        )
        rows = await self._read(lambda cursor: cursor.query(sql, values))
        return [{**row, "spend": float(row["spend"]), "requests": int(row["requests"]),
                 "prompt_tokens": int(row["prompt_tokens"]),
                 "completion_tokens": int(row["completion_tokens"])} for row in rows]  # fmt: skip

    async def next_budget_reset(self) -> float | None:
        """The earliest end of any budget window, so the resetter can sleep until then."""
        sql = " UNION ALL ".join(
            f"SELECT MIN(budget_reset_at) AS due FROM {owner.table}" for owner in OWNERS
        )
        rows = await self._read(lambda cursor: cursor.query(sql))
        due = [row["due"] for row in rows if row["due"] is not None]
        return min(due) if due else None

    async def reset_due_budgets(self, kind: str, now: float) -> int:
        """Zero the spend of every entity whose budget window has ended, and start its next."""
        owner = OWNER_OF_KIND[kind]
        name, primary = owner.table, owner.primary

        def work(cursor: Cursor) -> int:
            due = cursor.query(
                f"SELECT {primary}, budget_duration, budget_reset_at FROM {name} "
                "WHERE budget_reset_at IS NOT NULL AND budget_reset_at <= ?",
                [now],
            )
            for row in due:
                following = next_reset(row["budget_reset_at"], row["budget_duration"], now)
                cursor.execute(
                    f"UPDATE {name} SET spend = 0, budget_reset_at = ? WHERE {primary} = ?",
                    [following, row[primary]],
                )
            return len(due)

        return await self._run(work)

    # Stored responses (the Responses API's `store`).

    async def save_response(self, row: Row) -> bool:
        """Store a response under its id and owner; the owner's older row of the same id
        (an upstream that reused it) is replaced, another owner's is left alone. True
        when it replaced one, which the caller reports: the older is gone."""
        values = [_encode(c, row.get(c)) for c in RESPONSE_COLUMNS]
        owner = row.get("key_hash") or MASTER_OWNER
        marks = ", ".join("?" * (len(RESPONSE_COLUMNS) + 1))
        updates = ", ".join(f"{c} = excluded.{c}" for c in RESPONSE_COLUMNS if c != "response_id")
        sql = (
            f"INSERT INTO trigate_responses ({', '.join(RESPONSE_COLUMNS)}, owner) "
            f"VALUES ({marks}) ON CONFLICT (response_id, owner) DO UPDATE SET {updates}"
        )
        held = "SELECT 1 AS held FROM trigate_responses WHERE response_id = ? AND owner = ?"

        def work(cursor: Cursor) -> bool:
            replaced = bool(cursor.query(held, [row["response_id"], owner]))
            cursor.execute(sql, [*values, owner])
            return replaced

        return await self._run(work)

    async def response_chain(
        self,
        response_id: str,
        now: float,
        depth: int = MAX_RESPONSE_CHAIN,
        max_bytes: int | None = None,
        viewer: ResponseViewer | None = None,
    ) -> list[Row]:
        """The response and up to `depth` - 1 of those it continues, newest first, in one
        read; the chain stops at an expired or missing response (a deleted one). Each is
        the one `viewer` may see (its own first, then its team's, newest first; None: any
        owner's). Past `max_bytes` of stored JSON it is `ChainTooLarge`: a worker never
        holds more of a conversation than that to rebuild it."""
        clause, values = _viewer_clause(viewer)
        sql = (
            "SELECT * FROM trigate_responses WHERE response_id = ? AND expires_at > ?"
            f"{clause} LIMIT 1"
        )

        def work(cursor: Cursor) -> list[Row]:
            chain: list[Row] = []
            following: str | None = response_id
            held = 0
            while following is not None and len(chain) < depth:
                rows = cursor.query(sql, [following, now, *values])
                if not rows:
                    break
                held += _stored_size(rows[0])
                if max_bytes is not None and held > max_bytes:
                    raise ChainTooLarge(max_bytes)
                chain.append(_decode(rows[0]))
                following = rows[0]["previous_response_id"]
            return chain

        return await self._read(work)

    async def delete_response(self, response_id: str, key_hash: str | None = None) -> bool:
        """Delete the response `response_id` that `key_hash` (None: the master key) owns."""
        sql = "DELETE FROM trigate_responses WHERE response_id = ? AND owner = ?"
        values = [response_id, key_hash or MASTER_OWNER]
        return bool(await self._run(lambda cursor: cursor.execute(sql, values)))

    async def delete_expired_responses(self, now: float) -> int:
        sql = "DELETE FROM trigate_responses WHERE expires_at <= ?"
        return await self._run(lambda cursor: cursor.execute(sql, [now]))

    # Files and batches (trigate_managed_objects): each its owner's and its team's.

    async def save_managed(self, row: Row) -> None:
        """Store (or refresh) a file or batch: `kind`, `object_id`, `owner` (the key hash,
        `MASTER_OWNER` for the master key), `team_id`, who it bills (`key_identity`,
        `key_alias`, `user_id`, `organization_id`), `model_group`, `deployment_id`,
        `object` (the upstream's, as JSON) and `created_at`; a batch's output or error
        file, the `batch_id` it came from."""
        columns = [*MANAGED_COLUMNS, "object", "created_at"]
        values = [row.get(c) for c in MANAGED_COLUMNS]
        values += [orjson.dumps(row["object"]).decode(), row["created_at"]]
        marks = ", ".join("?" * len(columns))
        sql = (
            f"INSERT INTO trigate_managed_objects ({', '.join(columns)}) "
            f"VALUES ({marks}) ON CONFLICT (kind, object_id) "
            "DO UPDATE SET object = excluded.object"
        )
        await self._run(lambda cursor: cursor.execute(sql, values))

    async def managed(self, kind: str, object_id: str, viewer: ResponseViewer | None) -> Row | None:
        """A file or batch `viewer` may see (its key's or its team's; None: any), or None."""
        clause, values = _managed_clause(viewer)
        sql = f"SELECT * FROM trigate_managed_objects WHERE kind = ? AND object_id = ?{clause}"
        rows = await self._read(lambda cursor: cursor.query(sql, [kind, object_id, *values]))
        return _managed_row(rows[0]) if rows else None

    async def list_managed(
        self, kind: str, viewer: ResponseViewer | None, limit: int, after: str | None
    ) -> list[Row]:
        """`viewer`'s files or batches, newest first, up to `limit`, after the one named."""
        clause, values = _managed_clause(viewer)
        since = ""
        if after is not None:
            since = (
                " AND created_at < (SELECT created_at FROM trigate_managed_objects "
                "WHERE kind = ? AND object_id = ?)"
            )
            values = [*values, kind, after]
        sql = (
            f"SELECT * FROM trigate_managed_objects WHERE kind = ?{clause}{since} "
            "ORDER BY created_at DESC LIMIT ?"
        )
        rows = await self._read(lambda cursor: cursor.query(sql, [kind, *values, limit]))
        return [_managed_row(row) for row in rows]

    async def claim_billing(self, kind: str, object_id: str) -> bool:
        """Mark a batch billed; True for the one caller (of a whole fleet) that did."""
        sql = (
            "UPDATE trigate_managed_objects SET billed = ? "
            "WHERE kind = ? AND object_id = ? AND billed = ?"
        )
        values = [BILLED, kind, object_id, UNBILLED]
        return bool(await self._run(lambda cursor: cursor.execute(sql, values)))

    async def settle_unbilled(self, kind: str, object_id: str) -> bool:
        """Mark a batch settled without a bill (its upstream no longer knows it), so that
        nothing asks about it again; True for the one caller that did."""
        sql = (
            "UPDATE trigate_managed_objects SET billed = ? "
            "WHERE kind = ? AND object_id = ? AND billed = ?"
        )
        values = [SETTLED_UNBILLED, kind, object_id, UNBILLED]
        return bool(await self._run(lambda cursor: cursor.execute(sql, values)))

    async def delete_managed(self, kind: str, object_id: str) -> None:
        sql = "DELETE FROM trigate_managed_objects WHERE kind = ? AND object_id = ?"
        await self._run(lambda cursor: cursor.execute(sql, [kind, object_id]))

    # Deployments added through the admin API.

    async def stored_models(self) -> tuple[int, list[Row]]:
        """The models' version and every stored deployment, read together."""

        def work(cursor: Cursor) -> tuple[int, list[Row]]:
            version = cursor.query(_MODELS_VERSION)[0]["version"]
            rows = cursor.query("SELECT * FROM trigate_models ORDER BY created_at, model_id")
            return int(version), [_decode(row) for row in rows]

        return await self._read(work)

    async def models_version(self) -> int:
        """Bumped by every change to the stored deployments: what each process polls."""
        rows = await self._read(lambda cursor: cursor.query(_MODELS_VERSION))
        return int(rows[0]["version"])

    async def insert_model(self, row: Row) -> None:
        values = [_encode(c, row[c]) for c in MODEL_COLUMNS]
        sql = _insert("trigate_models", MODEL_COLUMNS)
        await self._run(_bumping(lambda cursor: cursor.execute(sql, values)))
        self._changed(MODELS, [row["model_id"]])

    async def update_model(self, row: Row) -> bool:
        columns = [c for c in MODEL_COLUMNS if c not in ("model_id", "created_at")]
        values = [*(_encode(c, row[c]) for c in columns), row["model_id"]]
        assignments = ", ".join(f"{c} = ?" for c in columns)
        sql = f"UPDATE trigate_models SET {assignments} WHERE model_id = ?"
        return self._model_changed(
            row["model_id"], await self._run(_bumping(lambda cursor: cursor.execute(sql, values)))
        )

    async def delete_model(self, model_id: str) -> bool:
        sql = "DELETE FROM trigate_models WHERE model_id = ?"
        return self._model_changed(
            model_id, await self._run(_bumping(lambda cursor: cursor.execute(sql, [model_id])))
        )

    def _model_changed(self, model_id: str, changed: int) -> bool:
        if changed:
            self._changed(MODELS, [model_id])
        return bool(changed)

    # The UI's session epochs (trigate.ui.sessions).

    async def session_epoch(self, identity: str) -> int:
        """The epoch `identity`'s current UI sessions carry: 0 until it first signs out."""
        sql = "SELECT epoch FROM trigate_ui_session_epochs WHERE identity = ?"
        rows = await self._read(lambda cursor: cursor.query(sql, [identity]))
        return int(rows[0]["epoch"]) if rows else 0

    async def end_sessions(self, identity: str) -> int:
        """Move `identity`'s epoch on, which ends every session it holds; the new one."""
        upsert = (
            "INSERT INTO trigate_ui_session_epochs (identity, epoch) VALUES (?, 1) "
            "ON CONFLICT (identity) DO UPDATE SET epoch = trigate_ui_session_epochs.epoch + 1"
        )
        read = "SELECT epoch FROM trigate_ui_session_epochs WHERE identity = ?"

        def work(cursor: Cursor) -> int:
            cursor.execute(upsert, [identity])
            return int(cursor.query(read, [identity])[0]["epoch"])

        return await self._run(work)

    # MCP servers added through the admin API (trigate.mcp_gateway).

    async def mcp_servers(self) -> list[Row]:
        sql = "SELECT * FROM trigate_mcp_servers ORDER BY created_at, server_id"
        return [_decode(row) for row in await self._read(lambda cursor: cursor.query(sql))]

    async def insert_mcp_server(self, row: Row) -> None:
        values = [_encode(c, row[c]) for c in MCP_SERVER_COLUMNS]
        sql = _insert("trigate_mcp_servers", MCP_SERVER_COLUMNS)
        await self._run(lambda cursor: cursor.execute(sql, values))
        self._changed(MCP_SERVERS, [row["server_id"]])

    async def update_mcp_server(self, row: Row) -> bool:
        columns = ("name", "definition", "updated_by", "updated_at")
        values = [*(_encode(c, row[c]) for c in columns), row["server_id"]]
        assignments = ", ".join(f"{c} = ?" for c in columns)
        sql = f"UPDATE trigate_mcp_servers SET {assignments} WHERE server_id = ?"
        changed = bool(await self._run(lambda cursor: cursor.execute(sql, values)))
        if changed:
            self._changed(MCP_SERVERS, [row["server_id"]])
        return changed

    async def delete_mcp_server(self, server_id: str) -> bool:
        sql = "DELETE FROM trigate_mcp_servers WHERE server_id = ?"
        changed = bool(await self._run(lambda cursor: cursor.execute(sql, [server_id])))
        if changed:
            self._changed(MCP_SERVERS, [server_id])
        return changed


MCP_SERVER_COLUMNS = (
    "server_id", "name", "definition", "created_by", "updated_by", "created_at", "updated_at",
)  # fmt: skip
MODEL_COLUMNS = (
    "model_id", "model_name", "litellm_params", "model_info", "created_at", "updated_at",
)  # fmt: skip
_MODELS_VERSION = "SELECT version FROM trigate_models_version"


def _bumping(write: Callable[[Cursor], int]) -> Callable[[Cursor], int]:
    """`write`, and in the same transaction, when it changed a row, the models' version."""

    def work(cursor: Cursor) -> int:
        changed = write(cursor)
        if changed:
            cursor.execute("UPDATE trigate_models_version SET version = version + 1")
        return changed

    return work


def next_reset(previous: float, duration: str | None, now: float) -> float | None:
    """The first window boundary after `now`, on the schedule that `previous` was on."""
    if not duration:
        return None
    seconds = parse_duration(duration)
    missed = int((now - previous) // seconds) + 1
    return previous + missed * seconds


def _add_member_spend(cursor: Cursor, rows: Sequence[Row], inserted: set[str]) -> None:
    """Add each request's cost to its user's membership of its team (LiteLLM's team
    member spend): a key bound to both a team and a user spends in that membership."""
    totals: dict[tuple[str, str], float] = {}
    for row in rows:
        team_id, user_id = row.get("team_id"), row.get("user_id")
        if team_id and user_id and row["request_id"] in inserted:
            totals[team_id, user_id] = totals.get((team_id, user_id), 0.0) + row["cost"]
    for (team_id, user_id), cost in totals.items():
        cursor.execute(
            "UPDATE trigate_team_members SET spend = spend + ? WHERE team_id = ? AND user_id = ?",
            [cost, team_id, user_id],
        )


def _migrate(cursor: Cursor) -> None:
    cursor.execute("CREATE TABLE IF NOT EXISTS trigate_schema (version INTEGER NOT NULL)")
    rows = cursor.query("SELECT MAX(version) AS version FROM trigate_schema")
    current = rows[0]["version"] or 0
    for version, statements in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        for step in statements:
            if isinstance(step, str):
                cursor.execute(step)
            else:
                step(cursor)
        cursor.execute("INSERT INTO trigate_schema (version) VALUES (?)", [version])


def _spend_where(query: SpendFilter, prefix: str) -> tuple[str, list[str | float]]:
    """The WHERE clause of a spend-log query; `prefix` qualifies its columns."""
    clauses: list[str] = []
    values: list[str | float] = []
    if query.request_id is not None:
        # LiteLLM's `request_id` is the id the client's answer carried (chatcmpl-...,
        # msg_..., resp_...), stored as every database takes it (`storable_text`: a long
        # one cut); the gateway's own id finds the row too.
        clauses.append(f"({prefix}request_id = ? OR {prefix}response_id = ?)")
        values += [query.request_id, storable_text(query.request_id) or ""]
    for column, value in (
        ("key_hash", query.key_hash),
        ("team_id", query.team_id),
        ("user_id", query.user_id),
    ):
        if value is not None:
            clauses.append(f"{prefix}{column} = ?")
            values.append(value)
    if query.start is not None:
        clauses.append(f"{prefix}start_time >= ?")
        values.append(query.start)
    if query.end is not None:
        clauses.append(f"{prefix}start_time < ?")
        values.append(query.end)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), values


def _checked(owner: Owner, row: Row) -> list[str]:
    unknown = set(row) - owner.columns
    if unknown:
        raise ValueError(f"unknown {owner.kind} columns: {sorted(unknown)}")
    return list(row)


def _insert(table: str, columns: Sequence[str]) -> str:
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def _where(owner: Owner, where: dict[str, Any]) -> tuple[str, list[Any]]:
    columns = _checked(owner, where)
    if not columns:
        return "", []
    return " WHERE " + " AND ".join(f"{c} = ?" for c in columns), [where[c] for c in columns]


# What a row that leaves out a NOT NULL column holds: a spend row from before the
# response cache, or from a path that has no cache, was no hit.
_DEFAULTS = {"cache_hit": 0}


def _encode(column: str, value: Any) -> Any:
    if value is None and column in _DEFAULTS:
        return _DEFAULTS[column]
    if column in JSON_COLUMNS:
        return orjson.dumps(
            value if value is not None else ([] if column in _LIST_COLUMNS else {})
        ).decode()
    if column in BOOL_COLUMNS and value is not None:
        return int(bool(value))
    return value


# The spend columns `_encode` changes (JSON, booleans, defaults), by their place in a
# row: every other column is written as it is.
_ENCODED_SPEND_COLUMNS = tuple(
    (index, column)
    for index, column in enumerate(SPEND_COLUMNS)
    if column in JSON_COLUMNS or column in BOOL_COLUMNS or column in _DEFAULTS
)


def _spend_values(row: Row) -> list[Any]:
    """A spend row's values in `SPEND_COLUMNS` order, as `_encode` writes them: the
    columns are read in C, and only the few it changes go through it (a request's row
    otherwise cost a Python call per column)."""
    values = list(map(row.get, SPEND_COLUMNS))
    for index, column in _ENCODED_SPEND_COLUMNS:
        try:
            values[index] = _encode(column, values[index])
        except orjson.JSONEncodeError as error:
            values[index] = _unstorable(row, column, error)
    return values


def _unstorable(row: Row, column: str, error: orjson.JSONEncodeError) -> str:
    """What a spend row holds in place of a JSON field that cannot be written (a client's
    metadata nested deeper than orjson writes, 254 levels), which says why: the row, its
    tokens and its cost are written still. A row that failed its batch would be kept for
    retry and fail it again, and every row queued behind it with it: no spend would be
    recorded again."""
    logger.warning(
        "spend row %s: its `%s` is stored as a note, not as sent: %s",
        row.get("request_id"), column, error,
    )  # fmt: skip
    return orjson.dumps({"trigate_not_stored": f"not storable as JSON: {error}"}).decode()


def _viewer_clause(viewer: ResponseViewer | None) -> tuple[str, list[Any]]:
    """The WHERE and ORDER BY of a stored response `viewer` may see: its own first."""
    mine = "CASE WHEN owner = ? THEN 0 ELSE 1 END, created_at DESC"
    if viewer is None:
        return " ORDER BY created_at DESC", []
    owner = viewer.key_hash or MASTER_OWNER
    if viewer.team_id is None:
        return " AND owner = ? ORDER BY created_at DESC", [owner]
    return f" AND (owner = ? OR team_id = ?) ORDER BY {mine}", [owner, viewer.team_id, owner]


MANAGED_COLUMNS = (
    "kind", "object_id", "owner", "team_id", "key_identity", "key_alias", "user_id",
    "organization_id", "model_group", "deployment_id", "batch_id",
)  # fmt: skip


def _managed_clause(viewer: ResponseViewer | None) -> tuple[str, list[Any]]:
    """The WHERE of the files and batches `viewer` may see: its key's, and its team's."""
    if viewer is None:
        return "", []
    owner = viewer.key_hash or MASTER_OWNER
    if viewer.team_id is None:
        return " AND owner = ?", [owner]
    return " AND (owner = ? OR team_id = ?)", [owner, viewer.team_id]


def _managed_row(row: Row) -> Row:
    if isinstance(row["object"], str):
        row["object"] = orjson.loads(row["object"])
    return row


def _stored_size(row: Row) -> int:
    """A stored response's JSON columns' size as read (text, before decoding)."""
    return sum(len(row[c]) for c in ("response", "input_items") if isinstance(row[c], str | bytes))


def _decode(row: Row) -> Row:
    for column in JSON_COLUMNS & row.keys():
        if isinstance(row[column], str):
            row[column] = orjson.loads(row[column])
    for column in BOOL_COLUMNS & row.keys():
        row[column] = bool(row[column])
    return row

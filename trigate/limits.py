"""Limits checked on every request before any upstream call: models, budgets and rates.

Rates (`rpm_limit`, `tpm_limit`, `max_parallel_requests`) hold for a key and
for its team, in fixed one-minute windows kept in this process's memory.
TPM admits a request on its prompt tokens and settles the actual usage
afterwards. Budgets work the same way in money: a request reserves the most it
may cost when admitted and settles its actual cost when it ends (`Budgets`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.errors import GatewayError
from trigate.store import OWNER_OF_KIND, Row, next_reset

WINDOW = 60.0


class ModelNotAllowed(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(GatewayError):
    """LiteLLM's answer, kept for drop-in clients: 400 `budget_exceeded`. A 429 would make
    the OpenAI SDK retry a request that cannot succeed until the budget resets."""

    status = 400
    type = "budget_exceeded"
    code = "budget_exceeded"


def check_model(caller: Caller, group: str, param: str = "model") -> None:
    """A key's, its team's and its user's `models`; an empty list allows every model."""
    for owner, row in (("key", caller.key), ("team", caller.team), ("user", caller.user)):
        allowed = (row or {}).get("models") or []
        if not _allowed(allowed, group):
            raise ModelNotAllowed(
                f"This {owner} may not use model `{group}`. Allowed: {', '.join(allowed)}.",
                param=param,
            )


def allows_model(caller: Caller, group: str) -> bool:
    return all(
        _allowed((row or {}).get("models") or [], group)
        for row in (caller.key, caller.team, caller.user)
    )


def _allowed(allowed: list[str], group: str) -> bool:
    """An entry may be a pattern, as in LiteLLM: `*` allows every model, `anthropic/*`
    every model a wildcard deployment serves under that prefix."""
    if not allowed or group in allowed:
        return True
    return any("*" in entry and fnmatchcase(group, entry) for entry in allowed)


@dataclass(slots=True)
class _Account:
    """One key's, team's or user's spend in its current budget window, as this process
    knows it: the store's spend when `row` was read, plus what was billed here since."""

    row: Row
    spent: float
    window_end: float | None
    reserved: float = 0.0


@dataclass
class Reservation:
    """What an admitted request may still cost each budget it counts against; settled
    (or released) exactly once, when the request ends."""

    holds: list[tuple[_Account, float]]
    _done: bool = False

    def settle(self, cost: float) -> None:
        """Release the reservation and bill the request's actual cost."""
        if self._done:
            return
        self._done = True
        for account, amount in self.holds:
            account.reserved -= amount
            account.spent += cost


class Budgets:
    """Per-owner spend and reservations, authoritative in this process.

    A cached row goes stale: a ledger flush moves cost out of "unflushed" into the
    store's `spend`, which the cached row never sees. So each owner's spend is taken
    from the store once per fresh row (its `spend` plus what this process has not
    yet flushed) and then only grows by what this process bills. An admitted request
    reserves its most expensive outcome, capped at what remains of each budget, so
    concurrent requests cannot together overshoot; it settles its actual cost when it
    ends. Other processes' spend arrives with the next fresh row (the cache's TTL).
    """

    def __init__(self) -> None:
        self._accounts: dict[tuple[str, str], _Account] = {}

    def reserve(
        self, caller: Caller, max_cost: float, unflushed: Callable[[str, str], float]
    ) -> Reservation:
        """Reserve up to `max_cost` against every budget of the caller, or refuse with
        `budget_exceeded` when one is already spent or reserved in full."""
        now = wall_time()
        budgeted = [
            (table, row, self._account(table, row, now, unflushed))
            for table, row in _budgeted_rows(caller)
        ]
        for table, row, account in budgeted:
            if account.spent + account.reserved >= row["max_budget"] - EXHAUSTED:
                raise _exceeded(table, row, account, now)
        holds = []
        for _, row, account in budgeted:
            amount = min(max_cost, row["max_budget"] - account.spent - account.reserved)
            account.reserved += amount
            holds.append((account, amount))
        return Reservation(holds)

    def needed(self, caller: Caller) -> bool:
        """Whether any budget binds the caller, so pricing its request is worth the work."""
        return next(_budgeted_rows(caller), None) is not None

    def _account(
        self, table: str, row: Row, now: float, unflushed: Callable[[str, str], float]
    ) -> _Account:
        owner = (table, row[OWNER_OF_KIND[table].primary])
        account = self._accounts.get(owner)
        if account is None or account.row is not row:
            fresh = _Account(
                row, current_spend(row, now) + unflushed(*owner), _window_end(row, now)
            )
            fresh.reserved = account.reserved if account is not None else 0.0
            self._accounts[owner] = account = fresh
        elif account.window_end is not None and account.window_end <= now:
            account.spent = 0.0
            account.window_end = next_reset(account.window_end, row.get("budget_duration"), now)
        return account


# Below a billionth of a dollar left, a budget is spent: float sums of costs rarely land
# exactly on `max_budget`.
EXHAUSTED = 1e-9


def _budgeted_rows(caller: Caller) -> Iterator[tuple[str, Row]]:
    for table, row in (("keys", caller.key), ("teams", caller.team), ("users", caller.user)):
        if row is not None and row.get("max_budget") is not None:
            yield table, row


def _window_end(row: Row, now: float) -> float | None:
    """When the row's budget window ends; a window already over has been succeeded."""
    reset_at = row.get("budget_reset_at")
    if reset_at is not None and reset_at <= now:
        return next_reset(reset_at, row.get("budget_duration"), now)
    return reset_at


def _exceeded(table: str, row: Row, account: _Account, now: float) -> BudgetExceeded:
    owner = table.removesuffix("s")
    in_flight = (
        f" (+{account.reserved:.6f} reserved by requests in flight)" if account.reserved else ""
    )
    # LiteLLM's wording leads: clients match on "Budget has been exceeded!".
    return BudgetExceeded(
        f"Budget has been exceeded! Current cost: {account.spent:.6f}{in_flight}, "
        f"Max budget: {row['max_budget']:.6f} (this {owner}'s)" + _reset_note(row, now)
    )


def requested_output_tokens(body: dict[str, Any]) -> int | None:
    """The output limit a request sets itself: OpenAI's `max_completion_tokens` or
    `max_tokens` (Anthropic's `max_tokens` arrives translated to the latter)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def current_spend(row: Row, now: float) -> float:
    """Spend in the current budget window; a window that has ended counts as reset."""
    reset_at = row.get("budget_reset_at")
    if reset_at is not None and reset_at <= now:
        return 0.0
    return float(row.get("spend") or 0.0)


def _reset_note(row: Row, now: float) -> str:
    reset_at = row.get("budget_reset_at")
    return f"; it resets in {math.ceil(reset_at - now)} s." if reset_at else "."


@dataclass
class _Window:
    minute: int = -1
    requests: int = 0
    tokens: int = 0
    in_flight: int = 0

    def roll(self, now: float) -> None:
        minute = int(now // WINDOW)
        if minute != self.minute:
            self.minute, self.requests, self.tokens = minute, 0, 0


@dataclass
class _Scope:
    """One key's or team's limits and its current window."""

    name: str
    rpm: int | None
    tpm: int | None
    parallel: int | None
    window: _Window


@dataclass
class Admission:
    """A request let in: its reserved tokens, settled or released when it ends."""

    scopes: list[_Scope]
    reserved_tokens: int
    headers: dict[str, str] = field(default_factory=dict)
    _done: bool = False

    def finish(self, actual_tokens: int) -> None:
        """The request ended: free its parallel slot and correct TPM to actual usage."""
        if self._done:
            return
        self._done = True
        now = wall_time()
        for scope in self.scopes:
            scope.window.in_flight -= 1
            if scope.window.minute == int(now // WINDOW):
                scope.window.tokens += actual_tokens - self.reserved_tokens


class RateLimits:
    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    async def admit(self, caller: Caller, prompt_tokens: Callable[[], Awaitable[int]]) -> Admission:
        scopes = self._scopes(caller)
        if not scopes:
            return Admission([], 0)
        now = wall_time()
        tokens = await prompt_tokens() if any(s.tpm is not None for s in scopes) else 0
        for scope in scopes:
            scope.window.roll(now)
            _check(scope, tokens, now)
        for scope in scopes:
            scope.window.requests += 1
            scope.window.tokens += tokens
            scope.window.in_flight += 1
        return Admission(scopes, tokens, _headers(scopes[0], now))

    def _scopes(self, caller: Caller) -> list[_Scope]:
        scopes = []
        for kind, row, ident in (
            ("key", caller.key, caller.key_hash),
            ("team", caller.team, caller.team_id),
        ):
            if row is None or ident is None:
                continue
            rpm, tpm, parallel = (
                row.get("rpm_limit"),
                row.get("tpm_limit"),
                row.get("max_parallel_requests"),
            )
            if rpm is None and tpm is None and parallel is None:
                continue
            window = self._windows.setdefault(f"{kind}:{ident}", _Window())
            scopes.append(_Scope(kind, rpm, tpm, parallel, window))
        return scopes


def _check(scope: _Scope, tokens: int, now: float) -> None:
    window = scope.window
    retry_after = str(max(1, math.ceil(WINDOW - now % WINDOW)))
    if scope.rpm is not None and window.requests + 1 > scope.rpm:
        raise RateLimited(
            f"This {scope.name} is over its rpm_limit of {scope.rpm} requests per minute.",
            headers={"retry-after": retry_after},
        )
    if scope.tpm is not None and window.tokens + tokens > scope.tpm:
        raise RateLimited(
            f"This {scope.name} is over its tpm_limit of {scope.tpm} tokens per minute.",
            headers={"retry-after": retry_after},
        )
    if scope.parallel is not None and window.in_flight + 1 > scope.parallel:
        raise RateLimited(
            f"This {scope.name} already has {scope.parallel} requests in flight, "
            "its max_parallel_requests.",
            headers={"retry-after": "1"},
        )


def _headers(scope: _Scope, now: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the key's own limits (else its team's)."""
    reset = f"{max(1, math.ceil(WINDOW - now % WINDOW))}s"
    headers = {}
    if scope.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(scope.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(scope.rpm - scope.window.requests, 0))
        headers["x-ratelimit-reset-requests"] = reset
    if scope.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(scope.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(scope.tpm - scope.window.tokens, 0))
        headers["x-ratelimit-reset-tokens"] = reset
    return headers

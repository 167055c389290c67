"""Limits checked on every request before any upstream call: models, budgets and rates.

Rates (`rpm_limit`, `tpm_limit`, `max_parallel_requests`) hold for a key and
for its team, in fixed one-minute windows kept in this process's memory.
TPM admits a request on its prompt tokens and settles the actual usage
afterwards. Budgets compare spend (the store's, plus what this process has
billed but not yet flushed) with `max_budget` for the current window.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.errors import GatewayError

WINDOW = 60.0
Row = dict[str, Any]


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
    return not allowed or group in allowed or "*" in allowed


def check_budgets(caller: Caller, unflushed: Callable[[str, str], float]) -> None:
    now = wall_time()
    for table, row in (("keys", caller.key), ("teams", caller.team), ("users", caller.user)):
        if row is None or row.get("max_budget") is None:
            continue
        primary = {"keys": "token_hash", "teams": "team_id", "users": "user_id"}[table]
        spend = current_spend(row, now) + unflushed(table, row[primary])
        if spend >= row["max_budget"]:
            owner = table.removesuffix("s")
            raise BudgetExceeded(
                f"This {owner}'s budget is exhausted: spend {spend:.6f} of max_budget "
                f"{row['max_budget']:.6f}" + _reset_note(row, now)
            )


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

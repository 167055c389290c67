"""Limits checked on every request before any upstream call: models, budgets and rates.

Rates (`rpm_limit`, `tpm_limit`, `max_parallel_requests`) hold for a key, its
team and its user (and the user's membership of the team: LiteLLM's per-member
limits), in fixed one-minute windows. TPM admits a request on its
prompt tokens and settles the actual usage afterwards. Budgets work the same
way in money: a request reserves the most it may cost when admitted and
settles its actual cost when it ends.

With Redis (see `trigate.fleet`) every window, parallel slot and budget counter
is the fleet's: one Lua script (trigate/lua/limits.lua) checks and takes them all for a request, or
settles them, atomically; requests that arrive together share a call, so each
costs at most one round trip to admit and one to settle. Parallel slots and
budget reservations are leases that expire on their own, so a worker that dies
holding them does not hold them for ever. Without Redis, or while it does not
answer, each worker keeps its own windows and enforces its share of every rate
limit.
"""

from __future__ import annotations

import functools
import itertools
import math
import secrets
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import trio

from trigate import lua
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.errors import GatewayError, echoed
from trigate.fleet import Fleet, RedisUnavailable
from trigate.proxy_budget import PROXY_BUDGET_USER
from trigate.store import MEMBERS, OWNER_OF_KIND, Row, next_reset

WINDOW = 60.0
# How long a parallel slot or a budget reservation outlives a worker that died holding
# it: the longest a request may run (a deployment's default timeout).
LEASE_TTL = 600.0
# Budget counters are rebuilt from the store when they expire, so idle ones may go.
BUDGET_TTL = 3600
# Settles kept for a Redis that did not answer them.
MAX_UNSETTLED = 100_000
# Below a billionth of a dollar left, a budget is spent: float sums of costs rarely land
# exactly on `max_budget`.
EXHAUSTED = 1e-9
# Keys whose limits `Limits` keeps found; past it, it starts over (as the key cache does).
MAX_BOUND = 100_000

Unflushed = Callable[[str, str], float]


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


# The model access groups (LiteLLM's `model_info.access_groups`) a model name belongs to:
# `ModelGroups.access.covering` of the model list being served.
Covering = Callable[[str], frozenset[str]]


# LiteLLM's entry in a user's `models` that allows no model outside a team: a user made
# by SSO sign-in gets it unless `default_internal_user_params` names models.
NO_DEFAULT_MODELS = "no-default-models"


def check_model(caller: Caller, group: str, covering: Covering, param: str = "model") -> None:
    """A key's, its team's, its user's and its organization's `models`; an empty list
    allows every model."""
    for owner, row in (
        ("key", caller.key),
        ("team", caller.team),
        ("user", caller.user),
        ("organization", caller.organization),
    ):
        allowed = binding_models(caller, row)
        if not allowed_by(allowed, group, covering):
            granted = ", ".join(m for m in allowed if m != NO_DEFAULT_MODELS)
            raise ModelNotAllowed(
                f"This {owner} may not use model `{group}`. Allowed: "
                f"{granted or 'no model outside a team, until an admin grants models'}.",
                param=param,
            )


def allows_model(caller: Caller, group: str, covering: Covering) -> bool:
    return all(
        allowed_by(binding_models(caller, row), group, covering)
        for row in (caller.key, caller.team, caller.user, caller.organization)
    )


def allows_access_group(caller: Caller, access_group: str) -> bool:
    """Whether the key, its team, its user and its organization may each use every model
    of `access_group`: their lists are empty, allow every model (`*`), or name the group."""
    return all(
        not allowed or access_group in allowed or "*" in allowed
        for allowed in (
            binding_models(caller, row)
            for row in (caller.key, caller.team, caller.user, caller.organization)
        )
    )


def binding_models(caller: Caller, row: Row | None) -> list[str]:
    """The `models` of `row` that bind `caller` (empty: every model). With LiteLLM's
    `no-default-models`, a caller in a team is bound by its other entries only (the
    team's list governs), and one outside a team by them, or by nothing allowed."""
    allowed: list[str] = (row or {}).get("models") or []
    if NO_DEFAULT_MODELS not in allowed:
        return allowed
    others = [m for m in allowed if m != NO_DEFAULT_MODELS]
    if caller.team is not None or others:
        return others
    return [NO_DEFAULT_MODELS]  # names no model group: nothing is allowed


def allowed_by(allowed: list[str], group: str, covering: Covering) -> bool:
    """An entry may be a pattern, as in LiteLLM: `*` allows every model, `anthropic/*`
    every model a wildcard deployment serves under that prefix; or the name of a model
    access group, which allows every model of the group. The groups are looked up only
    when nothing else allowed the model."""
    if not allowed or group in allowed:
        return True
    if any("*" in entry and fnmatchcase(group, entry) for entry in allowed):
        return True
    return not covering(group).isdisjoint(allowed)


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


# --- What binds a caller -------------------------------------------------------------


@dataclass(slots=True)
class _Rates:
    """One key's, team's or user's rate limits; None where unlimited."""

    kind: str
    ident: str
    rpm: int | None
    tpm: int | None
    parallel: int | None


@dataclass(slots=True)
class _Budget:
    """One key's, team's or user's budget in its current window."""

    kind: str
    ident: str
    row: Row
    window_end: float | None


def _rates_of(caller: Caller) -> list[_Rates]:
    rates = []
    organization = caller.organization
    member = caller.member
    for kind, row, ident in (
        ("key", caller.key, caller.key_hash),
        ("team", caller.team, caller.team_id),
        ("user", caller.user, caller.user_id),
        ("organization", organization, organization["organization_id"] if organization else None),
        ("customer", caller.end_user, caller.end_user_id),
        ("team member", member, member["member_id"] if member is not None else None),
    ):
        if row is None or ident is None:
            continue
        rpm, tpm, parallel = (
            row.get("rpm_limit"),
            row.get("tpm_limit"),
            row.get("max_parallel_requests"),
        )
        if rpm is not None or tpm is not None or parallel is not None:
            rates.append(_Rates(kind, ident, rpm, tpm, parallel))
    return rates


def _budgeted_rows(caller: Caller) -> Iterator[tuple[str, Row]]:
    for kind, row in (
        ("keys", caller.key),
        ("teams", caller.team),
        ("users", caller.user),
        ("organizations", caller.organization),
        ("customers", caller.end_user),
        (MEMBERS, caller.member),
    ):
        if row is not None and row.get("max_budget") is not None:
            yield kind, row


def _budgets_of(budgeted: list[tuple[str, Row]], now: float) -> list[_Budget]:
    return [
        _Budget(kind, _budget_ident(kind, row), row, _window_end(row, now))
        for kind, row in budgeted
    ]


def _budget_ident(kind: str, row: Row) -> str:
    """The id a budget is counted under: its owner's, or a membership's (`member_ident`)."""
    return str(row["member_id"] if kind == MEMBERS else row[OWNER_OF_KIND[kind].primary])


def _window_end(row: Row, now: float) -> float | None:
    """When the row's budget window ends; a window already over has been succeeded."""
    reset_at = row.get("budget_reset_at")
    if reset_at is not None and reset_at <= now:
        return next_reset(reset_at, row.get("budget_duration"), now)
    return reset_at


# --- Admission -----------------------------------------------------------------------


class Admission:
    """A request let in: what it took, given back or settled exactly once when it ends."""

    __slots__ = ("headers",)

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = headers if headers is not None else {}

    @property
    def unsettled(self) -> bool:
        """Whether it still holds something `settle` gives back: a request that settled
        (or took nothing) needs no shielded call to release it."""
        return False

    @property
    def settles_at_once(self) -> bool:
        """Whether `settle` finishes without a checkpoint (no Redis, no lease to give
        back), so that a caller need not shield it from cancellation. False unless a
        subclass knows better: an admission recorded unshielded that did wait could be
        cut short by a departing client, and its cost never billed."""
        return False

    async def settle(self, tokens: int, cost: float) -> None:
        """The request ended having used `tokens` and cost `cost`: free its parallel
        slots, correct TPM to actual usage, bill the cost and release the reservation."""


# A key's rows (key, team, user) as read, their rate limits, and their rows with a budget.
_Binding = tuple[tuple[Row | None, ...], list[_Rates], list[tuple[str, Row]]]


class _Unlimited(Admission):
    """What a caller no limit binds takes: nothing, so there is nothing to wait for."""

    @property
    def settles_at_once(self) -> bool:
        return True


# A caller no limit binds takes nothing, so one admission serves them all.
UNLIMITED = _Unlimited()


class Limits:
    """Every rate limit and budget of keys, teams and users, for one worker.

    Its windows and budgets of its own (`_LocalLimits`) live as long as the worker; its
    side of the fleet's (`FleetLimits`) belongs to one Redis link, and a reload that
    changes the Redis settings gives it a new one (`link`, then `follow`). A request
    settles with the side that admitted it."""

    def __init__(self, fleet: Fleet, unflushed: Unflushed) -> None:
        self._unflushed = unflushed
        self._local = _LocalLimits(fleet)
        self.fleet = fleet
        self.fleet_limits = self.link(fleet)
        # Per key: its rows as last read (compared by identity), their rate limits and
        # their rows with a budget. The key cache hands out the same rows until they are
        # read again, so these are found once per read rather than once per request.
        self._bound: dict[str, _Binding] = {}

    def link(self, fleet: Fleet) -> FleetLimits:
        """This worker's side of `fleet`'s limits; call it before `fleet` runs, so that
        each connection to its Redis restores what was lost meanwhile."""
        side = FleetLimits(fleet)
        fleet.on_restore(functools.partial(self._restore, side))
        return side

    def follow(self, side: FleetLimits) -> None:
        """Admit new requests through `side` (a reload's new Redis link)."""
        self.fleet = self._local.fleet = side.fleet
        self.fleet_limits = side

    async def run(self, side: FleetLimits | None = None) -> None:
        """Carry requests' admissions and settles to Redis (through `side`, by default the
        current one); run it in the background."""
        side = side or self.fleet_limits
        if side.fleet.configured:
            await side.run()

    @staticmethod
    def budget_keys(fleet: Fleet, kind: str, ident: str) -> list[str]:
        """The Redis keys of an owner's budget: dropped when its row changes (a new
        `max_budget` or `spend`), to be rebuilt from the store."""
        return [fleet.key("budget", kind, ident), fleet.key("holds", kind, ident)]

    async def _restore(self, side: FleetLimits) -> None:
        """Redis is reached (again): settle what it did not confirm, and bill its budget
        counters for what this worker's local admissions spent while it was away.
        Counters Redis lost come back from the store's spend at their next admission
        (their floor)."""
        await side.settle_unconfirmed()
        missed = self._local.missed
        fleet = side.fleet
        client = fleet.client
        for (kind, ident), cost in list(missed.items()):
            await client.hincrbyfloat(fleet.key("budget", kind, ident), "spent", cost)
            del missed[kind, ident]

    async def admit(
        self,
        caller: Caller,
        prompt_tokens: Callable[[], Awaitable[int]],
        max_cost: Callable[[], Awaitable[float]],
        proxy: Row | None = None,
    ) -> Admission:
        """Check and take the caller's rates and budgets in one step, or refuse with
        `rate_limit_exceeded` or `budget_exceeded` having taken nothing. `max_cost` is
        asked only when a budget binds the caller. `proxy` is the proxy budget's user
        (trigate/proxy_budget.py), whose budget binds every caller."""
        rates, budgeted = self._binding(caller)
        if not rates and not budgeted and proxy is None:
            return UNLIMITED
        now = wall_time()
        budgets = _budgets_of(budgeted, now) if budgeted else []
        if proxy is not None and proxy.get("max_budget") is not None:
            budgets.append(_Budget("users", proxy["user_id"], proxy, _window_end(proxy, now)))
        tokens = await prompt_tokens() if any(r.tpm is not None for r in rates) else 0
        most = await max_cost() if budgets else 0.0
        orphan = None
        side = self.fleet_limits
        if side.fleet.reachable:
            lease = side.lease(rates, budgets, self._bases(budgets, now), now)
            try:
                return await side.admit(lease, tokens, most, now)
            except RedisUnavailable:
                orphan = (side, lease)  # the script may have run: undo it later
        return self._local.admit(rates, budgets, tokens, most, now, self._unflushed, orphan)

    def _binding(self, caller: Caller) -> tuple[list[_Rates], list[tuple[str, Row]]]:
        """The caller's rate limits and budgeted rows, found again only when its rows
        are not the ones they were found from."""
        # Every row `_rates_of` and `_budgeted_rows` read: a request's end user and its
        # key's organization bind it as its key, team and user do.
        rows = (
            caller.key, caller.team, caller.user, caller.organization, caller.end_user,
            caller.member,
        )  # fmt: skip
        ident = caller.key_hash or ""
        found = self._bound.get(ident)
        if found is not None and all(a is b for a, b in zip(found[0], rows, strict=True)):
            return found[1], found[2]
        rates, budgeted = _rates_of(caller), list(_budgeted_rows(caller))
        if len(self._bound) >= MAX_BOUND:
            self._bound.clear()
        self._bound[ident] = (rows, rates, budgeted)
        return rates, budgeted

    def _bases(self, budgets: list[_Budget], now: float) -> list[float]:
        """What the store says each budget has spent, with this worker's unflushed cost:
        never more than the truth, so a shared counter is raised to it, never lowered."""
        return [current_spend(b.row, now) + self._unflushed(b.kind, b.ident) for b in budgets]


def _rate_limited(rates: _Rates, what: str, now: float) -> RateLimited:
    if what == "parallel":
        return RateLimited(
            f"This {rates.kind} already has {rates.parallel} requests in flight, "
            "its max_parallel_requests.",
            headers={"retry-after": "1"},
        )
    retry_after = str(max(1, math.ceil(WINDOW - now % WINDOW)))
    if what == "rpm":
        message = f"This {rates.kind} is over its rpm_limit of {rates.rpm} requests per minute."
    else:
        message = f"This {rates.kind} is over its tpm_limit of {rates.tpm} tokens per minute."
    return RateLimited(message, headers={"retry-after": retry_after})


def _budget_exceeded(budget: _Budget, spent: float, reserved: float, now: float) -> BudgetExceeded:
    if budget.kind == "customers":
        return end_user_over_budget(budget.ident, spent, reserved, budget.row["max_budget"])
    owner = "team member" if budget.kind == MEMBERS else budget.kind.removesuffix("s")
    if budget.ident == PROXY_BUDGET_USER and budget.kind == "users":
        owner = "proxy"  # litellm_settings.max_budget
    in_flight = f" (+{reserved:.6f} reserved by requests in flight)" if reserved > 0 else ""
    reset_at = budget.row.get("budget_reset_at")
    note = f"; it resets in {math.ceil(reset_at - now)} s." if reset_at else "."
    if owner == "key":
        # Both of LiteLLM's wordings for a key's budget, which clients match on: its
        # `BudgetExceededError`'s, and the older check's `ExceededTokenBudget`.
        return BudgetExceeded(
            f"Budget has been exceeded! ExceededTokenBudget: Current spend for token: "
            f"{spent:.6f}{in_flight}; Max Budget for Token: {budget.row['max_budget']:.6f}{note}"
        )
    # LiteLLM's wording leads: clients match on "Budget has been exceeded!".
    return BudgetExceeded(
        f"Budget has been exceeded! Current cost: {spent:.6f}{in_flight}, "
        f"Max budget: {budget.row['max_budget']:.6f} (this {owner}'s){note}"
    )


def end_user_over_budget(ident: str, spent: float, reserved: float, limit: float) -> BudgetExceeded:
    """LiteLLM's words for a customer over budget, which its clients match on."""
    in_flight = f" (+{reserved:.6f} reserved by requests in flight)" if reserved > 0 else ""
    return BudgetExceeded(
        f"ExceededBudget: End User={echoed(ident)} over budget. Spend={spent:.6f}{in_flight}, "
        f"Budget={limit:.6f}"
    )


def _headers(rates: _Rates, requests: int, tokens: int, now: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the key's own limits (else its team's, its
    user's), from the window's counts once this request is taken."""
    reset = f"{max(1, math.ceil(WINDOW - now % WINDOW))}s"
    headers = {}
    if rates.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(rates.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(rates.rpm - requests, 0))
        headers["x-ratelimit-reset-requests"] = reset
    if rates.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(rates.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(rates.tpm - tokens, 0))
        headers["x-ratelimit-reset-tokens"] = reset
    return headers


# --- This worker's own windows and budgets: no Redis, or Redis away -------------------


@dataclass(slots=True)
class _Window:
    minute: int = -1
    requests: int = 0
    tokens: int = 0
    in_flight: int = 0

    def roll(self, minute: int) -> None:
        if minute != self.minute:
            self.minute, self.requests, self.tokens = minute, 0, 0


@dataclass(slots=True)
class _Account:
    """One owner's spend in its current budget window, as this worker knows it: the
    store's spend when `row` was read, plus what was billed here since."""

    owner: tuple[str, str]
    row: Row
    spent: float
    window_end: float | None
    reserved: float = 0.0


class _LocalAdmission(Admission):
    __slots__ = ("_done", "_holds", "_minute", "_missed", "_orphan", "_tokens", "_windows")

    def __init__(
        self,
        windows: list[_Window],
        tokens: int,
        minute: int,
        holds: list[tuple[_Account, float]],
        headers: dict[str, str],
        missed: defaultdict[tuple[str, str], float] | None,
        orphan: tuple[FleetLimits, _Lease] | None,
    ) -> None:
        super().__init__(headers)
        self._windows, self._tokens, self._minute = windows, tokens, minute
        self._holds, self._missed, self._orphan, self._done = holds, missed, orphan, False

    @property
    def unsettled(self) -> bool:
        return not self._done

    @property
    def settles_at_once(self) -> bool:
        return self._orphan is None

    async def settle(self, tokens: int, cost: float) -> None:
        if self._done:
            return
        self._done = True
        current = int(wall_time() // WINDOW) == self._minute
        for window in self._windows:
            window.in_flight -= 1
            if current:
                window.tokens += tokens - self._tokens
        for account, amount in self._holds:
            account.reserved -= amount
            account.spent += cost
            if self._missed is not None:
                self._missed[account.owner] += cost
        if self._orphan is not None:
            # An admission Redis did not confirm in time may still have taken leases
            # there; give them back now rather than when they expire.
            fleet_limits, lease = self._orphan
            await fleet_limits.release(lease)


class _LocalLimits:
    """Per-worker windows and budgets (today's behaviour with one worker).

    Each worker enforces its share of a rate limit (`Fleet.share`), so the shares of an
    instance's workers never add up past it. Budgets are not split: each owner's spend
    is taken from the store once per fresh row (its `spend` plus what this worker has not
    yet flushed) and then only grows by what this worker bills; other workers' spend
    arrives with the next fresh row (the key cache's TTL).
    """

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._windows: dict[tuple[str, str], _Window] = {}
        self._accounts: dict[tuple[str, str], _Account] = {}
        # With Redis configured: spend billed here while it was away, which its counters
        # are told of when it returns.
        self.missed: defaultdict[tuple[str, str], float] = defaultdict(float)

    def admit(
        self,
        rates: list[_Rates],
        budgets: list[_Budget],
        tokens: int,
        max_cost: float,
        now: float,
        unflushed: Unflushed,
        orphan: tuple[FleetLimits, _Lease] | None,
    ) -> Admission:
        accounts = [self._account(budget, now, unflushed) for budget in budgets]
        for budget, account in zip(budgets, accounts, strict=True):
            if account.spent + account.reserved >= budget.row["max_budget"] - EXHAUSTED:
                raise _budget_exceeded(budget, account.spent, account.reserved, now)
        minute = int(now // WINDOW)
        windows = [self._windows.setdefault((r.kind, r.ident), _Window()) for r in rates]
        share = self.fleet.share
        for limits, window in zip(rates, windows, strict=True):
            window.roll(minute)
            if limits.rpm is not None and window.requests + 1 > share(limits.rpm):
                raise _rate_limited(limits, "rpm", now)
            if limits.tpm is not None and window.tokens + tokens > share(limits.tpm):
                raise _rate_limited(limits, "tpm", now)
            if limits.parallel is not None and window.in_flight + 1 > share(limits.parallel):
                raise _rate_limited(limits, "parallel", now)
        holds = []
        for budget, account in zip(budgets, accounts, strict=True):
            amount = min(max_cost, budget.row["max_budget"] - account.spent - account.reserved)
            account.reserved += amount
            holds.append((account, amount))
        for window in windows:
            window.requests += 1
            window.tokens += tokens
            window.in_flight += 1
        headers = {}
        if rates:
            first = windows[0]
            headers = _headers(rates[0], first.requests, first.tokens, now)
        missed = self.missed if self.fleet.configured else None
        return _LocalAdmission(windows, tokens, minute, holds, headers, missed, orphan)

    def _account(self, budget: _Budget, now: float, unflushed: Unflushed) -> _Account:
        owner = (budget.kind, budget.ident)
        account = self._accounts.get(owner)
        if account is None or account.row is not budget.row:
            fresh = _Account(
                owner,
                budget.row,
                current_spend(budget.row, now) + unflushed(*owner),
                budget.window_end,
            )
            fresh.reserved = account.reserved if account is not None else 0.0
            self._accounts[owner] = account = fresh
        elif account.window_end is not None and account.window_end <= now:
            account.spent = 0.0
            account.window_end = next_reset(
                account.window_end, budget.row.get("budget_duration"), now
            )
        return account


# --- The fleet's windows, leases and budget counters, in Redis -----------------------

# One script (trigate/lua/limits.lua) changes them: a batch of admissions and settles
# per call, each atomic.
SCRIPT = lua.script(lua.LIMITS)


@dataclass(slots=True)
class _Lease:
    """One request's claim on the fleet's limits: the keys it touches and what it took."""

    id: str
    rates: list[_Rates]
    budgets: list[_Budget]
    keys: list[str]
    bases: list[float]
    minute: int
    tokens: int = 0


class _FleetAdmission(Admission):
    __slots__ = ("_done", "_lease", "_limits")

    def __init__(self, limits: FleetLimits, lease: _Lease, headers: dict[str, str]) -> None:
        super().__init__(headers)
        self._limits, self._lease, self._done = limits, lease, False

    @property
    def unsettled(self) -> bool:
        return not self._done

    @property
    def settles_at_once(self) -> bool:
        return False  # Redis

    async def settle(self, tokens: int, cost: float) -> None:
        if self._done:
            return
        self._done = True
        lease = self._lease
        delta = tokens - lease.tokens if int(wall_time() // WINDOW) == lease.minute else 0
        try:
            await self._limits.release(lease, delta, cost)
        finally:
            self._limits.ended()


class FleetLimits:
    """The fleet's limits in Redis. Requests that arrive together share one script call
    (`_Batch`), so under load a request costs less than its two round trips."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        # Settles Redis did not confirm, sent again when it answers (they are idempotent);
        # the oldest go first past the bound, their leases then expire by themselves.
        self._unsettled: deque[tuple[_Lease, float]] = deque(maxlen=MAX_UNSETTLED)
        # Lease ids: unique across the fleet without asking anyone.
        self._prefix = secrets.token_hex(6)
        self._count = itertools.count()
        self._batch = _Batch()
        self._sent = trio.Event()
        # Admissions not yet settled, and an event set whenever none are: a link a reload
        # replaced stays open until its requests have settled through it.
        self._admitted = 0
        self._all_settled = trio.Event()

    def ended(self) -> None:
        """An admission of this link's has settled."""
        self._admitted -= 1
        if self._admitted == 0:
            self._all_settled.set()
            self._all_settled = trio.Event()

    async def settled(self) -> None:
        """Return once every admission of this link's has settled."""
        if self._admitted:
            await self._all_settled.wait()

    async def settle_unconfirmed(self) -> None:
        """Settle what Redis did not confirm while it was away (it is back)."""
        client = self.fleet.client
        while self._unsettled:
            lease, cost = self._unsettled[0]
            one = _Batch()
            one.add("settle", lease.keys, _settle_args(lease, 0, cost))
            await SCRIPT(one.keys, one.args, client=client)
            self._unsettled.popleft()

    async def run(self) -> None:
        """Send each batch as its first operation arrives: operations queued while one
        call is out go together in the next."""
        while True:
            await self._sent.wait()
            self._sent = trio.Event()
            batch, self._batch = self._batch, _Batch()
            batch.done(await self._send(batch))

    async def _send(self, batch: _Batch) -> list[Any] | None:
        try:
            return await self.fleet.call(lambda redis: SCRIPT(batch.keys, batch.args, client=redis))
        except RedisUnavailable:
            return None

    async def _run(self, kind: str, keys: list[str], args: list[Any]) -> Any:
        """One operation's answer, or RedisUnavailable after `redis_timeout` (the
        operation may still run: admissions and settles are made safe for that)."""
        if not self.fleet.reachable:
            raise RedisUnavailable("Redis is unreachable")
        operation = self._batch.add(kind, keys, args)
        self._sent.set()
        with trio.move_on_after(self.fleet.timeout):
            await operation.done.wait()
        if operation.answer is None:
            raise RedisUnavailable("Redis did not answer in time")
        return operation.answer

    def lease(
        self, rates: list[_Rates], budgets: list[_Budget], bases: list[float], now: float
    ) -> _Lease:
        key = self.fleet.key
        minute = int(now // WINDOW)
        keys: list[str] = []
        for r in rates:
            keys += (key("rate", r.kind, r.ident, str(minute)), key("slots", r.kind, r.ident))
        for b in budgets:
            keys += (key("budget", b.kind, b.ident), key("holds", b.kind, b.ident))
        return _Lease(f"{self._prefix}.{next(self._count)}", rates, budgets, keys, bases, minute)

    async def admit(self, lease: _Lease, tokens: int, max_cost: float, now: float) -> Admission:
        args: list[Any] = [
            repr(now), lease.id, repr(now + LEASE_TTL), tokens, len(lease.rates),
            len(lease.budgets), repr(min(max_cost, 1e300)),
        ]  # fmt: skip
        for r in lease.rates:
            args += (_or_none(r.rpm), _or_none(r.tpm), _or_none(r.parallel))
        for b, base in zip(lease.budgets, lease.bases, strict=True):
            args += (repr(float(b.row["max_budget"])), repr(base), repr(b.window_end or 0.0))
        args.append(BUDGET_TTL)
        answer = await self._run("admit", lease.keys, args)
        verdict = answer[0]
        if verdict == b"ok":
            lease.tokens = tokens
            headers = _headers(lease.rates[0], answer[1], answer[2], now) if lease.rates else {}
            self._admitted += 1
            return _FleetAdmission(self, lease, headers)
        if verdict == b"budget":
            budget = lease.budgets[answer[1]]
            raise _budget_exceeded(budget, float(answer[2]), float(answer[3]), now)
        raise _rate_limited(lease.rates[answer[1]], verdict.decode(), now)

    async def release(self, lease: _Lease, delta: int = 0, cost: float = 0.0) -> None:
        """Give back the lease's parallel slots and reservations, correct its window's
        tokens by `delta` and bill `cost`; if Redis does not confirm it, again when it
        answers (without the token change, whose window will be over)."""
        try:
            await self._run("settle", lease.keys, _settle_args(lease, delta, cost))
        except RedisUnavailable:
            self._unsettled.append((lease, cost))


@dataclass(slots=True)
class _Operation:
    done: trio.Event
    answer: Any = None


class _Batch:
    """Operations for one call of SCRIPT, and their answers once it returns."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.args: list[Any] = [0]
        self._operations: list[_Operation] = []

    def add(self, kind: str, keys: list[str], args: list[Any]) -> _Operation:
        self.keys += keys
        self.args += (kind, len(keys), len(args), *args)
        self.args[0] += 1
        operation = _Operation(trio.Event())
        self._operations.append(operation)
        return operation

    def done(self, answers: list[Any] | None) -> None:
        """Hand each operation its answer; None to all when Redis gave none."""
        for i, operation in enumerate(self._operations):
            operation.answer = answers[i] if answers is not None else None
            operation.done.set()


def _settle_args(lease: _Lease, delta: int, cost: float) -> list[Any]:
    return [lease.id, delta, repr(cost), len(lease.rates), len(lease.budgets)]


def _or_none(limit: int | None) -> int:
    return -1 if limit is None else limit

"""LiteLLM's global proxy budget: `litellm_settings.max_budget` and `budget_duration`.

As in LiteLLM, the budget is kept as a user of its own, `litellm-proxy-budget`, made (or
brought up to the config's budget) at start-up: every request's cost is added to its
spend, whoever made the request, and `/user/info?user_id=litellm-proxy-budget` reports
it. Once its spend reaches `max_budget` in the current window, every model request is
refused, the master key's too, with LiteLLM's `Budget has been exceeded!` error. The
budget is admitted and settled as any user's budget is (trigate/limits.py), so it holds
across the fleet with Redis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trigate.clock import wall_time
from trigate.durations import parse_duration
from trigate.store import Conflict, Row, Store

# LiteLLM's name for the user that holds the proxy's budget and spend.
PROXY_BUDGET_USER = "litellm-proxy-budget"


@dataclass(frozen=True, slots=True)
class ProxyBudget:
    max_budget: float
    budget_duration: str | None


def proxy_budget(litellm_settings: dict[str, Any]) -> ProxyBudget | None:
    """The budget `litellm_settings` sets, or None; ValueError names a bad key. A
    `budget_duration` without `max_budget` has nothing to reset: refused too."""
    given = litellm_settings.get("max_budget")
    duration = litellm_settings.get("budget_duration")
    if given is None:
        if duration is not None:
            raise ValueError("litellm_settings.budget_duration: needs litellm_settings.max_budget")
        return None
    if isinstance(given, bool) or not isinstance(given, int | float) or not math.isfinite(given):
        raise ValueError(f"litellm_settings.max_budget: expected a number, got {given!r}")
    if given < 0:
        raise ValueError(f"litellm_settings.max_budget: expected 0 or more, got {given!r}")
    if duration is not None:
        if not isinstance(duration, str):
            raise ValueError(f"litellm_settings.budget_duration: expected text, got {duration!r}")
        try:
            parse_duration(duration)
        except ValueError as error:
            raise ValueError(f"litellm_settings.budget_duration: {error}") from None
    return ProxyBudget(float(given), duration)


def fallback_row(budget: ProxyBudget | None) -> Row | None:
    """The row the budget is enforced by should its user be missing (an admin deleted
    it): one object for the worker's life, so its spend keeps counting in process."""
    if budget is None:
        return None
    return {"user_id": PROXY_BUDGET_USER, "max_budget": budget.max_budget,
            "budget_duration": budget.budget_duration, "spend": 0.0}  # fmt: skip


async def install(store: Store, budget: ProxyBudget) -> None:
    """Make the proxy budget's user, or set its budget to the config's; its spend stays
    (a restart does not forget what was spent). Workers starting together may race to
    make it: the loser updates it instead."""
    now = wall_time()
    fields: Row = {"max_budget": budget.max_budget, "budget_duration": budget.budget_duration}
    existing = await store.get("users", PROXY_BUDGET_USER)
    if existing is not None and existing.get("budget_duration") == budget.budget_duration:
        reset_at = existing.get("budget_reset_at")
    else:  # a new schedule starts now
        reset_at = now + parse_duration(budget.budget_duration) if budget.budget_duration else None
    fields["budget_reset_at"] = reset_at
    if existing is None:
        row = {**fields, "user_id": PROXY_BUDGET_USER, "models": [], "metadata": {},
               "created_at": now, "updated_at": now}  # fmt: skip
        try:
            await store.insert("users", row)
        except Conflict:
            pass
        else:
            return
    await store.update("users", PROXY_BUDGET_USER, {**fields, "updated_at": now})

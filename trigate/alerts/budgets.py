"""Budgets crossed, soft (`soft_budget`) and hard (`max_budget`), for keys, teams,
users and end users (LiteLLM's customers).

The record stage tells `observe` which owners a finished request billed; about once a
second `run` reads each one's row afresh from the store and adds what this process has
billed but not yet written (the spend ledger's unflushed cost). An owner over a
threshold alerts (`budget_alerts`, and LiteLLM's webhook event `budget_crossed` or
`soft_budget_crossed`) once per budget period: the subject names the period (the row's
`budget_reset_at`), and the claim lasts until it ends. When the owner's spend is seen
under the threshold again (its window reset, or an admin reset it), the claim is
released and a `budget_reset` event sent, so the next crossing alerts again, which
LiteLLM's own budget webhooks fail to do (its issue #16185).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trigate.alerts.alerter import Alerter
from trigate.alerts.channels import Alert, webhook_event
from trigate.alerts.settings import BUDGET
from trigate.clock import wall_time
from trigate.limits import current_spend
from trigate.spend import RequestRecord

logger = logging.getLogger("trigate.alerts")

CHECK_INTERVAL = 1.0
# Owners checked per round at most; the rest wait for their next request.
MAX_TOUCHED = 1000
# How long a crossing of a budget without a window (no budget_duration) stays claimed.
UNWINDOWED = 30 * 86400.0
GROUPS = {"keys": "key", "teams": "team", "users": "user", "customers": "customer"}
LEVELS = (("soft", "soft_budget"), ("hard", "max_budget"))

Rows = Callable[[str, str], Awaitable[dict[str, Any] | None]]
Unflushed = Callable[[str, str], float]


class BudgetWatch:
    def __init__(self, alerter: Alerter, rows: Rows, unflushed: Unflushed) -> None:
        self._alerter = alerter
        self._rows = rows
        self._unflushed = unflushed
        self._touched: set[tuple[str, str]] = set()
        self._work = trio.Event()
        # (kind, ident, level) -> the period it was seen crossed in.
        self._crossed: dict[tuple[str, str, str], str] = {}

    def observe(self, record: RequestRecord) -> None:
        """The owners `record` billed; never waits."""
        if not record.cost or len(self._touched) >= MAX_TOUCHED:
            return
        for kind, ident in (
            ("keys", record.key_hash),
            ("teams", record.team_id),
            ("users", record.user_id),
            ("customers", record.end_user),
        ):
            if ident:
                self._touched.add((kind, ident))
        self._work.set()

    async def run(self) -> None:
        while True:
            await self._work.wait()
            await trio.sleep(CHECK_INTERVAL)
            touched, self._touched = self._touched, set()
            self._work = trio.Event()
            for kind, ident in touched:
                try:
                    await self.check(kind, ident)
                except Exception as error:  # a store failure: checked at its next request
                    logger.warning("budget check of %s %s failed: %s", kind, ident, error)

    async def check(self, kind: str, ident: str) -> None:
        row = await self._rows(kind, ident)
        if row is None:
            return
        now = wall_time()
        spend = current_spend(row, now) + self._unflushed(kind, ident)
        reset_at = row.get("budget_reset_at")
        period = f"{reset_at:.0f}" if reset_at else "-"
        window = max(reset_at - now, 1.0) if reset_at else UNWINDOWED
        for level, field in LEVELS:
            limit = row.get(field)
            if limit is None:
                continue
            crossed = (kind, ident, level)
            if spend >= float(limit):
                if self._crossed.get(crossed) != period:
                    self._crossed[crossed] = period
                    alert = self._crossing(kind, ident, row, level, spend, float(limit), period)
                    self._alerter.fire(alert, window=window)
            elif (previous := self._crossed.pop(crossed, None)) is not None:
                await self._reset(kind, ident, row, level, spend, previous)

    def _crossing(
        self,
        kind: str,
        ident: str,
        row: dict[str, Any],
        level: str,
        spend: float,
        limit: float,
        period: str,
    ) -> Alert:
        group = GROUPS[kind]
        what = "soft budget" if level == "soft" else "budget"
        name = _name(kind, ident, row)
        message = f"{group} {name} crossed its {what}: spend ${spend:.6f}, {what} ${limit:.6f}"
        event = webhook_event(
            "soft_budget_crossed" if level == "soft" else "budget_crossed",
            group,
            message,
            spend=spend,
            max_budget=row.get("max_budget"),
            soft_budget=row.get("soft_budget"),
            **_owner_fields(kind, ident, row),
        )
        return Alert(
            BUDGET,
            f"budget:{kind}:{ident}:{level}:{period}",
            message,
            "Medium" if level == "soft" else "High",
            event,
        )

    async def _reset(
        self, kind: str, ident: str, row: dict[str, Any], level: str, spend: float, period: str
    ) -> None:
        """Spend is under a threshold it had crossed: its next crossing alerts again."""
        subject = f"budget:{kind}:{ident}:{level}:{period}"
        self._alerter.forget(subject)
        await self._alerter.once.release(subject)
        group = GROUPS[kind]
        what = "soft budget" if level == "soft" else "budget"
        message = f"{group} {_name(kind, ident, row)}'s {what} was reset: spend ${spend:.6f}"
        event = webhook_event(
            "budget_reset", group, message, spend=spend, max_budget=row.get("max_budget"),
            soft_budget=row.get("soft_budget"), **_owner_fields(kind, ident, row),
        )  # fmt: skip
        reset = f"budget_reset:{kind}:{ident}:{level}:{period}"
        self._alerter.fire(Alert(BUDGET, reset, message, "Low", event))


def _name(kind: str, ident: str, row: dict[str, Any]) -> str:
    alias = row.get("key_alias") or row.get("team_alias") or row.get("user_email")
    shown = ident[:12] if kind == "keys" else ident
    return f"{alias} ({shown})" if alias else shown


def _owner_fields(kind: str, ident: str, row: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM's WebhookEvent fields that name the owner."""
    if kind == "keys":
        return {
            "token": ident,
            "key_alias": row.get("key_alias"),
            "user_id": row.get("user_id"),
            "team_id": row.get("team_id"),
        }
    if kind == "teams":
        return {"team_id": ident, "team_alias": row.get("team_alias")}
    if kind == "users":
        return {"user_id": ident, "user_email": row.get("user_email")}
    return {"customer_id": ident}

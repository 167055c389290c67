"""The gateway's alerts: what happens, turned into deduplicated alerts.

- `record`: each finished request (budgets crossed, `llm_too_slow` past
  `alerting_threshold` seconds, per model group);
- `attempt_failed`, `cooled`: a deployment failing (`llm_exceptions`), cooled down
  (`cooldown_deployment`), every deployment of its group cooling (`outage_alerts`);
- `store_failed`, `redis_lost`: spend not written, shared state lost (`db_exceptions`);
- `key_created`, and keys about to expire (`new_virtual_key_created` with LiteLLM's
  webhook events `key_created` and trigate's `key_expiring`);
- a daily spend report (`daily_reports`): the last day's spend by team and model group,
  sent by one process of the fleet once a day.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import trio

from trigate.alerts.alerter import Alerter
from trigate.alerts.budgets import BudgetWatch, Rows, Unflushed
from trigate.alerts.channels import Alert, webhook_event
from trigate.alerts.settings import (
    COOLDOWN,
    DAILY_REPORT,
    DATABASE,
    FAILING,
    KEY_EVENTS,
    OUTAGE,
    SLOW,
    AlertSettings,
)
from trigate.clock import wall_time
from trigate.export.outbox import OutboxCounters
from trigate.fleet import Fleet
from trigate.router.deployments import Deployment
from trigate.spend import RequestRecord
from trigate.store import SpendFilter, Store

logger = logging.getLogger("trigate.alerts")

DAY = 86400.0
# Keys expiring within this are announced (once each), looked for this often.
EXPIRING_WITHIN = 7 * DAY
EXPIRY_CHECK_INTERVAL = 3600.0
REPORT_LINES = 10

Groups = Callable[[str], Sequence[Deployment]]


class Alerts:
    def __init__(
        self,
        settings: AlertSettings,
        fleet: Callable[[], Fleet],
        counters: OutboxCounters,
        rows: Rows,
        unflushed: Unflushed,
        groups: Groups,
        on_sent: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.alerter = Alerter(settings, fleet, counters, on_sent)
        self.budgets = BudgetWatch(self.alerter, rows, unflushed)
        self._groups = groups
        self._slow_ms = settings.threshold * 1000

    @property
    def on(self) -> bool:
        return self.settings.on

    def record(self, record: RequestRecord) -> None:
        """A finished request; never waits."""
        self.budgets.observe(record)
        if record.latency_ms > self._slow_ms:
            message = (
                f"a request to {record.model_group} took {record.latency_ms / 1000:.1f} s, "
                f"over alerting_threshold ({self.settings.threshold:g} s); deployment "
                f"{record.deployment or '-'}"
            )
            self.alerter.fire(Alert(SLOW, f"slow:{record.model_group}", message))

    def attempt_failed(self, deployment: Deployment, error: BaseException) -> None:
        message = (
            f"deployment {deployment.id} of {deployment.model_group} is failing: "
            f"{type(error).__name__}"
        )
        self.alerter.fire(Alert(FAILING, f"failing:{deployment.id}", message))

    def cooled(self, deployment: Deployment) -> None:
        group = deployment.model_group
        message = f"deployment {deployment.id} of {group} cooled down after failures"
        self.alerter.fire(Alert(COOLDOWN, f"cooled:{deployment.id}", message))
        now = trio.current_time()
        members = self._groups(group)
        if members and all(member.state.breaker.cooling(now) for member in members):
            outage = f"every deployment of {group} is down ({len(members)} cooling)"
            self.alerter.fire(Alert(OUTAGE, f"group_down:{group}", outage, "High"))

    def store_failed(self, error: str) -> None:
        self.alerter.fire(Alert(DATABASE, "store", f"the store is unavailable: {error}", "High"))

    def redis_lost(self) -> None:
        message = "Redis is unavailable: limits fall back to each worker's share"
        self.alerter.fire(Alert(DATABASE, "redis", message, "High"))

    def key_created(self, row: dict[str, Any]) -> None:
        ident = str(row.get("token_hash") or "")
        message = f"a key was created: {row.get('key_alias') or ident[:12]}"
        event = webhook_event(
            "key_created", "key", message, token=ident, key_alias=row.get("key_alias"),
            user_id=row.get("user_id"), team_id=row.get("team_id"),
            max_budget=row.get("max_budget"), spend=row.get("spend") or 0.0,
        )  # fmt: skip
        self.alerter.fire(Alert(KEY_EVENTS, f"key_created:{ident}", message, "Low", event))

    async def run(
        self, store: Store, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.alerter.run)
            nursery.start_soon(self.budgets.run)
            if self.alerter.wants(DAILY_REPORT):
                nursery.start_soon(self._daily_reports, store)
            if self.alerter.wants(KEY_EVENTS):
                nursery.start_soon(self._expiring_keys, store)
            task_status.started()

    async def _daily_reports(self, store: Store) -> None:
        """A report for each day, from its end; the fleet's first claim of the day sends."""
        while True:
            now = wall_time()
            await trio.sleep(DAY - now % DAY)
            try:
                await self.daily_report(store, wall_time())
            except Exception as error:
                logger.warning("daily spend report failed: %s", error)

    async def daily_report(self, store: Store, now: float) -> None:
        end = now - now % DAY
        rows = await store.spend_totals(SpendFilter(start=end - DAY, end=end, limit=100_000))
        by_team: defaultdict[str, float] = defaultdict(float)
        by_group: defaultdict[str, float] = defaultdict(float)
        for row in rows:
            by_team[row.get("team_alias") or row.get("team_id") or "(no team)"] += row["spend"]
            by_group[row.get("model_group") or "-"] += row["spend"]
        total = sum(row["spend"] for row in rows)
        requests = sum(row["requests"] for row in rows)
        lines = [f"Daily spend report: ${total:.4f} over {requests} requests"]
        for title, spent in (("team", by_team), ("model group", by_group)):
            top = sorted(spent.items(), key=lambda item: -item[1])[:REPORT_LINES]
            lines += [f"  top {title}s:"] + [f"    {name}: ${value:.4f}" for name, value in top]
        subject = f"daily_report:{_utc_day(end - DAY)}"
        self.alerter.fire(Alert(DAILY_REPORT, subject, "\n".join(lines), "Low"), window=DAY)

    async def _expiring_keys(self, store: Store) -> None:
        while True:
            try:
                await self.expiring_keys(store, wall_time())
            except Exception as error:
                logger.warning("looking for expiring keys failed: %s", error)
            await trio.sleep(EXPIRY_CHECK_INTERVAL)

    async def expiring_keys(self, store: Store, now: float) -> None:
        """Keys whose `expires` falls within `EXPIRING_WITHIN`: one `key_expiring` event
        each (the claim lasts past its expiry)."""
        for row in await store.select("keys", {}, limit=100_000):
            expires = row.get("expires")
            if not isinstance(expires, int | float) or not now < expires <= now + EXPIRING_WITHIN:
                continue
            ident = str(row.get("token_hash") or "")
            name = row.get("key_alias") or ident[:12]
            message = f"key {name} expires in {(expires - now) / 3600:.0f} h"
            event = webhook_event(
                "key_expiring", "key", message, token=ident, key_alias=row.get("key_alias"),
                user_id=row.get("user_id"), team_id=row.get("team_id"),
            )  # fmt: skip
            alert = Alert(KEY_EVENTS, f"key_expiring:{ident}", message, "Medium", event)
            self.alerter.fire(alert, window=EXPIRING_WITHIN + DAY)


def _utc_day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")

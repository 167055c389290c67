"""Alerts deduplicated, rate-limited, and sent once by a whole fleet.

`fire` is called where something happens (a request recorded, a deployment cooled, a
store write failed); it never waits. An alert is about a *subject* (`failing:<model
id>`, `budget:keys:<hash>:soft:<period>`...), and each subject alerts at most once per
window: `ALERT_WINDOW` (5 minutes) for events, a budget's period for a budget. So a
storm of 1,000 failures of one deployment makes one alert, not 1,000.

Within a process the window is a dictionary lookup (`fire` drops what it already
sent). Across workers and instances it is Redis: before sending, the sender claims the
subject with `SET <prefix>alert:<subject> NX PX <window>`, and only the process whose
claim succeeds sends, so a fleet sends one alert. Without Redis (or while it is away)
each process decides alone, and says so in its log once.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable

import trio
from coredis.tokens import PureToken

from trigate.alerts.channels import Alert, Slack, Webhook
from trigate.alerts.settings import AlertSettings
from trigate.export.exports import export_client
from trigate.export.outbox import Outbox, OutboxCounters
from trigate.fleet import Fleet, RedisUnavailable

logger = logging.getLogger("trigate.alerts")

ALERT_WINDOW = 300.0
# Alerts waiting for their fleet-wide claim; past this, new ones are dropped (counted).
MAX_PENDING = 1000
# Subjects remembered in-process; past this the expired ones are forgotten.
MAX_RECENT = 10_000


class Once:
    """A subject claimed once per window by the whole fleet (see the module docstring)."""

    def __init__(self, fleet: Callable[[], Fleet]) -> None:
        self._fleet = fleet
        self._alone_logged = False

    async def claim(self, subject: str, window: float) -> bool:
        fleet = self._fleet()
        if fleet.configured:
            key = fleet.key("alert", subject)
            try:
                claimed = await fleet.call(
                    lambda redis: redis.set(
                        key, b"1", condition=PureToken.NX, px=max(1, math.ceil(window * 1000))
                    )
                )
                return bool(claimed)
            except RedisUnavailable:
                pass
        if fleet.configured and not self._alone_logged:
            self._alone_logged = True
            logger.warning("Redis unreachable: alerts are deduplicated by each process alone")
        return True

    async def release(self, subject: str) -> None:
        """Forget a claim before its window ends (a budget reset: its next crossing
        alerts again)."""
        fleet = self._fleet()
        if fleet.configured:
            key = fleet.key("alert", subject)
            with contextlib.suppress(RedisUnavailable):
                await fleet.call(lambda redis: redis.delete([key]))


class Alerter:
    """The alerts of one gateway: `fire` from anywhere, `run` in its background."""

    def __init__(
        self,
        settings: AlertSettings,
        fleet: Callable[[], Fleet],
        counters: OutboxCounters,
        on_sent: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.once = Once(fleet)
        self._on_sent = on_sent
        self._client = export_client()
        self._recent: dict[str, float] = {}
        self._pending, self._incoming = trio.open_memory_channel[tuple[Alert, float]](MAX_PENDING)
        self._slack: dict[tuple[str, ...], Outbox[Alert]] = {}
        self._webhook: Outbox[Alert] | None = None
        if "slack" in settings.channels:
            for urls in {settings.slack_for(kind) for kind in settings.types}:
                if urls:
                    self._slack[urls] = Outbox("slack", Slack(self._client, urls).send, counters)
        if "webhook" in settings.channels and settings.webhook_url:
            webhook = Webhook(self._client, settings.webhook_url, settings.webhook_secret)
            self._webhook = Outbox("webhook", webhook.send, counters)
        self.sent = 0
        self.suppressed = 0

    def wants(self, alert_type: str) -> bool:
        return self.settings.on and alert_type in self.settings.types

    def fire(self, alert: Alert, *, window: float = ALERT_WINDOW) -> None:
        """Send `alert` unless its subject alerted within `window`; never waits."""
        if not self.wants(alert.alert_type):
            return
        now = trio.current_time()
        if self._recent.get(alert.subject, -math.inf) > now:
            self._count(alert.alert_type, sent=False)
            return
        if len(self._recent) >= MAX_RECENT:
            self._recent = {s: until for s, until in self._recent.items() if until > now}
        self._recent[alert.subject] = now + window
        try:
            self._pending.send_nowait((alert, window))
        except trio.WouldBlock:
            self._count(alert.alert_type, sent=False)

    def forget(self, subject: str) -> None:
        """This process may alert on `subject` again at once."""
        self._recent.pop(subject, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for outbox in self._outboxes():
                    nursery.start_soon(outbox.run)
                task_status.started()
                async for alert, window in self._incoming:
                    if await self.once.claim(alert.subject, window):
                        self._dispatch(alert)
                    else:
                        self._count(alert.alert_type, sent=False)
        finally:
            with trio.CancelScope(shield=True):
                await self._client.aclose()

    def _outboxes(self) -> list[Outbox[Alert]]:
        found = list(self._slack.values())
        if self._webhook is not None:
            found.append(self._webhook)
        return found

    def _dispatch(self, alert: Alert) -> None:
        if self._slack:
            urls = self.settings.slack_for(alert.alert_type)
            if urls in self._slack:
                self._slack[urls].offer(alert)
        if self._webhook is not None:
            self._webhook.offer(alert)
        self._count(alert.alert_type, sent=True)

    def _count(self, alert_type: str, *, sent: bool) -> None:
        if sent:
            self.sent += 1
        else:
            self.suppressed += 1
        if self._on_sent is not None:
            self._on_sent(alert_type, sent)

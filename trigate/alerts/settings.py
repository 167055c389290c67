"""`general_settings.alerting` and its companions, read as LiteLLM reads them.

- `alerting`: the channels, `slack` (a Slack incoming webhook: `SLACK_WEBHOOK_URL`) and
  `webhook` (LiteLLM's budget and key events, POSTed to `WEBHOOK_URL`, signed: see
  trigate.alerts.channels);
- `alert_types`: the alerts sent (LiteLLM's names, below); all of them by default;
- `alerting_threshold`: seconds past which a request is slow (`llm_too_slow`), 300 by
  default as in LiteLLM;
- `alert_to_webhook_url`: a Slack webhook (or a list) per alert type, in place of
  `SLACK_WEBHOOK_URL` for that type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("trigate.alerts")

# LiteLLM's AlertType names for what trigate sends.
BUDGET = "budget_alerts"
SLOW = "llm_too_slow"
FAILING = "llm_exceptions"
COOLDOWN = "cooldown_deployment"
OUTAGE = "outage_alerts"
DATABASE = "db_exceptions"
DAILY_REPORT = "daily_reports"
KEY_EVENTS = "new_virtual_key_created"
ALERT_TYPES = (BUDGET, SLOW, FAILING, COOLDOWN, OUTAGE, DATABASE, DAILY_REPORT, KEY_EVENTS)
CHANNELS = ("slack", "webhook")
DEFAULT_THRESHOLD = 300.0


@dataclass(frozen=True, slots=True)
class AlertSettings:
    channels: tuple[str, ...] = ()
    types: frozenset[str] = frozenset(ALERT_TYPES)
    threshold: float = DEFAULT_THRESHOLD
    slack_urls: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    slack_default: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None

    @property
    def on(self) -> bool:
        return bool(self.channels)

    def slack_for(self, alert_type: str) -> tuple[str, ...]:
        """The Slack webhooks an alert of `alert_type` goes to."""
        urls = self.slack_urls.get(alert_type)
        if urls:
            return urls
        return (self.slack_default,) if self.slack_default else ()

    @classmethod
    def read(cls, general: Mapping[str, Any], environ: Mapping[str, str]) -> AlertSettings:
        """The settings a config asks for; a `ValueError` names what cannot be served."""
        raw = general.get("alerting") or []
        named = raw if isinstance(raw, list) else [raw]
        unknown = [c for c in named if c not in CHANNELS]
        if unknown:
            # LiteLLM's `email` (and any other): named, and the rest served.
            logger.warning("general_settings.alerting: trigate sends no %s alerts", unknown)
        channels = tuple(c for c in named if c in CHANNELS)
        types = general.get("alert_types")
        chosen = frozenset(types) if isinstance(types, list) else frozenset(ALERT_TYPES)
        threshold = float(general.get("alerting_threshold") or DEFAULT_THRESHOLD)
        per_type = general.get("alert_to_webhook_url") or {}
        if not isinstance(per_type, Mapping):
            raise ValueError("general_settings.alert_to_webhook_url must be a mapping")  # noqa: TRY004
        slack_urls = {
            str(kind): tuple(urls if isinstance(urls, list) else [urls])
            for kind, urls in per_type.items()
            if urls
        }
        settings = cls(
            channels=channels,
            types=chosen,
            threshold=threshold,
            slack_urls=slack_urls,
            slack_default=environ.get("SLACK_WEBHOOK_URL"),
            webhook_url=environ.get("WEBHOOK_URL"),
            webhook_secret=environ.get("WEBHOOK_SECRET") or None,
        )
        if "slack" in channels and not settings.slack_default and not slack_urls:
            raise ValueError("alerting: slack needs SLACK_WEBHOOK_URL or alert_to_webhook_url")
        if "webhook" in channels and not settings.webhook_url:
            raise ValueError("alerting: webhook needs WEBHOOK_URL")
        return settings

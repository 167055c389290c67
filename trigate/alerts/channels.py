"""Where alerts go: Slack incoming webhooks, and LiteLLM's webhook events.

A Slack alert is `{"text": ...}` POSTed to the alert type's webhook. A webhook event
is LiteLLM's `WebhookEvent` (`event`, `event_group`, `event_message`, `spend`,
`max_budget`, `token`, `user_id`, `team_id`, `customer_id`, `user_email`, `key_alias`,
`projected_exceeded_date`, `projected_spend`) POSTed to `WEBHOOK_URL`; with
`WEBHOOK_SECRET` set it carries `X-Trigate-Signature: t=<unix time>,v1=<hex>`, the
HMAC-SHA256 of `<unix time>.<body>` under the secret, so a receiver can check that the
event is the gateway's and recent (the time is signed too, against replays).

Each channel sends from an outbox of the export path (bounded, batched, retried).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from trigate.clock import wall_time
from trigate.errors import secrets
from trigate.export.http import post

SIGNATURE_HEADER = "x-trigate-signature"
WEBHOOK_FIELDS = (
    "spend", "max_budget", "token", "customer_id", "user_id", "team_id", "team_alias",
    "user_email", "key_alias", "projected_exceeded_date", "projected_spend", "event",
    "event_group", "event_message",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: its LiteLLM type, what it is about (the key it is deduplicated by),
    its text, and for a webhook event LiteLLM's payload fields."""

    alert_type: str
    subject: str
    message: str
    level: str = "Medium"
    event: Mapping[str, Any] | None = field(default=None)


def webhook_event(event: str, group: str, message: str, **fields: Any) -> dict[str, Any]:
    """LiteLLM's `WebhookEvent`, every field present."""
    payload: dict[str, Any] = dict.fromkeys(WEBHOOK_FIELDS)
    payload.update(fields, event=event, event_group=group, event_message=message)
    return payload


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class Slack:
    def __init__(self, client: httpx.AsyncClient, urls: Sequence[str]) -> None:
        secrets.extend(urls)  # a Slack webhook URL is its credential
        self._client = client
        self._urls = tuple(urls)

    async def send(self, alerts: Sequence[Alert]) -> None:
        text = "\n\n".join(f"*{a.level}* `{a.alert_type}`: {a.message}" for a in alerts)
        for url in self._urls:
            await post(self._client, url, orjson.dumps({"text": text}), _JSON)


class Webhook:
    def __init__(self, client: httpx.AsyncClient, url: str, secret: str | None) -> None:
        secrets.extend([secret])
        self._client = client
        self._url = url
        self._secret = secret

    async def send(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            payload = alert.event or webhook_event(alert.alert_type, "proxy", alert.message)
            body = orjson.dumps(payload)
            headers = dict(_JSON)
            if self._secret:
                headers[SIGNATURE_HEADER] = signature(self._secret, int(wall_time()), body)
            await post(self._client, self._url, body, headers)


_JSON = {"content-type": "application/json"}

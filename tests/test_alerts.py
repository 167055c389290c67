"""Alerts (general_settings.alerting) as a Slack webhook and a webhook receiver on real
sockets see them: a budget crossed by two instances at once alerts once, and again
after its reset; a storm of failures makes one alert; slow requests, a group all down,
and signed webhook events."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import orjson
import pytest
import trio
import trio.testing
from fakes import FakeUpstream, JSONReply, ReceivedRequest, chat_completion
from helpers import MASTER_KEY, MESSAGES, RunningGateway, openai_config, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam

from trigate.alerts.alerter import Alerter
from trigate.alerts.channels import SIGNATURE_HEADER, WEBHOOK_FIELDS
from trigate.clock import wall_time

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
# Each request costs 10 tokens at $0.001: $0.01.
PRICED = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.001}


@pytest.fixture
async def slack(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """A Slack incoming webhook, named by SLACK_WEBHOOK_URL as LiteLLM reads it."""
    fake = FakeUpstream(lambda request: JSONReply({"ok": True}))
    await fake.start(nursery)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"http://127.0.0.1:{fake.port}/hook")
    return fake


def _answered(request: ReceivedRequest) -> JSONReply:
    return JSONReply(chat_completion(usage=USAGE))


def _texts(slack: FakeUpstream) -> list[str]:
    return [orjson.loads(request.body)["text"] for request in slack.requests]


def _alerter(gateway: RunningGateway) -> Alerter:
    alerts = gateway.gateway.alerts
    assert alerts is not None, "the config turns alerting on"
    return alerts.alerter


async def _admin(gateway: RunningGateway, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.post(path, json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def _config(upstream: FakeUpstream, general: dict[str, Any], **params: Any) -> dict[str, Any]:
    config = openai_config(upstream, **params)
    config["general_settings"] = general
    return config


async def test_a_budget_crossed_by_two_instances_alerts_once_and_again_after_its_reset(
    nursery: trio.Nursery,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    slack: FakeUpstream,
    upstream: FakeUpstream,
) -> None:
    upstream.handler = _answered
    general = {
        "database_url": f"sqlite:///{tmp_path}/shared.db",
        "alerting": ["slack"],
        "alert_types": ["budget_alerts"],
    }
    instances = []
    for _ in range(2):
        config = _config(upstream, general, **PRICED)
        config["router_settings"].update(
            redis_url=redis_url, redis_key_prefix=redis_prefix, redis_timeout=5.0
        )
        instances.append(await start_gateway(nursery, config))
    first, second = instances
    # Each request alone crosses the soft budget, so both instances see it crossed.
    key = await _admin(first, "/key/generate", {
        "key_alias": "ci", "soft_budget": 0.005, "budget_duration": "30d",
    })  # fmt: skip
    alerters = [_alerter(instance) for instance in instances]

    def decided() -> int:
        return sum(a.sent + a.suppressed for a in alerters)

    async def ask(instance: RunningGateway) -> None:
        await sdk(instance, key["key"]).chat.completions.create(model="gpt-test", messages=CHAT)

    try:
        async with trio.open_nursery() as both:
            for instance in instances:
                both.start_soon(ask, instance)
        with trio.fail_after(30):
            # Two gateways' background tasks decide: polled, as nothing awaits both.
            while decided() < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert sum(a.sent for a in alerters) == 1, "the fleet sends one alert"

        # The budget's window ended an hour ago: the gateway's reset zeroes its spend and
        # starts the next window (its period, by which its alerts are known, is new).
        store = first.gateway.store
        now = wall_time()
        await store.update("keys", key["token"], {"budget_reset_at": now - 3600})
        await store.reset_due_budgets("keys", now)
        await sdk(second, key["key"]).chat.completions.create(model="gpt-test", messages=CHAT)
        with trio.fail_after(30):
            while decided() < 3:  # noqa: ASYNC110
                await trio.sleep(0.05)
    finally:
        for instance in instances:
            await instance.stop()
    # Alerts sent together share one Slack message, a paragraph each.
    crossings = [p for t in _texts(slack) for p in t.split("\n\n") if "crossed its soft" in p]
    assert len(crossings) == 2, _texts(slack)
    assert all("key ci (" in text for text in crossings)


async def test_a_storm_of_failures_makes_one_alert(
    nursery: trio.Nursery, slack: FakeUpstream, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply({"error": {"message": "down"}}, 500)
    general = {
        "alerting": ["slack"],
        "alert_types": ["llm_exceptions", "cooldown_deployment", "outage_alerts"],
    }
    config = _config(upstream, general)
    config["router_settings"].update(allowed_fails=1000)
    gateway = await start_gateway(nursery, config)
    alerter = _alerter(gateway)
    try:
        for _ in range(100):
            with pytest.raises(openai.InternalServerError):
                await (
                    sdk(gateway)
                    .with_options(max_retries=0)
                    .chat.completions.create(model="gpt-test", messages=CHAT)
                )
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            metrics = (await client.get("/metrics")).text
    finally:
        await gateway.stop()
    texts = _texts(slack)
    assert "\n".join(texts).count("is failing") == 1, texts
    assert alerter.suppressed == 99
    assert 'trigate_alerts_total{alert_type="llm_exceptions",outcome="suppressed"} 99.0' in metrics


async def test_a_group_whose_deployments_all_cool_down_is_an_outage(
    nursery: trio.Nursery, slack: FakeUpstream, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply({"error": {"message": "down"}}, 503)
    general = {"alerting": ["slack"], "alert_types": ["cooldown_deployment", "outage_alerts"]}
    config = _config(upstream, general)
    # Two deployments, both failing, each tried once: both cool down.
    config["model_list"].append({**config["model_list"][0], "model_info": {"id": "second"}})
    config["router_settings"].update(allowed_fails=0, cooldown_time=60, num_retries=1)
    gateway = await start_gateway(nursery, config)
    try:
        with pytest.raises(openai.APIStatusError):
            await (
                sdk(gateway)
                .with_options(max_retries=0)
                .chat.completions.create(model="gpt-test", messages=CHAT)
            )
    finally:
        await gateway.stop()
    text = "\n".join(_texts(slack))
    assert "cooled down after failures" in text
    assert "every deployment of gpt-test is down" in text


async def test_a_request_slower_than_the_threshold_alerts(
    nursery: trio.Nursery, slack: FakeUpstream, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion(usage=USAGE), delay=0.3)
    general = {"alerting": ["slack"], "alerting_threshold": 0.1}
    gateway = await start_gateway(nursery, _config(upstream, general))
    try:
        await sdk(gateway).chat.completions.create(model="gpt-test", messages=CHAT)
    finally:
        await gateway.stop()
    [text] = _texts(slack)
    assert "llm_too_slow" in text and "over alerting_threshold (0.1 s)" in text


async def test_webhook_events_carry_litellms_payload_and_an_hmac_signature(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    virtual_clock: trio.testing.MockClock,
) -> None:
    """Virtual time: the webhook's outbox sends every 5 s, as LiteLLM's batch loggers do."""
    receiver = FakeUpstream(lambda request: JSONReply({}))
    await receiver.start(nursery)
    upstream.handler = _answered
    monkeypatch.setenv("WEBHOOK_URL", f"http://127.0.0.1:{receiver.port}/events")
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec-test-secret")
    general = {"alerting": ["webhook"]}
    gateway = await start_gateway(nursery, _config(upstream, general, **PRICED))
    try:
        key = await _admin(
            gateway,
            "/key/generate",
            {"key_alias": "hooked", "max_budget": 0.015, "budget_duration": "30d"},
        )
        for _ in range(2):
            await sdk(gateway, key["key"]).chat.completions.create(
                model="gpt-test", messages=CHAT, max_tokens=3
            )
        with trio.fail_after(30):
            await receiver.wait_for(lambda: len(receiver.requests) >= 2)
        # The window ends and resets; the next request's spend is under the budget again.
        store = gateway.gateway.store
        now = wall_time()
        await store.update("keys", key["token"], {"budget_reset_at": now - 3600})
        await store.reset_due_budgets("keys", now)
        await sdk(gateway, key["key"]).chat.completions.create(
            model="gpt-test", messages=CHAT, max_tokens=3
        )
        with trio.fail_after(30):
            await receiver.wait_for(lambda: len(receiver.requests) >= 3)
    finally:
        await gateway.stop()
    events = {}
    for request in receiver.requests:
        stamp, digest = request.headers[SIGNATURE_HEADER].split(",")
        timestamp = stamp.removeprefix("t=")
        expected = hmac.new(
            b"whsec-test-secret", timestamp.encode() + b"." + request.body, hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(digest.removeprefix("v1="), expected)
        payload = orjson.loads(request.body)
        assert set(WEBHOOK_FIELDS) <= set(payload)
        events[payload["event"]] = payload
    created = events["key_created"]
    assert (created["event_group"], created["key_alias"]) == ("key", "hooked")
    assert created["token"] == key["token"]
    crossed = events["budget_crossed"]
    assert crossed["event_group"] == "key"
    assert crossed["max_budget"] == 0.015
    assert crossed["spend"] >= 0.015
    reset = events["budget_reset"]
    assert (reset["event_group"], reset["token"]) == ("key", key["token"])
    assert reset["spend"] < 0.015


async def test_redis_and_store_outages_alert_db_exceptions(
    nursery: trio.Nursery, own_redis: Any, slack: FakeUpstream, upstream: FakeUpstream
) -> None:
    upstream.handler = _answered
    config = _config(upstream, {"alerting": ["slack"], "alert_types": ["db_exceptions"]})
    # Killed, Redis refuses at once; a generous timeout keeps a loaded machine's stall
    # before the kill from passing for the outage this test makes.
    config["router_settings"].update(redis_url=own_redis.url, redis_timeout=30.0)
    gateway = await start_gateway(nursery, config)
    try:
        key = await _admin(gateway, "/key/generate", {"rpm_limit": 100})
        await own_redis.kill()
        # The key's rpm limit asks Redis, which is gone: limits fall back, and it alerts.
        await sdk(gateway, key["key"]).chat.completions.create(model="gpt-test", messages=CHAT)
        # A spend write the store refuses.
        on_failure = gateway.gateway.ledger.on_failure
        assert on_failure is not None, "alerting watches the spend writer"
        on_failure("database is locked")
    finally:
        await gateway.stop()
    text = "\n".join(_texts(slack))
    assert "Redis is unavailable" in text
    assert "the store is unavailable: database is locked" in text


async def test_keys_about_to_expire_and_the_daily_report(
    nursery: trio.Nursery, slack: FakeUpstream, upstream: FakeUpstream
) -> None:
    upstream.handler = _answered
    config = _config(upstream, {"alerting": ["slack"]}, **PRICED)
    gateway = await start_gateway(nursery, config)
    alerts = gateway.gateway.alerts
    assert alerts is not None
    try:
        team = await _admin(gateway, "/team/new", {"team_alias": "research"})
        key = await _admin(
            gateway,
            "/key/generate",
            {"key_alias": "soon", "duration": "2d", "team_id": team["team_id"]},
        )
        await _admin(gateway, "/key/generate", {"key_alias": "later", "duration": "30d"})
        for _ in range(3):
            await sdk(gateway, key["key"]).chat.completions.create(model="gpt-test", messages=CHAT)
        await gateway.gateway.ledger.flush()
        store = gateway.gateway.store
        await alerts.expiring_keys(store, wall_time())
        await alerts.expiring_keys(store, wall_time())  # announced once
        await alerts.daily_report(store, wall_time() + 86400)  # the report of today
    finally:
        await gateway.stop()
    texts = _texts(slack)
    joined = "\n".join(texts)
    assert joined.count("key soon expires in") == 1
    assert "later" not in joined.replace("key was created: later", "")
    assert "Daily spend report: $0.0300 over 3 requests" in joined
    assert "research: $0.0300" in joined
    assert "gpt-test: $0.0300" in joined

"""`GET /metrics` after real traffic: LiteLLM's names, types and labels, counted right.

The gateway runs under hypercorn, clients are the OpenAI SDK, upstreams are fakes
on real sockets; every count is read back through prometheus-client's own parser.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing
from asgi_driver import chat_request, harness, start_lifespan
from fakes import FakeUpstream, JSONReply, ReceivedRequest, StreamReply, chat_completion, chunk
from helpers import (
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningGateway,
    build_app,
    deployment_entry,
    openai_config,
    sdk,
    start_gateway,
)
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from scripted import Step, error, group_config
from test_cli import clean_env, serve

from trigate.config import ConfigError, parse_config
from trigate.metrics import (
    API_LATENCY,
    DEPLOYMENT_FAILURES,
    DEPLOYMENT_REQUESTS,
    FALLBACKS,
    LATENCY_BUCKETS,
    PROXY_FAILED,
    PROXY_TOTAL,
    SPEND,
    TOKENS,
    TOTAL_LATENCY,
    Timing,
    Unlocked,
    tally,
)
from trigate.store import Row

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


class Scrape:
    """One scrape, parsed by prometheus-client: families by name, samples by labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    def samples(self, name: str, **labels: str) -> list[Sample]:
        return [
            sample
            for family in self.families.values()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the matching samples (0 when there are none)."""
        return sum(sample.value for sample in self.samples(name, **labels))


async def scrape(url: str, key: str | None = None) -> Scrape:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def _label_names(scraped: Scrape, family: str) -> set[str]:
    names: set[str] = set()
    for sample in scraped.families[family].samples:
        names |= set(sample.labels) - {"le"}
    return names


async def _virtual_key(gateway: RunningGateway, **fields: Any) -> tuple[str, str]:
    """A new key and its hash, made through the admin API."""
    async with gateway.client() as admin:
        made = (await admin.post("/key/generate", json=fields)).json()
    return made["key"], made["token"]


def _config(primary: FakeUpstream, backup: FakeUpstream, slow: FakeUpstream) -> dict[str, Any]:
    def entry(name: str, upstream: FakeUpstream, model_id: str) -> dict[str, Any]:
        prices = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}
        return deployment_entry(name, upstream, model_id, **prices)

    return {
        "model_list": [
            entry("primary", primary, "primary-1"),
            entry("backup", backup, "backup-1"),
            entry("slow", slow, "slow-1"),
        ],
        "router_settings": {"num_retries": 0, "fallbacks": [{"primary": ["backup"]}]},
    }


def _answer(request: ReceivedRequest) -> JSONReply:
    return JSONReply(chat_completion("Hello!", usage=USAGE))


async def test_traffic_is_counted_with_litellm_names_and_labels(nursery: trio.Nursery) -> None:
    backup = FakeUpstream(_answer)
    failing = FakeUpstream(lambda request: JSONReply({"error": {"message": "down"}}, 500))
    endless = chunk("word ")
    slow = FakeUpstream(
        lambda request: StreamReply([chunk("hi")], tail=endless, tail_interval=0.02)
    )
    for fake in (backup, failing, slow):
        await fake.start(nursery)
    gateway = await start_gateway(nursery, _config(failing, backup, slow))
    try:
        key, key_hash = await _virtual_key(gateway, key_alias="ci", rpm_limit=3)
        client = sdk(gateway, key)

        # A success, then a fallback: `primary` fails and `backup` answers.
        answer = await client.chat.completions.create(model="backup", messages=MESSAGES)
        assert answer.usage is not None and answer.usage.total_tokens == 10
        fallen = await client.chat.completions.with_raw_response.create(
            model="primary", messages=MESSAGES
        )
        assert fallen.headers["x-trigate-attempted-fallbacks"] == "1"

        # A stream its client abandons after the first chunk.
        stream = await client.chat.completions.create(model="slow", messages=MESSAGES, stream=True)
        async for _ in stream:
            break
        await stream.close()
        with trio.fail_after(10):
            await slow.wait_for(lambda: slow.aborted == 1)
            await gateway.records.wait_for(3)

        # The key's rpm_limit is 3: the fourth request is a 429, before any upstream call.
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="backup", messages=MESSAGES)
        # A model nobody configured is counted as `other`, never by its name.
        with pytest.raises(openai.NotFoundError):
            await sdk(gateway).chat.completions.create(model="made-up-7", messages=MESSAGES)

        scraped = await scrape(gateway.url)
    finally:
        await gateway.stop()

    key_labels = {"hashed_api_key": key_hash, "api_key_alias": "ci"}
    total = "litellm_proxy_total_requests_metric_total"
    assert scraped.value(total, requested_model="backup", status_code="200", **key_labels) == 1
    assert scraped.value(total, requested_model="primary", status_code="200", **key_labels) == 1
    assert scraped.value(total, requested_model="slow", status_code="499", **key_labels) == 1
    assert scraped.value(total, requested_model="backup", status_code="429", **key_labels) == 1
    assert scraped.value(total, requested_model="other", status_code="404") == 1
    assert scraped.value(total) == 5
    assert "made-up-7" not in scraped.text

    failed = "litellm_proxy_failed_requests_metric_total"
    assert scraped.value(failed, exception_status="429", exception_class="RateLimited") == 1
    assert scraped.value(failed, exception_status="404", exception_class="ModelNotFound") == 1
    assert scraped.value(failed, exception_status="499") == 1
    assert scraped.value(failed) == 3

    # The fallback: one failure at `primary-1`, one success at `backup-1`, counted as such.
    assert scraped.value(
        "litellm_deployment_successful_fallbacks_total",
        requested_model="primary",
        fallback_model="backup",
        exception_status="502",
        exception_class="UpstreamError",
        **key_labels,
    ) == 1  # fmt: skip
    assert scraped.value("litellm_deployment_failed_fallbacks_total") == 0
    assert scraped.value(
        "litellm_deployment_failure_responses_total", model_id="primary-1", exception_status="500"
    ) == 1  # fmt: skip
    assert scraped.value("litellm_deployment_success_responses_total", model_id="backup-1") == 2
    assert scraped.value("litellm_deployment_total_requests_total", model_id="backup-1") == 2
    assert scraped.value("litellm_deployment_total_requests_total", model_id="primary-1") == 1

    # Tokens and spend: the two answers' usage, at the configured prices.
    assert scraped.value("litellm_input_tokens_metric_total", model_id="backup-1") == 14
    assert scraped.value("litellm_output_tokens_metric_total", model_id="backup-1") == 6
    assert scraped.value("litellm_total_tokens_metric_total", model_id="backup-1") == 20
    assert scraped.value("litellm_spend_metric_total", model_id="backup-1") == pytest.approx(
        2 * (7 * 0.001 + 3 * 0.002)
    )
    assert scraped.value("litellm_requests_metric_total", **key_labels) == 4

    # Latency histograms: one observation per request that reached a deployment.
    latency = "litellm_request_total_latency_metric_count"
    assert scraped.value(latency, requested_model="backup", **key_labels) == 2
    assert scraped.value("litellm_llm_api_time_to_first_token_metric_count", model_id="slow-1") == 1
    assert scraped.value("litellm_llm_api_latency_metric_count", model_id="backup-1") == 2
    assert scraped.value("litellm_overhead_latency_metric_count", model_group="backup") == 2

    # The abandoned stream, and the upstream connection closed after it.
    assert scraped.value("trigate_streams_cancelled_by_client_total", model_id="slow-1") == 1
    assert scraped.value("trigate_upstream_closed_after_disconnect_total", model_id="slow-1") == 1
    assert scraped.value("litellm_in_flight_requests") == 1  # the scrape itself
    assert scraped.value("litellm_deployment_state", model_id="backup-1") == 0
    assert scraped.families["litellm_deployment_state"].type == "gauge"

    # LiteLLM's label sets exactly, so its dashboards' queries select the same series.
    for family, labels in [
        ("litellm_proxy_total_requests_metric", PROXY_TOTAL),
        ("litellm_proxy_failed_requests_metric", PROXY_FAILED),
        ("litellm_spend_metric", SPEND),
        ("litellm_input_tokens_metric", TOKENS),
        ("litellm_request_total_latency_metric", TOTAL_LATENCY),
        ("litellm_llm_api_latency_metric", API_LATENCY),
        ("litellm_deployment_total_requests", DEPLOYMENT_REQUESTS),
        ("litellm_deployment_failure_responses", DEPLOYMENT_FAILURES),
        ("litellm_deployment_successful_fallbacks", FALLBACKS),
    ]:
        assert _label_names(scraped, family) == set(labels), family
    assert scraped.families["litellm_request_total_latency_metric"].type == "histogram"
    assert scraped.families["litellm_spend_metric"].type == "counter"
    assert UPSTREAM_KEY not in scraped.text and key not in scraped.text


async def test_budgets_and_rate_headroom_are_gauges(nursery: trio.Nursery) -> None:
    upstream = FakeUpstream(_answer)
    await upstream.start(nursery)
    config = _config(upstream, upstream, upstream)
    config["model_list"][1]["litellm_params"].update(rpm=10, tpm=1000)
    gateway = await start_gateway(nursery, config)
    try:
        async with gateway.client() as admin:
            team = (
                await admin.post("/team/new", json={"team_alias": "eng", "max_budget": 1})
            ).json()
        key, key_hash = await _virtual_key(
            gateway, key_alias="budgeted", max_budget=0.5, team_id=team["team_id"]
        )
        await sdk(gateway, key).chat.completions.create(model="backup", messages=MESSAGES)
        scraped = await scrape(gateway.url)
    finally:
        await gateway.stop()
    cost = 7 * 0.001 + 3 * 0.002
    assert scraped.value(
        "litellm_remaining_api_key_budget_metric", hashed_api_key=key_hash, api_key_alias="budgeted"
    ) == pytest.approx(0.5 - cost)  # fmt: skip
    assert scraped.value(
        "litellm_remaining_team_budget_metric", team=team["team_id"], team_alias="eng"
    ) == pytest.approx(1 - cost)  # fmt: skip
    assert scraped.value("litellm_remaining_requests_metric", model_id="backup-1") == 9
    assert scraped.value("litellm_remaining_tokens_metric", model_id="backup-1") == 990


@pytest.mark.parametrize(
    "settings",
    [
        {"general_settings": {"require_auth_for_metrics_endpoint": True}},
        {"general_settings": {"require_auth_for_metrics_endpoint": "true"}},
        {"litellm_settings": {"require_auth_for_metrics_endpoint": "yes"}},
    ],
)
async def test_metrics_can_require_the_master_key(
    nursery: trio.Nursery, settings: dict[str, Any]
) -> None:
    """With the setting on, in any form LiteLLM's config may write it, a virtual key is
    refused as a stranger is: the series name every tenant and upstream."""
    config: dict[str, Any] = {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "mock/gpt-4o"}}],
        **settings,
    }
    gateway = await start_gateway(nursery, config)
    try:
        key, _ = await _virtual_key(gateway)
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            assert (await client.get("/metrics")).status_code == 401
            wrong = {"authorization": "Bearer sk-not-a-key-0123456789abcdef0123"}
            assert (await client.get("/metrics", headers=wrong)).status_code == 401
            tenant = await client.get("/metrics", headers={"authorization": f"Bearer {key}"})
            assert tenant.status_code == 403
            assert "litellm_" not in tenant.text
        assert (await scrape(gateway.url, MASTER_KEY)).families
    finally:
        await gateway.stop()


@pytest.mark.parametrize("value", ["ture", "maybe", 2, ["true"]])
def test_an_unreadable_metrics_auth_setting_stops_start_up(value: Any) -> None:
    for section in ("general_settings", "litellm_settings"):
        with pytest.raises(ConfigError, match="require_auth_for_metrics_endpoint"):
            parse_config({section: {"require_auth_for_metrics_endpoint": value}}, {})


def test_metrics_auth_read_from_the_environment() -> None:
    raw = {"general_settings": {"require_auth_for_metrics_endpoint": "os.environ/METRICS_AUTH"}}
    assert parse_config(
        raw, {"METRICS_AUTH": "True"}
    ).general_settings.require_auth_for_metrics_endpoint
    assert not parse_config(
        raw, {"METRICS_AUTH": "false"}
    ).general_settings.require_auth_for_metrics_endpoint


def _ordered_group(upstreams: list[tuple[str, FakeUpstream]]) -> list[dict[str, Any]]:
    """Model group `g`: one deployment per upstream, tried in this order, ids as named."""
    return [
        {
            "model_name": "g",
            "litellm_params": {
                "model": "openai/upstream-model",
                "api_base": fake.base_url,
                "api_key": UPSTREAM_KEY,
                "order": order,
            },
            "model_info": {"id": name},
        }
        for order, (name, fake) in enumerate(upstreams)
    ]


async def test_retries_cooldowns_and_deployment_state(nursery: trio.Nursery) -> None:
    throttled = FakeUpstream(lambda request: JSONReply({"error": {"message": "slow down"}}, 429))
    healthy = FakeUpstream(_answer)
    for fake in (throttled, healthy):
        await fake.start(nursery)
    entries = _ordered_group([("throttled", throttled), ("healthy", healthy)])
    gateway = await start_gateway(
        nursery, {"model_list": entries, "router_settings": {"num_retries": 1}}
    )
    try:
        await sdk(gateway).chat.completions.create(model="g", messages=MESSAGES)
        scraped = await scrape(gateway.url)
    finally:
        await gateway.stop()
    assert scraped.value("trigate_retries_total", model_group="g", reason="rate_limit") == 1
    cooled = "litellm_deployment_cooled_down_total"
    assert scraped.value(cooled, model_id="throttled", exception_status="429") == 1
    assert scraped.value("litellm_deployment_state", model_id="throttled") == 2
    assert scraped.value("litellm_deployment_state", model_id="healthy") == 0


async def test_hedges_are_counted(nursery: trio.Nursery) -> None:
    slow = FakeUpstream(lambda request: JSONReply(chat_completion(usage=USAGE), delay=5.0))
    fast = FakeUpstream(_answer)
    for fake in (slow, fast):
        await fake.start(nursery)
    entries = _ordered_group([("slow", slow), ("fast", fast)])
    config = {"model_list": entries, "router_settings": {"hedge_after_ms": 100}}
    gateway = await start_gateway(nursery, config)
    try:
        await sdk(gateway).chat.completions.create(model="g", messages=MESSAGES)
        scraped = await scrape(gateway.url)
    finally:
        await gateway.stop()
    assert scraped.value("trigate_hedges_started_total", model_group="g") == 1
    assert scraped.value("trigate_hedges_won_total", model_group="g") == 1
    assert scraped.value("trigate_hedges_lost_total") == 0
    # The cancelled loser is neither a success nor a failure of its deployment.
    assert scraped.value("litellm_deployment_total_requests_total", model_id="slow") == 0
    assert scraped.value("litellm_deployment_success_responses_total", model_id="fast") == 1


def _metric_dirs(root: Path) -> Iterable[Path]:
    return root.glob("trigate-metrics-*")


async def test_two_workers_answer_the_sum(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "model_list:\n  - model_name: mock\n    litellm_params: {model: mock/gpt-4o}\n"
    )
    served = await serve(
        "--workers", "2", "--config", str(config),
        env=clean_env(TRIGATE_MASTER_KEY=MASTER_KEY, TMPDIR=str(tmp_path)),
    )  # fmt: skip
    try:
        with trio.fail_after(60):
            await served.wait_ready(workers=2)
        assert len(list(_metric_dirs(tmp_path))) == 1
        url = f"http://127.0.0.1:{served.port}"
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(12):  # a new connection each time: both workers serve some
                response = await client.post(
                    "/v1/chat/completions",
                    json={"model": "mock", "messages": MESSAGES},
                    headers={"authorization": f"Bearer {MASTER_KEY}", "connection": "close"},
                )
                assert response.status_code == 200
        for _ in range(4):  # whichever worker answers the scrape, it answers for both
            scraped = await scrape(url)
            total = scraped.value("litellm_proxy_total_requests_metric_total", status_code="200")
            assert total == 12
        assert scraped.value("litellm_in_flight_requests") == 1
        # A gauge that is the worst worker's (livemax): one series, not one per worker.
        [state] = scraped.samples("litellm_deployment_state")
        assert state.value == 0 and state.labels["litellm_model_name"] == "mock/gpt-4o"
        assert scraped.families["litellm_request_total_latency_metric"].type == "histogram"
    finally:
        assert await served.stop() == 0
    assert not list(_metric_dirs(tmp_path)), "the supervisor removes its directory"
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None


class EndlessStream(httpx.AsyncByteStream):
    """An upstream stream that never ends: it outruns any client that stops reading."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield chunk("word ")
            await trio.lowlevel.checkpoint()


async def _scrape_in_process(nursery: trio.Nursery, app: Any) -> Scrape:
    exchange = chat_request(nursery, app, None, path="/metrics", method="GET")
    assert (await exchange.start())["status"] == 200
    return Scrape((await exchange.read_body()).decode())


async def test_a_slow_client_is_a_backpressure_wait(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, stream=EndlessStream(), headers={"content-type": "text/event-stream"}
        )
    )
    app, _ = build_app(openai_config(upstream), transport=transport)
    await start_lifespan(nursery, app)
    assert (await _scrape_in_process(nursery, app)).value(
        "trigate_relay_backpressure_waits_total"
    ) == 0  # fmt: skip
    exchange = chat_request(
        nursery, app, {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    )
    await exchange.start()
    await exchange.next_message()  # one write reaches the client, then it stops reading
    with trio.fail_after(5):
        await trio.testing.wait_all_tasks_blocked()
    scraped = await _scrape_in_process(nursery, app)
    assert scraped.value("trigate_relay_backpressure_waits_total") == 1
    assert scraped.value("litellm_in_flight_requests") == 2, "the stream and the scrape"
    exchange.disconnect()
    with trio.fail_after(5):
        await exchange.done.wait()
    after = await _scrape_in_process(nursery, app)
    assert after.value("trigate_streams_cancelled_by_client_total", requested_model="gpt-test") == 1


async def test_health_probe_cooldowns_and_the_spend_queue(
    nursery: trio.Nursery, virtual_clock: Any
) -> None:
    config = group_config(
        ["d0", "d1"],
        router={"background_health_checks": True, "health_check_interval": 60, "allowed_fails": 0},
    )
    h = await harness(nursery, config, {"d0": [error(500)], "d1": [Step(), Step()]})
    await trio.sleep(1)  # each deployment probed once; d0's failure cools it

    async def down(rows: Sequence[Row], also_users: Sequence[str] = ()) -> int:
        raise ConnectionError("database is down")

    # The database goes down for this one store: its method is replaced on the instance.
    h.gateway.store.record_spend = down  # type: ignore[method-assign]
    assert (await h.chat()).status == 200
    scraped = await _scrape_in_process(nursery, h.app)
    cooled = "litellm_deployment_cooled_down_total"
    assert scraped.value(cooled, model_id="d0", exception_status="500") == 1
    assert scraped.value("litellm_deployment_state", model_id="d0") == 2
    assert scraped.value("trigate_spend_log_queue_depth") == 1
    assert scraped.value("trigate_spend_log_dropped_rows_total") == 0


async def test_names_a_wildcard_matches_are_labelled_by_its_pattern(
    nursery: trio.Nursery,
) -> None:
    """A client may send any name a wildcard deployment matches: the series stay those of
    the pattern, however many names it sends."""
    config = {"model_list": [{"model_name": "mock/*", "litellm_params": {"model": "mock/*"}}]}
    gateway = await start_gateway(nursery, config)
    names = [f"mock/made-up-{i}" for i in range(5)]
    async with gateway.client() as client:
        for name in names:
            reply = await client.post(
                "/v1/chat/completions",
                json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert reply.status_code == 200
    scraped = await scrape(gateway.url)
    assert not any(f"made-up-{i}" in scraped.text for i in range(5))
    total = "litellm_proxy_total_requests_metric_total"
    assert scraped.value(total, requested_model="mock/*", status_code="200") == 5
    ids = {s.labels["model_id"] for s in scraped.samples("litellm_deployment_total_requests_total")}
    assert len(ids) == 1
    await gateway.stop()


def test_a_workers_own_counts_skip_the_values_lock_and_read_back_the_same() -> None:
    """A worker without a multiprocess directory counts into its values' floats without
    taking their locks (`Unlocked`, on the Trio thread alone); the exposition reads the
    same sums and buckets that `inc` and `observe` would have made."""
    registry = CollectorRegistry(auto_describe=False)
    counter = Counter("counted", "c", ("model",), registry=registry)
    histogram = Histogram("timed", "t", ("model",), registry=registry, buckets=LATENCY_BUCKETS)
    counted = tally(counter.labels("m"))
    assert isinstance(counted, Unlocked)
    counted.inc(2)
    counted.inc(0.5)
    Timing(histogram.labels("m")).observe(0.3)
    scrape = Scrape(generate_latest(registry).decode())
    assert scrape.value("counted_total", model="m") == 2.5
    assert scrape.value("timed_sum", model="m") == 0.3
    assert scrape.value("timed_bucket", model="m", le="0.1") == 0
    assert scrape.value("timed_bucket", model="m", le="0.5") == 1

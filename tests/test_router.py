"""The router end to end on virtual time: scripted upstreams, the real app in-process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from asgi_driver import Harness, Reply, chat_request, harness
from fakes import FakeUpstream, StreamReply, chunk, stream_of
from helpers import start_gateway
from scripted import Step, deployment, error, group_config, ok_stream

MESSAGES = [{"role": "user", "content": "hello"}]


def tiers(config: dict[str, Any]) -> dict[str, Any]:
    """Give the deployments orders 1, 2, ... so the first pick is deterministic."""
    for order, entry in enumerate(config["model_list"], start=1):
        entry["litellm_params"]["order"] = order
    return config


async def test_a_retry_goes_to_another_deployment(nursery: trio.Nursery) -> None:
    h = await harness(
        nursery, tiers(group_config(["d0", "d1"])), {"d0": [error(500)], "d1": [Step()]}
    )
    reply = await h.chat()
    assert reply.status == 200 and reply.served_by == "d1"
    assert h.upstreams.served == ["d0", "d1"]
    assert reply.headers["x-trigate-attempted-retries"] == "1"
    assert reply.headers["x-trigate-model-group"] == "g"


async def test_500_500_200_on_one_deployment(nursery: trio.Nursery, virtual_clock: Any) -> None:
    h = await harness(
        nursery,
        group_config(["d0"], router={"num_retries": 2}),
        {"d0": [error(500), error(503), Step()]},
    )
    started = trio.current_time()
    reply = await h.chat()
    assert reply.status == 200 and reply.served_by == "d0"
    assert h.upstreams.served == ["d0", "d0", "d0"]
    assert reply.headers["x-trigate-attempted-retries"] == "2"
    assert trio.current_time() - started >= 0.4 + 0.8  # exponential backoff, with jitter


async def test_retries_run_out(nursery: trio.Nursery, virtual_clock: Any) -> None:
    h = await harness(
        nursery, group_config(["d0"], router={"num_retries": 1}), {"d0": [error(500)]}
    )
    reply = await h.chat()
    assert reply.status == 502 and h.upstreams.served == ["d0", "d0"]
    assert reply.headers["x-trigate-attempted-retries"] == "1"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_and_auth_errors_are_never_retried(nursery: trio.Nursery, status: int) -> None:
    h = await harness(
        nursery,
        group_config(["d0", "d1"], router={"num_retries": 3}),
        {"d0": [error(status)], "d1": [error(status)]},
    )
    reply = await h.chat()
    assert len(h.upstreams.served) == 1
    assert reply.status == (401 if status == 403 else status)


async def test_429_retry_after_is_honoured(nursery: trio.Nursery, virtual_clock: Any) -> None:
    h = await harness(
        nursery,
        group_config(["d0"], router={"num_retries": 1}),
        {"d0": [error(429, **{"retry-after": "7"}), Step()]},
    )
    started = trio.current_time()
    reply = await h.chat()
    assert reply.status == 200 and h.upstreams.served == ["d0", "d0"]
    assert trio.current_time() - started >= 7


async def test_retry_after_ms_is_honoured(nursery: trio.Nursery, virtual_clock: Any) -> None:
    h = await harness(
        nursery,
        group_config(["d0"], router={"num_retries": 1}),
        {"d0": [error(429, **{"retry-after-ms": "2500", "retry-after": "1"}), Step()]},
    )
    started = trio.current_time()
    assert (await h.chat()).status == 200
    assert 2.5 <= trio.current_time() - started < 4


async def test_retry_policy_sets_retries_per_error_class(nursery: trio.Nursery) -> None:
    config = group_config(
        ["d0"], router={"num_retries": 3, "retry_policy": {"RateLimitErrorRetries": 0}}
    )
    h = await harness(nursery, config, {"d0": [error(429)]})
    reply = await h.chat()
    assert reply.status == 429 and h.upstreams.served == ["d0"]


async def test_a_429_cools_the_deployment_for_its_retry_after(
    nursery: trio.Nursery, virtual_clock: Any
) -> None:
    config = tiers(group_config(["d0", "d1"], router={"num_retries": 1}))
    h = await harness(
        nursery, config, {"d0": [error(429, **{"retry-after": "30"}), Step()], "d1": [Step()]}
    )
    for _ in range(12):
        assert (await h.chat()).status == 200
    assert h.upstreams.served.count("d0") == 1, "hit once, then left alone while cooling"
    await trio.sleep(29)
    await h.chat()
    assert h.upstreams.served.count("d0") == 1
    await trio.sleep(2)
    assert (await h.chat()).served_by == "d0", "the cooldown lasted the Retry-After"


async def test_cooldown_then_a_single_half_open_probe(
    nursery: trio.Nursery, virtual_clock: Any
) -> None:
    config = group_config(
        ["d0", "d1"],
        router={"num_retries": 1, "allowed_fails": 1, "cooldown_time": 10},
    )
    d0 = [error(500), error(500), Step(delay=5.0), Step()]
    h = await harness(nursery, config, {"d0": d0, "d1": [Step()]})
    while h.upstreams.served.count("d0") < 2:  # two failures > allowed_fails: d0 cools
        assert (await h.chat()).status == 200
    served_before = len(h.upstreams.served)
    for _ in range(10):
        await h.chat()
    assert "d0" not in h.upstreams.served[served_before:], "a cooling deployment gets nothing"
    await trio.sleep(10)
    # Half-open: many concurrent requests, but only one probes d0 (slowly, and succeeds).
    replies: list[Reply] = []

    async def one() -> None:
        replies.append(await h.chat())

    marker = len(h.upstreams.served)
    async with trio.open_nursery() as burst:
        for _ in range(8):
            burst.start_soon(one)
    assert h.upstreams.served[marker:].count("d0") == 1
    assert all(r.status == 200 for r in replies)
    # The probe succeeded, so the circuit is closed and d0 takes traffic again.
    for _ in range(20):
        await h.chat()
    assert h.upstreams.served[marker:].count("d0") > 1


async def test_all_deployments_cooling_is_429_naming_the_group(
    nursery: trio.Nursery, virtual_clock: Any
) -> None:
    config = group_config(["d0", "d1"], router={"num_retries": 0})
    h = await harness(
        nursery,
        config,
        {"d0": [error(429, **{"retry-after": "20"})], "d1": [error(429, **{"retry-after": "40"})]},
    )
    await h.chat()
    await h.chat()
    reply = await h.chat()
    assert reply.status == 429
    assert "'g'" in reply.json["error"]["message"]
    assert reply.json["error"]["type"] == "rate_limit_error"
    assert 1 <= int(reply.headers["retry-after"]) <= 20


async def test_generic_fallback_after_the_group_fails(nursery: trio.Nursery) -> None:
    config = {
        "model_list": [deployment("d0", "a"), deployment("d1", "b")],
        "router_settings": {"num_retries": 0, "fallbacks": [{"a": ["b"]}]},
    }
    h = await harness(nursery, config, {"d0": [error(500)], "d1": [Step()]})
    reply = await h.chat("a")
    assert reply.status == 200 and reply.served_by == "d1"
    assert reply.headers["x-trigate-model-group"] == "b"
    assert reply.headers["x-trigate-attempted-fallbacks"] == "1"
    [record] = h.records.records
    assert record.model_group == "b" and record.deployment == "d1"


async def test_client_errors_do_not_fall_back(nursery: trio.Nursery) -> None:
    config = {
        "model_list": [deployment("d0", "a"), deployment("d1", "b")],
        "router_settings": {"fallbacks": [{"a": ["b"]}]},
    }
    h = await harness(nursery, config, {"d0": [error(400)], "d1": [Step()]})
    assert (await h.chat("a")).status == 400
    assert h.upstreams.served == ["d0"]


async def test_context_window_error_goes_to_the_context_window_fallback(
    nursery: trio.Nursery,
) -> None:
    config = {
        "model_list": [
            deployment("d0", "small"),
            deployment("d1", "big"),
            deployment("d2", "other"),
        ],
        "router_settings": {
            "fallbacks": [{"small": ["other"]}],
            "context_window_fallbacks": [{"small": ["big"]}],
        },
    }
    h = await harness(
        nursery,
        config,
        {
            "d0": [error(400, "too long", code="context_length_exceeded")],
            "d1": [Step()],
            "d2": [Step()],
        },
    )
    reply = await h.chat("small")
    assert reply.status == 200 and reply.served_by == "d1"


async def test_pre_call_count_skips_a_too_small_model(nursery: trio.Nursery) -> None:
    config = {
        "model_list": [
            deployment("d0", "small", model_info={"max_input_tokens": 5}),
            deployment("d1", "big"),
        ],
        "router_settings": {"context_window_fallbacks": [{"small": ["big"]}]},
    }
    h = await harness(nursery, config, {"d0": [Step()], "d1": [Step()]})
    long = [{"role": "user", "content": "word " * 50}]
    exchange = chat_request(h.nursery, h.app, {"model": "small", "messages": long})
    start = await exchange.start()
    assert start["status"] == 200
    assert h.upstreams.served == ["d1"], "the small model is never called"


async def test_without_a_context_window_fallback_the_400_stands(nursery: trio.Nursery) -> None:
    config = {"model_list": [deployment("d0", "small", model_info={"max_input_tokens": 5})]}
    h = await harness(nursery, config, {"d0": [Step()]})
    exchange = chat_request(
        h.nursery, h.app, {"model": "small", "messages": [{"role": "user", "content": "x " * 40}]}
    )
    start = await exchange.start()
    body = orjson.loads(await exchange.read_body())
    assert start["status"] == 400 and body["error"]["code"] == "context_length_exceeded"
    assert h.upstreams.served == []


async def test_content_policy_fallback(nursery: trio.Nursery) -> None:
    config = {
        "model_list": [deployment("d0", "strict"), deployment("d1", "lenient")],
        "router_settings": {"content_policy_fallbacks": [{"strict": ["lenient"]}]},
    }
    h = await harness(
        nursery,
        config,
        {
            "d0": [error(400, "flagged by content management policy", code="content_filter")],
            "d1": [Step()],
        },
    )
    assert (await h.chat("strict")).served_by == "d1"


async def test_per_request_fallbacks_and_max_fallbacks(nursery: trio.Nursery) -> None:
    config = {
        "model_list": [deployment("d0", "a"), deployment("d1", "b"), deployment("d2", "c")],
        "router_settings": {"num_retries": 0, "max_fallbacks": 1},
    }
    h = await harness(nursery, config, {"d0": [error(500)], "d1": [error(500)], "d2": [Step()]})
    reply = await h.chat("a", fallbacks=["b", "c"])
    assert reply.status == 502, "max_fallbacks stops the chain after b"
    assert h.upstreams.served == ["d0", "d1"]
    assert all("fallbacks" not in body for body in h.upstreams.bodies), "a gateway field"


async def test_rpm_cap_and_order_tiers(nursery: trio.Nursery, virtual_clock: Any) -> None:
    config = {
        "model_list": [
            deployment("d0", "g", order=1, rpm=2),
            deployment("d1", "g", order=2),
        ]
    }
    h = await harness(nursery, config, {"d0": [Step()], "d1": [Step()]})
    served = [(await h.chat()).served_by for _ in range(4)]
    assert served == ["d0", "d0", "d1", "d1"], "the lower tier only when the first is capped"
    await trio.sleep(60)
    assert (await h.chat()).served_by == "d0", "a new minute, a fresh rpm budget"


async def test_max_parallel_requests_is_a_hard_cap(nursery: trio.Nursery) -> None:
    config = {
        "model_list": [
            deployment("d0", "g", order=1, max_parallel_requests=1),
            deployment("d1", "g", order=2),
        ]
    }
    release = trio.Event()
    h = await harness(nursery, config, {"d0": [Step(gate=release)], "d1": [Step()]})
    replies: list[Reply] = []

    async def one() -> None:
        replies.append(await h.chat())

    async with trio.open_nursery() as burst:
        burst.start_soon(one)
        await h.upstreams.wait_for(lambda: h.upstreams.served)
        await one()
        release.set()
    assert [r.served_by for r in replies] == ["d1", "d0"]


async def test_latency_based_routing_prefers_the_fastest(
    nursery: trio.Nursery, virtual_clock: Any
) -> None:
    config = group_config(["slow", "fast"], router={"routing_strategy": "latency-based-routing"})
    h = await harness(nursery, config, {"slow": [Step(delay=2.0)], "fast": [Step(delay=0.1)]})
    for _ in range(4):
        await h.chat()
    assert {"slow", "fast"} <= set(h.upstreams.served) or h.upstreams.served[0] == "fast"
    marker = len(h.upstreams.served)
    for _ in range(10):
        await h.chat()
    assert set(h.upstreams.served[marker:]) == {"fast"}


async def test_least_busy_routing(nursery: trio.Nursery) -> None:
    config = group_config(["d0", "d1"], router={"routing_strategy": "least-busy"})
    release = trio.Event()
    h = await harness(nursery, config, {"d0": [Step(gate=release)], "d1": [Step(gate=release)]})
    replies: list[Reply] = []

    async def one() -> None:
        replies.append(await h.chat())

    def served(count: int) -> Callable[[], bool]:
        return lambda: len(h.upstreams.served) == count

    async with trio.open_nursery() as burst:
        for started in range(1, 5):
            burst.start_soon(one)
            await h.upstreams.wait_for(served(started))
        release.set()
    assert Counter(r.served_by for r in replies) == {"d0": 2, "d1": 2}


async def test_a_stalled_first_token_moves_to_the_next_deployment(
    nursery: trio.Nursery, virtual_clock: Any
) -> None:
    config = tiers(group_config(["d0", "d1"], stream_timeout=3))
    h = await harness(
        nursery, config, {"d0": [ok_stream(["late"], first_delay=60.0)], "d1": [ok_stream(["hi"])]}
    )
    reply = await h.chat(stream=True)
    assert reply.status == 200 and reply.served_by == "d1"
    assert h.upstreams.cancelled == ["d0"], "the stalled attempt was cancelled upstream"
    assert b"hi" in reply.body and b"late" not in reply.body


async def test_a_failure_mid_stream_is_not_retried(nursery: trio.Nursery) -> None:
    broken = Step(frames=[chunk("part"), b'data: {"error": {"message": "upstream fell over"}}\n\n'])
    h = await harness(
        nursery,
        group_config(["d0", "d1"], router={"num_retries": 3}),
        {"d0": [broken], "d1": [broken]},
    )
    reply = await h.chat(stream=True)
    assert reply.status == 200 and len(h.upstreams.served) == 1
    events = [e for e in reply.body.split(b"\n\n") if e]
    assert b"upstream fell over" in events[-2] and events[-1] == b"data: [DONE]"


async def test_hedging_cancels_the_loser_and_bills_the_winner(
    nursery: trio.Nursery, virtual_clock: Any
) -> None:
    config = tiers(group_config(["slow", "fast"], router={"hedge_after_ms": 500}))
    h = await harness(
        nursery,
        config,
        {"slow": [ok_stream(["slow"], first_delay=30.0)], "fast": [ok_stream(["fast", "!"])]},
    )
    started = trio.current_time()
    reply = await h.chat(stream=True)
    assert reply.status == 200 and reply.served_by == "fast"
    assert trio.current_time() - started < 5
    assert h.upstreams.cancelled == ["slow"]
    await h.records.wait_for(1)
    [record] = h.records.records
    assert record.deployment == "fast" and record.completion_tokens == 2
    assert h.gateway.groups.deployments("g")[0].state.in_flight == 0
    assert h.gateway.groups.deployments("g")[1].state.in_flight == 0


async def health(h: Harness) -> dict[str, Any]:
    exchange = chat_request(h.nursery, h.app, None, path="/health", method="GET")
    assert (await exchange.start())["status"] == 200
    report: dict[str, Any] = orjson.loads(await exchange.read_body())
    return report


async def test_health_report(nursery: trio.Nursery, virtual_clock: Any) -> None:
    config = tiers(group_config(["d0", "d1"], router={"num_retries": 0}))
    h = await harness(nursery, config, {"d0": [error(401)], "d1": [Step(gate=trio.Event())]})
    await h.chat()  # d0's credentials are refused: it cools at once
    nursery.start_soon(h.chat)  # one request in flight on d1
    await h.upstreams.wait_for(lambda: len(h.upstreams.served) == 2)
    report = await health(h)
    assert report["healthy_count"] == 1 and report["unhealthy_count"] == 1
    [d0] = report["unhealthy_endpoints"]
    [d1] = report["healthy_endpoints"]
    assert d0["deployment"] == "d0" and d0["cooling_down_for"] > 0
    assert d1["in_flight"] == 1
    assert "sk-d0-key" not in str(report)


async def test_background_health_checks_cool_a_dead_deployment(
    nursery: trio.Nursery, virtual_clock: Any
) -> None:
    config = group_config(
        ["d0", "d1"],
        router={"background_health_checks": True, "health_check_interval": 60, "allowed_fails": 0},
    )
    h = await harness(nursery, config, {"d0": [error(500)], "d1": [Step()]})
    await trio.sleep(1)
    assert sorted(h.upstreams.served) == ["d0", "d1"], "each deployment probed once"
    assert all(body["max_tokens"] == 1 for body in h.upstreams.bodies)
    report = await health(h)
    assert [e["deployment"] for e in report["unhealthy_endpoints"]] == ["d0"]
    await trio.sleep(60)
    assert len(h.upstreams.served) == 4, "and again after the interval"


async def test_a_hedge_losers_connection_is_closed_at_the_upstream(nursery: trio.Nursery) -> None:
    """On real sockets: the losing upstream itself sees the connection go."""
    slow, fast = FakeUpstream(), FakeUpstream()
    await slow.start(nursery)
    await fast.start(nursery)
    slow.handler = lambda request: StreamReply([30.0, *stream_of(["slow"]).frames])
    fast.handler = lambda request: stream_of(["fast"])
    config = {
        "model_list": [
            {
                "model_name": "g",
                "litellm_params": {"model": "openai/m", "api_base": up.base_url, "order": order},
                "model_info": {"id": name},
            }
            for order, (name, up) in enumerate([("slow", slow), ("fast", fast)], start=1)
        ],
        "router_settings": {"hedge_after_ms": 100},
    }
    running = await start_gateway(nursery, config)
    async with running.client() as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "g", "messages": MESSAGES, "stream": True}
        )
    assert response.headers["x-trigate-deployment"] == "fast"
    assert '"fast"' in response.text
    with trio.fail_after(5):
        await slow.wait_for(lambda: slow.aborted == 1)
    await running.stop()

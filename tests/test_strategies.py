"""Routing strategies and the circuit breaker, unit by unit."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from trigate.config import ModelEntry
from trigate.errors import Failure, UpstreamError
from trigate.router.deployments import Deployment
from trigate.router.state import CircuitBreaker, DeploymentState
from trigate.router.strategies import Pick
from trigate.spend.prices import PriceTable, price_for


def make(name: str, **params: Any) -> Deployment:
    entry = ModelEntry.model_validate(
        {"model_name": "g", "litellm_params": {"model": f"openai/{name}", **params}}
    )
    given = entry.litellm_params
    price = price_for(
        "openai", name, given.input_cost_per_token, given.output_cost_per_token, PriceTable({})
    )
    state = DeploymentState(CircuitBreaker(3, 5))
    return Deployment(name, "g", entry, None, state, price)  # type: ignore[arg-type]


def picks(strategy: str, deployments: list[Deployment], n: int, **args: Any) -> Counter[str]:
    pick = Pick(strategy, args)
    return Counter(pick(deployments, stream=False, now=0.0).id for _ in range(n))


def test_simple_shuffle_follows_weights_within_statistical_bounds() -> None:
    n = 4000
    counts = picks("simple-shuffle", [make("a", weight=1), make("b", weight=3)], n)
    expected, sigma = n * 0.75, math.sqrt(n * 0.75 * 0.25)
    assert abs(counts["b"] - expected) < 5 * sigma


def test_simple_shuffle_weighs_by_rpm_when_no_weight() -> None:
    n = 4000
    counts = picks("simple-shuffle", [make("a", rpm=100), make("b", rpm=900)], n)
    expected, sigma = n * 0.9, math.sqrt(n * 0.9 * 0.1)
    assert abs(counts["b"] - expected) < 5 * sigma


def test_round_robin_takes_turns() -> None:
    pick = Pick("round-robin", {})
    group = [make("a"), make("b"), make("c")]
    assert [pick(group, stream=False, now=0).id for _ in range(6)] == list("abcabc")


def test_cost_based_picks_the_cheapest() -> None:
    cheap = make("cheap", input_cost_per_token=1e-7, output_cost_per_token=2e-7)
    dear = make("dear", input_cost_per_token=1e-5, output_cost_per_token=3e-5)
    unpriced = make("unpriced")
    assert picks("cost-based-routing", [dear, unpriced, cheap], 50) == {"cheap": 50}


def test_usage_based_picks_the_most_headroom() -> None:
    busy, idle = make("busy", tpm=1000), make("idle", tpm=1000)
    busy.state.add_tokens(900, now=0)
    idle.state.add_tokens(100, now=0)
    assert picks("usage-based-routing-v2", [busy, idle], 20) == {"idle": 20}


def test_least_busy_and_latency_buffer() -> None:
    a, b = make("a"), make("b")
    a.state.in_flight, b.state.in_flight = 3, 1
    assert picks("least-busy", [a, b], 20) == {"b": 20}
    a.state.latency, b.state.latency = 1.0, 1.05
    assert set(picks("latency-based-routing", [a, b], 200, lowest_latency_buffer=0.1)) == {"a", "b"}
    assert picks("latency-based-routing", [a, b], 50) == {"a": 50}


def test_streams_are_routed_by_time_to_first_token() -> None:
    a, b = make("a"), make("b")
    a.state.latency, a.state.ttft = 10.0, 0.2  # long answers, quick first token
    b.state.latency, b.state.ttft = 5.0, 1.0
    pick = Pick("latency-based-routing", {})
    assert pick([a, b], stream=True, now=0).id == "a"
    assert pick([a, b], stream=False, now=0).id == "b"


def failure(
    kind: Failure, retry_after: float | None = None, status: int | None = None
) -> UpstreamError:
    return UpstreamError("x", kind=kind, retry_after=retry_after, upstream_status=status)


def test_breaker_counts_failures_in_a_rolling_minute() -> None:
    breaker = CircuitBreaker(allowed_fails=2, cooldown_time=5)
    for t in (0, 10, 20):
        assert breaker.available(t)
        breaker.failed(failure(Failure.SERVER), t)
    assert not breaker.available(21) and breaker.available(25)


def test_failures_older_than_a_minute_are_forgotten() -> None:
    breaker = CircuitBreaker(allowed_fails=2, cooldown_time=5)
    for t in (0, 30, 61, 95):
        breaker.failed(failure(Failure.SERVER), t)
    assert breaker.available(96)


@pytest.mark.parametrize("kind", [Failure.RATE_LIMIT, Failure.AUTH, Failure.NOT_FOUND])
def test_some_failures_cool_at_once(kind: Failure) -> None:
    breaker = CircuitBreaker(allowed_fails=10, cooldown_time=5)
    breaker.failed(failure(kind), 0)
    assert not breaker.available(4.9) and breaker.available(5)


def test_a_408_cools_at_once() -> None:
    breaker = CircuitBreaker(allowed_fails=10, cooldown_time=5)
    breaker.failed(failure(Failure.TIMEOUT, status=408), 0)
    assert not breaker.available(1)


def test_client_faults_do_not_count() -> None:
    breaker = CircuitBreaker(allowed_fails=0, cooldown_time=5)
    for kind in (Failure.BAD_REQUEST, Failure.CONTEXT_WINDOW, Failure.CONTENT_POLICY):
        breaker.failed(failure(kind), 0)
    assert breaker.available(0)


def test_cooling_again_keeps_the_later_deadline() -> None:
    breaker = CircuitBreaker(allowed_fails=0, cooldown_time=5)
    breaker.failed(failure(Failure.RATE_LIMIT, retry_after=30), 0)
    breaker.failed(failure(Failure.RATE_LIMIT, retry_after=2), 1)
    assert breaker.cooldown_until == 30


def test_half_open_admits_one_probe() -> None:
    breaker = CircuitBreaker(allowed_fails=0, cooldown_time=5)
    breaker.failed(failure(Failure.SERVER), 0)
    assert breaker.available(5)
    breaker.admit(5)
    assert not breaker.available(5), "one probe at a time"
    breaker.failed(failure(Failure.SERVER), 6)
    assert not breaker.available(10) and breaker.available(11)
    breaker.admit(11)
    breaker.succeeded()
    assert breaker.available(11) and breaker.cooldown_until == -math.inf


def test_a_lone_deployment_never_cools() -> None:
    breaker = CircuitBreaker(allowed_fails=0, cooldown_time=5, enabled=False)
    breaker.failed(failure(Failure.RATE_LIMIT, retry_after=60), 0)
    assert breaker.available(0)

"""Deployment health: background probes, and the report `GET /health` serves.

Probes are cheap real requests (one token of output), run concurrently, and
their results feed the same circuit breakers real traffic does, so a dead
deployment is cooled before a client finds out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

from trigate.errors import UpstreamError
from trigate.router.deployments import Deployment
from trigate.router.router import UNOBSERVED, RouteObserver, Router

PROBE_BODY = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
PROBE_TIMEOUT = 30.0


async def probe(deployment: Deployment, observer: RouteObserver = UNOBSERVED) -> bool:
    """One health request; its outcome goes to the deployment's breaker, and a cooldown
    it causes to `observer`."""
    state = deployment.state
    try:
        with trio.fail_after(min(deployment.params.timeout, PROBE_TIMEOUT)):
            await deployment.provider.complete(dict(PROBE_BODY))
    except (UpstreamError, trio.TooSlowError) as failure:
        if isinstance(failure, UpstreamError):
            cooled_until = state.breaker.cooldown_until
            state.breaker.failed(failure, trio.current_time())
            if state.breaker.cooldown_until > cooled_until:
                observer.cooled(deployment, failure)
        state.last_probe_ok = False
        return False
    state.breaker.succeeded()
    state.last_probe_ok = True
    return True


async def run_health_checks(
    current: Callable[[], Router], observer: RouteObserver = UNOBSERVED
) -> None:
    """While `background_health_checks` is on, probe every deployment every
    `health_check_interval` seconds, until cancelled. `current()` is the router of the
    moment, so each round follows the last reload's deployments and settings."""
    while True:
        router = current()
        if router.settings.background_health_checks:
            async with trio.open_nursery() as nursery:
                for deployment in router.groups.all():
                    nursery.start_soon(probe, deployment, observer)
        await trio.sleep(router.settings.health_check_interval)


def health_report(router: Router, visible: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """LiteLLM's /health shape, plus each deployment's breaker and load. Given `visible`,
    only the model groups it allows, and without `api_base`: a virtual key's view, which
    must not map the gateway's upstreams."""
    now = trio.current_time()
    healthy: list[dict[str, Any]] = []
    unhealthy: list[dict[str, Any]] = []
    for deployment in router.groups.all():
        if visible is not None and not visible(deployment.model_group):
            continue
        entry = _describe(deployment, now)
        if visible is not None:
            del entry["api_base"]
        (healthy if entry["healthy"] else unhealthy).append(entry)
    return {
        "healthy_endpoints": healthy,
        "unhealthy_endpoints": unhealthy,
        "healthy_count": len(healthy),
        "unhealthy_count": len(unhealthy),
    }


def _describe(deployment: Deployment, now: float) -> dict[str, Any]:
    state = deployment.state
    cooling_for = max(state.breaker.cooldown_until - now, 0.0)
    if math.isinf(cooling_for):
        cooling_for = 0.0
    return {
        "model_group": deployment.model_group,
        "deployment": deployment.id,
        "model": deployment.params.model,
        "api_base": deployment.params.api_base,
        "healthy": cooling_for == 0 and state.last_probe_ok is not False,
        "cooling_down_for": round(cooling_for, 3),
        "last_probe_ok": state.last_probe_ok,
        "in_flight": state.in_flight,
        # The router's smoothed latencies (whole answers; streams' first token), as the
        # latency-based strategy reads them; None before the first request.
        "latency_ms": _ms(state.latency),
        "ttft_ms": _ms(state.ttft),
    }


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None

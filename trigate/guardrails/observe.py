"""What operators see of each guardrail run: LiteLLM's Prometheus metrics
(`litellm_guardrail_requests_total`, `litellm_guardrail_errors_total`,
`litellm_guardrail_latency_seconds`, with LiteLLM's labels) and a span in the request's
trace."""

from __future__ import annotations

import time
import weakref
from bisect import bisect_left
from typing import Any, cast

from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram

from trigate.metrics import LATENCY_BUCKETS, Metrics, Tally, Timing, Unlocked, tally
from trigate.tracing import OpenSpan

_made: weakref.WeakKeyDictionary[Metrics, Observer] = weakref.WeakKeyDictionary()


class Observer:
    """The guardrail metrics of one registry (made once per `Metrics`: a reload's new
    guardrails count into the same series)."""

    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self._tallies: dict[tuple[int, tuple[str, ...]], Tally] = {}
        self._timings: dict[tuple[str, ...], Timing] = {}
        # What one run counts into, by (name, mode, status, error type): found by one
        # lookup on every run, where each series' own key was built and looked up apart.
        self._series: dict[tuple[str, str, str, str | None], Series] = {}
        self.requests = Counter(
            "litellm_guardrail_requests_total",
            "Total number of guardrail invocations",
            ("guardrail_name", "status", "hook_type"),
            registry=registry,
        )
        self.errors = Counter(
            "litellm_guardrail_errors_total",
            "Total number of errors encountered during guardrail execution",
            ("guardrail_name", "error_type", "hook_type"),
            registry=registry,
        )
        self.latency = Histogram(
            "litellm_guardrail_latency_seconds",
            "Guardrail execution latency in seconds",
            ("guardrail_name", "status", "error_type", "hook_type"),
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )

    def _tally(self, metric: Counter, labels: tuple[str, ...]) -> Tally:
        """A labelled child's value, found once and counted into directly, as the
        request path's metrics are (`trigate.metrics.tally`): `.labels()` validates and
        hashes its labels under a lock on every call."""
        key = (id(metric), labels)
        found = self._tallies.get(key)
        if found is None:
            found = self._tallies[key] = tally(metric.labels(*labels))
        return found

    def _timing(self, labels: tuple[str, ...]) -> Timing:
        found = self._timings.get(labels)
        if found is None:
            found = self._timings[labels] = Timing(self.latency.labels(*labels))
        return found

    @classmethod
    def of(cls, metrics: Metrics) -> Observer:
        found = _made.get(metrics)
        if found is None:
            found = _made[metrics] = cls(metrics)
        return found

    def observed(
        self,
        name: str,
        mode: str,
        status: str,
        error_type: str | None,
        elapsed: float,
        parent: Any,
    ) -> None:
        self.series(name, mode, status, error_type).count(elapsed)
        self.traced(parent, name, mode, status, elapsed)

    def series(self, name: str, mode: str, status: str, error_type: str | None) -> Series:
        """What a run of guardrail `name` in `mode` that ends so counts into: found once
        (the runner's plan keeps each guardrail's and mode's successful one)."""
        key = (name, mode, status, error_type)
        found = self._series.get(key)
        if found is None:
            errors = None
            if error_type is not None:
                errors = self._tally(self.errors, (name, error_type, mode))
            timing = self._timing((name, status, error_type or "", mode))
            requests = self._tally(self.requests, (name, status, mode))
            found = self._series[key] = _series(requests, errors, timing)
        return found

    @staticmethod
    def traced(parent: Any, name: str, mode: str, status: str, elapsed: float) -> None:
        """The run's span, where the request has one."""
        if isinstance(parent, OpenSpan):
            _span(parent, name, mode, status, elapsed)


class Series:
    """A run's request count, error count (None: no error) and latency."""

    __slots__ = ("errors", "requests", "timing")

    def __init__(self, requests: Tally, errors: Tally | None, timing: Timing) -> None:
        self.requests = requests
        self.errors = errors
        self.timing = timing

    def count(self, elapsed: float) -> None:
        self.requests.inc(1)
        if self.errors is not None:
            self.errors.inc(1)
        self.timing.observe(elapsed)


class _UnlockedSeries(Series):
    """A run's series whose values are a worker's own floats (`Unlocked`, every one but
    multiprocess mode's), with no error count (a successful run's): counted into in one
    call, as `Series.count` counts (the sum, then the first bucket whose upper bound is
    at least the amount), where that takes five."""

    __slots__ = ("_bounds", "_buckets", "_count", "_sum")

    def __init__(self, requests: Unlocked, timing: Timing) -> None:
        super().__init__(requests, None, timing)
        self._count = requests._value
        self._sum = cast(Unlocked, timing._sum)._value
        self._buckets = [cast(Unlocked, bucket)._value for bucket in timing._buckets]
        self._bounds = timing._bounds

    def count(self, elapsed: float) -> None:
        self._count._value += 1
        self._sum._value += elapsed
        self._buckets[bisect_left(self._bounds, elapsed)]._value += 1


def _series(requests: Tally, errors: Tally | None, timing: Timing) -> Series:
    tallies = [requests, timing._sum, *timing._buckets]
    if errors is None and all(type(value) is Unlocked for value in tallies):
        return _UnlockedSeries(cast(Unlocked, requests), timing)
    return Series(requests, errors, timing)


def _span(parent: OpenSpan, name: str, mode: str, status: str, elapsed: float) -> None:
    """A finished child span of the request's, for one guardrail run."""
    span = OpenSpan(
        parent._tracing,
        f"guardrail {name}",
        SpanKind.INTERNAL,
        parent.context.trace_id,
        parent.context,
        {
            "trigate.guardrail.name": name,
            "trigate.guardrail.mode": mode,
            "trigate.guardrail.status": status,
        },
    )
    span.start = time.time_ns() - int(elapsed * 1e9)
    span.end()

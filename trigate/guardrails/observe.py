"""What operators see of each guardrail run: LiteLLM's Prometheus metrics
(`litellm_guardrail_requests_total`, `litellm_guardrail_errors_total`,
`litellm_guardrail_latency_seconds`, with LiteLLM's labels) and a span in the request's
trace."""

from __future__ import annotations

import time
import weakref
from typing import Any

from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram

from trigate.metrics import LATENCY_BUCKETS, Metrics, Tally, Timing, tally
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
        self._series: dict[tuple[str, str, str, str | None], _Series] = {}
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
        key = (name, mode, status, error_type)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._series_of(name, mode, status, error_type)
        requests, errors, timing = series
        requests.inc(1)
        if errors is not None:
            errors.inc(1)
        timing.observe(elapsed)
        if isinstance(parent, OpenSpan):
            _span(parent, name, mode, status, elapsed)

    def _series_of(self, name: str, mode: str, status: str, error_type: str | None) -> _Series:
        errors = None
        if error_type is not None:
            errors = self._tally(self.errors, (name, error_type, mode))
        timing = self._timing((name, status, error_type or "", mode))
        return self._tally(self.requests, (name, status, mode)), errors, timing


# A run's request count, error count (None: no error) and latency.
_Series = tuple[Tally, Tally | None, Timing]


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

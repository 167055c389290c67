"""Prometheus metrics: LiteLLM's names, types and labels, and trigate's own.

Dashboards built for LiteLLM's proxy must work unchanged, so every `litellm_*`
metric has LiteLLM's name, type and label set. Label values come only from the
configuration and the key store (model groups, deployments, key hashes and
aliases, teams, users); a model name a client made up is `other`, and the labels
LiteLLM fills from the request itself (`end_user`, `client_ip`, `user_agent`)
stay empty, so the series count is bounded by what an operator configured.

The request path is hot, and `.labels(...)` is costly (it validates and hashes
the label tuple under a lock), so each request finds its labelled children in a
`Series` cached per (key, model group, deployment) and records everything once,
where its spend record is written. It counts straight into the children's values
(`tally`, `Timing`; a worker's own without their locks, `Unlocked`): the wrappers'
`inc` and `observe` re-check on every call what a
labelled child and the gateway's non-negative counts always satisfy, and a histogram's
bucket is found by bisection rather than a loop in Python.

With `--workers N`, the supervisor gives every worker one PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, which reads it when first imported), and
`/metrics` answers the sum over the workers whichever worker serves it. Gauges say
how they combine across workers (`multiprocess_mode`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.values import MutexValue

if TYPE_CHECKING:
    from trigate.auth import Caller
    from trigate.errors import GatewayError
    from trigate.router.deployments import Deployment
    from trigate.spend import RequestRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# What a model name that no configuration knows is counted as.
OTHER = "other"
# LiteLLM's latency buckets, in seconds, so that its dashboards' quantiles read the same.
LATENCY_BUCKETS = (
    0.005, 0.00625, 0.0125, 0.025, 0.05, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0,
    4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 15.0, 20.0, 25.0, 30.0,
    60.0, 120.0, 180.0, 240.0, 300.0, float("inf"),
)  # fmt: skip

# LiteLLM's label sets, by metric (litellm/types/integrations/prometheus.py).
_KEY = ("hashed_api_key", "api_key_alias")
_TEAM = ("team", "team_alias")
_DEPLOYMENT = ("litellm_model_name", "model_id", "api_base", "api_provider")
PROXY_TOTAL = (
    "end_user", *_KEY, "requested_model", *_TEAM, "user", "status_code", "user_email",
    "route", "client_ip", "user_agent", "model_id",
)  # fmt: skip
PROXY_FAILED = (
    "end_user", *_KEY, "requested_model", *_TEAM, "user", "user_email", "exception_status",
    "exception_class", "route", "client_ip", "user_agent", "model_id",
)  # fmt: skip
SPEND = (
    "end_user", *_KEY, "model", *_TEAM, "user", "user_email", "client_ip", "user_agent",
    "model_id",
)  # fmt: skip
TOKENS = ("end_user", *_KEY, "model", *_TEAM, "user", "user_email", "requested_model", "model_id")
TOTAL_LATENCY = ("end_user", *_KEY, "requested_model", *_TEAM, "user", "model", "model_id")
API_LATENCY = ("model", *_KEY, *_TEAM, "requested_model", "end_user", "user", "model_id")
PER_DEPLOYMENT_KEY = ("model_group", "api_provider", "api_base", "litellm_model_name", *_KEY,
                      "model_id")  # fmt: skip
DEPLOYMENT_REQUESTS = ("requested_model", *_DEPLOYMENT, *_KEY, *_TEAM, "client_ip", "user_agent")
DEPLOYMENT_FAILURES = (
    "requested_model", *_DEPLOYMENT, "exception_status", "exception_class", *_KEY, *_TEAM,
    "client_ip", "user_agent",
)  # fmt: skip
FALLBACKS = (
    "requested_model", "fallback_model", *_KEY, *_TEAM, "exception_status", "exception_class",
    "model_id",
)  # fmt: skip

M = TypeVar("M", bound=MetricWrapperBase)

# LiteLLM's deployment states.
HEALTHY, PARTIAL_OUTAGE, COMPLETE_OUTAGE = 0, 1, 2


class Tally(Protocol):
    """A value prometheus-client keeps for a labelled child: a float (counted into without
    its lock: `Unlocked`), or in multiprocess mode a slot in the worker's file. The
    exposition reads it as it is."""

    def inc(self, amount: float) -> None: ...


def tally(child: Counter | Gauge) -> Tally:
    """The value `child` keeps, to count straight into. `Counter.inc` checks, per call,
    that the child is labelled and the amount not negative: true of every child the
    request path counts in (made by `.labels`, counting requests, tokens, cost)."""
    value: Any = getattr(child, "_value")  # noqa: B009 (prometheus-client's own)
    return _unlocked(value)


def _unlocked(value: Any) -> Tally:
    """A worker's own value counted without its lock (`Unlocked`); a multiprocess value
    as it is: it also writes the worker's file, under a lock its module shares."""
    return Unlocked(value) if type(value) is MutexValue else cast(Tally, value)


class Unlocked:
    """A float prometheus-client keeps under a lock (`MutexValue`), counted into without
    taking it: taking and releasing it cost a count twice what the sum does, some 1,900
    instructions a count, and a request makes a dozen or more. Only the Trio thread
    counts into these, and the exposition reads them on it too (a worker without a
    multiprocess directory renders on the Trio thread), so no other thread ever races
    a count; a float read while one is made is the value before or after it. Code
    run in a worker thread (`trio.to_thread`) must not count through these: a `+=`
    raced by another thread can lose a count."""

    __slots__ = ("_value",)

    def __init__(self, value: MutexValue) -> None:
        self._value = value

    def inc(self, amount: float) -> None:
        self._value._value += amount


class Timing:
    """A labelled histogram child, observed as `Histogram.observe` does (the sum, then
    the first bucket whose upper bound is at least the amount), with the bucket found by
    bisection instead of its loop in Python over 36 bounds."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Histogram) -> None:
        parts: Any = child  # prometheus-client's own fields: the bounds and their values
        self._bounds: list[float] = list(parts._upper_bounds)
        self._buckets: list[Tally] = [_unlocked(bucket) for bucket in parts._buckets]
        self._sum: Tally = _unlocked(parts._sum)

    def observe(self, amount: float) -> None:
        self._sum.inc(amount)
        self._buckets[bisect_left(self._bounds, amount)].inc(1)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def make_multiprocess_dir() -> str:
    """A fresh directory for the workers' metric files; the supervisor removes it."""
    path = tempfile.mkdtemp(prefix="trigate-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters still count in the sums)."""
    path = multiprocess_dir()
    if path is not None:
        # prometheus-client leaves its multiprocess helpers unannotated.
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def public_api_base(api_base: str | None) -> str:
    """The deployment's base URL without credentials or a query, which may carry keys."""
    if not api_base:
        return ""
    parts = urlsplit(api_base)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True, slots=True)
class CallerLabels:
    """The key-store labels of a caller: bounded by the keys, teams and users that exist.
    The master key's requests have empty key labels."""

    hashed_api_key: str = ""
    api_key_alias: str = ""
    team: str = ""
    team_alias: str = ""
    user: str = ""
    user_email: str = ""

    @classmethod
    def of(cls, caller: Caller | None) -> CallerLabels:
        if caller is None or caller.key is None:
            return ANONYMOUS
        team = caller.team or {}
        user = caller.user or {}
        return cls(
            caller.key_hash or "",
            caller.key_alias or "",
            caller.team_id or "",
            team.get("team_alias") or "",
            caller.user_id or "",
            user.get("user_email") or "",
        )


ANONYMOUS = CallerLabels()


class Series:
    """One (caller, model group, deployment)'s labelled children, made once and reused
    by every request that shares them; per-status children are made when first seen."""

    __slots__ = (
        "_metrics",
        "api_latency",
        "by_status",
        "caller",
        "deployment",
        "failed",
        "input_tokens",
        "output_tokens",
        "overhead",
        "requested_model",
        "requests",
        "route",
        "spend",
        "total_latency",
        "total_tokens",
        "ttft",
    )

    def __init__(
        self,
        metrics: Metrics,
        caller: CallerLabels,
        requested_model: str,
        deployment: Deployment | None,
        route: str,
    ) -> None:
        self._metrics = metrics
        self.caller = caller
        self.requested_model = requested_model
        self.deployment = deployment
        self.route = route
        c = caller
        model_id = deployment.label_id if deployment else ""
        model = deployment.label_model if deployment else ""
        self.requests = tally(metrics.requests.labels(
            "", c.hashed_api_key, c.api_key_alias, model, c.team, c.team_alias, c.user,
            c.user_email, "", "", model_id,
        ))  # fmt: skip
        self.spend = tally(metrics.spend.labels(
            "", c.hashed_api_key, c.api_key_alias, model, c.team, c.team_alias, c.user,
            c.user_email, "", "", model_id,
        ))  # fmt: skip
        tokens = (
            "", c.hashed_api_key, c.api_key_alias, model, c.team, c.team_alias, c.user,
            c.user_email, requested_model, model_id,
        )  # fmt: skip
        self.input_tokens = tally(metrics.input_tokens.labels(*tokens))
        self.output_tokens = tally(metrics.output_tokens.labels(*tokens))
        self.total_tokens = tally(metrics.total_tokens.labels(*tokens))
        self.total_latency = Timing(metrics.total_latency.labels(
            "", c.hashed_api_key, c.api_key_alias, requested_model, c.team, c.team_alias, c.user,
            model, model_id,
        ))  # fmt: skip
        api = (
            model, c.hashed_api_key, c.api_key_alias, c.team, c.team_alias, requested_model, "",
            c.user, model_id,
        )  # fmt: skip
        self.api_latency = Timing(metrics.api_latency.labels(*api))
        self.ttft = Timing(metrics.ttft.labels(*api))
        self.overhead = (
            Timing(metrics.overhead.labels(*metrics.per_deployment_key(deployment, c)))
            if deployment is not None
            else None
        )
        self.by_status: dict[int, Tally] = {}
        self.failed: dict[tuple[int, str], Tally] = {}

    def total(self, status: int) -> Tally:
        child = self.by_status.get(status)
        if child is None:
            c = self.caller
            child = self.by_status[status] = tally(self._metrics.proxy_total.labels(
                "", c.hashed_api_key, c.api_key_alias, self.requested_model, c.team,
                c.team_alias, c.user, str(status), c.user_email, self.route, "", "",
                self.deployment.label_id if self.deployment else "",
            ))  # fmt: skip
        return child

    def failure(self, status: int, exception_class: str) -> Tally:
        child = self.failed.get((status, exception_class))
        if child is None:
            c = self.caller
            child = self.failed[status, exception_class] = tally(self._metrics.proxy_failed.labels(
                "", c.hashed_api_key, c.api_key_alias, self.requested_model, c.team,
                c.team_alias, c.user, c.user_email, str(status), exception_class, self.route,
                "", "", self.deployment.label_id if self.deployment else "",
            ))  # fmt: skip
        return child


class DeploymentSeries:
    """A (caller, deployment)'s per-attempt children: LiteLLM's deployment analytics."""

    __slots__ = ("_labels", "_metrics", "failures", "success", "total")

    def __init__(
        self, metrics: Metrics, caller: CallerLabels, requested_model: str, deployment: Deployment
    ) -> None:
        self._metrics = metrics
        c = caller
        self._labels = (requested_model, *metrics.deployment_labels(deployment))
        key = (c.hashed_api_key, c.api_key_alias, c.team, c.team_alias, "", "")
        self.total = tally(metrics.deployment_total.labels(*self._labels, *key))
        self.success = tally(metrics.deployment_success.labels(*self._labels, *key))
        self.failures: dict[tuple[str, str], Tally] = {}

    def failure(self, status: str, exception_class: str, caller: CallerLabels) -> Tally:
        child = self.failures.get((status, exception_class))
        if child is None:
            c = caller
            child = self.failures[status, exception_class] = tally(
                self._metrics.deployment_failure.labels(
                    *self._labels, status, exception_class, c.hashed_api_key, c.api_key_alias,
                    c.team, c.team_alias, "", "",
                )
            )  # fmt: skip
        return child


class CallbackMetrics:
    """What the logging callbacks' outboxes count (`trigate.export.outbox`)."""

    def __init__(self, sent_rows: Counter, dropped_rows: Counter, depth: Gauge) -> None:
        self._sent = sent_rows
        self._dropped = dropped_rows
        self._depth = depth

    def sent(self, sink: str, rows: int) -> None:
        self._sent.labels(sink).inc(rows)

    def dropped(self, sink: str, rows: int) -> None:
        self._dropped.labels(sink).inc(rows)

    def queued(self, sink: str, rows: int) -> None:
        self._depth.labels(sink).set(rows)


class Metrics:
    """The gateway's metrics. Each gateway has its own registry (so that apps built in
    one process, as tests build them, count apart); under a multiprocess directory the
    values live in its files instead, and `render` reads them all."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._series: dict[tuple[int, str, str, str], Series] = {}
        self._deployment_series: dict[tuple[int, str, str], DeploymentSeries] = {}
        self._deployment_labels: dict[str, tuple[str, str, str, str]] = {}
        self._simple: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}
        counter = self._counter
        histogram = self._histogram
        gauge = self._gauge
        self.proxy_total = counter(
            "litellm_proxy_total_requests_metric",
            "Total number of requests made to the proxy server",
            PROXY_TOTAL,
        )
        self.proxy_failed = counter(
            "litellm_proxy_failed_requests_metric",
            "Total number of failed responses from proxy",
            PROXY_FAILED,
        )
        self.requests = counter(
            "litellm_requests_metric", "Total number of LLM calls to the proxy", SPEND
        )
        self.spend = counter("litellm_spend_metric", "Total spend on LLM requests", SPEND)
        self.input_tokens = counter(
            "litellm_input_tokens_metric", "Total number of input tokens from LLM requests", TOKENS
        )
        self.output_tokens = counter(
            "litellm_output_tokens_metric",
            "Total number of output tokens from LLM requests",
            TOKENS,
        )
        self.total_tokens = counter(
            "litellm_total_tokens_metric",
            "Total number of input + output tokens from LLM requests",
            TOKENS,
        )
        self.total_latency = histogram(
            "litellm_request_total_latency_metric",
            "Total latency (seconds) for a request to the proxy",
            TOTAL_LATENCY,
        )
        self.api_latency = histogram(
            "litellm_llm_api_latency_metric",
            "Total latency (seconds) for a model's LLM API call",
            API_LATENCY,
        )
        self.ttft = histogram(
            "litellm_llm_api_time_to_first_token_metric",
            "Time to first token (seconds) for a model's LLM API call",
            API_LATENCY,
        )
        self.overhead = histogram(
            "litellm_overhead_latency_metric",
            "Latency (seconds) the proxy added before the upstream's answer",
            PER_DEPLOYMENT_KEY,
        )
        self.remaining_requests = gauge(
            "litellm_remaining_requests_metric",
            "Requests left this minute under the deployment's rpm",
            PER_DEPLOYMENT_KEY,
            "livemostrecent",
        )
        self.remaining_tokens = gauge(
            "litellm_remaining_tokens_metric",
            "Tokens left this minute under the deployment's tpm",
            PER_DEPLOYMENT_KEY,
            "livemostrecent",
        )
        self.deployment_state = gauge(
            "litellm_deployment_state",
            "The state of the deployment: 0 = healthy, 1 = partial outage, 2 = complete outage",
            _DEPLOYMENT,
            "livemax",
        )
        self.deployment_success = counter(
            "litellm_deployment_success_responses",
            "Total number of successful LLM API calls",
            DEPLOYMENT_REQUESTS,
        )
        self.deployment_failure = counter(
            "litellm_deployment_failure_responses",
            "Total number of failed LLM API calls",
            DEPLOYMENT_FAILURES,
        )
        self.deployment_total = counter(
            "litellm_deployment_total_requests",
            "Total number of LLM API calls: success + failure",
            DEPLOYMENT_REQUESTS,
        )
        self.cooled_down = counter(
            "litellm_deployment_cooled_down",
            "Number of times a deployment has been cooled down",
            (*_DEPLOYMENT, "exception_status"),
        )
        self.successful_fallbacks = counter(
            "litellm_deployment_successful_fallbacks",
            "Number of successful fallback requests from primary model -> fallback model",
            FALLBACKS,
        )
        self.failed_fallbacks = counter(
            "litellm_deployment_failed_fallbacks",
            "Number of failed fallback requests from primary model -> fallback model",
            FALLBACKS,
        )
        self.remaining_key_budget = gauge(
            "litellm_remaining_api_key_budget_metric",
            "Remaining budget for api key",
            _KEY,
            "livemostrecent",
        )
        self.remaining_team_budget = gauge(
            "litellm_remaining_team_budget_metric",
            "Remaining budget for team",
            _TEAM,
            "livemostrecent",
        )
        self.in_flight = gauge(
            "litellm_in_flight_requests",
            "Number of HTTP requests currently in flight",
            (),
            "livesum",
        )
        # trigate's own.
        self.cancelled_streams = counter(
            "trigate_streams_cancelled_by_client",
            "Streams whose client disconnected before the end",
            ("requested_model", "model_id"),
        )
        self.closed_after_disconnect = counter(
            "trigate_upstream_closed_after_disconnect",
            "Upstream requests closed because their client disconnected",
            ("model_id",),
        )
        self.hedges_started = counter(
            "trigate_hedges_started", "Hedge attempts started", ("model_group",)
        )
        self.hedges_won = counter(
            "trigate_hedges_won", "Hedge attempts that answered first", ("model_group",)
        )
        self.hedges_lost = counter(
            "trigate_hedges_lost",
            "Hedge attempts that did not answer first, and were cancelled",
            ("model_group",),
        )
        self.retries = counter(
            "trigate_retries", "Retries of an upstream call, by reason", ("model_group", "reason")
        )
        self.backpressure_waits = counter(
            "trigate_relay_backpressure_waits",
            "Times a stream's reader waited for a slow client",
            (),
        )
        self.spend_queue_depth = gauge(
            "trigate_spend_log_queue_depth",
            "Spend-log rows waiting to be written to the database",
            (),
            "livesum",
        )
        self.spend_rows_dropped = counter(
            "trigate_spend_log_dropped_rows",
            "Spend-log rows dropped because the queue was full",
            (),
        )
        self.spend_rows_refused = counter(
            "trigate_spend_log_refused_rows",
            "Spend-log rows dropped because the database refuses what they hold (each "
            "logged as an error with its request id)",
            (),
        )
        self.callbacks = CallbackMetrics(
            counter(
                "trigate_callback_sent_rows",
                "Finished requests a logging callback (sink) delivered",
                ("callback",),
            ),
            counter(
                "trigate_callback_dropped_rows",
                "Finished requests a logging callback dropped: its queue was full, or it "
                "failed past its retries",
                ("callback",),
            ),
            gauge(
                "trigate_callback_queue_depth",
                "Finished requests waiting in a logging callback's queue",
                ("callback",),
                "livesum",
            ),
        )
        self.alerts = counter(
            "trigate_alerts",
            "Alerts sent (outcome sent), or held back as duplicates within their window or "
            "claimed by another process of the fleet (outcome suppressed)",
            ("alert_type", "outcome"),
        )
        # A batch's bill that could not be made when it was seen ended (left for a later
        # look), or that never can be (its upstream no longer knows the batch or its
        # output file: settled unbilled); `reason` is an upstream failure's kind, `store`
        # or `internal`.
        self.batch_billing_failures = counter(
            "trigate_batch_billing_failures",
            "Batches seen ended whose bill failed (left unbilled for a later look), or that "
            "were settled unbilled because their upstream no longer knows them",
            ("reason", "outcome"),
        )
        self.redis_fallbacks = counter(
            "trigate_redis_fallbacks",
            "Times shared state fell back to this process because Redis failed",
            ("operation",),
        )
        # The MCP gateway's tool calls: servers are named by the operator, statuses are
        # three; tool names (an upstream's to choose) are no label, the spend log has them.
        self.mcp_tool_calls = counter(
            "trigate_mcp_tool_calls",
            "MCP tool calls through the gateway, by server and status (success, error, refused)",
            ("mcp_server", "status"),
        )
        self.mcp_tool_call_latency = self._histogram(
            "trigate_mcp_tool_call_latency_seconds",
            "Time an MCP tool call took upstream, by server",
            ("mcp_server",),
        )
        # The ledger's totals of dropped and refused rows these counters last caught up to.
        self._dropped_seen = 0
        self._refused_seen = 0

    # --- Definitions -----------------------------------------------------------------

    def _counter(self, name: str, doc: str, labels: tuple[str, ...]) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
        return Histogram(name, doc, labels, registry=self.registry, buckets=LATENCY_BUCKETS)

    def _gauge(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...],
        mode: Literal["livesum", "livemax", "livemostrecent"],
    ) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)

    def deployment_labels(self, deployment: Deployment) -> tuple[str, str, str, str]:
        labels = self._deployment_labels.get(deployment.label_id)
        if labels is None:
            params = deployment.params
            labels = self._deployment_labels[deployment.label_id] = (
                deployment.label_litellm_model,
                deployment.label_id,
                public_api_base(params.api_base),
                params.provider,
            )
        return labels

    def per_deployment_key(self, deployment: Deployment, caller: CallerLabels) -> tuple[str, ...]:
        model, model_id, api_base, provider = self.deployment_labels(deployment)
        return (
            deployment.model_group, provider, api_base, model, caller.hashed_api_key,
            caller.api_key_alias, model_id,
        )  # fmt: skip

    # --- The request path ----------------------------------------------------------

    def series(
        self, caller: CallerLabels, group: str, deployment: Deployment | None, route: str
    ) -> Series:
        # By the labels' identity: hashing their six strings on every request costs more,
        # and a cached series keeps its labels alive, so an id is never reused meanwhile.
        key = (id(caller), group, deployment.label_id if deployment else "", route)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = Series(self, caller, group, deployment, route)
        return found

    def deployment_series(
        self, caller: CallerLabels, group: str, deployment: Deployment
    ) -> DeploymentSeries:
        key = (id(caller), group, deployment.label_id)
        found = self._deployment_series.get(key)
        if found is None:
            found = self._deployment_series[key] = DeploymentSeries(self, caller, group, deployment)
        return found

    def request_done(
        self,
        series: Series,
        record: RequestRecord,
        error: GatewayError | None,
        *,
        api_latency: float | None,
        upstream_wait: float | None,
    ) -> None:
        """Everything one request adds, once, from its spend record: a model call is one
        request answered and one call billed."""
        latency = record.latency_ms / 1000
        self.answered(series, record.status, error, latency, record.cancelled_by_client)
        self.billed(series, record.prompt_tokens, record.completion_tokens, record.cost)
        if api_latency is not None:
            series.api_latency.observe(api_latency)
        if record.ttft_ms is not None and record.stream:
            series.ttft.observe(record.ttft_ms / 1000)
        if series.overhead is not None and upstream_wait is not None:
            answered = record.ttft_ms / 1000 if record.ttft_ms is not None else latency
            series.overhead.observe(max(answered - upstream_wait, 0.0))
        if record.cancelled_by_client and series.deployment is not None:
            self.closed_after_disconnect.labels(series.deployment.label_id).inc()
            if record.stream:
                self.cancelled_streams.labels(
                    series.requested_model, series.deployment.label_id
                ).inc()

    def answered(
        self,
        series: Series,
        status: int,
        error: GatewayError | None,
        latency: float,
        cancelled: bool = False,
    ) -> None:
        """A request to the proxy answered (a Realtime session ended): its status, and
        how long it took."""
        series.total(status).inc(1)
        if status >= 400:
            series.failure(status, _exception_class(error, cancelled)).inc(1)
        series.total_latency.observe(latency)

    def billed(
        self, series: Series, prompt_tokens: int, completion_tokens: int, cost: float
    ) -> None:
        """One LLM call's spend row (LiteLLM's `litellm_requests_metric` counts calls):
        its tokens and cost."""
        series.requests.inc(1)
        if cost:
            series.spend.inc(cost)
        if prompt_tokens or completion_tokens:
            series.input_tokens.inc(prompt_tokens)
            series.output_tokens.inc(completion_tokens)
            series.total_tokens.inc(prompt_tokens + completion_tokens)

    def budgets_left(self, caller: Caller, cost: float) -> None:
        """The key's and team's budget left after a request, as LiteLLM reports it: the
        max budget less the spend on the row the request was admitted with, and its cost."""
        key, team = caller.key, caller.team
        if key is not None and key.get("max_budget") is not None:
            labels = (caller.key_hash or "", key.get("key_alias") or "")
            self._budget_left(self.remaining_key_budget, labels, key, cost)
        if team is not None and team.get("max_budget") is not None:
            labels = (caller.team_id or "", team.get("team_alias") or "")
            self._budget_left(self.remaining_team_budget, labels, team, cost)

    def _budget_left(
        self, gauge: Gauge, labels: tuple[str, str], row: dict[str, Any], cost: float
    ) -> None:
        left = float(row["max_budget"]) - float(row.get("spend") or 0.0) - cost
        self._child(gauge, labels).set(max(left, 0.0))

    def _rate_headroom(self, deployment: Deployment, now: float) -> None:
        """Requests and tokens left this minute under a deployment's own rpm and tpm (not
        a key's: these gauges are per deployment, their key labels empty)."""
        params = deployment.params
        if params.rpm is None and params.tpm is None:
            return
        labels = self.per_deployment_key(deployment, ANONYMOUS)
        if params.rpm is not None:
            left = max(params.rpm - deployment.state.requests_used(now), 0)
            self._child(self.remaining_requests, labels).set(left)
        if params.tpm is not None:
            left = max(params.tpm - deployment.state.tokens_used(now), 0)
            self._child(self.remaining_tokens, labels).set(left)

    def backpressure_wait(self) -> None:
        self.backpressure_waits.inc()

    def retried(self, group: str, reason: str) -> None:
        self._child(self.retries, (group, reason)).inc()

    def cooled(self, deployment: Deployment, status: int | None) -> None:
        labels = (*self.deployment_labels(deployment), str(status or ""))
        self._child(self.cooled_down, labels).inc()

    def fallback(
        self,
        caller: CallerLabels,
        group: str,
        fallback: str,
        trigger: GatewayError,
        model_id: str,
        *,
        succeeded: bool,
    ) -> None:
        metric = self.successful_fallbacks if succeeded else self.failed_fallbacks
        c = caller
        labels = (
            group, fallback, c.hashed_api_key, c.api_key_alias, c.team, c.team_alias,
            str(trigger.status), type(trigger).__name__, model_id,
        )  # fmt: skip
        self._child(metric, labels).inc()

    def alert_counted(self, alert_type: str, sent: bool) -> None:
        outcome = "sent" if sent else "suppressed"
        self._child(self.alerts, (alert_type, outcome)).inc()

    def redis_fallback(self, operation: str) -> None:
        """Redis failed and this process served `operation` (a bounded name, such as
        `rate_limit` or `router_state`) from its own memory instead: for the shared-state
        layer to call."""
        self._child(self.redis_fallbacks, (operation,)).inc()

    def batch_billing_failed(self, reason: str, settled: bool) -> None:
        """A batch's bill failed: left for a later look, or, `settled`, never to be made."""
        outcome = "settled_unbilled" if settled else "retried_later"
        self._child(self.batch_billing_failures, (reason, outcome)).inc()

    def mcp_tool_call(self, server: str, status: str, seconds: float) -> None:
        """One MCP tool call (trigate.mcp_gateway): counted, and timed unless refused."""
        self._child(self.mcp_tool_calls, (server, status)).inc()
        if status != "refused":
            self._child(self.mcp_tool_call_latency, (server,)).observe(seconds)

    def _child(self, metric: M, labels: tuple[str, ...]) -> M:
        key = (metric, labels)
        found = self._simple.get(key)
        if found is None:
            found = self._simple[key] = metric.labels(*labels)
        return cast(M, found)

    # --- Sampled state ---------------------------------------------------------------

    def sample(
        self, deployments: Iterable[Deployment], queued: int, dropped: int, refused: int
    ) -> None:
        """State that is read rather than counted: each deployment's health, the spend
        log's queue, the deployments' rpm and tpm headroom. Run before each scrape and
        every few seconds in every worker."""
        now = trio.current_time()
        for deployment in deployments:
            self._child(self.deployment_state, self.deployment_labels(deployment)).set(
                deployment_state(deployment, now)
            )
            self._rate_headroom(deployment, now)
        self.spend_queue_depth.set(queued)
        if dropped > self._dropped_seen:
            self.spend_rows_dropped.inc(dropped - self._dropped_seen)
            self._dropped_seen = dropped
        if refused > self._refused_seen:
            self.spend_rows_refused.inc(refused - self._refused_seen)
            self._refused_seen = refused

    async def render(self) -> bytes:
        """The text exposition; under a multiprocess directory, every worker's values,
        read from their files in a thread (it is file I/O)."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        return await trio.to_thread.run_sync(_render_multiprocess, path)


def _render_multiprocess(path: str) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    # prometheus-client leaves its multiprocess helpers unannotated.
    multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def deployment_state(deployment: Deployment, now: float) -> int:
    """LiteLLM's states: cooling is a complete outage; failures since the deployment's
    last success, or a failed health probe, a partial one."""
    state = deployment.state
    breaker = state.breaker
    if breaker.cooling(now):
        return COMPLETE_OUTAGE
    if breaker.recent_failures or state.last_probe_ok is False:
        return PARTIAL_OUTAGE
    return HEALTHY


def _exception_class(error: GatewayError | None, cancelled: bool) -> str:
    if error is not None:
        return type(error).__name__
    return "ClientDisconnected" if cancelled else "UnexpectedError"

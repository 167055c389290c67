"""What a request leaves behind for operators: metrics, a trace, an access line.

`Telemetry` is the gateway's; each proxied call gets a `CallTelemetry`, which the
router tells about every attempt (it is the call's `RouteObserver`) and which the
call hands its spend record once, when it is accounted for. A model API request
refused before that (a bad key, a bad body, an unknown model) is counted by
`Telemetry.unaccounted`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

import trio

from trigate.errors import GatewayError, UpstreamError
from trigate.logs import access, json_logs
from trigate.metrics import ANONYMOUS, OTHER, CallerLabels, Metrics
from trigate.providers.base import forwarded_headers
from trigate.router.router import Unobserved
from trigate.tracing import OpenSpan, Tracing

if TYPE_CHECKING:
    from trigate.api.context import RequestContext
    from trigate.auth import Caller
    from trigate.config import GatewayConfig
    from trigate.router.deployments import Deployment
    from trigate.spend import RequestRecord

# How often every worker refreshes sampled state (deployment health, the spend queue).
SAMPLE_INTERVAL = 5.0
# How much of a key's hash an access line shows: enough to find the key, as LiteLLM's UI does.
HASH_PREFIX = 12


class DeploymentAlerts(Protocol):
    """What the alerts hear of deployments (trigate.alerts.hub)."""

    def attempt_failed(self, deployment: Deployment, error: BaseException) -> None: ...

    def cooled(self, deployment: Deployment) -> None: ...


class AttemptHandle(NamedTuple):
    """What `attempt_started` hands the router, to be given back when the attempt ends."""

    deployment: Deployment
    started: float
    span: OpenSpan | None


class Telemetry:
    """The gateway's metrics, its tracer (None unless configured), and its access log."""

    def __init__(self, config: GatewayConfig) -> None:
        self.metrics = Metrics()
        self.tracing = Tracing.from_environment(config.litellm_settings, self.metrics.callbacks)
        self.access_log = json_logs(config)
        # What health probes report: only the cooldowns they cause.
        self.probes = ProbeTelemetry(self.metrics)
        self._callers: dict[str, tuple[tuple[object, ...], CallerLabels]] = {}
        self._interned: dict[CallerLabels, CallerLabels] = {}
        # Set by the gateway when alerts are on.
        self.alerts: DeploymentAlerts | None = None
        self.probes.telemetry = self

    def call(
        self,
        context: RequestContext,
        caller: Caller,
        group: str,
        operation: str,
        body: dict[str, Any],
    ) -> CallTelemetry:
        span = None
        if self.tracing is not None:
            span = self.tracing.request_span(
                operation, group, context.traceparent, context.request_id, body
            )
        return CallTelemetry(self, self.caller_labels(caller), group, operation, span)

    def caller_labels(self, caller: Caller) -> CallerLabels:
        """The caller's labels: one object per key for as long as its labels stay the same
        (the metrics cache series by it), checked again whenever its rows are re-read."""
        if caller.key is None or caller.key_hash is None:
            return ANONYMOUS
        rows = (caller.key, caller.team, caller.user)
        cached = self._callers.get(caller.key_hash)
        if cached is not None and all(a is b for a, b in zip(cached[0], rows, strict=True)):
            return cached[1]
        labels = CallerLabels.of(caller)
        if cached is not None and cached[1] == labels:
            labels = cached[1]
        self._callers[caller.key_hash] = (rows, labels)
        return labels

    def interned(self, labels: CallerLabels) -> CallerLabels:
        """One object for equal labels made apart (a batch owner's, from its stored row):
        the metrics cache series by the labels' identity, so fresh ones each time would
        grow that cache without end. Bounded by the keys that exist."""
        return self._interned.setdefault(labels, labels)

    def unaccounted(self, context: RequestContext, error: GatewayError) -> None:
        """A model API request that ended with `error` before any call accounted for it."""
        if context.accounted:
            return
        context.accounted = True
        series = self.metrics.series(ANONYMOUS, OTHER, None, context.path)
        series.total(error.status).inc(1)
        series.failure(error.status, type(error).__name__).inc(1)
        if self.access_log:
            access.info(
                "%s %d",
                context.path,
                error.status,
                extra={"access": access_fields(context, error.status)},
            )

    async def stop(self) -> None:
        if self.tracing is not None:
            with trio.CancelScope(shield=True):
                await self.tracing.shutdown()


class ProbeTelemetry(Unobserved):
    """The observer of background health probes: the cooldowns they cause are counted."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.telemetry: Telemetry | None = None

    def cooled(self, deployment: Deployment, error: UpstreamError) -> None:
        self._metrics.cooled(deployment, error.upstream_status or error.status)
        alerts = self.telemetry.alerts if self.telemetry is not None else None
        if alerts is not None:
            alerts.cooled(deployment)


class CallTelemetry:
    """One proxied call's telemetry; the router's observer of its attempts."""

    __slots__ = (
        "_labels",
        "_telemetry",
        "api_started",
        "group",
        "operation",
        "span",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        labels: CallerLabels,
        group: str,
        operation: str,
        span: OpenSpan | None,
    ) -> None:
        self._telemetry = telemetry
        self._labels = labels
        self.group = group
        self.operation = operation
        self.span = span
        # When the attempt that answered began: the start of the LLM API call.
        self.api_started: float | None = None

    # --- RouteObserver ---------------------------------------------------------------

    def attempt_started(self, deployment: Deployment, *, hedge: bool) -> object:
        if hedge:
            self._telemetry.metrics.hedges_started.labels(deployment.model_group).inc()
        span = None
        tracing = self._telemetry.tracing
        if tracing is not None and self.span is not None:
            span = tracing.attempt_span(
                self.span,
                self.operation,
                deployment.params.provider,
                deployment.upstream_model,
                deployment.id,
                hedge,
            )
            # Every provider sends the forwarded headers: the upstream joins the trace.
            forwarded_headers.set({**forwarded_headers.get(), "traceparent": span.traceparent})
        return AttemptHandle(deployment, trio.current_time(), span)

    def attempt_ended(self, handle: object, failure: BaseException | None) -> None:
        deployment, started, span = cast(AttemptHandle, handle)
        series = self._telemetry.metrics.deployment_series(self._labels, self.group, deployment)
        if failure is None:
            self.api_started = started
            series.total.inc(1)
            series.success.inc(1)
            if span is not None:
                span.end()
            return
        if isinstance(failure, GatewayError):
            status = failure.upstream_status if isinstance(failure, UpstreamError) else None
            series.total.inc(1)
            exception_status = str(status or failure.status)
            series.failure(exception_status, type(failure).__name__, self._labels).inc(1)
            if self._telemetry.alerts is not None:
                self._telemetry.alerts.attempt_failed(deployment, failure)
        if span is not None:
            span.fail(failure, cancelled=not isinstance(failure, GatewayError))

    def retried(self, group: str, error: UpstreamError) -> None:
        self._telemetry.metrics.retried(group, error.kind.value)

    def cooled(self, deployment: Deployment, error: UpstreamError) -> None:
        self._telemetry.metrics.cooled(deployment, error.upstream_status or error.status)
        if self._telemetry.alerts is not None:
            self._telemetry.alerts.cooled(deployment)

    def hedge_settled(self, group: str, *, hedge_won: bool) -> None:
        metrics = self._telemetry.metrics
        (metrics.hedges_won if hedge_won else metrics.hedges_lost).labels(group).inc()

    def fallback_ended(
        self, group: str, fallback: str, trigger: GatewayError, *, succeeded: bool
    ) -> None:
        self._telemetry.metrics.fallback(
            self._labels, group, fallback, trigger, "", succeeded=succeeded
        )

    # --- The end of the call -----------------------------------------------------------

    def finished(
        self,
        context: RequestContext,
        caller: Caller,
        record: RequestRecord,
        deployment: Deployment | None,
        error: GatewayError | None,
    ) -> None:
        """Everything the call adds, from its spend record, once."""
        context.accounted = True
        telemetry = self._telemetry
        metrics = telemetry.metrics
        api_latency = None
        if self.api_started is not None:
            api_latency = trio.current_time() - self.api_started
        series = metrics.series(self._labels, self.group, deployment, context.path)
        metrics.request_done(
            series, record, error, api_latency=api_latency, upstream_wait=context.upstream_wait
        )
        metrics.budgets_left(caller, record.cost)
        if self.span is not None:
            self._end_span(record, deployment, error)
        if telemetry.access_log:
            fields = access_fields(context, record.status)
            fields.update(
                key_alias=record.key_alias,
                key_hash=record.key_hash[:HASH_PREFIX] if record.key_hash else None,
                team=record.team_id,
                model_group=record.model_group,
                deployment=record.deployment,
                latency_ms=record.latency_ms,
                ttft_ms=record.ttft_ms,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cost=record.cost,
                cancelled_by_client=record.cancelled_by_client,
            )
            access.info("%s %d", context.path, record.status, extra={"access": fields})

    def _end_span(
        self, record: RequestRecord, deployment: Deployment | None, error: GatewayError | None
    ) -> None:
        span = self.span
        assert span is not None
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": record.prompt_tokens,
            "gen_ai.usage.output_tokens": record.completion_tokens,
            "http.response.status_code": record.status,
        }
        # Each attribute costs the exporter's encoder; these say something only when set.
        if record.cost:
            attributes["trigate.cost"] = record.cost
        if record.cancelled_by_client:
            attributes["trigate.cancelled_by_client"] = True
        if deployment is not None:
            attributes["gen_ai.system"] = deployment.params.provider
            attributes["gen_ai.response.model"] = deployment.upstream_model
            attributes["trigate.deployment"] = deployment.id
        if record.ttft_ms is not None and record.stream:
            attributes["gen_ai.response.time_to_first_chunk"] = record.ttft_ms / 1000
        span.attributes.update(attributes)
        if record.status >= 400:
            span.fail(error, cancelled=record.cancelled_by_client)
        else:
            span.end()


def access_fields(context: RequestContext, status: int) -> dict[str, Any]:
    """An access line's fields; what the request never got to (a key, a deployment) is
    null, so that every line has the same fields."""
    return {
        "request_id": context.request_id,
        "client_request_id": context.client_request_id,
        "route": context.path,
        "status": status,
        "key_alias": None,
        "key_hash": None,
        "team": None,
        "model_group": None,
        "deployment": None,
        "latency_ms": round(context.elapsed() * 1000, 3),
        "ttft_ms": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost": 0.0,
        "cancelled_by_client": False,
    }

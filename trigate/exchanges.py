"""The telemetry of requests that are not one model call: the Files and Batch APIs'
requests, and Realtime sessions.

Each is observed as a model call is, in LiteLLM's metrics and in a trace, with the
two things a model call holds in one record told apart: the request itself, answered
once (`litellm_proxy_total_requests_metric` and its failures, by status and route;
`litellm_request_total_latency_metric`; the request's span, a child span per upstream
call, an access line), and the spend rows it writes, as many as it writes, each billed
to its owner (`litellm_requests_metric`, `litellm_spend_metric` and the token counts):
a batch seen ended is billed to the key that made it, whoever looked; a Realtime
session bills each response as it passes, so that a long session's spend shows while
it runs. A request that writes no spend row (an upload, a list) adds no LLM call.

Labels are bounded as every metric's are: the route is the route's pattern
(`/v1/batches/<batch_id>`, never an id), the model is a served group or empty (a
list names none), the caller the key's labels.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

from trigate.errors import GatewayError
from trigate.logs import access
from trigate.metrics import ANONYMOUS, CallerLabels
from trigate.providers.base import forwarded_headers
from trigate.telemetry import HASH_PREFIX, CallTelemetry, Telemetry, access_fields

if TYPE_CHECKING:
    from trigate.api.context import RequestContext
    from trigate.auth import Caller
    from trigate.router.deployments import Deployment
    from trigate.spend import RequestRecord

# What a client that left before its answer is counted as, as a model call's is.
CLIENT_CLOSED = 499


class Exchange:
    """One such request's telemetry: told who asked and what it concerned as the route
    learns it, then told how it ended, once."""

    def __init__(
        self, telemetry: Telemetry, context: RequestContext, route: str, operation: str
    ) -> None:
        self._telemetry = telemetry
        self._context = context
        self.route = route
        self.operation = operation
        self.labels = ANONYMOUS
        self.group = ""
        self.deployment: Deployment | None = None
        # What the exchange billed, for its span.
        self._billed = [0, 0, 0.0]
        self._ended = False
        tracing = telemetry.tracing
        self.span = (
            tracing.request_span(operation, "", context.traceparent, context.request_id, {})
            if tracing is not None
            else None
        )
        if self.span is not None:  # named for its model group once that is known
            self.span.name = operation
            del self.span.attributes["gen_ai.request.model"]

    def identify(self, caller: Caller) -> None:
        self.labels = self._telemetry.caller_labels(caller)

    def concerns(self, group: str, deployment: Deployment | None = None) -> None:
        """The model group (and the deployment holding the object) the request is about."""
        self.group = group
        self.deployment = deployment

    @contextlib.asynccontextmanager
    async def attempt(self, deployment: Deployment) -> AsyncIterator[None]:
        """One upstream call, observed as a model call's attempt is: the deployment's
        request and failure counts, a client span, its context sent as `traceparent`."""
        call = CallTelemetry(
            self._telemetry, self.labels, self.group or deployment.model_group,
            self.operation, self.span,
        )  # fmt: skip
        restore = forwarded_headers.set(forwarded_headers.get())
        handle = call.attempt_started(deployment, hedge=False)
        try:
            yield
        except BaseException as failure:
            call.attempt_ended(handle, failure)
            raise
        else:
            call.attempt_ended(handle, None)
        finally:
            forwarded_headers.reset(restore)

    def billed(
        self, record: RequestRecord, owner: CallerLabels, deployment: Deployment | None
    ) -> None:
        """A spend row the request wrote: one LLM call of `owner`'s, its tokens and cost."""
        metrics = self._telemetry.metrics
        series = metrics.series(owner, record.model_group, deployment, self.route)
        metrics.billed(series, record.prompt_tokens, record.completion_tokens, record.cost)
        billed = self._billed
        billed[0] += record.prompt_tokens
        billed[1] += record.completion_tokens
        billed[2] += record.cost

    def finished(self, status: int, error: GatewayError | None, *, cancelled: bool = False) -> None:
        """The request answered with `status` (or its client gone): counted, its span
        ended, its access line written. Only the first call counts."""
        if self._ended:
            return
        self._ended = True
        telemetry = self._telemetry
        metrics = telemetry.metrics
        latency = trio.current_time() - self._context.started
        series = metrics.series(self.labels, self.group, self.deployment, self.route)
        metrics.answered(series, status, error, latency, cancelled)
        if self.span is not None:
            self._end_span(status, error, cancelled)
        if telemetry.access_log:
            self._log(status, latency)

    def _end_span(self, status: int, error: GatewayError | None, cancelled: bool) -> None:
        span = self.span
        assert span is not None
        prompt, completion, cost = self._billed
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": prompt,
            "gen_ai.usage.output_tokens": completion,
            "http.route": self.route,
            "http.response.status_code": status,
        }
        if self.group:
            span.name = f"{self.operation} {self.group}"
            attributes["gen_ai.request.model"] = self.group
        if cost:
            attributes["trigate.cost"] = cost
        if self.deployment is not None:
            attributes["gen_ai.system"] = self.deployment.params.provider
            attributes["trigate.deployment"] = self.deployment.id
        span.attributes.update(attributes)
        if status >= 400 or cancelled:
            span.fail(error, cancelled=cancelled)
        else:
            span.end()

    def _log(self, status: int, latency: float) -> None:
        fields = access_fields(self._context, status)
        labels = self.labels
        prompt, completion, cost = self._billed
        fields.update(
            route=self.route,
            key_alias=labels.api_key_alias or None,
            key_hash=labels.hashed_api_key[:HASH_PREFIX] or None,
            team=labels.team or None,
            model_group=self.group or None,
            deployment=self.deployment.id if self.deployment is not None else None,
            latency_ms=round(latency * 1000, 3),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=cost,
        )
        access.info("%s %d", self.route, status, extra={"access": fields})

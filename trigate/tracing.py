"""OpenTelemetry traces: a span per request, a child span per upstream attempt.

Tracing is on when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`
or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or LiteLLM's `litellm_settings.callbacks:
["otel"]` with its `OTEL_ENDPOINT`); off, no span object is ever made. Spans follow
OpenTelemetry's GenAI semantic conventions. An incoming `traceparent` is continued
(a request its caller did not sample is not traced), and each attempt's own
context goes to its upstream in `traceparent`, so a provider that traces joins the
same trace. Requests that arrive without one are sampled at the ratio that
`OTEL_TRACES_SAMPLER=parentbased_traceidratio` (or `traceidratio`) and
`OTEL_TRACES_SAMPLER_ARG` give, all of them by default: encoding spans for export
is most of what tracing costs.

The SDK's live `Span` checks and copies every attribute under a lock, some 50 µs a
span, which the request path cannot afford; the gateway knows a span whole only
when it ends anyway. So an `OpenSpan` holds plain values, and ending it hands a
finished `ReadableSpan` (the type every exporter takes) to the SDK's
outbox of the export path (`trigate.export`, as its sink `otel`): a bounded queue
whose sender, in the gateway's background nursery, hands each batch to trigate.otlp's
exporter in a worker thread (it encodes and POSTs; the SDK's exporter costs four to
five times as much a span). The event loop never waits on the receiver, and a full
queue's dropped spans are counted as every sink's rows are.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import trio
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from trigate import __version__
from trigate.errors import secrets
from trigate.export.outbox import Outbox, OutboxCounters, SinkError
from trigate.otlp import OTLPSpanExporter

TRACES_PATH = "/v1/traces"
# OpenTelemetry's own switch for recording prompts and answers in GenAI spans.
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
OK = Status(StatusCode.UNSET)
_PROPAGATOR = TraceContextTextMapPropagator()
# The SDK's BatchSpanProcessor defaults (OTEL_BSP_*): queue, batch, and delay.
MAX_QUEUED_SPANS = 2048
SPAN_BATCH_SIZE = 512
SPAN_FLUSH_INTERVAL = 5.0


def traces_endpoint(litellm_settings: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """Where spans go, or None when tracing is off."""
    if endpoint := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return endpoint
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    callbacks = litellm_settings.get("callbacks") or []
    if not base and isinstance(callbacks, list) and "otel" in callbacks:
        base = environ.get("OTEL_ENDPOINT") or "http://localhost:4318"
    if not base:
        return None
    return base if base.rstrip("/").endswith(TRACES_PATH) else base.rstrip("/") + TRACES_PATH


def _headers(environ: Mapping[str, str]) -> dict[str, str] | None:
    """LiteLLM's `OTEL_HEADERS` (`k=v,k2=v2`); without it the exporter reads the
    standard `OTEL_EXPORTER_OTLP_HEADERS` itself."""
    raw = environ.get("OTEL_HEADERS")
    if not raw:
        return None
    pairs = (item.partition("=") for item in raw.split(","))
    return {name.strip(): value.strip() for name, _, value in pairs if name.strip()}


class Tracing:
    """Where the gateway's spans go, and what they may record."""

    def __init__(self, endpoint: str, environ: Mapping[str, str], counters: OutboxCounters) -> None:
        self.resource = Resource.create(
            {"service.name": environ.get("OTEL_SERVICE_NAME", "trigate")}
        )
        self.scope = InstrumentationScope("trigate", __version__)
        self._exporter = OTLPSpanExporter(endpoint, _headers(environ), environ)
        # Run by the export path's nursery (`Exports.adopt`), as sink `otel`.
        self.outbox: Outbox[ReadableSpan] = Outbox(
            "otel",
            self._export,
            counters,
            batch_size=_setting(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", SPAN_BATCH_SIZE),
            flush_interval=_setting(environ, "OTEL_BSP_SCHEDULE_DELAY", 1000 * SPAN_FLUSH_INTERVAL)
            / 1000,
            max_queued=_setting(environ, "OTEL_BSP_MAX_QUEUE_SIZE", MAX_QUEUED_SPANS),
            # The exporter retries within its own timeout; the outbox's bound is above it.
            send_timeout=2 * self._exporter.timeout + 1,
        )
        self.capture_content = environ.get(CAPTURE_CONTENT_ENV, "").lower() == "true"
        # Root requests whose trace id's low 64 bits fall below this are sampled.
        self._sampled_below = round(_sample_ratio(environ) * 2**64)

    @classmethod
    def from_environment(
        cls,
        litellm_settings: Mapping[str, Any],
        counters: OutboxCounters,
        environ: Mapping[str, str] = os.environ,
    ) -> Tracing | None:
        endpoint = traces_endpoint(litellm_settings, environ)
        return cls(endpoint, environ, counters) if endpoint else None

    def request_span(
        self,
        operation: str,
        model_group: str,
        traceparent: str | None,
        request_id: str,
        body: dict[str, Any],
    ) -> OpenSpan | None:
        """The span of a whole request; a client's `traceparent` makes it a child, and
        None when that parent was not sampled."""
        parent: SpanContext | None = None
        if traceparent:
            found = get_current_span(_PROPAGATOR.extract({"traceparent": traceparent}))
            parent = found.get_span_context()
            if not parent.is_valid:
                parent = None
            elif not parent.trace_flags.sampled:
                return None
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model_group,
            "trigate.request_id": request_id,
        }
        if self.capture_content and "messages" in body:
            attributes["gen_ai.input.messages"] = orjson.dumps(body["messages"]).decode()
        if parent is not None:
            trace_id = parent.trace_id
        else:
            trace_id = _new_trace_id()
            if trace_id & 0xFFFFFFFFFFFFFFFF >= self._sampled_below:
                return None
        name = f"{operation} {model_group}"
        return OpenSpan(self, name, SpanKind.SERVER, trace_id, parent, attributes)

    def tool_span(
        self, traceparent: str | None, server: str, tool: str, start: float
    ) -> OpenSpan | None:
        """An MCP tool call's span (GenAI's `execute_tool`), begun at `start` (epoch
        seconds); a child of the client's `traceparent`, as a request's span is."""
        span = self.request_span("execute_tool", tool, traceparent, "", {})
        if span is not None:
            span.kind = SpanKind.INTERNAL
            span.start = int(start * 1e9)
            span.attributes = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool,
                "trigate.mcp_server": server,
            }
        return span

    def attempt_span(
        self,
        parent: OpenSpan,
        operation: str,
        provider: str,
        model: str,
        deployment: str,
        hedge: bool,
    ) -> OpenSpan:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.system": provider,
            "gen_ai.request.model": model,
            "trigate.deployment": deployment,
        }
        if hedge:
            attributes["trigate.hedge"] = True
        return OpenSpan(
            self, f"{operation} {model}", SpanKind.CLIENT, parent.context.trace_id,
            parent.context, attributes,
        )  # fmt: skip

    def submit(self, span: ReadableSpan) -> None:
        """Queue a finished span for the outbox's sender; never blocks."""
        self.outbox.offer(span)

    async def _export(self, spans: Sequence[ReadableSpan]) -> None:
        """One batch, in a thread, since the exporter's send blocks. It has retried by
        the time it fails, so its failure is final."""
        result = await trio.to_thread.run_sync(self._exporter.export, spans, abandon_on_cancel=True)
        if result is not SpanExportResult.SUCCESS:
            raise SinkError("the OTLP receiver did not take the spans", retry=False)

    async def shutdown(self) -> None:
        """Stop the exporter's waits: the outbox has flushed what it held as it stopped."""
        self._exporter.shutdown()


class OpenSpan:
    """A span in progress: plain values until `end` makes it a `ReadableSpan`."""

    __slots__ = ("_tracing", "attributes", "context", "kind", "name", "parent", "start")

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        kind: SpanKind,
        trace_id: int,
        parent: SpanContext | None,
        attributes: dict[str, Any],
    ) -> None:
        self._tracing = tracing
        self.name = name
        self.kind = kind
        self.parent = parent
        self.context = SpanContext(trace_id, _new_span_id(), False, SAMPLED)
        self.attributes = attributes
        self.start = time.time_ns()

    @property
    def traceparent(self) -> str:
        """The W3C `traceparent` that makes an upstream's spans children of this one."""
        return f"00-{self.context.trace_id:032x}-{self.context.span_id:016x}-01"

    def end(self, status: Status = OK) -> None:
        tracing = self._tracing
        tracing.submit(
            ReadableSpan(
                self.name,
                self.context,
                self.parent,
                tracing.resource,
                self.attributes,
                kind=self.kind,
                status=status,
                start_time=self.start,
                end_time=time.time_ns(),
                instrumentation_scope=tracing.scope,
            )
        )

    def fail(self, failure: BaseException | None, *, cancelled: bool = False) -> None:
        """End a span that did not succeed: an error's status and type, or cancelled."""
        if cancelled:
            self.attributes["trigate.cancelled"] = True
            self.end(Status(StatusCode.ERROR, "cancelled"))
            return
        message = None
        if failure is not None:
            self.attributes["error.type"] = type(failure).__name__
            message = secrets.redact(str(failure))[:200]
        self.end(Status(StatusCode.ERROR, message))


def _setting(environ: Mapping[str, str], name: str, default: float) -> int:
    """A whole-number OTEL_BSP_* setting, as the SDK's processor reads it."""
    try:
        value = int(environ.get(name, "") or default)
    except ValueError:
        value = int(default)
    return max(value, 1)


def _sample_ratio(environ: Mapping[str, str]) -> float:
    """The share of root requests traced: OpenTelemetry's sampler variables, as far as
    they concern a ratio (`always_off` is none, any other sampler all)."""
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").lower()
    if sampler in {"always_off", "parentbased_always_off"}:
        return 0.0
    if sampler not in {"traceidratio", "parentbased_traceidratio"}:
        return 1.0
    try:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))
    except ValueError:
        return 1.0
    return min(max(ratio, 0.0), 1.0)


def _new_trace_id() -> int:
    # Never 0, which means "no trace".
    return random.getrandbits(128) or 1


def _new_span_id() -> int:
    return random.getrandbits(64) or 1

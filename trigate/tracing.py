"""OpenTelemetry traces: a span per request, a child span per upstream attempt.

Tracing is on when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`
or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or LiteLLM's `litellm_settings.callbacks:
["otel"]` with its `OTEL_ENDPOINT`); off, no span object is ever made. Spans follow
OpenTelemetry's GenAI semantic conventions. An incoming `traceparent` is continued,
and each attempt's own context goes to its upstream in `traceparent`, so a
provider that traces joins the same trace.

Export is the SDK's `BatchSpanProcessor` with the OTLP/HTTP exporter: ending a span
only queues it, and the processor's own thread sends batches, so the event loop
never waits on the receiver.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson
import trio
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from trigate.errors import secrets

TRACES_PATH = "/v1/traces"
# OpenTelemetry's own switch for recording prompts and answers in GenAI spans.
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_PROPAGATOR = TraceContextTextMapPropagator()


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
    """LiteLLM's `OTEL_HEADERS` (`k=v,k2=v2`); the standard variables the exporter reads."""
    raw = environ.get("OTEL_HEADERS")
    if not raw:
        return None
    pairs = (item.partition("=") for item in raw.split(","))
    return {name.strip(): value.strip() for name, _, value in pairs if name.strip()}


class Tracing:
    """The gateway's tracer, its exporter and what spans may record."""

    def __init__(self, endpoint: str, environ: Mapping[str, str]) -> None:
        resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "trigate")})
        self._provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=endpoint, headers=_headers(environ))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer: Tracer = self._provider.get_tracer("trigate")
        self.capture_content = environ.get(CAPTURE_CONTENT_ENV, "").lower() == "true"

    @classmethod
    def from_environment(
        cls, litellm_settings: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> Tracing | None:
        endpoint = traces_endpoint(litellm_settings, environ)
        return cls(endpoint, environ) if endpoint else None

    def request_span(
        self,
        operation: str,
        model_group: str,
        traceparent: str | None,
        request_id: str,
        body: dict[str, Any],
    ) -> Span:
        """The span of a whole request; a client's `traceparent` makes it a child."""
        parent: Context | None = None
        if traceparent:
            parent = _PROPAGATOR.extract({"traceparent": traceparent})
        span = self.tracer.start_span(
            f"{operation} {model_group}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model_group,
                "trigate.request_id": request_id,
            },
        )
        if self.capture_content and "messages" in body:
            span.set_attribute("gen_ai.input.messages", orjson.dumps(body["messages"]).decode())
        return span

    def attempt_span(
        self, parent: Span, operation: str, provider: str, model: str, deployment: str, hedge: bool
    ) -> Span:
        return self.tracer.start_span(
            f"{operation} {model}",
            context=set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.system": provider,
                "gen_ai.request.model": model,
                "trigate.deployment": deployment,
                "trigate.hedge": hedge,
            },
        )

    async def shutdown(self) -> None:
        """Flush what is queued; in a thread, since the exporter's send blocks."""
        await trio.to_thread.run_sync(self._provider.shutdown)


def traceparent_of(span: Span) -> str:
    """The W3C `traceparent` that makes the upstream's spans children of `span`."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
    return carrier["traceparent"]


def end_failed(span: Span, failure: BaseException | None, *, cancelled: bool = False) -> None:
    """End a span that did not succeed: an error's status and type, or cancelled."""
    if cancelled:
        span.set_attribute("trigate.cancelled", True)
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
    elif failure is not None:
        span.set_attribute("error.type", type(failure).__name__)
        span.set_status(Status(StatusCode.ERROR, secrets.redact(str(failure))[:200]))
    span.end()

"""LiteLLM's `langfuse` callback, sent the way Langfuse's current docs recommend: OTLP
spans to its OpenTelemetry endpoint (`/api/public/otel/v1/traces`; its batch ingestion
API is "legacy" there), with Langfuse's attributes.

Each request is one trace holding one generation: model, parameters, usage, cost,
latency (start, end, completion start), input and output, level and status message
on failure, and LiteLLM's metadata (`user_api_key_*`, the request's own metadata)
under `langfuse.trace.metadata.*` and `langfuse.observation.metadata.*`; the end
user (else the key's user) is the trace's user, `litellm_session_id` its session,
and the request's tags its tags.

Credentials as LiteLLM reads them: `LANGFUSE_PUBLIC_KEY`, `LANGFUSE_SECRET_KEY` and
`LANGFUSE_HOST` (default https://cloud.langfuse.com), or per key or team in their
`logging` metadata (`langfuse_public_key`, `langfuse_secret_key`, `langfuse_host`).
Span ids come from the request id, so a batch sent again is deduplicated by Langfuse.
The spans are encoded by trigate's own OTLP encoder (`trigate.otlp`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from trigate import __version__
from trigate.errors import secrets
from trigate.export.http import post
from trigate.export.payload import iso_time, standard_logging_payload
from trigate.otlp import OTLPSpanExporter
from trigate.spend import RequestRecord

DEFAULT_HOST = "https://cloud.langfuse.com"
TRACES_PATH = "/api/public/otel/v1/traces"
# Langfuse's docs: direct OpenTelemetry exporters send this for real-time ingestion.
INGESTION_VERSION = "4"
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
# Metadata fields that say who asked; the rest of LiteLLM's metadata is mostly empty.
_METADATA = (
    "user_api_key_hash", "user_api_key_alias", "user_api_key_team_id",
    "user_api_key_team_alias", "user_api_key_user_id", "user_api_key_user_email",
    "user_api_key_org_id", "user_api_key_end_user_id", "user_api_key_request_route",
)  # fmt: skip


class Langfuse:
    """One Langfuse project (its keys and host)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        public_key: str,
        secret_key: str,
        host: str | None = None,
        *,
        redact: bool = False,
    ) -> None:
        secrets.add(secret_key)
        self._client = client
        self._url = (host or DEFAULT_HOST).rstrip("/") + TRACES_PATH
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        secrets.add(token)
        self._headers = {
            "authorization": f"Basic {token}",
            "content-type": "application/x-protobuf",
            "x-langfuse-ingestion-version": INGESTION_VERSION,
        }
        self._encoder = OTLPSpanExporter(self._url, {}, {})
        self._resource = Resource.create({"service.name": "trigate"})
        self._scope = InstrumentationScope("trigate", __version__)
        self._redact = redact

    @classmethod
    def from_settings(
        cls,
        client: httpx.AsyncClient,
        settings: Mapping[str, Any],
        environ: Mapping[str, str],
        *,
        redact: bool,
    ) -> Langfuse:
        """From a key's or team's `callback_vars`, else the LANGFUSE_* variables."""
        public = settings.get("langfuse_public_key") or environ.get("LANGFUSE_PUBLIC_KEY")
        secret = (
            settings.get("langfuse_secret_key")
            or settings.get("langfuse_secret")
            or environ.get("LANGFUSE_SECRET_KEY")
        )
        host = (
            settings.get("langfuse_host")
            or environ.get("LANGFUSE_HOST")
            or environ.get("LANGFUSE_BASE_URL")
        )
        if not public or not secret:
            raise ValueError("langfuse needs LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY")
        return cls(client, str(public), str(secret), str(host) if host else None, redact=redact)

    async def send(self, batch: Sequence[RequestRecord]) -> None:
        spans = [self.span(record) for record in batch]
        await post(self._client, self._url, self._encoder.encode(spans), self._headers)

    def span(self, record: RequestRecord) -> ReadableSpan:
        """The request's trace and generation, as one root span."""
        payload = standard_logging_payload(record, redact=self._redact)
        digest = hashlib.sha256(record.request_id.encode()).digest()
        trace_id = int.from_bytes(digest[:16], "big") or 1
        span_id = int.from_bytes(digest[16:24], "big") or 1
        name = f"litellm-{payload['call_type']}"
        metadata = payload["metadata"]
        attributes: dict[str, Any] = {
            "langfuse.trace.name": name,
            "langfuse.observation.type": "generation",
            "gen_ai.request.model": payload["model"],
            "gen_ai.usage.input_tokens": payload["prompt_tokens"],
            "gen_ai.usage.output_tokens": payload["completion_tokens"],
            "gen_ai.usage.total_tokens": payload["total_tokens"],
            "langfuse.observation.usage_details": _json(
                {
                    "input": payload["prompt_tokens"],
                    "output": payload["completion_tokens"],
                    "total": payload["total_tokens"],
                }
            ),
            "langfuse.observation.cost_details": _json({"total": payload["response_cost"]}),
            "langfuse.observation.completion_start_time": iso_time(payload["completionStartTime"]),
            "langfuse.observation.model.parameters": _json(payload["model_parameters"]),
            "langfuse.observation.metadata.model_group": payload["model_group"] or "",
            "langfuse.observation.metadata.model_id": payload["model_id"] or "",
        }
        if payload["messages"] is not None:
            attributes["langfuse.observation.input"] = _json(payload["messages"])
        if payload["response"] is not None:
            attributes["langfuse.observation.output"] = _json(payload["response"])
        user = record.end_user or record.user_id
        if user:
            attributes["user.id"] = user
        if record.session_id:
            attributes["session.id"] = record.session_id
        if payload["request_tags"]:
            attributes["langfuse.trace.tags"] = [str(tag) for tag in payload["request_tags"]]
        for field in _METADATA:
            if metadata.get(field) is not None:
                attributes[f"langfuse.trace.metadata.{field}"] = str(metadata[field])
        for field, value in (record.metadata or {}).items():
            attributes[f"langfuse.trace.metadata.{field}"] = (
                value if isinstance(value, str) else _json(value)
            )
        status = Status(StatusCode.UNSET)
        if payload["status"] == "failure":
            message = payload["error_str"] or f"HTTP {record.status}"
            attributes["langfuse.observation.level"] = "ERROR"
            attributes["langfuse.observation.status_message"] = message
            status = Status(StatusCode.ERROR, message)
        return ReadableSpan(
            name,
            SpanContext(trace_id, span_id, False, _SAMPLED),
            None,
            self._resource,
            attributes,
            kind=SpanKind.SERVER,
            status=status,
            start_time=int(record.start_time * 1e9),
            end_time=int(record.end_time * 1e9),
            instrumentation_scope=self._scope,
        )


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()

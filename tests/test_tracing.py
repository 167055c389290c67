"""OpenTelemetry traces, as a collector receives them: an OTLP/HTTP receiver on a local
port decodes what the gateway exported and checks the span tree and its attributes."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest, chat_completion
from helpers import MESSAGES, deployment_entry, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

# MESSAGES as the OpenAI SDK types a chat's messages (helpers.py leaves it a list of dicts).
CHAT = cast("list[ChatCompletionMessageParam]", MESSAGES)

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(span: Span) -> dict[str, Any]:
    return {attribute.key: _value(attribute.value) for attribute in span.attributes}


def received_spans(receiver: FakeUpstream, path: str = "/v1/traces") -> list[Span]:
    """Every span of the OTLP/HTTP protobuf exports `receiver` was sent at `path`."""
    spans = []
    for request in receiver.requests:
        assert request.target == path
        assert request.headers["content-type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(request.body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
    return spans


async def test_a_request_is_a_span_with_a_child_per_attempt(
    nursery: trio.Nursery, receiver: FakeUpstream
) -> None:
    def answer(request: ReceivedRequest) -> JSONReply:
        return JSONReply(chat_completion(usage=USAGE))

    failing = FakeUpstream(lambda request: JSONReply({"error": {"message": "down"}}, 503))
    backup = FakeUpstream(answer)
    for fake in (failing, backup):
        await fake.start(nursery)
    config = {
        "model_list": [
            deployment_entry("primary", failing, "primary-1"),
            deployment_entry("backup", backup, "backup-1"),
        ],
        "router_settings": {"num_retries": 1, "fallbacks": [{"primary": ["backup"]}]},
    }
    gateway = await start_gateway(nursery, config)
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
    try:
        await sdk(gateway).chat.completions.create(
            model="primary", messages=CHAT, extra_headers={"traceparent": traceparent}
        )
    finally:
        await gateway.stop()  # flushes the batch processor

    spans = received_spans(receiver)
    [request] = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    attempts = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert len(spans) == 4, "one request, a try and a retry at primary, one at backup"
    # The client's trace is continued: same trace id, its span is the parent.
    assert request.trace_id.hex() == CLIENT_TRACE
    assert request.parent_span_id.hex() == CLIENT_PARENT
    assert all(s.parent_span_id == request.span_id for s in attempts)
    assert all(s.trace_id == request.trace_id for s in attempts)

    attributes = _attributes(request)
    assert request.name == "chat primary"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "primary"
    assert attributes["gen_ai.response.model"] == "upstream-model"
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.usage.input_tokens"] == 7
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert "gen_ai.input.messages" not in attributes, "contents only when opted in"
    assert request.status.code != Status.STATUS_CODE_ERROR

    by_deployment = [(_attributes(s)["trigate.deployment"], s.status.code) for s in attempts]
    assert sorted(by_deployment) == [
        ("backup-1", Status.STATUS_CODE_UNSET),
        ("primary-1", Status.STATUS_CODE_ERROR),
        ("primary-1", Status.STATUS_CODE_ERROR),
    ]
    # Each upstream was told its own attempt's span as the parent.
    for upstream in (failing, backup):
        for sent in upstream.requests:
            _, trace, parent, _ = sent.headers["traceparent"].split("-")
            assert trace == CLIENT_TRACE
            assert parent in {s.span_id.hex() for s in attempts}


async def test_a_hedge_loser_ends_cancelled(
    nursery: trio.Nursery, receiver: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    slow = FakeUpstream(lambda request: JSONReply(chat_completion(usage=USAGE), delay=5.0))
    fast = FakeUpstream(lambda request: JSONReply(chat_completion(usage=USAGE)))
    for fake in (slow, fast):
        await fake.start(nursery)
    config = {
        "model_list": [
            deployment_entry("g", slow, "slow", order=1),
            deployment_entry("g", fast, "fast", order=2),
        ],
        "router_settings": {"hedge_after_ms": 100},
    }
    gateway = await start_gateway(nursery, config)
    try:
        await sdk(gateway).chat.completions.create(model="g", messages=CHAT)
    finally:
        await gateway.stop()
    spans = received_spans(receiver)
    [request] = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert "Say hello" in _attributes(request)["gen_ai.input.messages"]
    attempts = {_attributes(s)["trigate.deployment"]: s for s in spans if s is not request}
    assert _attributes(attempts["fast"])["trigate.hedge"] is True
    assert attempts["fast"].status.code == Status.STATUS_CODE_UNSET
    assert _attributes(attempts["slow"])["trigate.cancelled"] is True
    assert attempts["slow"].status.code == Status.STATUS_CODE_ERROR
    assert attempts["slow"].status.message == "cancelled"


async def test_without_an_endpoint_nothing_is_traced(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    upstream = FakeUpstream(lambda request: JSONReply(chat_completion(usage=USAGE)))
    await upstream.start(nursery)
    gateway = await start_gateway(nursery, {"model_list": [deployment_entry("g", upstream, "d")]})
    try:
        await sdk(gateway).chat.completions.create(
            model="g",
            messages=CHAT,
            extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"},
        )
        assert gateway.gateway.telemetry.tracing is None
    finally:
        await gateway.stop()
    assert "traceparent" not in upstream.requests[0].headers


async def test_sampling_follows_the_caller_then_the_configured_ratio(
    nursery: trio.Nursery, receiver: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    upstream = FakeUpstream(lambda request: JSONReply(chat_completion(usage=USAGE)))
    await upstream.start(nursery)
    gateway = await start_gateway(nursery, {"model_list": [deployment_entry("g", upstream, "d")]})
    other_trace = "0af7651916cd43dd8448eb211c80319c"
    try:
        client = sdk(gateway)
        for traceparent in (
            f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00",  # the caller did not sample it
            f"00-{other_trace}-{CLIENT_PARENT}-01",  # the caller did
            None,  # a root request, at a ratio of 0
        ):
            headers = {"traceparent": traceparent} if traceparent else {}
            await client.chat.completions.create(model="g", messages=CHAT, extra_headers=headers)
    finally:
        await gateway.stop()
    spans = received_spans(receiver)
    assert len(spans) == 2, "only the sampled request, and its one attempt"
    assert {span.trace_id.hex() for span in spans} == {other_trace}

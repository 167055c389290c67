"""trigate.otlp writes OTLP protobuf by hand: a collector must read from it exactly what
the SDK's own encoder would have sent, and a receiver's refusals are retried as the
SDK's exporter retries them."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import ssl
import subprocess
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from fakes import FakeUpstream, JSONReply, ReceivedRequest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from trigate.otlp import OTLPSpanExporter


class Kind(StrEnum):
    CHAT = "chat"


ROOT = Path(__file__).resolve().parent.parent
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
RESOURCE = Resource.create({"service.name": "trigate-test"})
SCOPE = InstrumentationScope("trigate", "1.2.3")
START = 1_700_000_000_123_456_789
# Every value type an attribute can have, with the zero values proto3 would leave out
# were they not in a oneof, and values whose varints take several bytes.
ATTRIBUTES: dict[str, Any] = {
    "gen_ai.request.model": "gpt-4o",
    "empty": "",
    "unicode": "héllo ✓ " * 40,
    "gen_ai.usage.input_tokens": 7,
    "zero": 0,
    "large": 2**62 + 12345,
    "negative": -42,
    "trigate.cost": 0.00125,
    "zero_float": 0.0,
    "trigate.hedge": True,
    "no": False,
    "tags": ("a", "b"),
    "counts": [1, 2, 300],
    "blob": b"\x00\x01",
    "str_subclass": Kind.CHAT,  # a str, not a sequence of characters
    "mapping": {"a": 1, "b": ["x"]},
    "too_large": 2**64,  # dropped, as the SDK's encoder drops it
}


def _context(trace_id: int, span_id: int, *, remote: bool = False, **kw: Any) -> SpanContext:
    return SpanContext(trace_id, span_id, remote, SAMPLED, **kw)


def _span(
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    attributes: dict[str, Any],
    **kw: Any,
) -> ReadableSpan:
    return ReadableSpan(
        name,
        context,
        parent,
        RESOURCE,
        attributes,
        start_time=START,
        end_time=START + 1_500_000,
        instrumentation_scope=SCOPE,
        **kw,
    )


def _spans() -> list[ReadableSpan]:
    trace = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    client_parent = _context(trace, 0x00F067AA0BA902B7, remote=True)
    request = _context(trace, 0x1111111111111111, trace_state=TraceState([("vendor", "x1")]))
    root = _context(0x1, 0xFFFFFFFFFFFFFFFF)
    other_scope = InstrumentationScope("other", None)
    return [
        _span("chat primary", request, client_parent, ATTRIBUTES, kind=SpanKind.SERVER),
        _span(
            "chat upstream-model",
            _context(trace, 0x2222222222222222),
            request,
            {"trigate.deployment": "primary-1", "error.type": "UpstreamError"},
            kind=SpanKind.CLIENT,
            status=Status(StatusCode.ERROR, "HTTP 503: down ✗"),
            events=[
                Event("retry", {"attempt": 2, "reason": "503"}, timestamp=START + 10),
                Event("gave up", timestamp=START + 20),
            ],
            links=[Link(client_parent, {"why": "caused by"})],
        ),
        _span(
            "root",
            root,
            None,
            {},
            kind=SpanKind.SERVER,
            status=Status(StatusCode.ERROR),
        ),
        _span("ok", _context(trace, 0x33), request, {"a": 1}, status=Status(StatusCode.OK)),
        ReadableSpan(
            "elsewhere",
            _context(trace, 0x44),
            None,
            Resource.create({"service.name": "other", "n": 3}),
            {"a": 1},
            kind=SpanKind.CLIENT,
            start_time=START,
            end_time=START + 1,
            instrumentation_scope=other_scope,
        ),
        _span("plain", _context(trace, 0x55), request, {"gen_ai.request.model": "m"}),
        ReadableSpan("unscoped", _context(trace, 0x66), None, RESOURCE, {"a": 2}),
    ]


def test_the_bytes_decode_to_what_the_sdk_encodes() -> None:
    spans = _spans()
    exporter = OTLPSpanExporter("http://127.0.0.1:1/v1/traces", environ={})
    ours = ExportTraceServiceRequest.FromString(exporter.encode(spans))
    theirs = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
    assert ours == theirs
    # Not equal by both being empty: every span is there, grouped by resource and scope.
    assert [len(r.scope_spans) for r in ours.resource_spans] == [2, 1]
    assert sum(len(s.spans) for r in ours.resource_spans for s in r.scope_spans) == 7
    # The cached resource, scope and keys encode the same the second time.
    assert ExportTraceServiceRequest.FromString(exporter.encode(spans)) == theirs


def test_a_span_with_many_attributes_has_multi_byte_lengths() -> None:
    """Fields over 127 and 16383 bytes take two- and three-byte length varints."""
    attributes = {f"key.{n}": "v" * n for n in range(0, 300, 7)}
    attributes["big"] = "x" * 20000
    spans = [_span("wide", _context(5, 6), None, attributes, kind=SpanKind.SERVER)]
    exporter = OTLPSpanExporter("http://127.0.0.1:1/v1/traces", environ={})
    ours = ExportTraceServiceRequest.FromString(exporter.encode(spans))
    assert ours == ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())


def test_recurring_and_unique_values_across_batches() -> None:
    """Values a key repeats are remembered, a key with too many (a request id) stops
    being remembered: neither changes what is sent, batch after batch."""
    exporter = OTLPSpanExporter("http://127.0.0.1:1/v1/traces", environ={})
    for batch in range(3):
        spans = [
            _span(
                "chat m",
                _context(7, batch * 1000 + n + 1),
                None,
                {"request_id": f"req-{batch}-{n}", "model": f"m{n % 3}", "tokens": n},
                kind=SpanKind.SERVER,
            )
            for n in range(100)
        ]
        ours = ExportTraceServiceRequest.FromString(exporter.encode(spans))
        assert ours == ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> tuple[FakeUpstream, list[int]]:
    """A receiver that answers each request with the next status of the list it returns."""
    statuses: list[int] = []

    def answer(request: ReceivedRequest) -> JSONReply:
        return JSONReply({}, statuses.pop(0) if statuses else 200, headers={"retry-after": "0"})

    collector = FakeUpstream(answer)
    await collector.start(nursery)
    return collector, statuses


def _export_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("spans not exported")]


async def _export(exporter: OTLPSpanExporter, spans: list[ReadableSpan]) -> SpanExportResult:
    return await trio.to_thread.run_sync(exporter.export, spans)


async def test_the_receiver_gets_the_batch_with_the_headers(
    receiver: tuple[FakeUpstream, list[int]],
) -> None:
    collector, _ = receiver
    environ = {"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic%20abc,x-env=1"}
    exporter = OTLPSpanExporter(
        f"http://127.0.0.1:{collector.port}/v1/traces", {"X-Env": "2"}, environ
    )
    spans = _spans()
    assert await _export(exporter, spans) is SpanExportResult.SUCCESS
    assert await _export(exporter, spans[:1]) is SpanExportResult.SUCCESS
    first, second = collector.requests
    assert first.target == "/v1/traces"
    assert first.headers["content-type"] == "application/x-protobuf"
    assert first.headers["authorization"] == "Basic abc"
    assert first.headers["x-env"] == "2", "LiteLLM's OTEL_HEADERS win over the variable"
    assert ExportTraceServiceRequest.FromString(first.body) == encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(second.body) == encode_spans(spans[:1])


async def test_gzip_when_asked(receiver: tuple[FakeUpstream, list[int]]) -> None:
    collector, _ = receiver
    environ = {"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip"}
    exporter = OTLPSpanExporter(f"http://127.0.0.1:{collector.port}/v1/traces", environ=environ)
    spans = _spans()
    assert await _export(exporter, spans) is SpanExportResult.SUCCESS
    [request] = collector.requests
    assert request.headers["content-encoding"] == "gzip"
    assert ExportTraceServiceRequest.FromString(gzip.decompress(request.body)) == encode_spans(
        spans
    )


async def test_tls_to_a_receiver_with_its_own_ca(nursery: trio.Nursery, tmp_path: Path) -> None:
    """https endpoints verify the receiver against OTEL_EXPORTER_OTLP_CERTIFICATE's CA."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    bodies: list[bytes] = []

    async def receive(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some()
        except trio.BrokenResourceError:  # a client that does not trust us hangs up
            return
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await stream.receive_some()
        bodies.append(body)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    [listener] = await nursery.start(
        partial(trio.serve_ssl_over_tcp, host="127.0.0.1"), receive, 0, server_context
    )
    port = listener.transport_listener.socket.getsockname()[1]
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    environ = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca_file)}
    exporter = OTLPSpanExporter(f"https://127.0.0.1:{port}/v1/traces", environ=environ)
    spans = _spans()
    assert await _export(exporter, spans) is SpanExportResult.SUCCESS
    [body] = bodies
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(spans)
    # Without the CA the receiver is not trusted: the batch fails.
    untrusting = OTLPSpanExporter(
        f"https://127.0.0.1:{port}/v1/traces", environ={"OTEL_EXPORTER_OTLP_TIMEOUT": "0.5"}
    )
    assert await _export(untrusting, spans) is SpanExportResult.FAILURE
    assert len(bodies) == 1


async def test_unavailable_is_retried_until_accepted(
    receiver: tuple[FakeUpstream, list[int]],
) -> None:
    collector, statuses = receiver
    statuses.extend([503, 429])
    exporter = OTLPSpanExporter(f"http://127.0.0.1:{collector.port}/v1/traces", environ={})
    assert await _export(exporter, _spans()) is SpanExportResult.SUCCESS
    assert len(collector.requests) == 3
    assert len({request.body for request in collector.requests}) == 1


async def test_a_refusal_is_not_retried_and_logged_once(
    receiver: tuple[FakeUpstream, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    collector, statuses = receiver
    statuses.append(400)
    exporter = OTLPSpanExporter(f"http://127.0.0.1:{collector.port}/v1/traces", environ={})
    with caplog.at_level(logging.WARNING, logger="trigate.otlp"):
        assert await _export(exporter, _spans()) is SpanExportResult.FAILURE
    assert len(collector.requests) == 1
    [record] = _export_failures(caplog)
    assert "HTTP 400" in record.getMessage()


async def test_an_absent_receiver_fails_the_batch_within_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connection refused is retried with backoff until the timeout leaves no room."""
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environ = {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0.5"}
    exporter = OTLPSpanExporter(f"http://127.0.0.1:{port}/v1/traces", environ=environ)
    with caplog.at_level(logging.WARNING, logger="trigate.otlp"):
        assert await _export(exporter, _spans()) is SpanExportResult.FAILURE
    [record] = _export_failures(caplog)
    assert "ConnectionRefusedError" in record.getMessage()


def test_the_bench_can_trace_every_request(tmp_path: Path) -> None:
    """`scripts/bench --otlp`: the gateway under test exports its spans to the bench's
    receiver, so a scenario's figures include what tracing costs."""
    if shutil.which("wrk") is None and shutil.which("apt-get") is None:
        pytest.skip("needs wrk and nginx, or apt-get to install them")
    argv = [str(ROOT / "scripts" / "bench"), "--quick", "--scenarios", "a", "--duration", "1"]
    done = subprocess.run(
        [*argv, "--otlp", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "every request traced over OTLP" in done.stdout
    [json_path] = tmp_path.glob("bench-*.json")
    meta = json.loads(json_path.read_text())["meta"]
    assert meta["traced"] is True
    exports = (Path(meta["logs"]) / "otlp.log").read_text().splitlines()
    assert exports
    assert [line for line in exports if not line.startswith("/v1/traces ")] == []
    assert sum(int(line.split()[1]) for line in exports) > 0

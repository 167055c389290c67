"""An OTLP/HTTP span exporter that writes the protobuf wire format by hand.

The SDK's exporter builds a Python protobuf object per span, per attribute and per
value before serialising them, some 250,000 CPU instructions for one of the
gateway's spans (this one: some 55,000), which was most of what tracing cost. The
format itself is simple (tags, varints, length-prefixed bytes), so this exporter
writes `ExportTraceServiceRequest` bytes directly: a span is a join of byte
strings, the resource and scope are encoded once, and so is each attribute key and
each recurring string or integer value. A collector receives the same message the
SDK's exporter sends (tests/test_otlp.py decodes both and compares them).

It runs in the `BatchSpanProcessor`'s thread, which calls `export` with each batch;
the POST is a plain blocking `http.client` request on a kept-alive connection, with
the SDK's retry rules (429, 502, 503, 504 and dropped connections retried with
exponential backoff or the receiver's Retry-After, within the export timeout).
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import random
import ssl
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.util.re import parse_env_headers

_logger = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 6  # the SDK's: backoff doubles from 1 s, so the timeout usually ends it first
DEFAULT_TIMEOUT = 10.0  # seconds, as the SDK's OTEL_EXPORTER_OTLP_TIMEOUT reads it

# Tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
_RESOURCE_SPANS = b"\x0a"  # ExportTraceServiceRequest.resource_spans = 1
_SCOPE_SPANS = b"\x12"  # ResourceSpans.scope_spans = 2
_SPANS = b"\x12"  # ScopeSpans.spans = 2
_SPAN_EVENT = b"\x5a"  # Span.events = 11
_SPAN_LINK = b"\x6a"  # Span.links = 13
_SPAN_STATUS = b"\x7a"  # Span.status = 15
_SPAN_FLAGS = b"\x85\x01"  # Span.flags = 16, fixed32
# SpanFlags: the SDK always says whether the parent is remote, and sends no trace flags.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_LOCAL = _SPAN_FLAGS + struct.pack("<I", _HAS_IS_REMOTE)
_FLAGS_REMOTE = _SPAN_FLAGS + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_LINK_FLAGS = b"\x35"  # Span.Link.flags = 6, fixed32
# Span.kind = 6: the protocol's kinds count from 1 (0 is "unspecified").
_KINDS = {kind: b"\x30" + bytes((kind.value + 1,)) for kind in SpanKind}
# Status.code = 3, left out when UNSET (0).
_STATUSES = {
    code: _SPAN_STATUS + (b"\x02\x18" + bytes((code.value,)) if code.value else b"\x00")
    for code in StatusCode
}
_SERVER, _CLIENT = _KINDS[SpanKind.SERVER], _KINDS[SpanKind.CLIENT]
_TRUE = b"\x10\x01"  # AnyValue.bool_value
_FALSE = b"\x10\x00"
_SMALL = [bytes((n,)) for n in range(0x80)]
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_TIMES = struct.Struct("<BQBQ").pack  # start and end time: tag, fixed64, tag, fixed64


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if n < 0:  # int64: two's complement over 64 bits
        n += 1 << 64
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    return tag + _varint(len(payload)) + payload


def _string(tag: bytes, value: str | None) -> bytes:
    """A proto3 string field, left out when empty (as the SDK's encoder leaves it)."""
    return _field(tag, value.encode()) if value else b""


def _any_value(value: Any) -> bytes:
    """The body of an AnyValue: one of its oneof fields, present even when zero. The
    types are told apart in the SDK's order (a bool is an int, a str a Sequence)."""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise TypeError(f"{value} is out of int64's range")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if value is None:
        return b""
    if isinstance(value, Sequence):  # ArrayValue { repeated AnyValue values = 1 }
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    if isinstance(value, Mapping):  # KeyValueList { repeated KeyValue values = 1 }
        pairs = (
            _field(b"\x0a", _field(b"\x0a", str(key).encode()) + _field(b"\x12", _any_value(item)))
            for key, item in value.items()
        )
        return _field(b"\x32", b"".join(pairs))
    raise TypeError(f"an attribute cannot be a {type(value).__name__}")


class _Attributes:
    """Encodes attribute maps as repeated KeyValue fields under one tag. A key's own
    field is encoded once, since the same few keys recur on every span; so is a whole
    field whose string or integer value recurs (an operation, a model, a provider),
    until a key shows too many values to be worth remembering (a request id)."""

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        self._keys: dict[str, _Key] = {}

    def encode(self, attributes: Mapping[str, Any] | None, out: list[bytes]) -> None:
        """Append the fields to `out`."""
        if not attributes:
            return
        keys = self._keys
        for key, value in attributes.items():
            known = keys.get(key)
            if known is None:
                known = keys[key] = _Key(key)
            # Strings and integers only: True == 1 == 1.0 would share an entry.
            kind = type(value)
            values = known.values if kind is str or kind is int else None
            field = values.get(value) if values is not None else None
            if field is None:
                try:
                    field = self._field(known.prefix, value)
                except TypeError as error:  # as the SDK's encoder, drop just that one
                    _logger.warning("span attribute %s dropped: %s", key, error)
                    continue
                if values is not None:
                    known.remember(value, field)
            out.append(field)

    def _field(self, prefix: bytes, value: Any) -> bytes:
        encoded = _any_value(value)
        pair = prefix + _varint(len(encoded)) + encoded
        return self._tag + _varint(len(pair)) + pair


class _Key:
    """An attribute key's encoded `key` field, and the fields of its recurring values."""

    __slots__ = ("prefix", "values")
    MAX_VALUES = 64

    def __init__(self, key: str) -> None:
        # KeyValue.key = 1, then the tag of KeyValue.value = 2.
        self.prefix = _field(b"\x0a", key.encode()) + b"\x12"
        self.values: dict[str | int, bytes] | None = {}

    def remember(self, value: str | int, field: bytes) -> None:
        assert self.values is not None
        if len(self.values) < self.MAX_VALUES:
            self.values[value] = field
        else:
            self.values = None


def _resource(resource: Resource) -> bytes:
    """ResourceSpans.resource = 1 (present even when empty, as the SDK's is)."""
    attributes: list[bytes] = []
    _Attributes(b"\x0a").encode(resource.attributes, attributes)
    return _field(b"\x0a", b"".join(attributes))


def _scope(scope: InstrumentationScope | None) -> bytes:
    """ScopeSpans.scope = 1, then ScopeSpans.schema_url = 3 when the scope has one."""
    if scope is None:
        return b"\x0a\x00"
    body = [_string(b"\x0a", scope.name), _string(b"\x12", scope.version)]
    _Attributes(b"\x1a").encode(scope.attributes, body)
    return _field(b"\x0a", b"".join(body)) + _string(b"\x1a", scope.schema_url)


def _uint32(tag: bytes, value: int) -> bytes:
    return tag + _varint(value) if value else b""


def _status(status: Status) -> bytes:
    """Span.status = 15: present even when UNSET, as the SDK's is."""
    if status.description is None:
        return _STATUSES[status.status_code]
    body = _string(b"\x12", status.description) + _uint32(b"\x18", status.status_code.value)
    return _field(_SPAN_STATUS, body)


def _trace_state(state: TraceState) -> str:
    return ",".join(f"{key}={value}" for key, value in state.items()) if state else ""


class OTLPSpanExporter(SpanExporter):
    """Posts batches of finished spans to an OTLP/HTTP traces endpoint as protobuf."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """`endpoint` is the whole URL (`.../v1/traces`). Headers, timeout, compression
        and TLS files come from the OTEL_EXPORTER_OTLP_[TRACES_]* variables, as the SDK's
        exporter reads them; `headers` (LiteLLM's OTEL_HEADERS) override theirs."""
        self._url = urlsplit(endpoint)
        self._target = self._url.path or "/"
        if self._url.query:
            self._target += "?" + self._url.query
        self._timeout = _timeout(environ)
        self._gzip = _setting(environ, "COMPRESSION").strip().lower() == "gzip"
        self._headers = {
            **{key.lower(): value for key, value in _env_headers(environ).items()},
            **{key.lower(): value for key, value in (headers or {}).items()},
            "content-type": "application/x-protobuf",
        }
        if self._gzip:
            self._headers["content-encoding"] = "gzip"
        self._tls = _tls_context(environ) if self._url.scheme == "https" else None
        self._connection: http.client.HTTPConnection | None = None
        self._span_attributes = _Attributes(b"\x4a")  # Span.attributes = 9
        self._event_attributes = _Attributes(b"\x1a")  # Span.Event.attributes = 3
        self._link_attributes = _Attributes(b"\x22")  # Span.Link.attributes = 4
        # Encoded ResourceSpans.resource and ScopeSpans.scope, by the object's identity
        # (the objects are kept, so an id is never reused): one of each in practice.
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}
        self._last_status = Status(StatusCode.UNSET)
        self._last_status_field = _status(self._last_status)
        self._stopping = threading.Event()

    @property
    def timeout(self) -> float:
        """How long one `export` may take, its retries included (seconds)."""
        return self._timeout

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopping.is_set():
            return SpanExportResult.FAILURE
        body = self.encode(spans)
        if self._gzip:
            body = gzip.compress(body)
        return SpanExportResult.SUCCESS if self._post(body) else SpanExportResult.FAILURE

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """An ExportTraceServiceRequest: spans grouped by resource, then by scope, in
        the order they first appear, as the SDK groups them."""
        groups: dict[int, dict[int, list[bytes]]] = {}
        resource: Resource | None = None
        scope: InstrumentationScope | None = None
        group: list[bytes] = []
        for span in spans:
            # A batch is one resource and one scope in practice: look the group up
            # only when they change.
            if (
                span.resource is not resource
                or span.instrumentation_scope is not scope
                or not group
            ):
                resource, scope = span.resource, span.instrumentation_scope
                group = self._group(groups, resource, scope)
            encoded = self._span(span)
            group += (_SPANS, _varint(len(encoded)), encoded)
        out = []
        for resource_id, by_scope in groups.items():
            kept, encoded_resource = self._resources[resource_id]
            parts = [
                encoded_resource,
                *(_field(_SCOPE_SPANS, b"".join(fields)) for fields in by_scope.values()),
                _string(b"\x1a", kept.schema_url),  # ResourceSpans.schema_url = 3
            ]
            out.append(_field(_RESOURCE_SPANS, b"".join(parts)))
        return b"".join(out)

    def _group(
        self,
        groups: dict[int, dict[int, list[bytes]]],
        resource: Resource,
        scope: InstrumentationScope | None,
    ) -> list[bytes]:
        """The ScopeSpans fields of (resource, scope) so far, starting with the scope;
        their encodings are made on first sight and kept."""
        if id(resource) not in self._resources:
            self._resources[id(resource)] = (resource, _resource(resource))
        if id(scope) not in self._scopes:
            self._scopes[id(scope)] = (scope, _scope(scope))
        by_scope = groups.setdefault(id(resource), {})
        if id(scope) not in by_scope:
            by_scope[id(scope)] = [self._scopes[id(scope)][1]]
        return by_scope[id(scope)]

    def _span(self, span: ReadableSpan) -> bytes:
        # A SpanContext is a tuple (its declared type); unpacking it costs no property calls.
        trace_id, span_id, _, _, trace_state, _ = span.context
        parent = span.parent
        kind = span.kind
        name = span.name.encode()
        parts = [b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08", span_id.to_bytes(8, "big")]
        if trace_state is not DEFAULT_TRACE_STATE and trace_state:
            parts.append(_string(b"\x1a", _trace_state(trace_state)))
        if parent is None:
            flags = _FLAGS_LOCAL
        else:
            _, parent_id, remote, _, _, _ = parent
            parts += (b"\x22\x08", parent_id.to_bytes(8, "big"))
            flags = _FLAGS_REMOTE if remote else _FLAGS_LOCAL
        parts += (
            b"\x2a",
            _SMALL[len(name)] if len(name) < 0x80 else _varint(len(name)),
            name,
            # Enum members hash in Python: the common kinds are told apart by identity.
            _SERVER
            if kind is SpanKind.SERVER
            else _CLIENT
            if kind is SpanKind.CLIENT
            else _KINDS[kind],
        )
        start, end = span.start_time, span.end_time
        if start and end:
            parts.append(_TIMES(0x39, start, 0x41, end))
        elif start or end:
            parts.append(b"\x39" + _FIXED64(start) if start else b"\x41" + _FIXED64(end))
        self._span_attributes.encode(span.attributes, parts)
        if span.dropped_attributes:
            parts.append(_uint32(b"\x50", span.dropped_attributes))
        for event in span.events:
            parts.append(self._event(event.name, event.timestamp, event.attributes))
        if span.dropped_events:
            parts.append(_uint32(b"\x60", span.dropped_events))
        for link in span.links:
            parts.append(self._link(link))
        if span.dropped_links:
            parts.append(_uint32(b"\x70", span.dropped_links))
        status = span.status
        if status is not self._last_status:  # most spans share one status object (OK)
            self._last_status, self._last_status_field = status, _status(status)
        parts += (self._last_status_field, flags)
        return b"".join(parts)

    def _event(self, name: str, timestamp: int, attributes: Mapping[str, Any] | None) -> bytes:
        body = [b"\x09" + _FIXED64(timestamp) if timestamp else b"", _string(b"\x12", name)]
        self._event_attributes.encode(attributes, body)
        return _field(_SPAN_EVENT, b"".join(body))

    def _link(self, link: Link) -> bytes:
        context = link.context
        remote = _HAS_IS_REMOTE | (_IS_REMOTE if context.is_remote else 0)
        body = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
            _string(b"\x1a", _trace_state(context.trace_state)),
        ]
        self._link_attributes.encode(link.attributes, body)
        body += (
            _uint32(b"\x28", link.dropped_attributes),
            _LINK_FLAGS + struct.pack("<I", remote),
        )
        return _field(_SPAN_LINK, b"".join(body))

    def _post(self, body: bytes) -> bool:
        """Send one batch, retrying what the SDK retries; one log line if it gives up."""
        deadline = time.monotonic() + self._timeout
        problem = "no attempt"
        for attempt in range(MAX_ATTEMPTS):
            backoff = 2**attempt * random.uniform(0.8, 1.2)
            try:
                status, retry_after = self._send(body, deadline)
            except (OSError, http.client.HTTPException) as error:
                self._close()
                problem = f"{type(error).__name__}: {error}"
            else:
                if 200 <= status < 400:
                    return True
                problem = f"HTTP {status}"
                if status not in RETRYABLE:
                    break
                if retry_after is not None:
                    backoff = retry_after
            if backoff > deadline - time.monotonic() or self._stopping.wait(backoff):
                break
        _logger.warning("spans not exported to %s (%s)", self._url.netloc, problem)
        return False

    def _send(self, body: bytes, deadline: float) -> tuple[int, float | None]:
        """POST once; a kept-alive connection the receiver closed meanwhile is
        reopened and the request sent again straight away."""
        reused = self._connection is not None
        try:
            return self._request(body, deadline)
        except ConnectionError:
            self._close()
            if not reused:
                raise
        return self._request(body, deadline)

    def _request(self, body: bytes, deadline: float) -> tuple[int, float | None]:
        connection = self._connect(max(deadline - time.monotonic(), 0.001))
        connection.request("POST", self._target, body, self._headers)
        response = connection.getresponse()
        response.read()
        if response.will_close:
            self._close()
        return response.status, _retry_after(response.getheader("retry-after"))

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is None:
            host, port = self._url.hostname or "localhost", self._url.port
            if self._tls is not None:
                connection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=self._tls
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            self._connection = connection
        elif connection.sock is not None:
            connection.sock.settimeout(timeout)
        connection.timeout = timeout
        return connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def shutdown(self) -> None:
        """Stop waiting between retries, and close the connection."""
        self._stopping.set()
        self._close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing waits in the exporter: batches are sent as `export` gets them."""
        return True


def _setting(environ: Mapping[str, str], name: str) -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<name>, else OTEL_EXPORTER_OTLP_<name>."""
    return (
        environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
        or environ.get(f"OTEL_EXPORTER_OTLP_{name}")
        or ""
    )


def _env_headers(environ: Mapping[str, str]) -> Mapping[str, str]:
    """`k=v,k2=v2` with URL-encoded values, parsed as the SDK parses it."""
    return parse_env_headers(_setting(environ, "HEADERS"), liberal=True)


def _timeout(environ: Mapping[str, str]) -> float:
    """Seconds, as the SDK's HTTP exporter reads the variable."""
    raw = _setting(environ, "TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        _logger.warning("OTEL_EXPORTER_OTLP_TIMEOUT %r is not a number of seconds", raw)
        return DEFAULT_TIMEOUT


def _tls_context(environ: Mapping[str, str]) -> ssl.SSLContext:
    """The system's trust store, or the CA file and client certificate the variables name."""
    context = ssl.create_default_context(cafile=_setting(environ, "CERTIFICATE") or None)
    if certificate := _setting(environ, "CLIENT_CERTIFICATE"):
        context.load_cert_chain(certificate, _setting(environ, "CLIENT_KEY") or None)
    return context


def _retry_after(value: str | None) -> float | None:
    """A Retry-After in seconds; the HTTP-date form is rare enough to back off as usual."""
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None

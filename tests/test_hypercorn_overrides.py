"""trigate serves with hypercorn's protocols on its own accept loop (`trigate.serving`),
which copies or replaces parts of hypercorn and h11:

- `serve` is trigate's version of `hypercorn.trio.run.worker_serve`;
- each connection is served by `_Server`, a `TCPServer` whose `run`, `protocol_send`
  and `_read_data` are cheaper versions of hypercorn's, with a task group whose
  `spawn_app` hands the app its events through trigate's queue, a do-nothing
  `idle_task` (a `TrioSingleTask`) and a client stream of trigate's
  (`_WatchedStream`), used as `TCPServer` uses a `SocketStream`;
- h11's chunked-body reader is replaced by `BoundedChunkedReader`;
- a streamed body's direct writer (`_DirectBody`) frames as h11's writers do, behind
  hypercorn's back, under `TCPServer.send_lock`;
- `_H11Protocol.stream_send` is H11Protocol's for a response head whose fields it has
  checked itself, handed to h11 as parsed (`_parsed=True`): it relies on what h11's
  `normalize_and_validate` still does then (lower the names, read the framing fields);
- `_H11Protocol._check_protocol` and `_create_stream` are H11Protocol's, reading the
  request's fields from h11's `Headers._full_items`;
- h11's reader of a request head is replaced in its table by
  `request_head.read_request_head`, which gives the same `Request` (the equivalence is
  tested in tests/test_request_head.py);
- a fixed-length response written whole (`_Connection.send_whole`) moves h11's
  `Connection` and its `ConnectionState` on as `Connection.send` would for a Response
  and an EndOfMessage, and hypercorn's `HTTPStream` as its `app_send` and
  `_send_closed` would.

pyproject.toml bounds both packages above. This test fails when an upgrade changes the
source of anything overridden, so that the overrides are reviewed before the bound moves:
re-read the changed source against `trigate/serving.py`, then update the digest here.
"""

from __future__ import annotations

import hashlib
import inspect
import random
from collections.abc import Callable
from typing import Any

import h11
import h11._connection
import h11._events
import h11._headers
import h11._readers
import h11._state
import h11._writers
import hypercorn.protocol
import hypercorn.protocol.h11
import hypercorn.protocol.http_stream
import hypercorn.trio.run
import hypercorn.trio.task_group
import hypercorn.trio.tcp_server
import hypercorn.trio.worker_context
import pytest

from trigate.serving import BoundedChunkedReader, _WatchedStream, bound_chunk_sizes
from trigate.transport import valid_fields

OVERRIDDEN: dict[str, tuple[Callable[..., Any] | type, str]] = {
    "hypercorn.trio.run.worker_serve": (hypercorn.trio.run.worker_serve, "8dc8347a9fc357ca"),
    "hypercorn.trio.tcp_server.TCPServer": (
        hypercorn.trio.tcp_server.TCPServer,
        "5593e38b83d3e22e",
    ),
    # `_Server.run` is TCPServer.run for a plain stream with `_TaskGroup`, whose
    # `spawn_app` starts hypercorn's `_handle` as TaskGroup's does.
    "hypercorn.trio.task_group.TaskGroup": (
        hypercorn.trio.task_group.TaskGroup,
        "8467a3a16a7e8763",
    ),
    "hypercorn.trio.task_group._handle": (hypercorn.trio.task_group._handle, "06081a56a9930825"),
    "hypercorn.trio.worker_context.TrioSingleTask": (
        hypercorn.trio.worker_context.TrioSingleTask,
        "aa59316c028b876a",
    ),
    "h11._readers.ChunkedReader": (h11._readers.ChunkedReader, "4d2629eeaaf366b6"),
    # The direct body writer reads the h11 state and framing (`_writer`) of hypercorn's
    # H11Protocol through its ProtocolWrapper, frames as these writers do, and takes
    # TCPServer's `send_lock`.
    "hypercorn.protocol.h11.H11Protocol": (
        hypercorn.protocol.h11.H11Protocol,
        "b32a61e0a8ca2127",
    ),
    "hypercorn.protocol.ProtocolWrapper": (hypercorn.protocol.ProtocolWrapper, "caf949187e9b4a81"),
    "h11._writers.ChunkedWriter": (h11._writers.ChunkedWriter, "816f6bf8247fe299"),
    "h11._headers.normalize_and_validate": (
        h11._headers.normalize_and_validate,
        "82a8fcccb31d27d4",
    ),
    "h11._events._ResponseBase": (h11._events._ResponseBase, "8e047330429ae467"),
    "h11._writers.Http10Writer": (h11._writers.Http10Writer, "d25f1706eb4d3f9a"),
    "h11._headers.Headers": (h11._headers.Headers, "e557faefb62564ec"),
    "h11._connection.Connection": (h11._connection.Connection, "80770c03337ef4fe"),
    "h11._state.ConnectionState": (h11._state.ConnectionState, "1e7dbeae8f22041f"),
    "hypercorn.protocol.http_stream.HTTPStream": (
        hypercorn.protocol.http_stream.HTTPStream,
        "e0f656feb55ab89c",
    ),
    # `request_head.read_request_head` is this reader, reading the field lines as
    # `_decode_header_lines` does with h11's grammar, then building the `Request`.
    "h11._readers.maybe_read_from_IDLE_client": (
        h11._readers.maybe_read_from_IDLE_client,
        "b0ae12d92b2c4db9",
    ),
    "h11._readers._decode_header_lines": (h11._readers._decode_header_lines, "5ec92fa74cf22741"),
    "h11._events.Request": (h11._events.Request, "b6dd14de07295a01"),
}


@pytest.mark.parametrize("name", OVERRIDDEN)
def test_what_trigate_overrides_is_unchanged(name: str) -> None:
    overridden, digest = OVERRIDDEN[name]
    source = inspect.getsource(overridden)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == digest, (
        f"{name} changed: review trigate/serving.py's override of it, then update the digest"
    )


def test_the_stream_methods_tcp_server_calls_are_the_ones_trigate_wraps() -> None:
    """`_WatchedStream` stands in for a `SocketStream`: every stream method `TCPServer`
    calls must be one it has."""
    source = inspect.getsource(hypercorn.trio.tcp_server.TCPServer)
    called = set(_stream_calls(source))
    tls_only = {"do_handshake", "selected_alpn_protocol", "transport_stream"}
    assert called - tls_only == {"receive_some", "send_all", "send_eof", "aclose", "socket"}
    assert all(hasattr(_WatchedStream, name) for name in called - tls_only)
    # Hypercorn tells a plain stream from TLS by the AttributeError of `do_handshake`.
    assert not hasattr(_WatchedStream, "do_handshake")


def test_h11_reads_chunked_bodies_with_the_bounded_reader() -> None:
    bound_chunk_sizes()
    readers: Any = h11._readers.READERS[h11.SEND_BODY]
    assert readers["chunked"] is BoundedChunkedReader
    assert hasattr(h11._readers.ChunkedReader(), "_bytes_in_chunk")


def _stream_calls(source: str) -> list[str]:
    names = []
    for part in source.split("self.stream.")[1:]:
        name = ""
        for character in part:
            if not (character.isalnum() or character == "_"):
                break
            name += character
        names.append(name)
    return names


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [(b"x-a", b"ok\r\nset-cookie: stolen")],
        [(b"x-a", b"line\nbreak")],
        [(b"x-a", b"nul\x00")],
        [(b"x-a", b" leading space")],
        [(b"bad name", b"v")],
        [(b"x-a\nx-b", b"v")],
        [(b"", b"v")],
    ],
)
def test_a_response_head_h11_would_refuse_is_not_passed_as_parsed(
    fields: list[tuple[bytes, bytes]],
) -> None:
    """`_H11Protocol` hands h11 a head as parsed only when `valid_fields` passes it; one
    that h11 would refuse (a field splitting the head, a NUL, a bad name) goes h11's
    own way, to be refused there."""
    assert not valid_fields(fields)
    with pytest.raises(h11.LocalProtocolError):
        h11.Response(headers=fields or [(b"", b"")], status_code=200)


def test_a_gateways_head_is_passed_as_parsed_with_its_framing_read() -> None:
    fields = [
        (b"content-type", b"application/json"),
        (b"Content-Length", b"42"),
        (b"x-litellm-response-cost", b"0.000123"),
        (b"x-request-id", b"abc\tdef"),
    ]
    assert valid_fields(fields)
    parsed = h11.Response(headers=fields, status_code=200, reason=b"", _parsed=True)
    checked = h11.Response(headers=fields, status_code=200)
    assert list(parsed.headers.raw_items()) == list(checked.headers.raw_items())
    assert h11._headers.get_comma_header(parsed.headers, b"content-length") == [b"42"]


def test_the_field_check_passes_exactly_what_h11_would_send() -> None:
    """`valid_fields` checks in a few passes of C what h11 checks per field with its two
    expressions (h11/_abnf.py): random heads of the bytes that matter (NUL, CR, LF, VT,
    FF, tab, space, controls, obs-text, token and separator bytes) get h11's verdict."""
    alphabet = b'aZ0-!\t \n\r\x00\x0b\x0c\x01\x7f\xff:;,"('
    chance = random.Random(7)

    def some_bytes(most: int) -> bytes:
        return bytes(chance.choice(alphabet) for _ in range(chance.randint(0, most)))

    for _ in range(3000):
        fields = [(some_bytes(4), some_bytes(5)) for _ in range(chance.randint(1, 3))]
        try:
            h11.Response(headers=fields, status_code=200)
            h11_sends = True
        except h11.LocalProtocolError:
            h11_sends = False
        assert valid_fields(fields) is h11_sends, fields

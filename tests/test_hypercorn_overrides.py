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
  hypercorn's back, under `TCPServer.send_lock`.

pyproject.toml bounds both packages above. This test fails when an upgrade changes the
source of anything overridden, so that the overrides are reviewed before the bound moves:
re-read the changed source against `trigate/serving.py`, then update the digest here.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import h11
import h11._readers
import h11._writers
import hypercorn.protocol
import hypercorn.protocol.h11
import hypercorn.trio.run
import hypercorn.trio.task_group
import hypercorn.trio.tcp_server
import hypercorn.trio.worker_context
import pytest

from trigate.serving import BoundedChunkedReader, _WatchedStream, bound_chunk_sizes

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
    "h11._writers.Http10Writer": (h11._writers.Http10Writer, "d25f1706eb4d3f9a"),
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

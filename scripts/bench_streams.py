"""What the two standalone stream benches (paced_stream_bench.py, teardown_bench.py)
share: their raw-socket fake upstreams' request reader, the wait for the gateway to
listen, and the `trigate serve` command they run it with."""

from __future__ import annotations

import os
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


async def read_request(
    stream: trio.SocketStream, buffer: bytes = b""
) -> tuple[bytes, bytes] | None:
    """One request whose body has a Content-Length, read from `stream` after `buffer` (what
    was read past the previous one): its body, and what was read past it; None when the
    client closes the connection before a request's head."""
    while b"\r\n\r\n" not in buffer:
        part = await stream.receive_some(65536)
        if not part:
            return None
        buffer += part
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    return rest[:length], rest[length:]


async def wait_listening(port: int, seconds: float) -> None:
    """Until something accepts connections on `port` (the gateway, once started)."""
    with trio.fail_after(seconds):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.2)
                continue
            await stream.aclose()
            return


def serve_command(config: Path, port: int, master_key: str) -> tuple[list[str], dict[str, str]]:
    """`trigate serve` on `config` at `port`, and its environment (`master_key`): what a
    bench runs under its own wrappers (taskset, nice, valgrind)."""
    argv = [
        str(ROOT / ".venv/bin/trigate"), "serve",
        "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return argv, {**os.environ, "TRIGATE_MASTER_KEY": master_key}

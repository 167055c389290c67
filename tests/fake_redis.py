"""A Redis of the test's own making on a real socket: it reads RESP commands and answers
each as its script says (replies as the RESP2 specification shapes them), for what a
real Redis cannot be made to do on cue: a reply cut in half, garbage, an exact error
reply, a connection closed while idle, a stall."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

import trio

from trigate.cache.resp import RedisAddress

# What coredis's connections send first, and its probe: Redis 7.0's answers (RESP3's HELLO
# map with what coredis reads of it; before 7.2, so no CLIENT SETINFO follows).
HANDSHAKE = {
    b"HELLO": b"%3\r\n$5\r\nproto\r\n:3\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$2\r\nid\r\n:1\r\n",
    b"PING": b"+PONG\r\n",
}

# What the server does with each command it reads: the bytes it answers with, or those
# and then it closes the connection (`Closing`), or None: it closes without a word.
Script = Callable[[list[bytes]], Awaitable["bytes | Closing | None"]]


class Closing(bytes):
    """An answer after which the server closes the connection."""


class ScriptedRedis:
    """A TCP server that reads RESP commands and answers as its script says, recording
    each connection's commands and whether the client closed it."""

    def __init__(self, script: Script, *, coredis: bool = False) -> None:
        self.script = script
        # Whether it answers coredis's handshake and probe itself (HELLO, PING), as Redis
        # 7.0 does, for a cache backend whose writes and probe go through coredis.
        self.coredis = coredis
        self.connections: list[list[list[bytes]]] = []
        self.closed_by_client: list[bool] = []
        self.streams: list[trio.SocketStream] = []
        # The connection that read the last command.
        self.last = -1
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(trio.serve_tcp, self._serve, 0)
        self.port = listeners[0].socket.getsockname()[1]

    def drop(self, port: int, reset: bool = False) -> None:
        """Close, as Redis's `timeout` or a restart does, the connection of the client's
        `port`: its end (the client reads the end of the connection), or with `reset`
        at once, unread bytes and all (the client's next read or write is refused)."""
        stream = next(s for s in self.streams if s.socket.getpeername()[1] == port)
        if not reset:
            stream.socket.shutdown(trio.socket.SHUT_WR)
            return
        # No lingering: the close sends a reset, not the end of the stream.
        stream.socket.setsockopt(
            trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        stream.socket.close()

    @property
    def address(self) -> RedisAddress:
        return RedisAddress(host="127.0.0.1", port=self.port)

    async def _serve(self, stream: trio.SocketStream) -> None:
        commands: list[list[bytes]] = []
        index = len(self.connections)
        self.connections.append(commands)
        self.closed_by_client.append(False)
        self.streams.append(stream)
        buffer = b""
        async with stream:
            while True:
                parsed = _command(buffer)
                if parsed is None:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.ClosedResourceError:  # the test closed it (`drop`)
                        return
                    if not data:
                        self.closed_by_client[index] = True
                        return
                    buffer += data
                    continue
                words, buffer = parsed
                commands.append(words)
                self.last = index
                answer = HANDSHAKE.get(words[0]) if self.coredis else None
                answer = answer or await self.script(words)
                if answer is not None:
                    try:
                        await stream.send_all(answer)
                    except trio.BrokenResourceError:  # the client gave up on it
                        self.closed_by_client[index] = True
                        return
                    except trio.ClosedResourceError:  # the test closed it (`drop`)
                        return
                if answer is None or isinstance(answer, Closing):
                    return


def _command(buffer: bytes) -> tuple[list[bytes], bytes] | None:
    """One RESP array of bulk strings from the front of `buffer`, and the rest."""
    if b"\r\n" not in buffer:
        return None
    head, rest = buffer.split(b"\r\n", 1)
    words: list[bytes] = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line[1:])
        if len(rest) < size + 2:
            return None
        words.append(rest[:size])
        rest = rest[size + 2 :]
    return words, rest


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)

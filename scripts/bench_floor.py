"""The server floor: hypercorn's Trio worker answering as the mock does, with no gateway.

No gateway and no upstream call, only the HTTP server trigate runs on, answering
what the mock (scripts/bench_mock.lua) would: the canned completion, or a stream of
the shape the model name asks for ("...-s<N>-i<MS>"), in one write when MS is 0 or
each frame written on its own MS milliseconds after the last. What it costs per
request or per stream is the least any gateway served by hypercorn can cost on this
machine, which puts the gateways' figures in proportion (scenarios b and p).
Run as `python scripts/bench_floor.py PORT`.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

ANSWER = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello from the bench mock."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
STREAMED = re.compile(rb'"stream"\s*:\s*true')
SHAPE = re.compile(rb'"model"\s*:\s*"[^"]*-s(\d+)-i(\d+)"')
USAGE = re.compile(rb'"include_usage"\s*:\s*true')
HEAD = (
    b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","choices":'
)


@cache
def frames(chunks: int, usage: bool) -> tuple[bytes, ...]:
    """The SSE frames the mock sends for this shape, byte for byte."""
    content = [
        b'data: %s[{"index":0,"delta":{%s"content":"t%d "},"finish_reason":null}]}\n\n'
        % (HEAD, b'"role":"assistant",' if i == 1 else b"", i)
        for i in range(1, chunks + 1)
    ]
    tail = [b'data: %s[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n' % HEAD]
    if usage:
        tail.append(
            b'data: %s[],"usage":{"prompt_tokens":9,"completion_tokens":%d,'
            b'"total_tokens":%d}}\n\n' % (HEAD, chunks, chunks + 9)
        )
    return (*content, *tail, b"data: [DONE]\n\n")


async def stream(body: bytes, send: Any) -> None:
    shape = SHAPE.search(body)
    chunks, interval_ms = (int(shape[1]), int(shape[2])) if shape else (20, 0)
    sse = frames(max(chunks, 1), USAGE.search(body) is not None)
    await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
    if not interval_ms:
        await send({"type": "http.response.body", "body": b"".join(sse)})
        return
    for i, frame in enumerate(sse):
        if i:
            await trio.sleep(interval_ms / 1000)
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if STREAMED.search(body):
        await stream(body, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.include_server_header = False
    trio.run(serve, app, config)


if __name__ == "__main__":
    main(int(sys.argv[1]))

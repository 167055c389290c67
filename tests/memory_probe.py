"""Serve one large chat request in-process and print how far it raised the process's peak
resident memory, as a multiple of the body's size. Run in a fresh interpreter by
tests/test_memory.py, so that no other test's allocations blur the figure. With
`upload` first, the request is an audio transcription of that size, streamed through.

The peak is the kernel's (VmHWM, reset through /proc/self/clear_refs), not tracemalloc's:
orjson reserves several times a document's size that it never touches, which tracemalloc
counts and the machine never pays for.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

# Run as a script, so its own directory (the tests') is on sys.path.
from asgi_driver import start_lifespan
from helpers import MASTER_KEY, MemoryRecords, build_app

CONFIG = {
    "model_list": [
        {
            "model_name": "big",
            "litellm_params": {"model": "openai/gpt-4o", "api_base": "http://up.test/v1"},
        }
    ]
}
# What an ASGI server hands the app at a time.
PART = 64 * 1024


async def upstream(request: httpx.Request) -> httpx.Response:
    """An answer without usage, so that the gateway counts the prompt itself."""
    await request.aread()
    message = {"role": "assistant", "content": "hi"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return httpx.Response(200, json={"id": "c", "object": "chat.completion", "choices": [choice]})


def reset_peak_resident() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_resident() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


async def post(app: Any, body: bytes) -> int:
    """POST `body` to the chat route in PART-sized messages; the answer's status."""
    offsets = range(0, len(body), PART)
    return await post_parts(app, "/v1/chat/completions", [], (body[o : o + PART] for o in offsets))


async def post_parts(
    app: Any, path: str, extra: list[tuple[bytes, bytes]], parts: Iterator[bytes]
) -> int:
    """POST the body `parts` make, one ASGI message each, made as they are sent."""
    headers = [(b"authorization", f"Bearer {MASTER_KEY}".encode()), (b"host", b"gw"), *extra]
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path, "headers": headers}
    scope |= {"asgi": {"version": "3.0"}, "http_version": "1.1", "query_string": b""}
    answered = trio.Event()
    statuses: list[int] = []
    upcoming = next(parts, None)

    async def receive() -> dict[str, Any]:
        nonlocal upcoming
        part = upcoming
        if part is None:
            await answered.wait()
            return {"type": "http.disconnect"}
        upcoming = next(parts, None)
        return {"type": "http.request", "body": part, "more_body": upcoming is not None}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif not message.get("more_body"):
            answered.set()

    await app(scope, receive, send)
    return statuses[0]


async def main(size: int) -> None:
    app, _ = build_app(CONFIG, transport=httpx.MockTransport(upstream), records=MemoryRecords())
    text = "hello world " * (size // 12)
    body = orjson.dumps({"model": "big", "messages": [{"role": "user", "content": text}]})
    async with trio.open_nursery() as nursery:
        await start_lifespan(nursery, app)
        assert await post(app, body.replace(text.encode(), b"warm up")) == 200
        reset_peak_resident()
        before = peak_resident()
        assert await post(app, body) == 200
        print((peak_resident() - before) / len(body))
        nursery.cancel_scope.cancel()


class Transcriber(httpx.AsyncBaseTransport):
    """Reads an upload as it comes, holding none of it (httpx's MockTransport reads a
    request whole first), and answers with its size."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        size = 0
        async for chunk in request.stream:
            size += len(chunk)
        usage = {"type": "duration", "seconds": 1}
        return httpx.Response(200, json={"text": str(size), "usage": usage})


def upload_parts(size: int) -> Iterator[bytes]:
    """A transcription form whose file is `size` bytes, made part by part as it is sent."""
    boundary = b"probe-boundary"
    yield (
        b'--%s\r\ncontent-disposition: form-data; name="model"\r\n\r\nbig\r\n'
        b'--%s\r\ncontent-disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"content-type: audio/wav\r\n\r\n" % (boundary, boundary)
    )
    block = b"\x01" * PART
    for _ in range(size // PART):
        yield block
    yield b"\r\n--%s--\r\n" % boundary


async def main_upload(size: int) -> None:
    config = {**CONFIG, "general_settings": {"max_request_size_mb": size / 1024 / 1024 + 1}}
    app, _ = build_app(config, transport=Transcriber(), records=MemoryRecords())
    form = [(b"content-type", b"multipart/form-data; boundary=probe-boundary")]
    path = "/v1/audio/transcriptions"
    async with trio.open_nursery() as nursery:
        await start_lifespan(nursery, app)
        assert await post_parts(app, path, form, upload_parts(PART)) == 200
        reset_peak_resident()
        before = peak_resident()
        assert await post_parts(app, path, form, upload_parts(size)) == 200
        print((peak_resident() - before) / size)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if sys.argv[1] == "upload":
        trio.run(main_upload, int(sys.argv[2]))
    else:
        trio.run(main, int(sys.argv[1]))

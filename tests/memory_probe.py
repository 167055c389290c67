"""Serve one large chat request in-process and print how far it raised the process's peak
resident memory, as a multiple of the body's size. Run in a fresh interpreter by
tests/test_memory.py, so that no other test's allocations blur the figure.

The peak is the kernel's (VmHWM, reset through /proc/self/clear_refs), not tracemalloc's:
orjson reserves several times a document's size that it never touches, which tracemalloc
counts and the machine never pays for.
"""

from __future__ import annotations

import sys
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
    headers = [(b"authorization", f"Bearer {MASTER_KEY}".encode()), (b"host", b"gw")]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}
    scope |= {"asgi": {"version": "3.0"}, "http_version": "1.1", "query_string": b""}
    offsets = iter(range(0, len(body), PART))
    answered = trio.Event()
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        offset = next(offsets, None)
        if offset is None:
            await answered.wait()
            return {"type": "http.disconnect"}
        more = offset + PART < len(body)
        return {"type": "http.request", "body": body[offset : offset + PART], "more_body": more}

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


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))

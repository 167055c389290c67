"""The server floor: hypercorn's Trio worker serving a canned chat completion.

No gateway and no upstream call, only the HTTP server trigate runs on, answering
what the mock would. Its added latency over the mock is the least any gateway
served by hypercorn can add on this machine, which puts scenario (b)'s figure in
proportion. Run as `python scripts/bench_floor.py PORT`.
"""

from __future__ import annotations

import sys
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


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
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

"""Scripted upstreams behind `httpx.MockTransport`, for router tests on virtual time.

Each deployment gets its own host (`http://d0.test/v1`, ...) and a script of
replies; the last reply repeats. The transport records which host served
each attempt, and which attempts were cancelled while the upstream was still
thinking or streaming: the upstream's own view of a cancellation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import trio
from fakes import DONE, chat_completion, chunk, usage_chunk


@dataclass
class Step:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds before the response (headers) is sent.
    delay: float = 0.0
    # For streams: frames (bytes) and pauses (floats) after the headers.
    frames: list[bytes | float] | None = None
    # Hold the response until the test sets this: no dependence on any clock.
    gate: trio.Event | None = None


def ok_stream(words: list[str], *, first_delay: float = 0.0) -> Step:
    frames: list[bytes | float] = [first_delay] if first_delay else []
    frames += [chunk(w) for w in words] + [chunk(finish="stop"), usage_chunk(5, len(words)), DONE]
    return Step(frames=frames)


def error(status: int, message: str = "boom", code: str | None = None, **headers: str) -> Step:
    body = {"error": {"message": message, "type": "error", "code": code}}
    return Step(status=status, body=body, headers=headers)


class ScriptedUpstreams:
    def __init__(self, scripts: dict[str, list[Step]]) -> None:
        self.scripts = {host: list(steps) for host, steps in scripts.items()}
        self.served: list[str] = []
        self.cancelled: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.transport = httpx.MockTransport(self._handle)
        self._arrived = trio.Condition()

    async def wait_for(self, predicate: Callable[[], object]) -> None:
        """Block until `predicate()` holds, checked as each request arrives."""
        async with self._arrived:
            while not predicate():
                await self._arrived.wait()

    def _next(self, host: str) -> Step:
        steps = self.scripts[host]
        return steps.pop(0) if len(steps) > 1 else steps[0]

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.removesuffix(".test")
        self.served.append(host)
        self.bodies.append(orjson.loads(request.content))
        async with self._arrived:
            self._arrived.notify_all()
        step = self._next(host)
        try:
            await trio.sleep(step.delay)
            if step.gate is not None:
                await step.gate.wait()
        except trio.Cancelled:
            self.cancelled.append(host)
            raise
        if step.frames is not None:
            return httpx.Response(
                step.status,
                headers={"content-type": "text/event-stream", **step.headers},
                stream=_Frames(step.frames, host, self.cancelled),
            )
        body = step.body if step.body is not None else chat_completion(f"from {host}", _usage())
        return httpx.Response(step.status, json=body, headers=step.headers)


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


class _Frames(httpx.AsyncByteStream):
    """A paced SSE body; closed before its last frame went out means cancelled."""

    def __init__(self, frames: list[bytes | float], host: str, cancelled: list[str]) -> None:
        self._frames = frames
        self._host = host
        self._cancelled = cancelled
        self._unsent = sum(1 for frame in frames if isinstance(frame, bytes))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for frame in self._frames:
            if isinstance(frame, float):
                await trio.sleep(frame)
            else:
                self._unsent -= 1
                yield frame

    async def aclose(self) -> None:
        if self._unsent:
            self._cancelled.append(self._host)


def group_config(
    hosts: list[str], *, group: str = "g", router: dict[str, Any] | None = None, **params: Any
) -> dict[str, Any]:
    return {
        "model_list": [deployment(host, group, **params) for host in hosts],
        "router_settings": router or {},
    }


def deployment(
    host: str, group: str, model_info: dict[str, Any] | None = None, **params: Any
) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": f"openai/{host}-model",
            "api_base": f"http://{host}.test/v1",
            "api_key": f"sk-{host}-key-0123456789",
            **params,
        },
        "model_info": {"id": host, **(model_info or {})},
    }

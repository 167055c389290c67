"""Test plumbing shared by many files: the real app under hypercorn on port 0 or as an
in-process app, a record sink, configs for one deployment, the OpenAI SDK pointed at
the gateway. Fixtures live in conftest.py; everything a test imports lives here."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import certifi
import httpx
import openai
import trio
import trio.testing
from fakes import FakeUpstream
from quart_trio import QuartTrio

from trigate.api import create_app
from trigate.config import parse_config
from trigate.gateway import Gateway
from trigate.server import Binding, connection_limits, hypercorn_config
from trigate.serving import serve
from trigate.spend import RequestRecord

MASTER_KEY = "sk-test-master-key-0123456789"
# One TLS context for the tests' clients, built as httpx builds its default one. Each
# client would otherwise parse certifi's bundle anew, tens of milliseconds: most of a
# short test's time, for clients that speak plain HTTP to the gateway.
CLIENT_TLS = ssl.create_default_context(cafile=certifi.where())
UPSTREAM_KEY = "sk-upstream-secret-abcdefghij"


class MemoryRecords:
    """A record sink tests can wait on."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self._changed = trio.Condition()

    async def write(self, record: RequestRecord) -> None:
        self.records.append(record)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, count: int) -> list[RequestRecord]:
        async with self._changed:
            while len(self.records) < count:
                await self._changed.wait()
        return self.records


@dataclass
class RunningGateway:
    url: str
    app: QuartTrio
    gateway: Gateway
    records: MemoryRecords
    _shutdown: trio.Event
    _stopped: trio.Event

    async def stop(self) -> None:
        """A graceful shutdown, as on SIGTERM: lifespan shutdown runs."""
        self._shutdown.set()
        await self._stopped.wait()

    def client(self, key: str = MASTER_KEY, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("verify", CLIENT_TLS)
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {key}"}, **kwargs
        )


MESSAGES = [{"role": "user", "content": "Say hello"}]
# OpenAI's shape; a translating provider's tests check what becomes of it.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
MOCK_DEPLOYMENT = {"model_name": "mock", "litellm_params": {"model": "mock/gpt-4o"}}


def deployment_config(
    model_name: str,
    params: dict[str, Any],
    *,
    router: dict[str, Any] | None = None,
    others: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """A config whose group `model_name` is one deployment (and `others` beside it); no
    retries unless `router` asks, so an upstream's errors show as they are."""
    return {
        "model_list": [{"model_name": model_name, "litellm_params": params}, *others],
        "router_settings": {"num_retries": 0, **(router or {})},
    }


def deployment_entry(
    name: str, upstream: FakeUpstream, model_id: str, **params: Any
) -> dict[str, Any]:
    """A `model_list` entry: group `name`'s deployment `model_id`, on the fake upstream."""
    return {
        "model_name": name,
        "litellm_params": {
            "model": "openai/upstream-model",
            "api_base": upstream.base_url,
            "api_key": UPSTREAM_KEY,
            **params,
        },
        "model_info": {"id": model_id},
    }


def openai_config(upstream: FakeUpstream, **params: Any) -> dict[str, Any]:
    """One deployment on the fake upstream."""
    params = {"model": "openai/upstream-model", "api_base": upstream.base_url, **params}
    return deployment_config("gpt-test", {"api_key": UPSTREAM_KEY, **params})


async def streamed_events(
    gateway: RunningGateway, model: str, messages: list[dict[str, Any]] = MESSAGES
) -> list[str]:
    """The `data:` payloads of a streamed chat completion, read raw: the SDKs raise at an
    error frame, and what comes before and after one is what such tests look at."""
    body = {"model": model, "messages": messages, "stream": True}
    async with (
        gateway.client() as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        text = (await response.aread()).decode()
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


async def new_key(gateway: RunningGateway, **fields: Any) -> str:
    """A virtual key made through the admin API, with `fields`."""
    async with gateway.client() as admin:
        reply = await admin.post("/key/generate", json=fields)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["key"])


async def streamed_chunks(gateway: RunningGateway, model: str, **options: Any) -> list[Any]:
    """Every chunk of one chat completion streamed through the OpenAI SDK, of `MESSAGES`
    unless `options` name other messages."""
    options.setdefault("messages", MESSAGES)
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model=model, stream=True, **options)
        return [chunk async for chunk in stream]


async def left_mid_stream(
    gateway: RunningGateway, upstream: FakeUpstream, path: str, body: dict[str, Any], seen: str
) -> RequestRecord:
    """Stream `body` to `path` and leave at the first line holding `seen`; the request's
    record, once `upstream` has seen its connection closed."""
    async with (
        gateway.client() as client,
        client.stream("POST", path, json=body) as response,
    ):
        async for line in response.aiter_lines():
            if seen in line:
                break
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
        [record] = await gateway.records.wait_for(1)
    return record


def sdk(gateway: RunningGateway, key: str = MASTER_KEY) -> openai.AsyncOpenAI:
    """The OpenAI SDK pointed at the gateway, retrying nothing itself."""
    return openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=key,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(verify=CLIENT_TLS),
    )


def mock_config(**params: Any) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "mock/gpt-4o", **params}}]
    }


def build_app(raw_config: dict[str, Any], **gateway_kwargs: Any) -> tuple[QuartTrio, Gateway]:
    settings = raw_config.setdefault("general_settings", {})
    settings.setdefault("database_url", "sqlite://:memory:")
    gateway = Gateway(parse_config(raw_config, {}), MASTER_KEY, **gateway_kwargs)
    return create_app(gateway), gateway


async def start_gateway(
    nursery: trio.Nursery, raw_config: dict[str, Any], **gateway_kwargs: Any
) -> RunningGateway:
    """The real app under hypercorn on 127.0.0.1:0, running in `nursery`."""
    records = MemoryRecords()
    app, gateway = build_app(raw_config, records=records, **gateway_kwargs)
    server = hypercorn_config(gateway.config, Binding("127.0.0.1", 0, workers=1))
    limits = connection_limits(gateway.config, open_files=100_000)
    shutdown, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve(
                app.asgi_app,  # what the worker serves (`trigate.server`)
                server,
                limits,
                shutdown_trigger=shutdown.wait,
                on_drain=gateway.begin_drain,
                task_status=task_status,
            )
        finally:
            stopped.set()

    with _real_time():
        binds = await nursery.start(run)
    return RunningGateway(binds[0], app, gateway, records, shutdown, stopped)


async def pass_time(clock: trio.testing.MockClock, seconds: float) -> None:
    """Let `seconds` of virtual time pass while the test waits for nothing but time (a
    budget window or a key's duration ending). All but the last few seconds are one
    jump: sleeping through them would wake each of the gateway's periodic tasks at every
    round (a poll every 2 s) and wait 20 ms of real idleness at each (`virtual_clock`),
    some 15 s of real time for an hour. The last seconds pass as a sleep, so what falls
    due at the end (a window's reset) runs in its usual order."""
    last = min(seconds, 5.0)
    clock.jump(seconds - last)
    await trio.sleep(last)


@contextlib.contextmanager
def _real_time() -> Iterator[None]:
    """Virtual time stands still while the gateway starts: its start-up waits on worker
    threads (the store's migrations), and on a loaded machine one of those can outlast
    an autojumping clock's threshold, which would then leap past hypercorn's
    `startup_timeout` before the app could finish starting."""
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        yield
        return
    threshold, clock.autojump_threshold = clock.autojump_threshold, math.inf
    try:
        yield
    finally:
        clock.autojump_threshold = threshold


REDIS_URL = os.environ.get("TRIGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class RedisServer:
    """A redis-server of the test's own on a free port, for tests that kill Redis."""

    def __init__(self, password: str | None = None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self._process: trio.Process | None = None

    async def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        self._process = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                    return
            except OSError:
                await trio.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def pause(self) -> None:
        """Stop the server (SIGSTOP): a Redis that neither answers nor refuses, for as
        long as the test wants, and that runs what it was sent once `resume`d. A test of
        a timeout needs no tight deadline on a live Redis, which a loaded machine's
        stall could run out."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            await self._process.wait()
            self._process = None

"""Bounds on upstream MCP sessions (trigate/mcp_gateway/capacity.py): the mcp SDK's
client against `/mcp`, a stdio server counted in the process table, a key over its own
bound waiting and then refused while another key is served."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx2
import pytest
import trio
from fake_mcp import FakeMCP, start_fake_mcp
from helpers import CLIENT_TLS, RunningGateway, start_gateway
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from test_mcp_gateway import STDIO_SERVER, _stdio_children, new_key, text_of


@asynccontextmanager
async def mcp_session(url: str, key: str) -> AsyncIterator[ClientSession]:
    """The mcp SDK's client, with the SDK's own timeouts: a session here may wait."""
    client = httpx2.AsyncClient(
        headers={"authorization": f"Bearer {key}"},
        timeout=httpx2.Timeout(30.0, read=300.0),
        verify=CLIENT_TLS,
    )
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def capacity_config(weather: FakeMCP, **general: Any) -> dict[str, Any]:
    return {
        "model_list": [],
        "general_settings": general,
        "mcp_servers": {
            "weather": {"url": weather.url, "transport": "http"},
            "local": {
                "command": sys.executable,
                "args": [STDIO_SERVER],
                "max_concurrent_sessions": 2,
            },
        },
    }


@pytest.fixture
async def weather(nursery: trio.Nursery) -> FakeMCP:
    return await start_fake_mcp(nursery)


def short_wait(gateway: RunningGateway, seconds: float) -> None:
    """The longest wait for a slot, shortened so that a refusal comes sooner."""
    capacity = gateway.gateway.mcp.capacity
    capacity.limits = replace(capacity.limits, wait=seconds)


class ProcessCount:
    """The most stdio server processes seen at once, sampled while a test runs."""

    def __init__(self) -> None:
        self.most = 0
        self.now = 0

    async def watch(self) -> None:
        while True:
            self.now = len(_stdio_children())
            self.most = max(self.most, self.now)
            await trio.sleep(0.01)


async def hang(gateway: RunningGateway, key: str, path: str = "/mcp/local") -> None:
    async with mcp_session(gateway.url + path, key) as session:
        await session.call_tool("local-hang", {})


async def test_a_server_s_sessions_past_its_bound_wait_their_turn_then_are_refused(
    nursery: trio.Nursery, weather: FakeMCP
) -> None:
    gateway = await start_gateway(nursery, capacity_config(weather))
    key = await new_key(gateway)
    count = ProcessCount()
    assert _stdio_children() == set()
    async with trio.open_nursery() as tasks:
        tasks.start_soon(count.watch)
        holders = []
        for _ in range(2):
            holder = trio.CancelScope()
            holders.append(holder)

            async def held(scope: trio.CancelScope = holder) -> None:
                with scope:
                    await hang(gateway, key)

            tasks.start_soon(held)
        with trio.fail_after(30):
            while count.now < 2:  # noqa: ASYNC110 - another process's pace
                await trio.sleep(0.05)

        # The third waits for a slot: no third process starts while two are held...
        echoed: list[str] = []

        async def third() -> None:
            async with mcp_session(gateway.url + "/mcp/local", key) as session:
                echoed.append(text_of(await session.call_tool("local-echo", {"text": "hi"})))

        tasks.start_soon(third)
        await trio.sleep(1.5)
        assert echoed == []
        assert count.most == 2
        # ... and is served once one of them leaves (its process reaped first).
        holders[0].cancel()
        with trio.fail_after(30):
            while not echoed:  # noqa: ASYNC110 - another process's pace
                await trio.sleep(0.05)
        assert echoed == ["echo: hi"]
        assert count.most == 2

        # With both slots held again, a session that waits past its bound is refused,
        # by name.
        with trio.fail_after(30):
            while count.now != 1:  # noqa: ASYNC110 - the third's process is reaped
                await trio.sleep(0.05)
        tasks.start_soon(hang, gateway, key)
        with trio.fail_after(30):
            while count.now < 2:  # noqa: ASYNC110 - another process's pace
                await trio.sleep(0.05)
        short_wait(gateway, 1.0)
        async with mcp_session(gateway.url + "/mcp/local", key) as session:
            with pytest.raises(MCPError) as refused:
                await session.call_tool("local-echo", {"text": "too many"})
        assert "MCP server `local` has 2 sessions open at once" in refused.value.message
        assert count.most == 2
        tasks.cancel_scope.cancel()
    with trio.fail_after(30):
        while _stdio_children():  # noqa: ASYNC110 - another process's pace
            await trio.sleep(0.05)
    await gateway.stop()


async def test_a_key_past_its_own_bound_waits_then_is_refused_while_another_key_is_served(
    nursery: trio.Nursery, weather: FakeMCP
) -> None:
    config = capacity_config(weather, mcp_max_concurrent_sessions_per_key=1)
    gateway = await start_gateway(nursery, config)
    busy, other = await new_key(gateway), await new_key(gateway)
    short_wait(gateway, 1.0)
    async with trio.open_nursery() as tasks:
        tasks.start_soon(hang, gateway, busy)
        with trio.fail_after(30):
            while not _stdio_children():  # noqa: ASYNC110 - another process's pace
                await trio.sleep(0.05)
        # Its session to another server waits for the key's one slot, then is refused...
        async with mcp_session(gateway.url + "/mcp/weather", busy) as session:
            with pytest.raises(MCPError) as refused:
                await session.call_tool("weather-forecast", {"city": "Oslo"})
            with pytest.raises(MCPError) as unlisted:
                await session.list_tools()
        # ... while another key's is served.
        async with mcp_session(gateway.url + "/mcp/weather", other) as session:
            served = await session.call_tool("weather-forecast", {"city": "Oslo"})
        tasks.cancel_scope.cancel()
    assert "This key has 1 MCP server sessions open at once" in refused.value.message
    assert "mcp_max_concurrent_sessions_per_key" in unlisted.value.message
    assert text_of(served) == "sunny in Oslo"
    assert weather.calls["forecast"] and len(weather.calls["forecast"]) == 1
    await gateway.stop()

"""The MCP gateway (trigate.mcp_gateway): the mcp SDK's client against `/mcp`, over two
real MCP servers written with the SDK, one over streamable HTTP on a socket
(tests/fake_mcp.py) and one over stdio (tests/mcp_stdio_server.py), with keys that may
and may not see each tool."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
import trio
from fake_mcp import FakeMCP, start_fake_mcp
from fakes import FakeUpstream, JSONReply
from helpers import CLIENT_TLS, MASTER_KEY, RunningGateway, start_gateway
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from trigate.config import ConfigError, parse_config

STDIO_SERVER = str(Path(__file__).with_name("mcp_stdio_server.py"))
UPSTREAM_TOKEN = "weather-upstream-token-123"
SDK_TIMEOUT = httpx2.Timeout(30.0, read=300.0)


def mcp_config(weather: FakeMCP, **extra: Any) -> dict[str, Any]:
    return {
        "model_list": [],
        "mcp_servers": {
            "weather": {
                "url": weather.url,
                "transport": "http",
                "auth_type": "bearer_token",
                "auth_value": UPSTREAM_TOKEN,
                "description": "The weather",
                "extra_headers": ["x-tenant", "authorization"],
                "disallowed_tools": ["fail"],
                "access_groups": ["outdoors"],
                "mcp_info": {"mcp_server_cost_info": {
                    "default_cost_per_query": 0.01,
                    "tool_name_to_cost_per_query": {"alerts": 0.5},
                }},
            },
            "local": {
                "command": sys.executable,
                "args": [STDIO_SERVER],
                "env": {"LOCAL_SECRET": "from-config"},
            },
        },
        **extra,
    }  # fmt: skip


@pytest.fixture
async def weather(nursery: trio.Nursery) -> FakeMCP:
    return await start_fake_mcp(nursery)


@pytest.fixture
async def gateway(nursery: trio.Nursery, weather: FakeMCP) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(nursery, mcp_config(weather))
    yield running
    await running.stop()


@asynccontextmanager
async def mcp_session(
    url: str, key: str = MASTER_KEY, **headers: str
) -> AsyncIterator[ClientSession]:
    """The mcp SDK's client over streamable HTTP, with a virtual key (and the SDK's own
    timeouts: a busy machine answers twenty sessions in more than httpx's 5 s)."""
    client = httpx2.AsyncClient(
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=SDK_TIMEOUT,
        verify=CLIENT_TLS,
    )
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def tool_names(
    gateway: RunningGateway, key: str = MASTER_KEY, path: str = "/mcp"
) -> set[str]:
    async with mcp_session(gateway.url + path, key) as session:
        return {tool.name for tool in (await session.list_tools()).tools}


async def new_key(gateway: RunningGateway, **fields: Any) -> str:
    async with gateway.client() as client:
        reply = await client.post("/key/generate", json=fields)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["key"])


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def test_the_master_key_sees_every_server_s_tools_prefixed_and_calls_them(
    gateway: RunningGateway, weather: FakeMCP
) -> None:
    async with mcp_session(gateway.url + "/mcp", **{"x-tenant": "acme"}) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        # `fail` is the server's `disallowed_tools`: nobody sees it.
        assert tools == {
            "weather-forecast", "weather-alerts",
            "local-echo", "local-pid", "local-hang", "local-env",
        }  # fmt: skip
        forecast = await session.call_tool("weather-forecast", {"city": "Oslo"})
        echoed = await session.call_tool("local-echo", {"text": "hi"})
        secret = await session.call_tool("local-env", {"name": "LOCAL_SECRET"})
        prompts = await session.list_prompts()
        resources = await session.list_resources()
        stations = await session.read_resource("weather://stations")
    assert text_of(forecast) == "sunny in Oslo"
    assert text_of(echoed) == "echo: hi"
    assert text_of(secret) == "from-config"
    assert [p.name for p in prompts.prompts] == ["weather-brief"]
    assert [str(r.uri) for r in resources.resources] == ["weather://stations"]
    content = stations.contents[0]
    assert isinstance(content, types.TextResourceContents) and content.text == "north, south"
    # The upstream got the configured credential and the named client header, and never
    # the gateway's key (though `extra_headers` names the header that carried it).
    heard = weather.calls["forecast"][0]
    assert heard["authorization"] == f"Bearer {UPSTREAM_TOKEN}"
    assert heard["x-tenant"] == "acme"
    assert MASTER_KEY not in str(weather.calls)


async def test_a_server_s_tool_list_is_kept_a_while_and_permissions_apply_per_caller(
    gateway: RunningGateway, weather: FakeMCP
) -> None:
    key = await new_key(
        gateway, object_permission={"mcp_tool_permissions": {"weather": ["alerts"]}}
    )
    assert "weather-forecast" in await tool_names(gateway, path="/mcp/weather")
    assert await tool_names(gateway, key, path="/mcp/weather") == {"weather-alerts"}
    assert weather.listings == 1
    # A caller's own credential for the server is another listing.
    async with mcp_session(
        gateway.url + "/mcp/weather", **{"x-mcp-weather-authorization": "Bearer mine"}
    ) as session:
        await session.list_tools()
    assert weather.listings == 2


async def test_a_key_sees_and_calls_only_the_tools_it_may(
    gateway: RunningGateway, weather: FakeMCP
) -> None:
    key = await new_key(
        gateway,
        object_permission={
            "mcp_servers": ["weather"],
            "mcp_tool_permissions": {"weather": ["forecast"]},
        },
    )
    assert await tool_names(gateway, key) == {"weather-forecast"}
    async with mcp_session(gateway.url + "/mcp", key) as session:
        assert text_of(await session.call_tool("weather-forecast", {"city": "Rome"})) == (
            "sunny in Rome"
        )
        for refused in ("weather-alerts", "local-echo", "weather-fail"):
            with pytest.raises(MCPError, match="not available to this key"):
                await session.call_tool(refused, {"text": "x"})
    # Refused before it reached the server.
    assert "alerts" not in weather.calls and "fail" not in weather.calls


async def test_a_team_s_permissions_bind_its_keys_team_and_key_intersect(
    gateway: RunningGateway,
) -> None:
    async with gateway.client() as client:
        team = await client.post(
            "/team/new", json={"object_permission": {"mcp_access_groups": ["outdoors"]}}
        )
    assert team.status_code == 200, team.text
    team_id = team.json()["team_id"]
    both = await new_key(
        gateway, team_id=team_id, object_permission={"mcp_servers": ["weather", "local"]}
    )
    assert await tool_names(gateway, both) == {"weather-forecast", "weather-alerts"}
    unrestricted = await new_key(gateway, team_id=team_id)
    assert await tool_names(gateway, unrestricted) == {"weather-forecast", "weather-alerts"}


async def test_a_key_update_grant_takes_effect_at_once(gateway: RunningGateway) -> None:
    key = await new_key(gateway, object_permission={"mcp_servers": ["weather"]})
    assert "local-echo" not in await tool_names(gateway, key)
    async with gateway.client() as client:
        reply = await client.post(
            "/key/update",
            json={"key": key, "object_permission": {"mcp_servers": ["weather", "local"]}},
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["object_permission"] == {"mcp_servers": ["weather", "local"]}
    assert "local-echo" in await tool_names(gateway, key)


async def test_a_key_with_no_tool_is_told_so_not_given_an_empty_list(
    gateway: RunningGateway,
) -> None:
    key = await new_key(gateway, object_permission={"mcp_servers": ["no_such_server"]})
    async with mcp_session(gateway.url + "/mcp", key) as session:
        with pytest.raises(MCPError, match="No MCP tools are available to this key"):
            await session.list_tools()
    partial = await new_key(
        gateway, object_permission={"mcp_tool_permissions": {"weather": [], "local": []}}
    )
    async with mcp_session(gateway.url + "/mcp", partial) as session:
        with pytest.raises(MCPError, match="may call none of their tools"):
            await session.list_tools()


async def test_one_server_by_path_or_header_and_a_caller_credential_for_it_alone(
    gateway: RunningGateway, weather: FakeMCP
) -> None:
    assert await tool_names(gateway, path="/mcp/local") == {
        "local-echo", "local-pid", "local-hang", "local-env",
    }  # fmt: skip
    async with mcp_session(gateway.url + "/mcp", **{"x-mcp-servers": "weather"}) as session:
        assert {t.name for t in (await session.list_tools()).tools} == {
            "weather-forecast", "weather-alerts",
        }  # fmt: skip
    async with mcp_session(
        gateway.url + "/mcp/weather", **{"x-mcp-weather-authorization": "Bearer callers-own"}
    ) as session:
        await session.call_tool("weather-alerts", {})
    assert weather.calls["alerts"][-1]["authorization"] == "Bearer callers-own"
    # With the gateway's key in `x-litellm-api-key`, `Authorization` is the client's own,
    # forwarded where `extra_headers` names it; the server's configured credential wins.
    caller = httpx2.AsyncClient(
        headers={"x-litellm-api-key": MASTER_KEY, "authorization": "Bearer for-upstream"},
        timeout=SDK_TIMEOUT,
    )
    async with (
        caller,
        streamable_http_client(gateway.url + "/mcp/weather", http_client=caller) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        await session.call_tool("weather-alerts", {})
    heard = weather.calls["alerts"][-1]
    assert heard["authorization"] == f"Bearer {UPSTREAM_TOKEN}"
    assert MASTER_KEY not in str(heard)
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        unknown = await client.post(
            "/mcp/nowhere", headers={"authorization": f"Bearer {MASTER_KEY}"}, json={}
        )
        anonymous = await client.post("/mcp", json={})
    assert unknown.status_code == 404
    assert anonymous.status_code == 401


async def test_each_tool_call_is_a_spend_row_billed_at_the_server_s_price(
    gateway: RunningGateway,
) -> None:
    key = await new_key(gateway)
    async with mcp_session(gateway.url + "/mcp", key) as session:
        await session.call_tool("weather-forecast", {"city": "Lima"})
        await session.call_tool("weather-alerts", {})
        with pytest.raises(MCPError):
            await session.call_tool("weather-fail", {})
    records = await gateway.records.wait_for(3)
    rows = [(r.model_group, r.model, r.status, r.cost) for r in records]
    assert rows == [
        ("weather", "forecast", 200, 0.01),
        ("weather", "alerts", 200, 0.5),
        ("weather", "fail", 403, 0.0),
    ]
    assert all(r.key_hash is not None and r.request_tags == ["mcp"] for r in records)
    async with gateway.client() as client:
        metrics = (await client.get("/metrics")).text
    assert 'trigate_mcp_tool_calls_total{mcp_server="weather",status="success"} 2.0' in metrics
    assert 'trigate_mcp_tool_calls_total{mcp_server="weather",status="refused"} 1.0' in metrics


def _stdio_children() -> set[int]:
    """The processes of tests/mcp_stdio_server.py that this process started."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError):
            continue
        if parent == os.getpid() and STDIO_SERVER.encode() in command:
            found.add(int(entry))
    return found


async def test_a_client_that_leaves_mid_call_has_its_stdio_server_reaped(
    gateway: RunningGateway,
) -> None:
    assert _stdio_children() == set()
    async with trio.open_nursery() as nursery:

        async def call_and_hang() -> None:
            async with mcp_session(gateway.url + "/mcp/local") as session:
                await session.call_tool("local-hang", {})

        nursery.start_soon(call_and_hang)
        while not _stdio_children():  # noqa: ASYNC110 - another process's pace
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    with trio.fail_after(30):
        while _stdio_children():  # noqa: ASYNC110 - another process's pace
            await trio.sleep(0.05)


class Alternating(httpx2.AsyncBaseTransport):
    """Sends each request to the next of `urls` in turn, as a load balancer over two
    instances would: a session's requests land on both."""

    def __init__(self, urls: list[str]) -> None:
        self._urls = [httpx2.URL(url) for url in urls]
        self._turn = 0
        self._inner = httpx2.AsyncHTTPTransport()
        self.served: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        target = self._urls[self._turn % len(self._urls)]
        self._turn += 1
        request.url = request.url.copy_with(host=target.host, port=target.port)
        self.served.append(f"{target.host}:{target.port}")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_server_added_through_the_api_is_served_by_every_instance_sealed_at_rest(
    nursery: trio.Nursery, weather: FakeMCP, database_url: str
) -> None:
    config = {"model_list": [], "general_settings": {"database_url": database_url}}
    first = await start_gateway(nursery, dict(config))
    second = await start_gateway(nursery, dict(config))
    async with first.client() as client:
        added = await client.post(
            "/v1/mcp/server",
            json={
                "server_name": "forecasts",
                "url": weather.url,
                "transport": "http",
                "auth_type": "api_key",
                "credentials": {"auth_value": "stored-upstream-secret"},
                "mcp_access_groups": ["outdoors"],
                "allowed_tools": ["forecast"],
            },
        )
        assert added.status_code == 200, added.text
        server_id = added.json()["server_id"]
        listed = (await client.get("/v1/mcp/server")).json()
    assert [s["server_name"] for s in listed] == ["forecasts"]
    assert "stored-upstream-secret" not in str(listed)
    rows = await first.gateway.store.mcp_servers()
    assert "stored-upstream-secret" not in str(rows)
    assert rows[0]["definition"]["auth_value"].startswith("sealed:v1:")

    # One client session, its requests alternating between the two instances.
    balancer = Alternating([first.url, second.url])
    http = httpx2.AsyncClient(
        transport=balancer, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=SDK_TIMEOUT
    )
    async with (
        http,
        streamable_http_client(first.url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = {tool.name for tool in (await session.list_tools()).tools}
        forecast = await session.call_tool("forecasts-forecast", {"city": "Lyon"})
    assert tools == {"forecasts-forecast"}
    assert text_of(forecast) == "sunny in Lyon"
    assert len(set(balancer.served)) == 2
    assert weather.calls["forecast"][-1]["x-api-key"] == "stored-upstream-secret"

    # Changed on one instance, then deleted: the other serves the change, then nothing.
    async with second.client() as client:
        changed = await client.put(
            "/v1/mcp/server",
            json={"server_id": server_id, "server_name": "forecasts", "url": weather.url},
        )
        assert changed.status_code == 200, changed.text
    # Without Redis, another instance's change is seen within `STALE_AFTER` (1 s).
    everything = {"forecasts-forecast", "forecasts-alerts", "forecasts-fail"}
    with trio.fail_after(10):
        while await tool_names(first) != everything:  # noqa: ASYNC110 - the bound's pace
            await trio.sleep(0.1)
    async with first.client() as client:
        assert (await client.delete(f"/v1/mcp/server/{server_id}")).status_code == 202
        assert (await client.get(f"/v1/mcp/server/{server_id}")).status_code == 404
    async with mcp_session(second.url + "/mcp") as session:
        with trio.fail_after(10):
            while True:
                try:
                    await session.list_tools()
                except MCPError as error:
                    assert "none of the gateway's MCP servers" in error.message
                    break
                await trio.sleep(0.1)
    await first.stop()
    await second.stop()


async def test_only_an_admin_adds_servers_and_never_a_stdio_one(
    gateway: RunningGateway,
) -> None:
    key = await new_key(gateway, object_permission={"mcp_servers": ["weather"]})
    async with gateway.client(key) as client:
        refused = await client.post("/v1/mcp/server", json={"server_name": "x", "url": "http://x"})
        visible = (await client.get("/v1/mcp/server")).json()
    assert refused.status_code == 403
    assert [s["server_name"] for s in visible] == ["weather"]
    assert "env" not in str(visible) or "from-config" not in str(visible)
    async with gateway.client() as client:
        shell = await client.post(
            "/v1/mcp/server",
            json={"server_name": "shell", "command": "python3", "args": ["-c", "print(1)"]},
        )
        hyphen = await client.post("/v1/mcp/server", json={"server_name": "a-b", "url": "http://x"})
        taken = await client.post(
            "/v1/mcp/server", json={"server_name": "weather", "url": "http://x"}
        )
    assert shell.status_code == 400
    assert "defined in the config file's `mcp_servers:` only" in shell.json()["error"]["message"]
    assert hyphen.status_code == 400
    assert taken.status_code == 400


class PostsTo(httpx2.AsyncBaseTransport):
    """Sends every POST to `url`'s instance and everything else where it was going: an
    SSE client's stream on one instance, its messages landing on another."""

    def __init__(self, url: str) -> None:
        self._target = httpx2.URL(url)
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST":
            request.url = request.url.copy_with(host=self._target.host, port=self._target.port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_an_older_sse_client_s_messages_are_answered_on_its_stream_from_any_instance(
    nursery: trio.Nursery, weather: FakeMCP, redis_url: str, redis_prefix: str
) -> None:
    # Not a test of an outage: a loaded machine's stall must not pass for a lost Redis.
    fleet = {"redis_url": redis_url, "redis_key_prefix": redis_prefix, "redis_timeout": 30.0}
    config = {**mcp_config(weather), "router_settings": fleet}
    first = await start_gateway(nursery, dict(config))
    second = await start_gateway(nursery, dict(config))
    auth = {"authorization": f"Bearer {MASTER_KEY}"}

    def via_second(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers=headers, timeout=timeout, transport=PostsTo(second.url))

    for factory in (None, via_second):
        extra: dict[str, Any] = {"httpx_client_factory": factory} if factory else {}
        async with (
            sse_client(first.url + "/mcp/sse", headers=auth, **extra) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}
            echoed = await session.call_tool("local-echo", {"text": "over sse"})
        assert "weather-forecast" in tools and "local-echo" in tools
        assert text_of(echoed) == "echo: over sse"
    async with httpx.AsyncClient() as client:
        lost = await client.post(
            f"{second.url}/mcp/sse/messages?session_id=nope",
            headers=auth,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        )
    assert lost.status_code == 404
    await first.stop()
    await second.stop()


async def test_a_tool_call_is_a_span_continuing_the_client_s_trace(
    nursery: trio.Nursery, weather: FakeMCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = FakeUpstream(lambda request: JSONReply({}))
    await collector.start(nursery)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    running = await start_gateway(nursery, mcp_config(weather))
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        async with mcp_session(
            running.url + "/mcp/weather", traceparent=f"00-{trace}-{parent}-01"
        ) as session:
            await session.call_tool("weather-forecast", {"city": "Bergen"})
    finally:
        await running.stop()  # flushes the batch processor
    spans = [
        span
        for request in collector.requests
        for resource in ExportTraceServiceRequest.FromString(request.body).resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    [span] = [s for s in spans if s.name == "execute_tool forecast"]
    assert span.trace_id.hex() == trace and span.parent_span_id.hex() == parent
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["gen_ai.tool.name"] == "forecast"
    assert attributes["trigate.mcp_server"] == "weather"
    assert attributes["trigate.mcp_status"] == "success"


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ({"git-hub": {"url": "http://x/mcp"}}, "no `-`"),
        (
            {"github": {"url": "http://x/mcp", "auth_type": "oauth2"}},
            "mcp_servers.github.auth_type",
        ),
        ({"local": {"transport": "stdio"}}, "stdio needs a `command`"),
        ({"remote": {"transport": "http"}}, "needs an http(s) `url`"),
    ],
)
def test_a_server_the_gateway_cannot_serve_stops_start_up(
    servers: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"model_list": [], "mcp_servers": servers}, {})


async def test_object_permissions_trigate_cannot_enforce_are_refused(
    gateway: RunningGateway,
) -> None:
    async with gateway.client() as client:
        key = await client.post(
            "/key/generate", json={"object_permission": {"vector_stores": ["docs"]}}
        )
        team = await client.post(
            "/team/new", json={"object_permission": {"blocked_tools": ["weather-forecast"]}}
        )
    assert key.status_code == 400 and "`vector_stores`" in key.json()["error"]["message"]
    assert team.status_code == 400 and "`blocked_tools`" in team.json()["error"]["message"]


async def test_many_sessions_starting_at_once_are_each_served(
    gateway: RunningGateway, weather: FakeMCP
) -> None:
    answers: list[str] = []

    async def one(city: str) -> None:
        async with mcp_session(gateway.url + "/mcp/weather") as session:
            await session.list_tools()
            answers.append(text_of(await session.call_tool("weather-forecast", {"city": city})))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, f"city{i}")
    assert sorted(answers) == sorted(f"sunny in city{i}" for i in range(20))
    assert len(weather.calls["forecast"]) == 20


async def test_a_priced_tool_call_is_held_to_the_key_s_budget(
    gateway: RunningGateway, weather: FakeMCP
) -> None:
    key = await new_key(gateway, max_budget=0.5)
    async with mcp_session(gateway.url + "/mcp/weather", key) as session:
        await session.call_tool("weather-alerts", {})  # 0.5: the budget is spent
        with pytest.raises(MCPError, match="Budget has been exceeded"):
            await session.call_tool("weather-alerts", {})
    async with mcp_session(gateway.url + "/mcp/local", key) as session:
        # A tool without a price is no spend to hold back.
        assert text_of(await session.call_tool("local-echo", {"text": "free"})) == "echo: free"
    assert len(weather.calls["alerts"]) == 1
    records = await gateway.records.wait_for(3)
    assert [(r.model, r.status, r.cost) for r in records] == [
        ("alerts", 200, 0.5),
        ("alerts", 403, 0.0),
        ("echo", 200, 0.0),
    ]


def test_a_worker_loads_the_sdk_at_its_first_mcp_request_never_at_start() -> None:
    """The SDK is 40% of a worker's imports (trigate/api/mcp_endpoint.py): in a
    fresh interpreter, a gateway that serves a chat completion and a Responses request
    has none of its modules loaded, and its first `/mcp` session loads them."""
    probe = Path(__file__).with_name("mcp_sdk_probe.py")
    run = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["before", "False", "after", "True"]

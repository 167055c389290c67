"""`/v1/mcp/server` (trigate/api/mcp_admin.py): what a key and an admin are shown of a
server, and that no admin credential adds a stdio server (a command on the host)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import trio
from fake_mcp import FakeMCP, start_fake_mcp
from helpers import RunningGateway, start_gateway
from test_mcp_gateway import STDIO_SERVER, new_key

from trigate.clock import wall_time

URL_TOKEN = "url-token-4f1e"
URL_PASSWORD = "url-password-a9c0"
ARG_TOKEN = "arg-token-77d2"
HEADER_SECRET = "header-secret-0b3c"
ENV_SECRET = "env-secret-e51a"


def views_config(weather: FakeMCP, database_url: str) -> dict[str, Any]:
    return {
        "model_list": [],
        "general_settings": {"database_url": database_url},
        "mcp_servers": {
            "remote": {
                "url": f"https://bot:{URL_PASSWORD}@mcp.example/mcp?token={URL_TOKEN}",
                "transport": "http",
                "description": "A remote server",
                "static_headers": {"X-Api-Token": HEADER_SECRET},
                "allowed_tools": ["search"],
                "access_groups": ["dev"],
            },
            "local": {
                "command": sys.executable,
                "args": [STDIO_SERVER, "--token", ARG_TOKEN, f"--api-key={ARG_TOKEN}"],
                "env": {"LOCAL_SECRET": ENV_SECRET},
            },
            "weather": {"url": weather.url, "transport": "http"},
        },
    }


@pytest.fixture
async def gateway(nursery: trio.Nursery, database_url: str) -> AsyncIterator[RunningGateway]:
    weather = await start_fake_mcp(nursery)
    running = await start_gateway(nursery, views_config(weather, database_url))
    yield running
    await running.stop()


async def test_a_key_sees_what_a_server_offers_and_an_admin_its_credentials_redacted(
    gateway: RunningGateway,
) -> None:
    key = await new_key(gateway, object_permission={"mcp_servers": ["remote", "local"]})
    async with gateway.client(key) as client:
        listed = (await client.get("/v1/mcp/server")).json()
        one = (await client.get("/v1/mcp/server/remote")).json()
    assert {s["server_name"] for s in listed} == {"remote", "local"}
    public = {"server_id", "server_name", "alias", "description", "transport",
              "allowed_tools", "mcp_access_groups"}  # fmt: skip
    assert all(set(server) == public for server in listed)
    assert one == {
        "server_id": "remote",
        "server_name": "remote",
        "alias": None,
        "description": "A remote server",
        "transport": "http",
        "allowed_tools": ["search"],
        "mcp_access_groups": ["dev"],
    }
    async with gateway.client() as admin:
        whole = {s["server_name"]: s for s in (await admin.get("/v1/mcp/server")).json()}
    remote, local = whole["remote"], whole["local"]
    assert remote["url"] == "https://bot:[redacted]@mcp.example/mcp?token=[redacted]"
    assert remote["static_headers"] == {"X-Api-Token": "********"}
    assert local["args"] == [STDIO_SERVER, "--token", "[redacted]", "--api-key=[redacted]"]
    assert local["env"] == {"LOCAL_SECRET": "********"}
    text = orjson.dumps([listed, one, whole]).decode()
    for secret in (URL_TOKEN, URL_PASSWORD, ARG_TOKEN, HEADER_SECRET, ENV_SECRET):
        assert secret not in text


async def test_no_admin_adds_or_changes_to_a_stdio_server_and_a_stored_one_is_not_served(
    gateway: RunningGateway,
) -> None:
    async with gateway.client() as admin:
        added = await admin.post(
            "/v1/mcp/server",
            json={"server_name": "shell", "command": "python", "args": ["-c", "print(1)"]},
        )
        docker = await admin.post(
            "/v1/mcp/server",
            json={"server_name": "box", "transport": "stdio", "command": "docker",
                  "args": ["run", "--privileged", "alpine"]},
        )  # fmt: skip
        http = await admin.post(
            "/v1/mcp/server", json={"server_name": "other", "url": "http://127.0.0.1:9/mcp"}
        )
        assert http.status_code == 200, http.text
        changed = await admin.put(
            "/v1/mcp/server",
            json={"server_id": http.json()["server_id"], "server_name": "other",
                  "command": "node", "args": ["-e", "1"]},
        )  # fmt: skip
    for refused in (added, docker, changed):
        assert refused.status_code == 400, refused.text
        message = refused.json()["error"]["message"]
        assert "runs a command on the gateway's host" in message
        assert "config file's `mcp_servers:` only" in message

    # One stored before the API refused them (or written to the database directly).
    now = wall_time()
    await gateway.gateway.store.insert_mcp_server({
        "server_id": "old", "name": "old", "created_by": "x", "updated_by": "x",
        "created_at": now, "updated_at": now,
        "definition": {"server_id": "old", "server_name": "old", "transport": "stdio",
                       "command": sys.executable, "args": [STDIO_SERVER]},
    })  # fmt: skip
    async with gateway.client() as admin:
        names = {s["server_name"] for s in (await admin.get("/v1/mcp/server")).json()}
        served = await admin.post("/mcp/old", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert "old" not in names and "other" in names
    assert served.status_code == 404 and "No MCP server `old`" in served.text

"""JSON logs as operators get them from `trigate serve`: every line a JSON object, and
one access line per model API request."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
import trio
from test_cli import Served, clean_env, serve

MASTER = "sk-access-log-0123456789"
CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi there"}]}


@pytest.mark.parametrize("switch", ["general_settings", "litellm_settings", "environment"])
async def test_every_line_is_json_with_an_access_line_per_request(
    tmp_path: Path, switch: str
) -> None:
    config = tmp_path / "config.yaml"
    settings = f"{switch}: {{json_logs: true}}\n" if switch.endswith("settings") else ""
    config.write_text(
        "model_list:\n  - model_name: mock\n    litellm_params: {model: mock/gpt-4o}\n" + settings
    )
    env = clean_env(TRIGATE_MASTER_KEY=MASTER)
    if switch == "environment":
        env["TRIGATE_LOG_FORMAT"] = "json"
    served = await serve("--config", str(config), env=env)
    try:
        with trio.fail_after(60):
            await served.wait_ready(workers=1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            ok = await client.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={"authorization": f"Bearer {MASTER}", "x-request-id": "client-1"},
            )
            assert ok.status_code == 200
            denied = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-nope"}
            )
            assert denied.status_code == 401
    finally:
        assert await served.stop() == 0
    await _read_to_end(served)
    lines = [orjson.loads(line) for line in served.output.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "trigate.access"]
    assert len(access) == 2, lines
    served_line, denied_line = access
    assert served_line["request_id"] == ok.headers["x-trigate-request-id"]
    assert served_line["client_request_id"] == "client-1"
    assert served_line["status"] == 200
    assert served_line["model_group"] == "mock"
    assert served_line["deployment"] == ok.headers["x-trigate-deployment"]
    assert served_line["prompt_tokens"] > 0 and served_line["completion_tokens"] > 0
    assert served_line["latency_ms"] > 0
    assert served_line["cancelled_by_client"] is False
    assert {"key_alias", "key_hash", "team", "ttft_ms", "cost"} <= set(served_line)
    assert denied_line["status"] == 401
    assert denied_line["route"] == "/v1/chat/completions"
    assert set(denied_line) == set(served_line), "every access line has the same fields"
    assert denied_line["key_hash"] is None and denied_line["model_group"] is None
    assert MASTER.encode() not in served.output


async def _read_to_end(served: Served) -> None:
    assert served.process.stdout is not None
    while data := await served.process.stdout.receive_some():
        served.output += data

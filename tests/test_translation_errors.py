"""A translator's errors: a client's field of the wrong shape is its 400, naming the field;
anything else raised inside a translator is a bug of the gateway's, a logged 500 with
its traceback, never passed off as the client's 400 (issue 20, item 3)."""

from __future__ import annotations

import logging
from typing import Any

import anthropic
import pytest
import trio
from fakes import FakeUpstream
from helpers import MASTER_KEY, UPSTREAM_KEY, RunningGateway, start_gateway
from test_api import assert_envelope

import trigate.api.anthropic_format
import trigate.providers.anthropic
import trigate.providers.bedrock
import trigate.providers.gemini

BEDROCK = {
    "aws_access_key_id": "AKIDEXAMPLE",
    "aws_secret_access_key": "secret-key-0123456789",
    "aws_region_name": "us-east-1",
}


def _config(upstream: FakeUpstream) -> dict[str, Any]:
    base = f"http://127.0.0.1:{upstream.port}"
    models = {
        "claude": {"model": "anthropic/claude-m", "api_base": base, "api_key": UPSTREAM_KEY},
        "gem": {"model": "gemini/gemini-m", "api_base": base, "api_key": UPSTREAM_KEY},
        "bed": {"model": "bedrock/anthropic.claude-m", "api_base": base, **BEDROCK},
    }
    return {
        "model_list": [{"model_name": name, "litellm_params": p} for name, p in models.items()],
        "router_settings": {"num_retries": 0},
    }


async def _chat(running: RunningGateway, model: str, messages: list[Any], **extra: Any) -> Any:
    async with running.client() as client:
        body = {"model": model, "messages": messages, **extra}
        return await client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize(
    ("model", "messages", "extra"),
    [
        ("bed", [{"role": "tool", "content": "0"}], {}),  # no tool_call_id
        ("bed", [{"role": "user", "content": [{"type": "text", "text": 5}]}], {}),
        ("bed", [{"role": "user", "content": "hi"}], {"stop": 5}),
        ("gem", [{"role": "user", "content": 5}], {}),
        ("gem", [{"role": "assistant", "tool_calls": [{"function": "f"}]}], {}),
        ("gem", [{"role": "user", "content": "hi"}], {"reasoning_effort": ["high"]}),
        ("claude", [{"role": "assistant", "content": "x", "tool_calls": 5}], {}),
        ("claude", [{"role": "assistant", "content": "x", "thinking_blocks": [5]}], {}),
    ],
)
async def test_a_malformed_field_is_the_clients_400(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    model: str,
    messages: list[Any],
    extra: dict[str, Any],
) -> None:
    running = await start_gateway(nursery, _config(upstream))
    response = await _chat(running, model, messages, **extra)
    assert_envelope(response, 400, "invalid_request_error")
    assert upstream.requests == []
    await running.stop()


@pytest.mark.parametrize(
    ("model", "module", "translator"),
    [
        ("claude", trigate.providers.anthropic, "translate_messages"),
        ("gem", trigate.providers.gemini, "translate_messages"),
        ("bed", trigate.providers.bedrock, "_conversation"),
    ],
)
async def test_a_bug_in_a_translator_is_a_logged_500(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    module: Any,
    translator: str,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a slip of ours")

    monkeypatch.setattr(module, translator, broken)
    running = await start_gateway(nursery, _config(upstream))
    response = await _chat(running, model, [{"role": "user", "content": "hi"}])
    error = assert_envelope(response, 500, "api_error")
    assert "slip" not in error["message"]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert logged and isinstance(logged[0].exc_info[1], KeyError)  # type: ignore[index]
    [record] = await running.records.wait_for(1)
    assert record.status == 500
    await running.stop()


async def test_a_bug_in_the_messages_ingress_is_a_logged_500_in_anthropics_envelope(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(message: Any) -> Any:
        raise AttributeError("a slip of ours")

    monkeypatch.setattr(trigate.api.anthropic_format, "_chat_messages", broken)
    running = await start_gateway(nursery, _config(upstream))
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=MASTER_KEY, max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as failed:
        await client.messages.create(
            model="gem", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)
    await running.stop()

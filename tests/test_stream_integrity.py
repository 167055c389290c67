"""A stream request answered 200 with something that is not a stream (an HTML page from
a proxy, a JSON body that ignored `stream`, nothing at all) is the upstream's failure,
a 502 as on the non-stream path, never a 200 holding a lone `[DONE]`; and an upstream
line past the decoder's cap fails the stream cleanly."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from asgi_driver import MESSAGES, chat_request, harness
from fakes import chunk
from scripted import Step, deployment, ok_stream

from trigate import sse

CREDENTIALS = {"api_key": "sk-upstream-key-0123456789"}
BEDROCK = {
    "aws_access_key_id": "AKIDEXAMPLE",
    "aws_secret_access_key": "secret-key-0123456789",
    "aws_region_name": "us-east-1",
}
# One deployment of each provider family that streams, each on its own scripted host.
FAMILIES: dict[str, dict[str, Any]] = {
    "openai": {"model": "openai/m", **CREDENTIALS},
    "anthropic": {"model": "anthropic/claude-m", **CREDENTIALS},
    "gemini": {"model": "gemini/gemini-m", **CREDENTIALS},
    "bedrock": {"model": "bedrock/anthropic.claude-m", **BEDROCK},
}
JSON_ANSWER = Step(body={"id": "x", "object": "chat.completion", "choices": []})
HTML_PAGE = Step(
    frames=[b"<html><body>Bad gateway</body></html>"], headers={"content-type": "text/html"}
)
NO_EVENTS = Step(frames=[b": keep-alive\n\n", b"\n\n"])


def family_config(family: str) -> dict[str, Any]:
    params = {**FAMILIES[family], "api_base": f"http://{family}.test"}
    return {
        "model_list": [{"model_name": "g", "litellm_params": params}],
        "router_settings": {"num_retries": 0},
    }


async def streamed(h: Any, path: str = "/v1/chat/completions") -> tuple[int, bytes]:
    payload = {"model": "g", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    exchange = chat_request(h.nursery, h.app, payload, path=path)
    status = (await exchange.start())["status"]
    return status, await exchange.read_body()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_json_answer_to_a_stream_request_is_a_502(
    nursery: trio.Nursery, family: str, path: str
) -> None:
    h = await harness(nursery, family_config(family), {family: [JSON_ANSWER]})
    status, body = await streamed(h, path)
    assert status == 502, body
    assert b"application/json" in body and b"[DONE]" not in body
    [record] = await h.records.wait_for(1)
    assert record.status == 502 and record.error is not None


@pytest.mark.parametrize("answer", [HTML_PAGE, NO_EVENTS], ids=["html", "no-events"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_stream_with_no_events_is_a_502(
    nursery: trio.Nursery, answer: Step, path: str
) -> None:
    h = await harness(nursery, family_config("openai"), {"openai": [answer]})
    payload = {"model": "g", "messages": MESSAGES, "prompt": "hi", "stream": True}
    exchange = chat_request(h.nursery, h.app, payload, path=path)
    assert (await exchange.start())["status"] == 502
    assert b"[DONE]" not in await exchange.read_body()
    [record] = await h.records.wait_for(1)
    assert record.status == 502


async def test_a_non_stream_answer_moves_on_to_another_deployment(nursery: trio.Nursery) -> None:
    config = {
        "model_list": [
            deployment("d0", "g", order=1),
            deployment("d1", "g", order=2),
        ],
        "router_settings": {"num_retries": 1},
    }
    h = await harness(nursery, config, {"d0": [HTML_PAGE], "d1": [ok_stream(["hi"])]})
    status, body = await streamed(h)
    assert status == 200 and b"hi" in body
    assert h.upstreams.served == ["d0", "d1"]


async def test_a_line_past_the_cap_fails_the_stream_with_one_error_frame(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "MAX_LINE_BYTES", 4096)
    endless = [b"data: " + b"x" * 1000 for _ in range(5)]
    h = await harness(
        nursery, family_config("openai"), {"openai": [Step(frames=[chunk("hi"), *endless])]}
    )
    status, body = await streamed(h)
    assert status == 200
    events = [event for event in body.split(b"\n\n") if event]
    assert b"hi" in events[0]
    assert b"longer than" in events[-2] and events[-1] == b"data: [DONE]"
    assert sum(b'"error"' in event for event in events) == 1
    [record] = await h.records.wait_for(1)
    assert record.status == 502 and "longer than" in (record.error or "")

"""A pass-through call is recorded before its answer ends, as a model API call is: the
lean HTTP/1.1 intake (trigate/http1.py) reads a kept-alive connection's next request
at the answer's end, so a client such as Claude Code on `/anthropic` would otherwise
wait for the last call's accounting (its record and sinks) before its next request is
even read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from fake_anthropic import message, message_end, message_start, text_block
from fakes import FakeUpstream, JSONReply, ReceivedRequest, Reply, StreamReply
from helpers import MESSAGES, UPSTREAM_KEY, RunningGateway, start_gateway
from test_guardrails import content_filter

from trigate.api.passthrough_guard import PassGuard
from trigate.spend import RequestRecord
from trigate.usage import Usage

CLAUDE = "claude-sonnet-4-5-20250929"


def _answer(request: ReceivedRequest) -> Reply:
    if request.json.get("stream"):
        end = message_end("end_turn", output_tokens=6)
        return StreamReply([message_start(), *text_block(0, "Hel", "lo"), *end])
    return JSONReply(message([{"type": "text", "text": "Hello"}]))


@pytest.fixture
async def start(nursery: trio.Nursery, upstream: FakeUpstream) -> AsyncIterator[Any]:
    params = {"model": f"anthropic/{CLAUDE}", "api_base": f"http://127.0.0.1:{upstream.port}",
              "api_key": UPSTREAM_KEY}  # fmt: skip
    upstream.handler = _answer
    running: list[RunningGateway] = []

    async def started(**extra: Any) -> RunningGateway:
        config = {"model_list": [{"model_name": "claude", "litellm_params": params}], **extra}
        running.append(await start_gateway(nursery, config))
        return running[-1]

    yield started
    for gateway in running:
        await gateway.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_slow_record_sink_holds_the_answers_end_not_the_next_request(
    start: Any, nursery: trio.Nursery, stream: bool
) -> None:
    gateway: RunningGateway = await start()
    # The first call's record sink is held until the test lets it go.
    held, release = trio.Event(), trio.Event()
    write = gateway.records.write

    async def slow_write(record: RequestRecord) -> None:
        if not gateway.records.records:
            held.set()
            await release.wait()
        await write(record)

    gateway.records.write = slow_write  # type: ignore[method-assign]
    await _two_calls(gateway, nursery, stream, held, release)


async def test_a_slow_stream_ended_guardrail_holds_the_answers_end_not_the_next_request(
    start: Any, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway: RunningGateway = await start(guardrails=[content_filter("cf", "post_call")])
    # The first stream's `stream_ended` hooks are held until the test lets them go.
    held, release = trio.Event(), trio.Event()
    ended = PassGuard.stream_ended

    async def slow_stream_ended(guard: PassGuard, usage: Usage) -> None:
        if not held.is_set():
            held.set()
            await release.wait()
        await ended(guard, usage)

    monkeypatch.setattr(PassGuard, "stream_ended", slow_stream_ended)
    await _two_calls(gateway, nursery, True, held, release)
    # The guardrail's verdict is still each record's.
    for record in gateway.records.records:
        [outcome] = (record.metadata or {})["guardrail_information"]
        assert (outcome["guardrail_mode"], outcome["guardrail_status"]) == ("post_call", "success")


async def _two_calls(
    gateway: RunningGateway,
    nursery: trio.Nursery,
    stream: bool,
    held: trio.Event,
    release: trio.Event,
) -> None:
    """Two calls on one kept-alive connection, the first's accounting `held` until the
    test lets it go (`release`): the first answer's end waits for it, and once that end
    reached the client nothing of the first call is left to delay the second."""
    body = {"model": CLAUDE, "max_tokens": 100, "messages": MESSAGES, "stream": stream}
    answers: list[httpx.Response] = []
    recorded_when_answered: list[int] = []
    first_answered, both_answered = trio.Event(), trio.Event()

    async def client_calls() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with gateway.client(limits=limits) as client:
            for _ in range(2):
                answers.append(await client.post("/anthropic/v1/messages", json=body))
                recorded_when_answered.append(len(gateway.records.records))
                first_answered.set()
        both_answered.set()

    nursery.start_soon(client_calls)
    with trio.fail_after(10):
        await held.wait()
    # Everything that can move has moved: the accounting waits, and so does the first
    # answer's end, which follows it.
    await trio.testing.wait_all_tasks_blocked()
    assert not first_answered.is_set(), "the answer ended before its call was accounted for"
    release.set()
    with trio.fail_after(10):
        await both_answered.wait()
    # Each call was recorded before its answer's end reached the client.
    assert recorded_when_answered == [1, 2]
    first, second = gateway.records.records
    assert [answer.status_code for answer in answers] == [200, 200]
    # Whole calls, not ones the client left: an answer ended before its accounting let
    # the server hear the client's end while a slow `stream_ended` still ran (a 499).
    assert [(r.status, r.cancelled_by_client) for r in (first, second)] == [(200, False)] * 2
    # One connection, kept alive (the client may open no other).
    assert all(a.http_version == "HTTP/1.1" and "connection" not in a.headers for a in answers)
    assert (first.prompt_tokens, first.completion_tokens, first.stream) == (12, 6, stream)
    assert (second.prompt_tokens, second.completion_tokens) == (12, 6)
    routes = [(record.metadata or {}).get("pass_through_route") for record in (first, second)]
    assert routes == ["/anthropic/v1/messages"] * 2

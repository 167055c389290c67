"""The streaming relay's structure: disconnects, backpressure, long streams, cleanup."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial
from typing import Any, cast

import httpx
import orjson
import pytest
import trio
import trio.testing
from asgi_driver import chat_request, start_lifespan
from fakes import (
    FakeUpstream,
    JSONReply,
    StreamReply,
    chat_completion,
    chunk,
    sse_lines,
    stream_of,
)
from helpers import (
    MASTER_KEY,
    MESSAGES,
    RunningGateway,
    build_app,
    mock_config,
    openai_config,
    start_gateway,
)

from trigate import relay
from trigate.api import pipeline
from trigate.providers.base import ChunkStream
from trigate.relay import (
    CHANNEL_CAPACITY,
    MAX_FRAMES_PER_WRITE,
    TEARDOWN_LANE_WIDTH,
    TEARDOWN_MAX_HOLD,
    TEARDOWN_QUIET,
)
from trigate.spend.records import RequestRecord
from trigate.usage import UsageMeter

STREAM_BODY = {
    "model": "gpt-test",
    "messages": [{"role": "user", "content": "Tell me a long story"}],
    "stream": True,
}


def endless_story() -> StreamReply:
    return StreamReply([chunk("Once "), chunk("upon ")], tail=chunk("more "), tail_interval=0.005)


async def read_events_then_leave(gateway: RunningGateway, events: int) -> list[str]:
    seen: list[str] = []
    async with (
        gateway.client() as client,
        client.stream("POST", "/v1/chat/completions", json=STREAM_BODY) as response,
    ):
        assert response.status_code == 200
        async for data in sse_lines(response):
            seen.append(data)
            if len(seen) == events:
                break
    return seen


async def test_client_disconnect_closes_the_upstream_connection(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: endless_story()
    seen = await read_events_then_leave(gateway, 3)
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
        await upstream.wait_for(lambda: upstream.connections_closed == upstream.connections_opened)
        [record] = await gateway.records.wait_for(1)
    assert record.cancelled_by_client and record.status == 499
    # Billed by counting what the upstream produced, at least what reached the client.
    relayed = "".join(orjson.loads(data)["choices"][0]["delta"]["content"] for data in seen)
    assert record.usage_source == "counted"
    assert record.completion_tokens >= gateway.gateway.counter.count_text("upstream-model", relayed)
    assert record.prompt_tokens > 0


async def test_many_concurrent_disconnects_each_close_their_upstream(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: endless_story()
    clients = 40
    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(read_events_then_leave, gateway, 2 + index % 5)
    with trio.fail_after(10):
        await upstream.wait_for(lambda: upstream.aborted == clients)
        await upstream.wait_for(lambda: upstream.connections_closed == upstream.connections_opened)
        records = await gateway.records.wait_for(clients)
    assert all(record.cancelled_by_client for record in records)
    assert len({record.request_id for record in records}) == clients


async def test_upstream_is_closed_when_client_leaves_before_the_response_starts(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """The stream is open upstream, but the client goes before our headers went out."""
    upstream.handler = lambda request: StreamReply([chunk("Once "), 30.0, chunk("never")])
    app, _gateway = build_app(openai_config(upstream))
    await start_lifespan(nursery, app)
    exchange = chat_request(nursery, app, STREAM_BODY)
    with trio.fail_after(5):
        await upstream.wait_for(lambda: len(upstream.requests) == 1)
        await trio.testing.wait_all_tasks_blocked(0.05)
    exchange.disconnect()  # the app is blocked sending its response start
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
        await exchange.done.wait()


class CountingStory(httpx.AsyncByteStream):
    """An endless upstream body that counts how many chunks the gateway pulled."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.produced += 1
            yield chunk(f"word{self.produced} ")
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.closed = True


async def test_a_slow_client_stops_the_upstream_reader(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    story = CountingStory()
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, stream=story, headers={"content-type": "text/event-stream"}
        )
    )
    app, _ = build_app(openai_config(upstream), transport=transport)
    await start_lifespan(nursery, app)
    exchange = chat_request(nursery, app, STREAM_BODY)
    await exchange.start()
    await exchange.next_message()  # one write reaches the client, then it stops reading
    with trio.fail_after(5):  # an unbounded reader would never let every task block
        await trio.testing.wait_all_tasks_blocked()
    held = story.produced
    # The channel, one batch in the writer's hands, the one delivered, and one in flight.
    assert held <= CHANNEL_CAPACITY + 2 * MAX_FRAMES_PER_WRITE + 2
    await trio.testing.wait_all_tasks_blocked()
    assert story.produced == held, "the reader must stay blocked while the client is"
    exchange.disconnect()
    with trio.fail_after(5):
        await exchange.done.wait()
    assert story.closed


async def test_a_ten_minute_stream_arrives_whole(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    words = [f"w{i} " for i in range(11)]
    app, _ = build_app(mock_config(mock_response="".join(words), mock_chunk_delay=60.0))
    await start_lifespan(nursery, app)
    started = trio.current_time()
    exchange = chat_request(nursery, app, {**STREAM_BODY, "model": "mock"})
    start = await exchange.start()
    assert start["status"] == 200
    body = (await exchange.read_body()).decode()
    assert trio.current_time() - started >= 600
    events = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        (orjson.loads(e)["choices"] or [{"delta": {}}])[0]["delta"].get("content", "")
        for e in events[:-1]
    )
    assert text == "".join(words)


WHOLE_ANSWER_REQUESTS = [
    ("/v1/chat/completions", {**STREAM_BODY, "stream": False}),
    (
        "/v1/messages",
        {"model": "gpt-test", "max_tokens": 64, "messages": STREAM_BODY["messages"]},
    ),
    ("/v1/responses", {"model": "gpt-test", "input": "Tell me a long story"}),
]


@pytest.mark.parametrize(("path", "body"), WHOLE_ANSWER_REQUESTS)
async def test_client_leaving_a_non_stream_request_closes_the_upstream(
    gateway: RunningGateway, upstream: FakeUpstream, path: str, body: dict[str, Any]
) -> None:
    """Each surface's whole-answer call is cancelled by its client's departure (chat,
    Messages and Responses all translated to a chat deployment here)."""
    upstream.handler = lambda request: JSONReply(chat_completion("late"), delay=30.0)
    async with gateway.client() as client, trio.open_nursery() as asking:
        asking.start_soon(partial(client.post, path, json=body))
        # The call has reached the upstream (a fixed wait could end first on a loaded
        # machine, and leave nothing to close) ...
        with trio.fail_after(30):
            await upstream.wait_for(lambda: len(upstream.requests) == 1)
        asking.cancel_scope.cancel()  # ... and the client gives up, closing its connection
    with trio.fail_after(30):  # against a hang, not a timing assertion
        await upstream.wait_for(lambda: upstream.aborted == 1)
        [record] = await gateway.records.wait_for(1)
    assert record.cancelled_by_client and record.status == 499
    assert record.prompt_tokens > 0 and record.completion_tokens == 0


async def test_streams_in_flight_finish_during_graceful_shutdown(nursery: trio.Nursery) -> None:
    words = [f"w{i} " for i in range(10)]
    running = await start_gateway(
        nursery, mock_config(mock_response="".join(words), mock_chunk_delay=0.1)
    )
    async with (
        running.client() as client,
        client.stream(
            "POST", "/v1/chat/completions", json={**STREAM_BODY, "model": "mock"}
        ) as response,
    ):
        events = sse_lines(response)
        first = await anext(events)
        nursery.start_soon(running.stop)  # SIGTERM-like, mid-stream
        rest = [data async for data in events]
    assert rest[-1] == "[DONE]"
    contents = [
        orjson.loads(d)["choices"][0]["delta"].get("content", "") for d in [first, *rest[:-1]]
    ]
    assert "".join(contents) == "".join(words)


async def test_a_departing_clients_upstream_closes_while_its_record_is_still_written(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """Accounting may finish after the close; the close never waits for it."""
    upstream.handler = lambda request: endless_story()
    writing, release = trio.Event(), trio.Event()
    write = gateway.records.write

    async def slow_write(record: RequestRecord) -> None:
        writing.set()
        await release.wait()
        await write(record)

    gateway.records.write = slow_write  # type: ignore[method-assign]
    await read_events_then_leave(gateway, 3)
    with trio.fail_after(5):
        # The record blocks until released, so only a close that does not wait for it
        # can happen here.
        await upstream.wait_for(lambda: upstream.aborted == 1)
        await upstream.wait_for(lambda: upstream.connections_closed == upstream.connections_opened)
        await writing.wait()
    assert gateway.records.records == []
    release.set()
    with trio.fail_after(5):
        [record] = await gateway.records.wait_for(1)
    # The read its departure failed is no upstream error: the client cancelled.
    assert record.cancelled_by_client and record.status == 499 and record.error is None


async def test_many_departures_at_once_each_close_their_upstream_and_are_billed(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """More departures than the teardown lane is wide: none waits on another's record."""
    upstream.handler = lambda request: endless_story()
    clients = 3 * TEARDOWN_LANE_WIDTH
    release = trio.Event()
    write = gateway.records.write

    async def slow_write(record: RequestRecord) -> None:
        await release.wait()
        await write(record)

    gateway.records.write = slow_write  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(read_events_then_leave, gateway, 2)
    with trio.fail_after(10):
        await upstream.wait_for(lambda: upstream.aborted == clients)
    release.set()
    with trio.fail_after(10):
        records = await gateway.records.wait_for(clients)
    assert all(record.status == 499 for record in records)


async def test_a_departure_unwinds_only_once_it_has_its_place_in_the_teardown_lane(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """Its upstream closes at once; its response's end and its record wait for the lane,
    so that they never run beside other departures' closes."""
    upstream.handler = lambda request: endless_story()
    places = relay._lane()._places
    others = [object() for _ in range(TEARDOWN_LANE_WIDTH)]
    for other in others:
        await places.acquire_on_behalf_of(other)
    await read_events_then_leave(gateway, 3)
    with trio.fail_after(5):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    # Before its place, a departure's response had ended and its record was written
    # well within this.
    await trio.sleep(0.5)
    assert gateway.records.records == []
    places.release_on_behalf_of(others[0])
    with trio.fail_after(5):
        [record] = await gateway.records.wait_for(1)
    assert record.cancelled_by_client and record.status == 499
    for other in others[1:]:
        places.release_on_behalf_of(other)


async def test_a_departure_unwinds_once_clients_stop_leaving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lane = relay._TeardownLane()

    async def leaving(count: int) -> None:
        for _ in range(count):
            await trio.sleep(TEARDOWN_QUIET / 2)
            lane.heard()

    async with trio.open_nursery() as nursery:
        lane.heard()
        nursery.start_soon(leaving, 9)
        started = trio.current_time()
        await lane.enter("a departure", started)
        waited = trio.current_time() - started
    # Let in one quiet period after the last departure (the tenth, at 4.5 periods).
    assert waited == pytest.approx(TEARDOWN_QUIET * 5.5)
    lane.leave("a departure")
    # One that waited past the bound for its place goes on at once.
    lane.heard()
    now = trio.current_time()
    await lane.enter("a late one", now - TEARDOWN_MAX_HOLD)
    assert trio.current_time() == pytest.approx(now)
    lane.leave("a late one")
    async with trio.open_nursery() as nursery:
        lane.heard()
        nursery.start_soon(leaving, 1000)
        started = trio.current_time()
        await lane.enter("another", started)
        # Departures that never pause hold an unwinding back for a bounded time only.
        assert trio.current_time() - started == pytest.approx(TEARDOWN_MAX_HOLD)
        nursery.cancel_scope.cancel()


async def test_a_stream_that_ended_hands_its_upstream_connection_back(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """The reader stops at `data: [DONE]`, one read before the body's own end: the end,
    already arrived, must not cost the next stream a new upstream connection."""

    def ended_with_done(request: object) -> StreamReply:
        reply = stream_of(["Once ", "upon"])
        reply.end_with_last_frame = True
        return reply

    upstream.handler = ended_with_done
    for _ in range(3):
        async with (
            gateway.client() as client,
            client.stream("POST", "/v1/chat/completions", json=STREAM_BODY) as response,
        ):
            assert [data async for data in sse_lines(response)][-1] == "[DONE]"
    assert upstream.connections_opened == 1


async def test_a_client_gone_before_the_headers_is_recorded_as_gone(
    nursery: trio.Nursery, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream's first chunk arrived and the relay was built, but the client left
    before the response started: the relay is closed unentered, and its record must say
    the client left (499), not 200."""
    upstream.handler = lambda request: StreamReply(
        [chunk("first"), 30.0], tail=b": ping\n\n", tail_interval=1.0
    )
    serve = pipeline.Pipeline.serve
    client: list[trio.socket.SocketType] = []

    async def serve_then_lose_the_client(*args: Any) -> Any:
        reply = await serve(*args)
        client[0].close()
        with trio.CancelScope(shield=True):
            await trio.sleep(0.3)  # the gateway hears the departure before the headers
        return reply

    monkeypatch.setattr(pipeline.Pipeline, "serve", serve_then_lose_the_client)
    running = await start_gateway(nursery, openai_config(upstream))
    host, port = running.url.removeprefix("http://").split(":")
    sock = trio.socket.socket()
    client.append(sock)
    await sock.connect((host, int(port)))
    body = orjson.dumps({"model": "gpt-test", "messages": MESSAGES, "stream": True})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {MASTER_KEY}"
        f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    await sock.send(head + body)
    with trio.fail_after(10):
        [record] = await running.records.wait_for(1)
    assert (record.status, record.cancelled_by_client) == (499, True)


async def test_a_client_leaving_an_http2_request_closes_its_upstream(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """An HTTP/2 request keeps its watcher of the ASGI disconnect (one connection carries
    many requests, so the server's departure signal cannot tell whose it is): a client
    that leaves still cancels its call."""
    upstream.handler = lambda request: JSONReply(chat_completion("late"), delay=30.0)
    async with gateway.client(http1=False, http2=True) as client:
        assert (await client.get("/health/liveliness")).http_version == "HTTP/2"
        body = {**STREAM_BODY, "stream": False}
        async with trio.open_nursery() as asking:
            asking.start_soon(partial(client.post, "/v1/chat/completions", json=body))
            with trio.fail_after(30):  # the call has reached the upstream; then it leaves
                await upstream.wait_for(lambda: len(upstream.requests) == 1)
            asking.cancel_scope.cancel()
    with trio.fail_after(30):  # against a hang, not a timing assertion
        await upstream.wait_for(lambda: upstream.aborted == 1)
        [record] = await gateway.records.wait_for(1)
    assert record.cancelled_by_client and record.status == 499


class _UnclosableStream:
    """An upstream stream whose close never ends, as an upstream that never answers it."""

    def waits_next(self) -> bool:
        return False

    async def aclose(self) -> None:
        await trio.sleep_forever()


async def _no_batches() -> AsyncGenerator[list[Any], None]:
    return
    yield


async def test_a_relays_close_runs_under_cancellation_each_step_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`StreamRelay.close` in a cancelled scope, as a departed client's stream closes:
    releasing the upstream and writing the record each run shielded, each under its own
    bound, so an upstream that never closes neither hangs the stream nor costs its
    record, and a record that never ends is cut off too."""
    recorded: list[bool] = []

    async def on_finish(outcome: relay.StreamOutcome) -> None:
        recorded.append(outcome.completed)
        await trio.sleep_forever()

    stream = relay.StreamRelay(
        cast(ChunkStream, _UnclosableStream()),
        _no_batches(),
        None,
        cast(UsageMeter, None),
        include_usage=False,
        on_finish=on_finish,
    )
    start = trio.current_time()
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.close()
    assert recorded == [False], "the record was not written under cancellation"
    assert trio.current_time() - start == relay.CLOSE_TIMEOUT + relay.FINISH_TIMEOUT

"""The Realtime API over WebSocket: the openai SDK's `realtime.connect` (and a browser's
subprotocol key) through the gateway to a fake Realtime upstream on a real socket;
each `response.done` billed as it passes, a spent budget closing the session with its
reason, and either side's close ending the other."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import openai
import pytest
import trio
from fakes import FakeUpstream
from helpers import MASTER_KEY, UPSTREAM_KEY, RunningGateway, deployment_config, start_gateway
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from test_metrics import scrape
from test_tracing import _attributes, received_spans
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

USAGE = {
    "total_tokens": 1500,
    "input_tokens": 1000,
    "output_tokens": 500,
    "input_token_details": {"cached_tokens": 0, "text_tokens": 1000, "audio_tokens": 0},
    "output_token_details": {"text_tokens": 500, "audio_tokens": 0},
}


class FakeRealtime:
    """OpenAI's Realtime API: `session.created`, then for each `response.create` a
    response's events ending with `response.done` and its usage."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.received: list[dict[str, Any]] = []
        self.closed = trio.Event()
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        server = await nursery.start(partial(serve_websocket, self._serve, "127.0.0.1", 0, None))
        self.port = server.port

    async def _serve(self, request: WebSocketRequest) -> None:
        self.paths.append(request.path)
        self.headers.append({k.decode().lower(): v.decode() for k, v in request.headers})
        socket = await request.accept()
        try:
            await socket.send_message(json.dumps({"type": "session.created", "event_id": "e0"}))
            count = 0
            while True:
                event = json.loads(await socket.get_message())
                self.received.append(event)
                if event.get("type") != "response.create":
                    continue
                count += 1
                response = {"id": f"resp_{count}", "object": "realtime.response"}
                delta = {"type": "response.output_text.delta", "delta": "Hello", "event_id": "e1"}
                done = {"type": "response.done", "response": {**response, "usage": USAGE}}
                for message in (
                    {"type": "response.created", "response": response},
                    delta,
                    {**done, "event_id": "e2"},
                ):
                    await socket.send_message(json.dumps(message))
        except ConnectionClosed:
            self.closed.set()


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeRealtime:
    server = FakeRealtime()
    await server.start(nursery)
    return server


@pytest.fixture
async def gateway(nursery: trio.Nursery, fake: FakeRealtime) -> AsyncIterator[RunningGateway]:
    params = {
        "model": "openai/gpt-realtime",
        "api_base": f"http://127.0.0.1:{fake.port}/v1",
        "api_key": UPSTREAM_KEY,
    }
    running = await start_gateway(nursery, deployment_config("realtime", params))
    yield running
    await running.stop()


def ws_url(gateway: RunningGateway, model: str = "realtime") -> str:
    return f"{gateway.url.replace('http://', 'ws://')}/v1/realtime?model={model}"


def sdk_session(url: str, key: str) -> list[str]:
    """The openai SDK's (sync) realtime client: one response, its event types in order."""
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    seen: list[str] = []
    with client.realtime.connect(model="realtime") as connection:
        connection.send({"type": "response.create"})
        for event in connection:
            seen.append(event.type)
            if event.type == "response.done":
                break
    return seen


async def test_sdk_session_relayed_and_billed(gateway: RunningGateway, fake: FakeRealtime) -> None:
    seen = await trio.to_thread.run_sync(sdk_session, f"{gateway.url}/v1", MASTER_KEY)
    assert seen == [
        "session.created",
        "response.created",
        "response.output_text.delta",
        "response.done",
    ]
    assert fake.paths == ["/v1/realtime?model=gpt-realtime"]
    assert fake.headers[0]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert fake.received == [{"type": "response.create"}]
    [record] = await gateway.records.wait_for(1)
    # gpt-realtime: 4e-06 in, 1.6e-05 out.
    assert record.cost == pytest.approx(1000 * 4e-06 + 500 * 1.6e-05)
    assert record.response_id == "resp_1" and record.model_group == "realtime"
    with trio.fail_after(5):
        await fake.closed.wait()  # the SDK's close reached the upstream


async def test_key_in_the_subprotocol_and_client_close(
    gateway: RunningGateway, fake: FakeRealtime
) -> None:
    async with gateway.client() as admin:
        key = (await admin.post("/key/generate", json={"models": ["realtime"]})).json()["key"]
    protocols = ["realtime", f"openai-insecure-api-key.{key}"]
    async with open_websocket_url(ws_url(gateway), subprotocols=protocols) as socket:
        assert socket.subprotocol == "realtime"
        assert json.loads(await socket.get_message())["type"] == "session.created"
    with trio.fail_after(5):
        await fake.closed.wait()
    # The client's key is the gateway's: the upstream gets the deployment's own.
    assert all(key not in value for value in fake.headers[0].values())
    assert fake.headers[0]["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_refused_before_the_upstream_is_opened(
    gateway: RunningGateway, fake: FakeRealtime
) -> None:
    async with gateway.client() as admin:
        key = (await admin.post("/key/generate", json={"models": ["other"]})).json()["key"]
    for headers, status in (
        ([(b"authorization", b"Bearer sk-wrong")], 401),
        ([(b"authorization", f"Bearer {key}".encode())], 403),
    ):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(ws_url(gateway), extra_headers=headers):
                pass
        assert rejected.value.status_code == status
        assert b'"error"' in (rejected.value.body or b"")
    assert fake.paths == []


async def test_budget_spent_mid_session_closes_it(
    gateway: RunningGateway, fake: FakeRealtime
) -> None:
    async with gateway.client() as admin:
        key = (await admin.post("/key/generate", json={"max_budget": 0.001})).json()["key"]
    headers = [(b"authorization", f"Bearer {key}".encode())]
    events = []
    async with open_websocket_url(ws_url(gateway), extra_headers=headers) as socket:
        await socket.send_message(json.dumps({"type": "response.create"}))
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
            while True:
                events.append(json.loads(await socket.get_message())["type"])
    assert events[-1] == "response.done"  # the response that spent it still arrives
    reason = closed.value.reason
    assert reason is not None and reason.code == 1008
    assert "Budget has been exceeded" in (reason.reason or "")
    with trio.fail_after(5):
        await fake.closed.wait()
    [record] = await gateway.records.wait_for(1)
    assert record.cost > 0.001


async def test_sessions_are_counted_and_traced(
    nursery: trio.Nursery, fake: FakeRealtime, receiver: FakeUpstream
) -> None:
    """A session is one request to the proxy (200 once accepted, a refusal's status
    otherwise), each response it bills one LLM call with its tokens and spend, counted
    as it passes; its span has a child for the upstream session, whose context the
    upstream is sent."""
    params = {
        "model": "openai/gpt-realtime",
        "api_base": f"http://127.0.0.1:{fake.port}/v1",
        "api_key": UPSTREAM_KEY,
    }
    config = deployment_config("realtime", params)
    config["model_list"][0]["model_info"] = {"id": "rt-1"}
    running = await start_gateway(nursery, config)
    async with running.client() as admin:
        made = await admin.post("/key/generate", json={"key_alias": "talker"})
        key, key_hash = made.json()["key"], made.json()["token"]
        barred = (await admin.post("/key/generate", json={"models": ["other"]})).json()["key"]
    headers = [(b"authorization", f"Bearer {key}".encode())]
    async with open_websocket_url(ws_url(running), extra_headers=headers) as socket:
        for _ in range(2):
            await socket.send_message(json.dumps({"type": "response.create"}))
            while json.loads(await socket.get_message())["type"] != "response.done":
                pass
        records = await running.records.wait_for(2)
        live = await scrape(running.url)  # while the session is still open
    with pytest.raises(ConnectionRejected):
        barred_headers = [(b"authorization", f"Bearer {barred}".encode())]
        async with open_websocket_url(ws_url(running), extra_headers=barred_headers):
            pass
    total = "litellm_proxy_total_requests_metric_total"
    # The session is counted once the gateway has closed its upstream after the client's
    # close: nothing the test holds tells when, so /metrics is read until it shows.
    with trio.fail_after(10):
        while (scraped := await scrape(running.url)).value(total, status_code="200") < 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    await running.stop()

    labels = {"hashed_api_key": key_hash, "api_key_alias": "talker"}
    cost = sum(r.cost for r in records)
    assert live.value("litellm_spend_metric_total", **labels) == pytest.approx(cost)
    assert live.value(total) == 0
    route = {"route": "/v1/realtime", "requested_model": "realtime"}
    assert scraped.value(total, status_code="200", **route, **labels) == 1
    assert scraped.value(total, status_code="403", **route) == 1
    assert scraped.value(
        "litellm_proxy_failed_requests_metric_total", exception_class="ModelNotAllowed"
    ) == 1  # fmt: skip
    assert scraped.value("litellm_requests_metric_total", **labels) == 2
    assert scraped.value("litellm_input_tokens_metric_total", model_id="rt-1", **labels) == 2000
    assert scraped.value("litellm_output_tokens_metric_total", model_id="rt-1") == 1000
    assert scraped.value("litellm_deployment_success_responses_total", model_id="rt-1") == 1
    latency = "litellm_request_total_latency_metric_count"
    assert scraped.value(latency, requested_model="realtime") == 2

    spans = received_spans(receiver)
    sessions = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    [session] = [s for s in sessions if s.status.code != Status.STATUS_CODE_ERROR]
    assert session.name == "realtime realtime" and len(sessions) == 2  # and the refused one
    [upstream] = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert upstream.parent_span_id == session.span_id
    attributes = _attributes(session)
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (
        2000, 1000,
    )  # fmt: skip
    assert attributes["trigate.cost"] == pytest.approx(cost)
    assert _attributes(upstream)["trigate.deployment"] == "rt-1"
    assert fake.headers[-1]["traceparent"].split("-")[2] == upstream.span_id.hex()


async def test_refused_while_a_guardrail_applies_to_the_key(
    nursery: trio.Nursery, fake: FakeRealtime
) -> None:
    """A Realtime session's events pass no guardrail: while one applies to the key (here
    `default_on`), the session is refused before the upstream is opened."""
    params = {
        "model": "openai/gpt-realtime",
        "api_base": f"http://127.0.0.1:{fake.port}/v1",
        "api_key": UPSTREAM_KEY,
    }
    guardrail = {
        "guardrail_name": "cf",
        "litellm_params": {
            "guardrail": "litellm_content_filter",
            "mode": "pre_call",
            "default_on": True,
            "blocked_words": [{"keyword": "forbidden", "action": "BLOCK"}],
        },
    }
    config = {**deployment_config("realtime", params), "guardrails": [guardrail]}
    running = await start_gateway(nursery, config)
    headers = [(b"authorization", f"Bearer {MASTER_KEY}".encode())]
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(ws_url(running), extra_headers=headers):
            pass
    assert rejected.value.status_code == 403
    assert b"closed_by_hooks" in (rejected.value.body or b"")
    assert fake.paths == []
    await running.stop()

"""LiteLLM's response headers beside trigate's own, with LiteLLM's names and formats
(`trigate.api.response_headers`), on whole answers, streams and errors."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from fakes import FakeUpstream, JSONReply, StreamReply, chat_completion, chunk
from helpers import MESSAGES, RunningGateway, new_key, start_gateway

from trigate import __version__
from trigate.api import response_headers
from trigate.api.context import RequestContext
from trigate.transport import field_names

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def config(upstream: FakeUpstream, **router: Any) -> dict[str, Any]:
    base = f"http://user:secret@127.0.0.1:{upstream.port}/v1?sig=hidden"
    params = {
        "model": "openai/upstream-model",
        "api_base": base,
        "api_key": "k",
        "timeout": 7,
        "input_cost_per_token": 1e-6,
        "output_cost_per_token": 2e-6,
    }
    return {
        "model_list": [
            {"model_name": "team/gpt:mini", "litellm_params": params, "model_info": {"id": "d-1"}}
        ],
        "router_settings": {"num_retries": 2, **router},
    }


async def chat(gateway: RunningGateway, key: str | None = None, **body: Any) -> Any:
    client = gateway.client(key) if key else gateway.client()
    async with client:
        return await client.post(
            "/v1/chat/completions",
            json={"model": "team/gpt:mini", "messages": MESSAGES, **body},
        )


@pytest.fixture
async def priced(nursery: trio.Nursery, upstream: FakeUpstream) -> RunningGateway:
    upstream.handler = lambda request: (
        StreamReply([chunk("hi"), chunk(finish="stop"), b"data: [DONE]\n\n"])
        if request.json.get("stream")
        else JSONReply(chat_completion("hi", usage=USAGE))
    )
    return await start_gateway(nursery, config(upstream))


async def test_a_whole_answer_carries_litellms_headers(
    priced: RunningGateway, upstream: FakeUpstream
) -> None:
    async with priced.client() as admin:
        generated = await admin.post(
            "/key/generate", json={"max_budget": 10, "rpm_limit": 100, "tpm_limit": 5000}
        )
    key = generated.json()["key"]
    reply = await chat(priced, key)
    assert reply.status_code == 200, reply.text
    headers = reply.headers
    record = (await priced.records.wait_for(1))[0]
    assert headers["x-litellm-call-id"] == headers["x-trigate-request-id"] == record.request_id
    assert headers["x-litellm-model-id"] == headers["x-trigate-deployment"] == "d-1"
    assert headers["x-litellm-model-group"] == headers["x-trigate-model-group"] == "team/gpt:mini"
    # Without its query and its credentials.
    assert headers["x-litellm-model-api-base"] == f"http://127.0.0.1:{upstream.port}/v1"
    assert headers["x-litellm-response-cost"] == str(record.cost)
    assert record.cost == pytest.approx(10e-6 + 10e-6)
    assert headers["x-litellm-key-spend"] == str(0.0 + record.cost)
    assert headers["x-litellm-key-max-budget"] == "10.0"
    assert headers["x-litellm-key-rpm-limit"] == "100"
    assert headers["x-litellm-key-tpm-limit"] == "5000"
    assert headers["x-litellm-key-remaining-requests-team-gpt-mini"] == "99"
    assert (
        headers["x-litellm-key-remaining-requests-team-gpt-mini"]
        == headers["x-ratelimit-remaining-requests"]
    )
    assert "x-litellm-key-remaining-tokens-team-gpt-mini" in headers
    assert headers["x-litellm-attempted-retries"] == headers["x-trigate-attempted-retries"] == "0"
    assert headers["x-litellm-attempted-fallbacks"] == "0"
    assert headers["x-litellm-max-retries"] == "2"
    assert headers["x-litellm-timeout"] == "7.0"
    assert float(headers["x-litellm-response-duration-ms"]) >= 0
    assert headers["x-litellm-overhead-duration-ms"] == headers["x-trigate-overhead-ms"]
    assert headers["x-litellm-version"] == __version__
    assert "secret" not in str(headers) and "hidden" not in str(headers)


async def test_a_stream_has_them_but_the_cost_it_does_not_know_yet(
    priced: RunningGateway,
) -> None:
    async with (
        priced.client() as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "team/gpt:mini", "messages": MESSAGES, "stream": True},
        ) as response,
    ):
        await response.aread()
    headers = response.headers
    assert response.status_code == 200
    assert headers["x-litellm-model-id"] == "d-1"
    assert headers["x-litellm-key-spend"] == "0.0"
    assert "x-litellm-response-cost" not in headers
    assert headers["x-litellm-timeout"] == "7.0"


async def test_an_error_carries_the_retries_it_made(
    nursery: trio.Nursery, upstream: FakeUpstream, virtual_clock: trio.abc.Clock
) -> None:
    upstream.handler = lambda request: JSONReply({"error": {"message": "down"}}, status=503)
    gateway = await start_gateway(nursery, config(upstream, num_retries=1))
    reply = await chat(gateway)
    assert reply.status_code == 503
    headers = reply.headers
    assert headers["x-litellm-attempted-retries"] == "1"
    assert headers["x-litellm-max-retries"] == "1"
    assert headers["x-litellm-model-id"] == "d-1"
    assert headers["x-litellm-response-cost"] == "0.0"
    assert headers["x-litellm-call-id"] == headers["x-trigate-request-id"]


async def test_a_refusal_before_routing_has_the_ids_only(priced: RunningGateway) -> None:
    reply = await chat(priced, model="no-such-model")
    assert reply.status_code == 404
    assert reply.headers["x-litellm-call-id"] == reply.headers["x-trigate-request-id"]
    assert reply.headers["x-litellm-version"] == __version__
    assert "x-litellm-model-id" not in reply.headers


async def test_a_deployment_id_that_would_inject_a_field_is_still_refused(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    """A deployment's headers are the gateway's own only once they pass h11's checks
    (`_Prepared.checked`): one from config that would smuggle in a field of its own is
    checked with every answer, as h11 checks it, and never written."""
    upstream.handler = lambda request: JSONReply(chat_completion("hi", usage=USAGE))
    settings = config(upstream)
    settings["model_list"][0]["model_info"]["id"] = "d-1\r\nx-injected: yes"
    gateway = await start_gateway(nursery, settings)
    async with gateway.client() as client:
        try:
            reply = await client.post(
                "/v1/chat/completions", json={"model": "team/gpt:mini", "messages": MESSAGES}
            )
        except Exception as error:  # h11 refused the head: the connection ended unanswered
            assert "x-injected" not in repr(error)
        else:
            assert reply.status_code == 500
            assert "x-injected" not in reply.headers


def test_only_values_the_gateway_made_are_its_own() -> None:
    """`build_parts`: the ids it made and its version are its own (unchecked by the lean
    server); the client's `x-request-id` and model name, and hooks' headers, are not."""
    context = RequestContext("ab" * 16, 0.0, client_request_id="client's id")
    context.headers["x-hook"] = "set by a hook"
    outside, own = response_headers.build_parts(context)
    assert dict(outside) == {b"x-request-id": b"client's id", b"x-hook": b"set by a hook"}
    assert dict(own) == {
        b"x-trigate-request-id": b"ab" * 16,
        b"x-litellm-call-id": b"ab" * 16,
        b"x-litellm-version": __version__.encode(),
    }
    assert response_headers.build(context) == [*outside, *own]
    mine = RequestContext("cd" * 16, 0.0)
    outside, own = response_headers.build_parts(mine)
    assert outside == [] and (b"x-request-id", b"cd" * 16) in own


async def test_the_gateways_own_fields_pass_h11s_checks_on_every_kind_of_answer(
    priced: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the lean server does not check (`build_parts`' own fields) would pass the
    check, and frames nothing, on the answers that carry the most: a routed, priced call
    with a virtual key with limits and a budget, whole and streamed, and an error. A field
    carrying a value from outside, put among the gateway's own by a later change, fails
    here (the client's request id, the key's limits as stored, a hook's header)."""
    seen: list[tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]] = []
    build_parts = response_headers.build_parts

    def watched(context: RequestContext) -> Any:
        outside, own = build_parts(context)
        seen.append((list(outside), list(own)))
        return outside, own

    key = await new_key(priced, rpm_limit=100, tpm_limit=100_000, max_budget=10.0)
    monkeypatch.setattr(response_headers, "build_parts", watched)
    tricky = {"x-request-id": "client id"}
    async with priced.client(key) as client:
        for body in ({}, {"stream": True}, {"model": "no-such-model"}):
            json = {"model": "team/gpt:mini", "messages": MESSAGES, **body}
            reply = await client.post("/v1/chat/completions", json=json, headers=tricky)
            assert reply.status_code in (200, 400, 404), reply.text
    assert len(seen) == 3
    framing = {b"content-length", b"transfer-encoding", b"connection"}
    for outside, own in seen:
        assert field_names(own) is not None, own
        names = {name for name, _ in own}
        assert not names & framing and all(name.startswith(b"x-") for name in names)
        assert (b"x-request-id", b"client id") in outside
    whole_outside = dict(seen[0][0])
    # What the whole answer carried from outside: the key's limits as stored, the model
    # group the client named, the limiter's counts.
    for name in (b"x-litellm-key-rpm-limit", b"x-litellm-key-max-budget", b"x-litellm-model-group"):
        assert name in whole_outside
    assert b"x-ratelimit-remaining-requests" in whole_outside

"""A fallback never serves a model the caller may not use: every group a request may
reach passes the same key, team and user model checks as the group it names."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from asgi_driver import Harness, harness
from scripted import Step, deployment, error, ok_stream

# Each fallback table, and a failure of group `a` that moves a request along it.
FAILURES = {
    "fallbacks": error(500),
    "context_window_fallbacks": error(400, "too long", code="context_length_exceeded"),
    "content_policy_fallbacks": error(400, "flagged", code="content_filter"),
}


async def gateway(nursery: trio.Nursery, table: str = "fallbacks", stream: bool = False) -> Harness:
    """Group `a` fails; `b` and `c` answer (as a stream, for `stream`)."""
    config = {
        "model_list": [deployment("d0", "a"), deployment("d1", "b"), deployment("d2", "c")],
        "router_settings": {"num_retries": 0, table: [{"a": ["b", "c"]}]},
    }
    answer = ok_stream(["hi"]) if stream else Step()
    scripts = {"d0": [FAILURES[table]], "d1": [answer], "d2": [answer]}
    return await harness(nursery, config, scripts)


async def key_for(h: Harness, models: list[str], **fields: Any) -> str:
    reply = await h.admin("/key/generate", {"models": models, **fields})
    assert reply.status == 200, reply.body
    key: str = reply.json["key"]
    return key


@pytest.mark.parametrize("table", sorted(FAILURES))
@pytest.mark.parametrize("stream", [False, True])
async def test_config_fallbacks_skip_groups_the_key_may_not_use(
    nursery: trio.Nursery, table: str, stream: bool
) -> None:
    h = await gateway(nursery, table, stream)
    key = await key_for(h, ["a", "c"])
    reply = await h.chat("a", key=key, stream=stream)
    assert reply.status == 200 and reply.served_by == "d2", "b is skipped, c may serve"
    assert h.upstreams.served == ["d0", "d2"], "the forbidden group is never called"


@pytest.mark.parametrize("stream", [False, True])
async def test_with_no_allowed_fallback_the_groups_own_error_stands(
    nursery: trio.Nursery, stream: bool
) -> None:
    h = await gateway(nursery)
    reply = await h.chat("a", key=await key_for(h, ["a"]), stream=stream)
    assert reply.status == 502
    assert h.upstreams.served == ["d0"]
    assert h.records.records[-1].model_group == "a"


@pytest.mark.parametrize("stream", [False, True])
async def test_request_fallbacks_naming_a_forbidden_model_are_refused(
    nursery: trio.Nursery, stream: bool
) -> None:
    h = await gateway(nursery)
    reply = await h.chat("a", key=await key_for(h, ["a"]), stream=stream, fallbacks=["b"])
    assert reply.status == 403
    error = reply.json["error"]
    assert error["code"] == "model_not_allowed" and error["param"] == "fallbacks"
    assert "`b`" in error["message"]
    assert h.upstreams.served == [], "refused before any upstream call"
    assert h.records.records[-1].status == 403


async def test_a_users_models_bind_its_keys_fallbacks(nursery: trio.Nursery) -> None:
    h = await gateway(nursery)
    user = await h.admin("/user/new", {"user_id": "u", "models": ["a"], "auto_create_key": False})
    assert user.status == 200
    key = await key_for(h, [], user_id="u")
    assert (await h.chat("a", key=key, fallbacks=["c"])).status == 403
    assert (await h.chat("a", key=key)).status == 502
    assert h.upstreams.served == ["d0"]


async def test_a_teams_models_bind_its_keys_fallbacks(nursery: trio.Nursery) -> None:
    h = await gateway(nursery)
    team = await h.admin("/team/new", {"team_id": "t", "models": ["a", "c"]})
    assert team.status == 200
    key = await key_for(h, [], team_id="t")
    assert (await h.chat("a", key=key, fallbacks=["b"])).status == 403
    assert (await h.chat("a", key=key)).served_by == "d2"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_master_key_and_allowed_request_fallbacks_are_unaffected(
    nursery: trio.Nursery, stream: bool
) -> None:
    h = await gateway(nursery, stream=stream)
    assert (await h.chat("a", stream=stream)).served_by == "d1"
    key = await key_for(h, ["a", "c"])
    reply = await h.chat("a", key=key, stream=stream, fallbacks=["c"])
    assert reply.served_by == "d2"
    assert h.upstreams.served == ["d0", "d1", "d0", "d2"]

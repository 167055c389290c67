"""Callers without a key (a JWT's or a UI session's user) own what they store as their
user (`user:{id}`), never as the master key: each lists and reads its own files,
batches and stored responses, not another user's nor the master's, and the cache's
`scope: key` keeps their answers apart. A keyless caller with no user owns nothing."""

from __future__ import annotations

import openai
import pytest
import trio
from fakes import FakeUpstream, JSONReply, chat_completion
from helpers import (
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningGateway,
    deployment_config,
    mock_config,
    openai_config,
    sdk,
    start_gateway,
)
from test_files_batches import FakeBatchAPI, batch_file

from trigate.auth import Caller, NoOwner, key_hash_of_owner, owner_of
from trigate.store import MASTER_OWNER

MESSAGES = [{"role": "user", "content": "What is my secret?"}]
USAGE = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


async def with_users(gateway: RunningGateway, *users: str) -> list[str]:
    """Users an admin made (with every model), and a UI session token of each."""
    async with gateway.client() as admin:
        for user in users:
            made = await admin.post(
                "/user/new", json={"user_id": user, "user_role": "internal_user"}
            )
            assert made.status_code == 200
    sessions = gateway.app.extensions["trigate_ui_sessions"]
    return [sessions.sign(user).token for user in users]


async def test_each_keyless_user_sees_only_its_own_files_and_batches(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    fake = FakeBatchAPI()
    upstream.handler = fake
    params = {"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}
    running = await start_gateway(nursery, deployment_config("gpt-batch", params))
    alice, bob = await with_users(running, "alice", "bob")
    lines = ("in.jsonl", batch_file("gpt-batch"))
    async with sdk(running, MASTER_KEY) as master:
        masters = await master.files.create(file=lines, purpose="batch")
    async with sdk(running, alice) as as_alice:
        file = await as_alice.files.create(file=lines, purpose="batch")
        batch = await as_alice.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert [f.id async for f in as_alice.files.list()] == [file.id]
    async with sdk(running, bob) as as_bob:
        assert [f.id async for f in as_bob.files.list()] == []
        assert [b.id async for b in as_bob.batches.list()] == []
        for read in (
            as_bob.files.retrieve(file.id),
            as_bob.files.retrieve(masters.id),
            as_bob.batches.retrieve(batch.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await read
    # Its completion is billed to its user, and to no key.
    fake.finish(batch.id, USAGE)
    async with sdk(running, alice) as as_alice:
        assert (await as_alice.batches.retrieve(batch.id)).status == "completed"
    [record] = await running.records.wait_for(1)
    assert (record.user_id, record.key_hash) == ("alice", None)
    await running.stop()


async def test_each_keyless_user_reads_its_own_stored_responses_only(
    nursery: trio.Nursery,
) -> None:
    running = await start_gateway(nursery, mock_config(mock_response="Only for Alice."))
    alice, bob = await with_users(running, "alice", "bob")
    async with sdk(running, alice) as as_alice:
        created = await as_alice.responses.create(model="mock", input="secret")
        assert (await as_alice.responses.retrieve(created.id)).id == created.id
        follow_up = await as_alice.responses.create(
            model="mock", input="more", previous_response_id=created.id
        )
        assert follow_up.id
    async with sdk(running, bob) as as_bob:
        with pytest.raises(openai.NotFoundError):
            await as_bob.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await as_bob.responses.create(
                model="mock", input="more", previous_response_id=created.id
            )
    async with sdk(running, MASTER_KEY) as master:
        assert (await master.responses.retrieve(created.id)).id == created.id
    await running.stop()


async def test_cache_scope_key_keeps_keyless_users_answers_apart(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion("Alice's answer"))
    config = openai_config(upstream)
    config["litellm_settings"] = {"cache": True, "cache_params": {"type": "local", "scope": "key"}}
    running = await start_gateway(nursery, config)
    alice, bob = await with_users(running, "alice", "bob")
    body = {"model": config["model_list"][0]["model_name"], "messages": MESSAGES}
    states = []
    for token in (alice, bob, alice, MASTER_KEY):
        async with running.client(token) as client:
            reply = await client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200
            states.append(reply.headers["x-trigate-cache"])
    assert states == ["miss", "miss", "hit", "miss"]
    assert len(upstream.requests) == 3
    await running.stop()


def test_a_keyless_caller_owns_as_its_user_and_one_with_no_user_owns_nothing() -> None:
    key = Caller("abc", False, key_hash="f" * 64, key={"user_id": "alice"})
    master = Caller("master", is_master=True)
    alice = Caller("ui:alice", False, user={"user_id": "alice"})
    team_only = Caller("jwt:lab", False, team={"team_id": "lab"})
    assert [owner_of(c) for c in (key, master, alice)] == ["f" * 64, MASTER_OWNER, "user:alice"]
    with pytest.raises(NoOwner):
        owner_of(team_only)
    assert [key_hash_of_owner(o) for o in ("f" * 64, MASTER_OWNER, "user:alice")] == [
        "f" * 64, None, None,
    ]  # fmt: skip

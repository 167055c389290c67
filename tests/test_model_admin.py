"""Model management over HTTP, as LiteLLM's scripts call it: `/model/info`,
`/model_group/info`, `/model/new`, `/model/update`, `/model/delete`, as the master
key, a virtual key limited to one model, and a stranger; deployments added through
the API reach another instance sharing the store; credentials never show."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import orjson
import pytest
import trio
from fakes import FakeUpstream, JSONReply, chat_completion
from helpers import MASTER_KEY, MESSAGES, UPSTREAM_KEY, RunningGateway, new_key, start_gateway

import trigate.router.catalog
from trigate.sealing import Sealer, SealError
from trigate.spend.prices import PriceTable

NEW_UPSTREAM_KEY = "sk-added-through-the-api-0123456789"


def _config(upstream: FakeUpstream, database_url: str = "sqlite://:memory:") -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "gpt-test",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "api_base": upstream.base_url,
                    "api_key": UPSTREAM_KEY,
                    "extra_headers": {"x-upstream-secret": "header-secret-value"},
                },
                "model_info": {"id": "file-gpt"},
            },
            {"model_name": "mock", "litellm_params": {"model": "mock/gpt-4o"}},
        ],
        "general_settings": {"database_url": database_url},
        "router_settings": {"num_retries": 0},
    }


def _new_model(upstream: FakeUpstream, **info: Any) -> dict[str, Any]:
    return {
        "model_name": "added",
        "litellm_params": {
            "model": "openai/added-upstream",
            "api_base": upstream.base_url,
            "api_key": NEW_UPSTREAM_KEY,
        },
        "model_info": info,
    }


async def _chat(gateway: RunningGateway, model: str, key: str = MASTER_KEY) -> httpx.Response:
    async with gateway.client(key) as client:
        return await client.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES}
        )


async def _answers(gateway: RunningGateway, model: str, status: int) -> None:
    """Wait, a few of the store's polls at most, until `model` is answered with `status`."""
    with trio.fail_after(10):
        for _ in itertools.count():
            if (await _chat(gateway, model)).status_code == status:
                return
            await trio.sleep(0.2)


async def test_model_info_shows_deployments_prices_and_limits_never_credentials(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    plain = await new_key(gateway, models=["gpt-test"])
    table = PriceTable.load().lookup("openai", "gpt-4o")
    assert table is not None
    for path in ("/model/info", "/v1/model/info"):
        async with gateway.client() as client:
            reply = await client.get(path)
        assert reply.status_code == 200
        assert UPSTREAM_KEY not in reply.text and "header-secret-value" not in reply.text
        rows = {row["model_info"]["id"]: row for row in reply.json()["data"]}
        gpt = rows["file-gpt"]
        assert gpt["model_name"] == "gpt-test"
        assert gpt["litellm_params"] == {"model": "openai/gpt-4o", "api_base": upstream.base_url}
        info = gpt["model_info"]
        assert info["db_model"] is False and info["litellm_provider"] == "openai"
        assert info["key"] == "gpt-4o"
        assert info["input_cost_per_token"] == table.input
        assert info["output_cost_per_token"] == table.output
        assert info["max_input_tokens"] == table.max_input_tokens
        assert info["max_output_tokens"] == table.max_output_tokens
        assert {row["model_name"] for row in rows.values()} == {"gpt-test", "mock"}

        async with gateway.client(plain) as client:
            reply = await client.get(path)
        assert reply.status_code == 200
        [only] = reply.json()["data"]
        assert only["model_name"] == "gpt-test"
        assert only["litellm_params"] == {"model": "openai/gpt-4o"}  # not where it is

        async with gateway.client("sk-stranger-0000000000000000000000") as client:
            assert (await client.get(path)).status_code == 401
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            assert (await client.get(path)).status_code == 401

    async with gateway.client() as client:
        reply = await client.get("/model/info", params={"litellm_model_id": "file-gpt"})
    assert [row["model_info"]["id"] for row in reply.json()["data"]] == ["file-gpt"]


async def test_model_group_info_in_litellms_shape(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    plain = await new_key(gateway, models=["gpt-test"])
    table = PriceTable.load().lookup("openai", "gpt-4o")
    assert table is not None
    async with gateway.client() as client:
        everything = (await client.get("/model_group/info")).json()["data"]
        one = await client.get("/model_group/info", params={"model_group": "gpt-test"})
        unknown = await client.get("/model_group/info", params={"model_group": "nope"})
    assert [group["model_group"] for group in everything] == ["gpt-test", "mock"]
    [group] = one.json()["data"]
    assert group == {
        "model_group": "gpt-test",
        "providers": ["openai"],
        "max_input_tokens": table.max_input_tokens,
        "max_output_tokens": table.max_output_tokens,
        "input_cost_per_token": table.input,
        "output_cost_per_token": table.output,
        "mode": "chat",
        "tpm": None,
        "rpm": None,
        "supports_parallel_function_calling": False,
        "supports_vision": False,
        "supports_function_calling": False,
        "is_public_model_group": False,
    }
    assert unknown.status_code == 404
    async with gateway.client(plain) as client:
        mine = (await client.get("/model_group/info")).json()["data"]
        hidden = await client.get("/model_group/info", params={"model_group": "mock"})
    assert [group["model_group"] for group in mine] == ["gpt-test"]
    assert hidden.status_code == 404
    async with gateway.client("sk-stranger-0000000000000000000000") as client:
        assert (await client.get("/model_group/info")).status_code == 401


async def test_new_update_and_delete_a_deployment_without_a_restart(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda request: JSONReply(chat_completion(f"from {request.json['model']}"))
    gateway = await start_gateway(nursery, _config(upstream))
    plain = await new_key(gateway, models=[])
    assert (await _chat(gateway, "added")).status_code == 404

    # A key without an admin's role is refused 403; one that is not a key, 401.
    for key, status in ((plain, 403), ("sk-stranger-0000000000000000000000", 401)):
        async with gateway.client(key) as client:
            for path, body in (
                ("/model/new", _new_model(upstream)),
                ("/model/update", {"model_info": {"id": "file-gpt"}}),
                ("/model/delete", {"id": "file-gpt"}),
            ):
                assert (await client.post(path, json=body)).status_code == status
            patch = await client.patch("/model/file-gpt/update", json={"model_name": "x"})
            assert patch.status_code == status

    async with gateway.client() as client:
        created = await client.post("/model/new", json=_new_model(upstream, id="api-1"))
        assert created.status_code == 200, created.text
        assert NEW_UPSTREAM_KEY not in created.text
        assert created.json()["model_id"] == "api-1"
        assert created.json()["model_info"]["db_model"] is True
        again = await client.post("/model/new", json=_new_model(upstream, id="api-1"))
        assert again.status_code == 400
        bad = _new_model(upstream)
        bad["litellm_params"]["model"] = "opneai/x"
        refused = await client.post("/model/new", json=bad)
        assert refused.status_code == 400 and "unknown provider prefix" in refused.text
        info = await client.get("/model/info", params={"litellm_model_id": "api-1"})
        assert NEW_UPSTREAM_KEY not in info.text
        assert info.json()["data"][0]["model_info"]["db_model"] is True

    answer = await _chat(gateway, "added", plain)
    assert answer.json()["choices"][0]["message"]["content"] == "from added-upstream"
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {NEW_UPSTREAM_KEY}"

    async with gateway.client() as client:
        update = {"litellm_params": {"model": "openai/renamed"}, "model_info": {"id": "api-1"}}
        updated = await client.post("/model/update", json=update)
        assert updated.status_code == 200, updated.text
        assert updated.json()["litellm_params"]["model"] == "openai/renamed"
        file_model = await client.post("/model/update", json={"model_info": {"id": "file-gpt"}})
        assert file_model.status_code == 400 and "config file" in file_model.text
        missing = await client.post("/model/update", json={"model_info": {"id": "nope"}})
        assert missing.status_code == 404
    answer = await _chat(gateway, "added")
    assert answer.json()["choices"][0]["message"]["content"] == "from renamed"
    async with gateway.client() as client:
        change = {"litellm_params": {"model": "openai/patched"}}
        patched = await client.patch("/model/api-1/update", json=change)
        assert patched.status_code == 200, patched.text
    answer = await _chat(gateway, "added")
    assert answer.json()["choices"][0]["message"]["content"] == "from patched"
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {NEW_UPSTREAM_KEY}"

    async with gateway.client() as client:
        deleted = await client.post("/model/delete", json={"id": "api-1"})
        assert deleted.json() == {"message": "Model: api-1 deleted successfully"}
        assert (await client.post("/model/delete", json={"id": "api-1"})).status_code == 404
        assert (await client.post("/model/delete", json={"id": "file-gpt"})).status_code == 400
    assert (await _chat(gateway, "added")).status_code == 404
    assert (await _chat(gateway, "gpt-test")).status_code == 200


async def _added_and_deleted(
    first: RunningGateway, second: RunningGateway, upstream: FakeUpstream
) -> None:
    """A deployment added on `first` is served by `second`, and deleted on `first` is
    not served by `second` any more."""
    async with first.client() as client:
        assert (await client.post("/model/new", json=_new_model(upstream))).status_code == 200
    await _answers(second, "added", 200)
    async with second.client() as client:
        [row] = (await client.get("/model/info")).json()["data"][2:]
    async with first.client() as client:
        deleted = await client.post("/model/delete", json={"id": row["model_info"]["id"]})
    assert deleted.status_code == 200
    await _answers(second, "added", 404)


async def test_a_deployment_added_on_one_instance_is_served_by_another(
    nursery: trio.Nursery, upstream: FakeUpstream, database_url: str
) -> None:
    """Two instances sharing one database (SQLite and PostgreSQL): the second serves the
    first's new deployment within a few polls, and stops once it is deleted."""
    first = await start_gateway(nursery, _config(upstream, database_url))
    second = await start_gateway(nursery, _config(upstream, database_url))
    await _added_and_deleted(first, second, upstream)


async def test_with_redis_model_changes_travel_over_it_and_no_process_polls(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two instances sharing a database and a Redis: a deployment added on one reaches
    the other over Redis's change channel, and neither reads the store's version on a
    timer, as each does without Redis."""
    monkeypatch.setattr(trigate.router.catalog, "POLL_INTERVAL", 0.05)
    # Not a test of an outage: a loaded machine's stall must not pass for a lost Redis.
    fleet = {"redis_url": redis_url, "redis_key_prefix": redis_prefix, "redis_timeout": 30.0}
    config = _config(upstream, database_url)
    config["router_settings"] |= fleet
    first = await start_gateway(nursery, config)
    second = await start_gateway(nursery, config)
    reads = 0
    version = second.gateway.store.models_version

    async def counted() -> int:
        nonlocal reads
        reads += 1
        return await version()

    monkeypatch.setattr(second.gateway.store, "models_version", counted)
    await trio.sleep(0.5)  # ten polls' worth
    # Subscribing to the change channel reads the models once, as it should (on a busy
    # machine, inside this window); a poll would have read them ten times.
    assert reads <= 1
    # Any change the second hears now came over Redis: a poll would take an hour.
    monkeypatch.setattr(trigate.router.catalog, "POLL_INTERVAL", 3600.0)
    await _added_and_deleted(first, second, upstream)
    assert reads >= 2  # one read per change heard


async def test_v1_models_gains_token_limits_where_known(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(nursery, _config(upstream))
    table = PriceTable.load().lookup("openai", "gpt-4o")
    assert table is not None
    async with gateway.client() as client:
        models = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
    assert models["gpt-test"]["max_input_tokens"] == table.max_input_tokens
    assert models["gpt-test"]["max_output_tokens"] == table.max_output_tokens
    assert "max_input_tokens" not in models["mock"]  # the mock model is in no table


async def test_an_added_deployments_key_is_sealed_at_rest(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store holds no plaintext upstream key; an instance holding the same key opens
    it, and one holding another key serves nothing rather than a garbled key."""
    database_url = f"sqlite:///{tmp_path}/sealed.db"
    first = await start_gateway(nursery, _config(upstream, database_url))
    async with first.client() as client:
        assert (await client.post("/model/new", json=_new_model(upstream))).status_code == 200
    _, rows = await first.gateway.store.stored_models()
    assert NEW_UPSTREAM_KEY not in orjson.dumps(rows).decode()
    assert rows[0]["litellm_params"]["api_key"].startswith("sealed:v1:")
    await _answers(first, "added", 200)
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {NEW_UPSTREAM_KEY}"
    monkeypatch.setenv("LITELLM_SALT_KEY", "another-instance-salt")
    other = await start_gateway(nursery, _config(upstream, database_url))
    assert (await _chat(other, "added")).status_code == 404
    assert "sealed with another key" in caplog.text
    assert NEW_UPSTREAM_KEY not in caplog.text


def test_sealing_round_trips_and_refuses_another_key() -> None:
    sealer = Sealer.from_environ("sk-master", {})
    sealed = sealer.seal_params({"api_key": "sk-upstream", "api_base": "http://x"})
    assert sealed["api_key"] != "sk-upstream" and sealed["api_base"] == "http://x"
    assert sealer.seal(sealed["api_key"]) == sealed["api_key"]
    assert sealer.unseal_params(sealed) == {"api_key": "sk-upstream", "api_base": "http://x"}
    assert sealer.seal("os.environ/UPSTREAM_KEY") == "os.environ/UPSTREAM_KEY"
    salted = Sealer.from_environ("sk-master", {"LITELLM_SALT_KEY": "salt"})
    with pytest.raises(SealError):
        salted.unseal(sealed["api_key"])
    assert (
        Sealer.from_environ("sk-rotated", {"LITELLM_SALT_KEY": "salt"}).unseal(
            salted.seal("sk-upstream")
        )
        == "sk-upstream"
    )


@pytest.mark.parametrize(
    "params",
    [
        {"model": "openai/x", "api_base": "http://127.0.0.1:1/v1\r\nx-injected: 1"},
        {"model": "anthropic/x", "api_base": "http://127.0.0.1:1\r\n"},
        {"model": "openai/x", "api_base": "http://127.0.0.1:1", "api_key": "sk-a\r\nx-b: c"},
        {"model": "openai/x", "api_base": "http://127.0.0.1:1", "extra_headers": {"x": "a\nb"}},
        {"model": "openai/x", "api_base": "http://127.0.0.1:1", "extra_headers": {"a b": "c"}},
        {"model": "openai/x", "api_base": "file:///etc/passwd"},
        {"model": "openai/x", "api_base": "http://127.0.0.1:1", "api_key": "sk-é"},
        {"model": "openai/x", "api_base": "http://127.0.0.1:1", "extra_headers": {"x": "é"}},
        {"model": "anthropic/x", "api_base": "http://127.0.0.1:1", "api_key": "sk-\u2028"},
    ],
)
async def test_model_new_refuses_what_could_not_be_sent(
    nursery: trio.Nursery, upstream: FakeUpstream, params: dict[str, Any]
) -> None:
    """A value no request could carry (a CR/LF in a URL or a header) is a 400 and is not
    stored; the next `/model/new` works, and a restarted gateway serves on."""
    gateway = await start_gateway(nursery, _config(upstream))
    async with gateway.client() as client:
        refused = await client.post(
            "/model/new", json={"model_name": "bad", "litellm_params": params}
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "litellm_params"
        added = await client.post("/model/new", json=_new_model(upstream))
        assert added.status_code == 200
        update = {"model_info": {"id": added.json()["model_id"]}, "litellm_params": params}
        refused = await client.post("/model/update", json=update)
        assert refused.status_code == 400, refused.text
    _, rows = await gateway.gateway.store.stored_models()
    assert [row["model_name"] for row in rows] == ["added"]
    assert rows[0]["litellm_params"]["api_base"] == upstream.base_url
    assert (await _chat(gateway, "added")).status_code == 200


async def test_a_bad_stored_row_is_skipped_and_logged_at_start_up(
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A row written around the API (or before it checked) stops nothing: the gateway
    starts, logs the row it skips, serves the rest, and takes new deployments."""
    database_url = f"sqlite:///{tmp_path}/poisoned.db"
    first = await start_gateway(nursery, _config(upstream, database_url))
    await first.gateway.store.insert_model(
        {
            "model_id": "poisoned",
            "model_name": "poisoned",
            "litellm_params": {"model": "anthropic/x", "api_base": "http://127.0.0.1:1\r\n"},
            "model_info": {},
            "created_at": 1.0,
            "updated_at": 1.0,
        }
    )
    second = await start_gateway(nursery, _config(upstream, database_url))
    assert "stored deployment poisoned is not served" in caplog.text
    assert (await _chat(second, "gpt-test")).status_code == 200
    assert (await _chat(second, "poisoned")).status_code == 404
    async with second.client() as client:
        assert (await client.post("/model/new", json=_new_model(upstream))).status_code == 200
    assert (await _chat(second, "added")).status_code == 200


async def test_an_admin_added_model_names_only_allowed_variables(
    nursery: trio.Nursery, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`api_key: os.environ/TRIGATE_MASTER_KEY` with an `api_base` of the admin's choosing
    would send the master key there: refused, unless the config allows the variable."""
    monkeypatch.setenv("TRIGATE_MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("ALLOWED_UPSTREAM_KEY", NEW_UPSTREAM_KEY)
    config = _config(upstream)
    config["general_settings"]["admin_model_env_vars"] = ["ALLOWED_UPSTREAM_KEY"]
    gateway = await start_gateway(nursery, config)
    stealing = _new_model(upstream)
    stealing["litellm_params"]["api_key"] = "os.environ/TRIGATE_MASTER_KEY"
    allowed = _new_model(upstream)
    allowed["litellm_params"]["api_key"] = "os.environ/ALLOWED_UPSTREAM_KEY"
    async with gateway.client() as client:
        refused = await client.post("/model/new", json=stealing)
        assert refused.status_code == 400, refused.text
        assert "admin_model_env_vars" in refused.json()["error"]["message"]
        assert (await client.post("/model/new", json=allowed)).status_code == 200
    assert (await _chat(gateway, "added")).status_code == 200
    assert all(MASTER_KEY not in str(request.headers) for request in upstream.requests)
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {NEW_UPSTREAM_KEY}"

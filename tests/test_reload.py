"""Live reload of the config file: `POST /config/reload` in process, and SIGHUP to
`trigate serve --workers 2`. A reload swaps the model list at once, requests in
flight finish on the deployments they started on, surviving deployments keep their
state, and a bad file changes nothing."""

from __future__ import annotations

import gc
import logging
import signal
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from helpers import MESSAGES, RunningGateway, start_gateway
from test_cli import clean_env, serve

from trigate.config import load_config
from trigate.errors import Failure, UpstreamError

WORDS = " ".join(f"word{i}" for i in range(10))


def _write(path: Path, models: list[dict[str, Any]], **router: Any) -> None:
    config = {"model_list": models, "router_settings": {"num_retries": 0, **router}}
    path.write_text(yaml.safe_dump(config))


def _mock(name: str, deployment_id: str, **params: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {"model": "mock/gpt-4o", **params},
        "model_info": {"id": deployment_id},
    }


async def _from_file(nursery: trio.Nursery, path: Path) -> RunningGateway:
    raw = yaml.safe_load(await trio.Path(path).read_text())
    return await start_gateway(nursery, raw, config_path=str(path))


async def _chat(gateway: RunningGateway, model: str, key: str | None = None) -> httpx.Response:
    async with gateway.client(*([key] if key else [])) as client:
        return await client.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES}
        )


async def test_a_reload_swaps_deployments_while_a_stream_finishes_on_its_own(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    _write(path, [_mock("slow", "slow-1", mock_response=WORDS, mock_chunk_delay=0.05)])
    gateway = await _from_file(nursery, path)
    body = {"model": "slow", "messages": MESSAGES, "stream": True}
    async with (
        gateway.client() as client,
        client.stream("POST", "/v1/chat/completions", json=body) as stream,
    ):
        assert stream.headers["x-trigate-deployment"] == "slow-1"
        parts = stream.aiter_text()
        text = await anext(parts)
        # The reload replaces the stream's deployment and adds a group.
        _write(
            path,
            [_mock("slow", "slow-2", mock_response="replaced"), _mock("fresh", "fresh-1")],
        )
        async with gateway.client() as admin:
            reloaded = await admin.post("/config/reload")
        assert reloaded.json() == {"status": "reloaded", "deployments": 2}
        fresh = await _chat(gateway, "fresh")
        assert fresh.status_code == 200
        replaced = await _chat(gateway, "slow")
        assert replaced.headers["x-trigate-deployment"] == "slow-2"
        assert replaced.json()["choices"][0]["message"]["content"] == "replaced"
        async for part in parts:
            text += part
    assert "word9" in text and text.rstrip().endswith("data: [DONE]")
    records = await gateway.records.wait_for(3)
    streamed = [r for r in records if r.stream]
    assert [(r.deployment, r.status) for r in streamed] == [("slow-1", 200)]


async def test_a_bad_file_keeps_the_running_config_and_says_why(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    _write(path, [_mock("steady", "steady-1")])
    gateway = await _from_file(nursery, path)
    async with gateway.client() as admin:
        plain = (await admin.post("/key/generate", json={})).json()["key"]
    async with gateway.client(plain) as client:  # a key, but not an admin's
        assert (await client.post("/config/reload")).status_code == 403
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.post("/config/reload")).status_code == 401

    path.write_text(
        "model_list:\n"
        "  - model_name: steady\n"
        "    litellm_params: {model: mock/gpt-4o}\n"
        "  - model_name: broken\n"
        "    litellm_params: {model: opneai/gpt-4o}\n"
    )
    async with gateway.client() as admin:
        refused = await admin.post("/config/reload")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "invalid_config"
    assert error["message"].startswith("model_list[1].litellm_params.model: unknown provider")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"config reload failed, serving the previous config: {error['message']}"
    ]
    path.write_text("model_list: [\n")
    async with gateway.client() as admin:
        assert (await admin.post("/config/reload")).status_code == 400
    served = await _chat(gateway, "steady")
    assert served.headers["x-trigate-deployment"] == "steady-1"
    assert (await _chat(gateway, "broken")).status_code == 404


async def test_deployments_that_survive_a_reload_keep_their_cooldowns(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    pair = [_mock("pair", "a"), _mock("pair", "b")]
    _write(path, pair, cooldown_time=60)
    gateway = await _from_file(nursery, path)
    first, _ = gateway.gateway.groups.deployments("pair")
    first.state.breaker.failed(
        UpstreamError("slow down", kind=Failure.RATE_LIMIT), trio.current_time()
    )
    _write(path, [*pair, _mock("other", "c")], cooldown_time=60)
    async with gateway.client() as admin:
        assert (await admin.post("/config/reload")).status_code == 200
    kept, _ = gateway.gateway.groups.deployments("pair")
    assert kept is not first and kept.state is first.state
    assert kept.state.breaker.cooling(trio.current_time())
    for _ in range(4):  # the cooling one is skipped
        assert (await _chat(gateway, "pair")).headers["x-trigate-deployment"] == "b"


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_every_worker(tmp_path: Path, workers: int) -> None:
    """One worker serves in `trigate serve` itself; two serve under the supervisor,
    which passes SIGHUP on to each."""
    master = "sk-reloaded-0123456789"
    path = tmp_path / "config.yaml"
    _write(path, [_mock("before", "before-1")])
    load_config(path, {})  # the file is valid as written
    served = await serve(
        "--workers", str(workers), "--config", str(path), env=clean_env(TRIGATE_MASTER_KEY=master)
    )
    headers = {"authorization": f"Bearer {master}", "connection": "close"}

    async def statuses(model: str) -> set[int]:
        body = {"model": model, "messages": MESSAGES}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            return {
                (await client.post("/v1/chat/completions", json=body, headers=headers)).status_code
                for _ in range(12)  # new connections land on either worker
            }

    async def logged(line: bytes, times: int) -> None:
        assert served.process.stdout is not None
        while served.output.count(line) < times:
            data = await served.process.stdout.receive_some()
            assert data, served.output.decode()
            served.output += data

    try:
        with trio.fail_after(60):
            await served.wait_ready(workers=workers)
        assert await statuses("after") == {404}
        _write(path, [_mock("before", "before-1"), _mock("after", "after-1")])
        served.process.send_signal(signal.SIGHUP)
        with trio.fail_after(30):
            await logged(b"config reloaded: 2 deployments", workers)
        assert await statuses("after") == {200}

        path.write_text("model_list: {not: a list}\n")
        served.process.send_signal(signal.SIGHUP)
        with trio.fail_after(30):
            await logged(b"config reload failed, serving the previous config: model_list", workers)
        assert await statuses("after") == {200}
    finally:
        assert await served.stop() == 0


def _priced(name: str, deployment_id: str, cost: float) -> dict[str, Any]:
    return _mock(name, deployment_id, input_cost_per_token=cost, output_cost_per_token=cost)


async def test_a_reload_applies_router_settings_and_a_new_redis_link(
    nursery: trio.Nursery, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """`router_settings` apply on reload: the routing strategy, and the Redis link
    (its prefix and timeout) that limits and router state go through. Requests from
    then on are served from the new live state, and `gateway.config` is the new file."""
    path = tmp_path / "config.yaml"
    pair = [_priced("pair", "dear", 2e-6), _priced("pair", "cheap", 1e-6)]
    first_prefix, second_prefix = f"{redis_prefix}one:", f"{redis_prefix}two:"
    # Timeouts far past a loaded machine's stalls (each link must stay `reachable`),
    # and different, so the reload's new one shows.
    redis = {"redis_url": redis_url, "redis_key_prefix": first_prefix, "redis_timeout": 30.0}
    _write(path, pair, routing_strategy="round-robin", **redis)
    running = await _from_file(nursery, path)
    gateway = running.gateway
    started = gateway.live
    assert started.fleet.reachable and started.fleet.prefix == first_prefix
    served = {(await _chat(running, "pair")).headers["x-trigate-deployment"] for _ in range(4)}
    assert served == {"dear", "cheap"}

    redis |= {"redis_key_prefix": second_prefix, "redis_timeout": 20.0}
    _write(path, pair, routing_strategy="cost-based-routing", **redis)
    async with running.client() as admin:
        assert (await admin.post("/config/reload")).status_code == 200
    live = gateway.live
    assert live is not started and started.router.settings.routing_strategy == "round-robin"
    assert gateway.config is live.config
    assert live.settings.routing_strategy == "cost-based-routing"
    assert gateway.router is live.router and gateway.groups is live.groups
    assert gateway.fleet is live.fleet is gateway.limits.fleet
    assert (live.fleet.prefix, live.fleet.timeout) == (second_prefix, 20.0)
    assert live.fleet.reachable
    served = {(await _chat(running, "pair")).headers["x-trigate-deployment"] for _ in range(4)}
    assert served == {"cheap"}

    # Limits now count under the new prefix, in the Redis the new link reaches.
    async with running.client() as admin:
        key = (await admin.post("/key/generate", json={"rpm_limit": 100})).json()["key"]
    assert (await _chat(running, "pair", key)).status_code == 200
    windows = await live.fleet.call(lambda client: client.keys(f"{second_prefix}rate:*"))
    assert len(windows) == 1
    assert await live.fleet.call(lambda client: client.keys(f"{first_prefix}rate:*")) == set()
    # The replaced link closes once nothing it admitted is in flight (the bound only
    # guards against a hang).
    with trio.fail_after(30):
        while started.fleet.reachable:  # noqa: ASYNC110 - the retirement's own pace
            await trio.sleep(0.01)


async def test_a_reload_swaps_the_hooks_and_refuses_one_that_cannot_load(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A guardrail added by a reload runs from the next request; a reload naming one
    that cannot load is refused whole (400), and the gateway keeps the hooks it had:
    never serving without a guardrail its config names."""
    path = tmp_path / "config.yaml"
    models = [_mock("gpt", "gpt-1", mock_response="fine")]
    _write(path, models)
    gateway = await _from_file(nursery, path)
    secret = {"model": "gpt", "messages": [{"role": "user", "content": "a secret"}]}

    async def status() -> int:
        async with gateway.client() as client:
            return (await client.post("/v1/chat/completions", json=secret)).status_code

    assert await status() == 200
    guarded = {
        "model_list": models,
        "litellm_settings": {"callbacks": ["hook_examples.refuse_secrets"]},
    }
    path.write_text(yaml.safe_dump(guarded))
    async with gateway.client() as admin:
        assert (await admin.post("/config/reload")).status_code == 200
    assert await status() == 400
    broken = {**guarded, "litellm_settings": {"callbacks": ["hook_examples.no_such_hook"]}}
    path.write_text(yaml.safe_dump(broken))
    async with gateway.client() as admin:
        refused = await admin.post("/config/reload")
    assert refused.status_code == 400
    assert "no_such_hook" in refused.json()["error"]["message"]
    assert await status() == 400


async def test_a_reload_releases_the_guardrails_it_replaced(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A guardrail a reload replaced is let go once its requests are done: nothing the
    runner keeps of the requests it served (the plan of their guardrails) holds it, nor
    the content filter's compiled databases, however many reloads there are."""
    path = tmp_path / "config.yaml"
    models = [_mock("gpt", "gpt-1", mock_response="fine")]

    def guarded(word: str) -> dict[str, Any]:
        params = {
            "guardrail": "litellm_content_filter",
            "mode": ["pre_call", "post_call"],
            "default_on": True,
            "blocked_words": [{"keyword": word, "action": "BLOCK"}],
        }
        return {
            "model_list": models,
            "guardrails": [{"guardrail_name": "cf", "litellm_params": params}],
        }

    path.write_text(yaml.safe_dump(guarded("forbidden")))
    gateway = await _from_file(nursery, path)
    assert gateway.gateway.guardrails is not None
    old = weakref.ref(gateway.gateway.guardrails.guardrails["cf"])
    assert (await _chat(gateway, "gpt")).status_code == 200
    path.write_text(yaml.safe_dump(guarded("secret")))
    async with gateway.client() as admin:
        assert (await admin.post("/config/reload")).status_code == 200
    assert (await _chat(gateway, "gpt")).status_code == 200
    gc.collect()
    assert old() is None

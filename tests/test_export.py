"""The export path (trigate.export) as receivers on real sockets see it: LiteLLM's
StandardLoggingPayload through `generic_api`, Langfuse's OTLP endpoint, Datadog's logs
intake, and per-team Langfuse projects; and a sink that is down, then slow, then back."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import orjson
import pytest
import trio
import yaml
from fakes import FakeUpstream, JSONReply, ReceivedRequest, chat_completion, stream_of
from helpers import MASTER_KEY, MESSAGES, RunningGateway, openai_config, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from test_tracing import received_spans

import trigate.export.outbox as outbox
import trigate.gateway as gateway_module
from trigate.gateway import load_token_counter

FIELDS = json.loads(
    (Path(__file__).parent / "data/litellm_standard_logging_payload.json").read_text()
)
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
# helpers.MESSAGES as the OpenAI SDK types it (helpers keeps plain dicts, for every SDK).
CHAT_MESSAGES = cast(list[ChatCompletionMessageParam], MESSAGES)


def _config(upstream: FakeUpstream, **litellm_settings: Any) -> dict[str, Any]:
    config = openai_config(upstream)
    config["litellm_settings"] = litellm_settings
    return config


async def _receiver(nursery: trio.Nursery, status: int = 200) -> FakeUpstream:
    fake = FakeUpstream(lambda request: JSONReply({}, status))
    await fake.start(nursery)
    return fake


async def _upstream(nursery: trio.Nursery) -> FakeUpstream:
    fake = FakeUpstream(lambda request: JSONReply(chat_completion("Hi there", usage=USAGE)))
    await fake.start(nursery)
    return fake


def _rows(receiver: FakeUpstream) -> list[dict[str, Any]]:
    return [row for request in receiver.requests for row in orjson.loads(request.body)]


async def _admin(gateway: RunningGateway, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.post(path, json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_generic_api_sends_litellm_standard_logging_payload(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await _receiver(nursery)
    upstream = await _upstream(nursery)
    monkeypatch.setenv("GENERIC_LOGGER_ENDPOINT", f"http://127.0.0.1:{receiver.port}/logs")
    monkeypatch.setenv("GENERIC_LOGGER_HEADERS", "authorization=Bearer sink-token,x-team=ml")
    config = _config(upstream, success_callback=["generic_api"], failure_callback=["generic_api"])
    gateway = await start_gateway(nursery, config)
    try:
        await sdk(gateway).chat.completions.create(
            model="gpt-test", messages=CHAT_MESSAGES, temperature=0.2,
            extra_body={"metadata": {"spend_logs_metadata": {"job": "nightly"}}, "tags": ["t1"]},
        )  # fmt: skip
        # Refused before any model call: not a finished request, so not exported.
        with pytest.raises(openai.NotFoundError):
            await sdk(gateway).chat.completions.create(
                model="no-such-model", messages=CHAT_MESSAGES
            )
    finally:
        await gateway.stop()  # the outboxes flush as the gateway stops

    [request] = receiver.requests
    assert request.target == "/logs"
    assert request.headers["authorization"] == "Bearer sink-token"
    assert request.headers["x-team"] == "ml"
    [row] = orjson.loads(request.body)
    assert sorted(row) == sorted(FIELDS["StandardLoggingPayload"])
    assert sorted(row["metadata"]) == sorted(FIELDS["StandardLoggingMetadata"])
    assert sorted(row["hidden_params"]) == sorted(FIELDS["StandardLoggingHiddenParams"])
    assert sorted(row["model_map_information"]) == sorted(FIELDS["StandardLoggingModelInformation"])
    assert row["status"] == "success"
    assert row["call_type"] == "acompletion"
    assert row["model_group"] == "gpt-test"
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (7, 3, 10)
    assert row["messages"] == MESSAGES
    assert row["response"]["choices"][0]["message"]["content"] == "Hi there"
    assert row["model_parameters"] == {"temperature": 0.2}
    assert row["request_tags"] == ["t1"]
    assert row["metadata"]["spend_logs_metadata"] == {"job": "nightly"}
    assert row["custom_llm_provider"] == "openai"
    assert row["endTime"] >= row["startTime"]
    assert "sk-upstream" not in request.body.decode()


async def test_a_failure_goes_to_failure_callbacks_only(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await _receiver(nursery)
    failing = FakeUpstream(lambda request: JSONReply({"error": {"message": "bad"}}, 400))
    await failing.start(nursery)
    monkeypatch.setenv("GENERIC_LOGGER_ENDPOINT", f"http://127.0.0.1:{receiver.port}/logs")
    gateway = await start_gateway(nursery, _config(failing, failure_callback=["generic_api"]))
    try:
        with pytest.raises(Exception, match="400"):
            await sdk(gateway).chat.completions.create(model="gpt-test", messages=CHAT_MESSAGES)
    finally:
        await gateway.stop()
    [row] = _rows(receiver)
    assert row["status"] == "failure"
    assert sorted(row["error_information"]) == sorted(
        FIELDS["StandardLoggingPayloadErrorInformation"]
    )
    assert row["error_information"]["error_code"] == "400"
    assert row["error_str"]


async def test_turn_off_message_logging_redacts_messages_and_answers(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await _receiver(nursery)
    upstream = await _upstream(nursery)
    monkeypatch.setenv("GENERIC_LOGGER_ENDPOINT", f"http://127.0.0.1:{receiver.port}/logs")
    config = _config(upstream, callbacks=["generic_api"], turn_off_message_logging=True)
    gateway = await start_gateway(nursery, config)
    try:
        await sdk(gateway).chat.completions.create(model="gpt-test", messages=CHAT_MESSAGES)
    finally:
        await gateway.stop()
    [row] = _rows(receiver)
    assert row["messages"] == row["response"] == "redacted-by-litellm"
    assert "Hi there" not in json.dumps(row)


def _langfuse_spans(receiver: FakeUpstream, public: str, secret: str) -> list[Span]:
    token = base64.b64encode(f"{public}:{secret}".encode()).decode()
    for request in receiver.requests:
        assert request.headers["authorization"] == f"Basic {token}"
        assert request.headers["x-langfuse-ingestion-version"] == "4"
    return received_spans(receiver, "/api/public/otel/v1/traces")


def _attributes(span: Span) -> dict[str, Any]:
    found = {}
    for attribute in span.attributes:
        kind = attribute.value.WhichOneof("value")
        value = getattr(attribute.value, kind)
        if kind == "array_value":
            value = [item.string_value for item in value.values]
        found[attribute.key] = value
    return found


async def test_langfuse_gets_a_trace_and_generation_per_request(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    langfuse = await _receiver(nursery)
    upstream = FakeUpstream(lambda request: stream_of(["Hel", "lo"], usage=(7, 3)))
    await upstream.start(nursery)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-global")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-global-secret")
    monkeypatch.setenv("LANGFUSE_HOST", f"http://127.0.0.1:{langfuse.port}")
    gateway = await start_gateway(nursery, _config(upstream, success_callback=["langfuse"]))
    try:
        stream = await sdk(gateway).chat.completions.create(
            model="gpt-test", messages=CHAT_MESSAGES, stream=True, user="customer-9",
            extra_body={"litellm_session_id": "session-1"},
        )  # fmt: skip
        async for _ in stream:
            pass
    finally:
        await gateway.stop()

    [span] = _langfuse_spans(langfuse, "pk-lf-global", "sk-lf-global-secret")
    attributes = _attributes(span)
    assert span.name == "litellm-acompletion"
    assert attributes["langfuse.observation.type"] == "generation"
    assert attributes["gen_ai.request.model"] == "upstream-model"
    assert attributes["gen_ai.usage.input_tokens"] == 7
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert json.loads(attributes["langfuse.observation.usage_details"]) == {
        "input": 7, "output": 3, "total": 10
    }  # fmt: skip
    assert "total" in json.loads(attributes["langfuse.observation.cost_details"])
    assert json.loads(attributes["langfuse.observation.input"]) == MESSAGES
    assert json.loads(attributes["langfuse.observation.output"]) == "Hello"
    assert attributes["user.id"] == "customer-9"
    assert attributes["session.id"] == "session-1"
    assert "langfuse.observation.completion_start_time" in attributes
    assert span.end_time_unix_nano >= span.start_time_unix_nano


async def test_a_teams_logging_metadata_sends_its_keys_traffic_to_its_langfuse_project(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = await _receiver(nursery)
    teams = await _receiver(nursery)
    upstream = await _upstream(nursery)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-global")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-global-secret")
    monkeypatch.setenv("LANGFUSE_HOST", f"http://127.0.0.1:{shared.port}")
    monkeypatch.setenv("TEAM_LANGFUSE_SECRET", "sk-lf-team-secret")
    gateway = await start_gateway(nursery, _config(upstream, callbacks=["langfuse"]))
    try:
        team = await _admin(gateway, "/team/new", {
            "team_alias": "ml",
            "metadata": {"logging": [{
                "callback_name": "langfuse",
                "callback_type": "success",
                "callback_vars": {
                    "langfuse_public_key": "pk-lf-team",
                    "langfuse_secret_key": "os.environ/TEAM_LANGFUSE_SECRET",
                    "langfuse_host": f"http://127.0.0.1:{teams.port}",
                },
            }]},
        })  # fmt: skip
        key = (await _admin(gateway, "/key/generate", {"team_id": team["team_id"]}))["key"]
        await sdk(gateway, key).chat.completions.create(model="gpt-test", messages=CHAT_MESSAGES)
        await sdk(gateway).chat.completions.create(model="gpt-test", messages=CHAT_MESSAGES)
    finally:
        await gateway.stop()

    [team_span] = _langfuse_spans(teams, "pk-lf-team", "sk-lf-team-secret")
    [shared_span] = _langfuse_spans(shared, "pk-lf-global", "sk-lf-global-secret")
    assert _attributes(team_span)["langfuse.trace.metadata.user_api_key_team_alias"] == "ml"
    assert "langfuse.trace.metadata.user_api_key_team_id" not in _attributes(shared_span)


async def test_datadog_gets_gzipped_logs_at_its_intake(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake = await _receiver(nursery, status=202)
    upstream = await _upstream(nursery)
    monkeypatch.setenv("DD_API_KEY", "dd-api-key-secret")
    monkeypatch.setenv("DD_SITE", "us5.datadoghq.com")
    monkeypatch.setenv("DD_BASE_URL", f"http://127.0.0.1:{intake.port}")
    monkeypatch.setenv("DD_SERVICE", "gateway")
    gateway = await start_gateway(nursery, _config(upstream, callbacks=["datadog"]))
    try:
        await sdk(gateway).chat.completions.create(model="gpt-test", messages=CHAT_MESSAGES)
    finally:
        await gateway.stop()
    [request] = intake.requests
    assert request.target == "/api/v2/logs"
    assert request.headers["dd-api-key"] == "dd-api-key-secret"
    assert request.headers["content-encoding"] == "gzip"
    [log] = orjson.loads(gzip.decompress(request.body))
    assert (log["ddsource"], log["service"], log["status"]) == ("litellm", "gateway", "info")
    assert "service:gateway" in log["ddtags"]
    payload = orjson.loads(log["message"])
    assert sorted(payload) == sorted(FIELDS["StandardLoggingPayload"])


async def test_a_sink_down_then_slow_then_back(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, virtual_clock: trio.abc.Clock
) -> None:
    """Requests go on while the sink refuses and while it stalls; its queue stays bounded
    and what it drops is counted; once it answers again, delivery resumes."""
    state = {"mode": "down"}

    def sink(request: ReceivedRequest) -> JSONReply:
        if state["mode"] == "down":
            return JSONReply({"error": "unavailable"}, 503)
        if state["mode"] == "slow":
            return JSONReply({}, delay=3600)
        return JSONReply({})

    # Loaded before the clock matters: a slow first load would jump past start-up's timeout.
    await load_token_counter()
    await trio.to_thread.run_sync(gateway_module._process_prices)
    receiver = FakeUpstream(sink)
    await receiver.start(nursery)
    upstream = await _upstream(nursery)
    monkeypatch.setattr(outbox, "MAX_QUEUED", 5)
    monkeypatch.setattr(outbox, "BATCH_SIZE", 2)
    monkeypatch.setenv("GENERIC_LOGGER_ENDPOINT", f"http://127.0.0.1:{receiver.port}/logs")
    gateway = await start_gateway(nursery, _config(upstream, callbacks=["generic_api"]))
    [box] = gateway.gateway.exports.outboxes
    client = sdk(gateway)

    async def burst(count: int) -> None:
        for _ in range(count):
            answer = await client.chat.completions.create(model="gpt-test", messages=CHAT_MESSAGES)
            assert answer.choices[0].message.content == "Hi there"
            assert box.queued <= 5, "a sink's queue is bounded"

    try:
        await burst(20)
        await receiver.wait_for(lambda: len(receiver.requests) >= 3)
        state["mode"] = "slow"
        await burst(20)
        await trio.sleep(600)  # batches time out and are given up
        assert box.dropped > 0
        state["mode"] = "up"
        await trio.sleep(120)
        delivered = box.sent
        await burst(4)
        # In steps of virtual time, each taken only after 20 ms of real idleness: a send
        # still on its way on a loaded machine is waited for, not jumped past.
        for _ in range(600):
            if box.sent >= delivered + 4:
                break
            await trio.sleep(0.1)
        assert box.sent >= delivered + 4, "delivery resumes"
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            metrics = (await http.get("/metrics")).text
        assert (
            f'trigate_callback_dropped_rows_total{{callback="generic_api"}} {box.dropped}.0'
            in metrics
        )
    finally:
        await gateway.stop()
    assert len(upstream.requests) == 44, "every request reached its upstream"


@pytest.fixture
async def s3_server() -> Any:
    """moto's S3-compatible server in its own process, on a free port."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            with trio.fail_after(30):
                while True:
                    try:
                        await client.get(url + "/moto-api/")
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.1)
        yield url
    finally:
        process.kill()
        await process.wait()


def _s3_client(url: str) -> Any:
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="s3-secret-key",
    )  # fmt: skip


def _object_body(client: Any, bucket: str, key: str) -> bytes:
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


async def test_s3_gets_one_object_per_request_under_litellms_key_layout(
    nursery: trio.Nursery, s3_server: str
) -> None:
    client = _s3_client(s3_server)
    await trio.to_thread.run_sync(lambda: client.create_bucket(Bucket="llm-logs"))
    upstream = await _upstream(nursery)
    params = {
        "s3_bucket_name": "llm-logs",
        "s3_region_name": "us-east-1",
        "s3_aws_access_key_id": "AKIDEXAMPLE",
        "s3_aws_secret_access_key": "s3-secret-key",
        "s3_endpoint_url": s3_server,
        "s3_path": "gateway/logs",
    }
    config = _config(upstream, success_callback=["s3"], s3_callback_params=params)
    gateway = await start_gateway(nursery, config)
    try:
        for _ in range(2):
            await sdk(gateway).chat.completions.create(model="gpt-test", messages=CHAT_MESSAGES)
    finally:
        await gateway.stop()
    records = gateway.records.records
    listed = await trio.to_thread.run_sync(lambda: client.list_objects_v2(Bucket="llm-logs"))
    keys = sorted(item["Key"] for item in listed["Contents"])
    assert len(keys) == 2
    for record in records:
        [key] = [k for k in keys if k.endswith(f"_{record.request_id}.json")]
        day, name = key.removeprefix("gateway/logs/").split("/")
        assert len(day) == 10 and day[4] == day[7] == "-"
        assert name.startswith("time-")
        body = await trio.to_thread.run_sync(_object_body, client, "llm-logs", key)
        payload = orjson.loads(body)
        assert payload["id"] == record.request_id
        assert sorted(payload) == sorted(FIELDS["StandardLoggingPayload"])


async def test_an_s3_put_refused_is_dropped_and_counted(
    nursery: trio.Nursery, s3_server: str
) -> None:
    """A bucket that does not exist: the PUT is refused (404), which sending again
    cannot mend, so the row is dropped and counted at once."""
    upstream = await _upstream(nursery)
    params = {
        "s3_bucket_name": "no-such-bucket",
        "s3_aws_access_key_id": "AKIDEXAMPLE",
        "s3_aws_secret_access_key": "s3-secret-key",
        "s3_endpoint_url": s3_server,
    }
    gateway = await start_gateway(
        nursery, _config(upstream, callbacks=["s3"], s3_callback_params=params)
    )
    [box] = gateway.gateway.exports.outboxes
    try:
        await sdk(gateway).chat.completions.create(model="gpt-test", messages=CHAT_MESSAGES)
    finally:
        await gateway.stop()
    assert (box.sent, box.dropped) == (0, 1)


async def test_a_reload_that_changes_the_callbacks_is_warned_of(
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENERIC_LOGGER_ENDPOINT", "http://127.0.0.1:9/logs")
    path = tmp_path / "config.yaml"
    models = "model_list:\n  - model_name: mock\n    litellm_params: {model: mock/gpt-4o}\n"
    path.write_text(models + "litellm_settings: {callbacks: [generic_api]}\n")
    raw = yaml.safe_load(path.read_text())
    gateway = await start_gateway(nursery, raw, config_path=str(path))
    warning = "config reload: logging callbacks or alerting changed; they change at restart"

    async def reload() -> list[str]:
        caplog.clear()
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            assert (await client.post("/config/reload", headers=ADMIN)).status_code == 200
        return [r.getMessage() for r in caplog.records if "callbacks" in r.getMessage()]

    try:
        assert await reload() == []  # unchanged
        path.write_text(models + "litellm_settings: {callbacks: [generic_api, datadog]}\n")
        assert await reload() == [warning]
    finally:
        await gateway.stop()

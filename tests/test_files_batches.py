"""Files and batches through the gateway: the OpenAI SDK against a fake OpenAI Files and
Batch API on a real socket (shapes from OpenAI's API reference); routing by the batch
file's `model` or `target_model_names`, ownership (another key's ids are 404), and a
batch's cost recorded once, at its completion, at the batch price."""

from __future__ import annotations

import itertools
from typing import Any

import openai
import orjson
import pytest
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest
from helpers import UPSTREAM_KEY, RunningGateway, deployment_config, new_key, sdk, start_gateway
from openai.types import Batch, FileObject

from trigate.forms import parse_form


class FakeBatchAPI:
    """OpenAI's /files and /batches, in memory; `finish` completes a batch."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        # A batch's output, when each batch is to be created already completed.
        self.at_once: bytes | None = None

    def __call__(self, request: ReceivedRequest) -> JSONReply:
        path = request.target.partition("?")[0].removeprefix("/v1")
        parts = path.strip("/").split("/")
        if parts[0] == "files":
            return self._files(request, parts[1:])
        return self._batches(request, parts[1:])

    def _files(self, request: ReceivedRequest, rest: list[str]) -> JSONReply:
        if request.method == "POST":
            form = parse_form(request.body, request.headers)
            file_id = f"file-{next(self._ids)}"
            self.contents[file_id] = form["file"].data
            self.files[file_id] = {
                "id": file_id,
                "object": "file",
                "bytes": len(form["file"].data),
                "created_at": 1700000000,
                "filename": form["file"].filename,
                "purpose": form["purpose"],
            }
            return JSONReply(self.files[file_id])
        if rest[0] not in self.files:
            return JSONReply({"error": {"message": "No such File object"}}, status=404)
        if request.method == "DELETE":
            del self.files[rest[0]]
            return JSONReply({"id": rest[0], "object": "file", "deleted": True})
        if rest[1:] == ["content"]:
            return JSONReply(self.contents[rest[0]])
        return JSONReply(self.files[rest[0]])

    def _batches(self, request: ReceivedRequest, rest: list[str]) -> JSONReply:
        if request.method == "POST" and not rest:
            batch_id = f"batch_{next(self._ids)}"
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": request.json["endpoint"],
                "input_file_id": request.json["input_file_id"],
                "completion_window": request.json["completion_window"],
                "status": "validating",
                "created_at": 1700000000,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
            }
            if self.at_once is not None:
                self.finish(batch_id, {"input_tokens": 10, "output_tokens": 4}, self.at_once)
            return JSONReply(self.batches[batch_id])
        batch = self.batches[rest[0]]
        if rest[1:] == ["cancel"]:
            batch["status"] = "cancelling"
        return JSONReply(batch)

    def finish(
        self, batch_id: str, usage: dict[str, int] | None, output: bytes = b"", errors: bytes = b""
    ) -> None:
        batch = self.batches[batch_id]
        batch["status"] = "completed"
        if usage is not None:
            batch["usage"] = usage
        for field, content in (("output_file_id", output), ("error_file_id", errors)):
            if content:
                file_id = f"file-{next(self._ids)}"
                self.contents[file_id] = content
                self.files[file_id] = {"id": file_id, "object": "file", "purpose": "batch_output"}
                batch[field] = file_id


def batch_file(model: str, count: int = 2) -> bytes:
    lines = [
        {
            "custom_id": f"request-{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "Hello"}]},
        }
        for index in range(count)
    ]
    return b"\n".join(orjson.dumps(line) for line in lines) + b"\n"


@pytest.fixture
async def fake() -> FakeBatchAPI:
    return FakeBatchAPI()


async def start(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI, database_url: str
) -> RunningGateway:
    upstream.handler = fake
    params = {"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}
    config = deployment_config("gpt-batch", params)
    config["general_settings"] = {"database_url": database_url}
    return await start_gateway(nursery, config)


async def upload(
    client: openai.AsyncOpenAI, model: str = "gpt-batch", name: str = "in.jsonl"
) -> FileObject:
    """A batch file of two requests to `model`."""
    return await client.files.create(file=(name, batch_file(model)), purpose="batch")


async def create_batch(client: openai.AsyncOpenAI, input_file_id: str) -> Batch:
    return await client.batches.create(
        input_file_id=input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


async def three_keys(gateway: RunningGateway) -> tuple[str, str, str]:
    """Keys of an owner, of a teammate in its team `team-a`, and of a stranger."""
    async with gateway.client() as admin:
        await admin.post("/team/new", json={"team_id": "team-a"})
    team = {"team_id": "team-a"}
    return await new_key(gateway, **team), await new_key(gateway, **team), await new_key(gateway)


async def test_files_and_a_batch_billed_once_at_completion(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    gateway = await start(nursery, upstream, fake, "sqlite://:memory:")
    key = await new_key(gateway, models=["gpt-batch"])
    async with sdk(gateway, key) as client:
        uploaded = await upload(client, name="requests.jsonl")
        # Each request's model is the deployment's upstream one, as LiteLLM rewrites it.
        sent = fake.contents[uploaded.id].splitlines()
        assert [orjson.loads(line)["body"]["model"] for line in sent] == ["gpt-4o-mini"] * 2
        assert (await client.files.retrieve(uploaded.id)).filename == "requests.jsonl"
        assert [f.id async for f in client.files.list()] == [uploaded.id]
        content = await client.files.content(uploaded.id)
        assert content.content == fake.contents[uploaded.id]

        batch = await create_batch(client, uploaded.id)
        assert batch.status == "validating"
        assert (await client.batches.retrieve(batch.id)).status == "validating"
        assert gateway.records.records == []

        fake.finish(batch.id, {"input_tokens": 1000, "output_tokens": 400, "total_tokens": 1400})
        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed"
        await client.batches.retrieve(batch.id)  # seen completed again: billed once only
        assert [b.id async for b in client.batches.list()] == [batch.id]
        deleted = await client.files.delete(uploaded.id)
        assert deleted.deleted
    [record] = await gateway.records.wait_for(1)
    # gpt-4o-mini's batch prices: 7.5e-08 in, 3e-07 out.
    assert record.cost == pytest.approx(1000 * 7.5e-08 + 400 * 3e-07)
    assert (record.prompt_tokens, record.completion_tokens) == (1000, 400)
    assert record.model_group == "gpt-batch" and record.response_id == batch.id
    assert record.key_hash is not None
    assert await gateway.gateway.ledger.flush()
    async with gateway.client() as admin:
        info = (await admin.get("/key/info", params={"key": key})).json()["info"]
    assert info["spend"] == pytest.approx(record.cost)
    await gateway.stop()


async def test_cost_summed_from_the_output_file(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    gateway = await start(nursery, upstream, fake, "sqlite://:memory:")
    answers = [
        {"custom_id": f"request-{i}", "response": {"status_code": 200, "body": {"usage": usage}}}
        for i, usage in enumerate(
            [
                {"prompt_tokens": 10, "completion_tokens": 5},
                {"prompt_tokens": 20, "completion_tokens": 7},
            ]
        )
    ]
    async with sdk(gateway) as client:
        uploaded = await client.files.create(
            file=("in.jsonl", batch_file("anything")),
            purpose="batch",
            extra_body={"target_model_names": "gpt-batch"},
        )
        batch = await create_batch(client, uploaded.id)
        fake.finish(batch.id, None, b"\n".join(orjson.dumps(a) for a in answers))
        await client.batches.retrieve(batch.id)
    [record] = await gateway.records.wait_for(1)
    assert (record.prompt_tokens, record.completion_tokens) == (30, 12)
    assert record.cost == pytest.approx(30 * 7.5e-08 + 12 * 3e-07)
    await gateway.stop()


async def test_another_keys_ids_are_404(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI, database_url: str
) -> None:
    gateway = await start(nursery, upstream, fake, database_url)
    owner, teammate, stranger = await three_keys(gateway)
    async with sdk(gateway, owner) as client:
        uploaded = await upload(client)
        batch = await create_batch(client, uploaded.id)
    async with sdk(gateway, stranger) as client:
        for call in (
            client.files.retrieve(uploaded.id),
            client.files.content(uploaded.id),
            client.files.delete(uploaded.id),
            client.batches.retrieve(batch.id),
            client.batches.cancel(batch.id),
            create_batch(client, uploaded.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await call
        assert [f async for f in client.files.list()] == []
        assert [b async for b in client.batches.list()] == []
    async with sdk(gateway, teammate) as client:
        assert (await client.batches.retrieve(batch.id)).id == batch.id
        assert (await client.batches.cancel(batch.id)).status == "cancelling"
    assert uploaded.id in fake.files  # nothing of the stranger's reached the upstream
    await gateway.stop()


async def test_model_access_and_an_unknown_group(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    gateway = await start(nursery, upstream, fake, "sqlite://:memory:")
    key = await new_key(gateway, models=["other"])
    async with sdk(gateway, key) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await upload(client)
    async with sdk(gateway) as client:
        with pytest.raises(openai.NotFoundError):
            await upload(client, "nope")
        with pytest.raises(openai.BadRequestError, match="target_model_names"):
            await client.files.create(file=("notes.txt", b"hello"), purpose="assistants")
    assert fake.files == {}
    await gateway.stop()


ANSWER = b'{"custom_id": "request-0", "response": {"status_code": 200, "body": {}}}\n'
FAILURE = b'{"custom_id": "request-1", "error": {"code": "invalid", "message": "bad"}}\n'


async def test_a_batchs_result_files_are_its_owners(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI, database_url: str
) -> None:
    """The output and error files the upstream made for a batch are its owner's and its
    team's, as the batch is: the owner reads them, another key gets 404."""
    gateway = await start(nursery, upstream, fake, database_url)
    owner, teammate, stranger = await three_keys(gateway)
    async with sdk(gateway, owner) as client:
        uploaded = await upload(client)
        batch = await create_batch(client, uploaded.id)
        fake.finish(batch.id, {"input_tokens": 10, "output_tokens": 4}, ANSWER, FAILURE)
        done = await client.batches.retrieve(batch.id)
        assert done.output_file_id and done.error_file_id
        assert (await client.files.content(done.output_file_id)).content == ANSWER
        assert (await client.files.content(done.error_file_id)).content == FAILURE
        assert (await client.files.retrieve(done.output_file_id)).purpose == "batch_output"
        listed = {f.id async for f in client.files.list(purpose="batch_output")}
        assert listed == {done.output_file_id, done.error_file_id}
    async with sdk(gateway, teammate) as client:
        assert (await client.files.content(done.output_file_id)).content == ANSWER
    async with sdk(gateway, stranger) as client:
        for file_id in (done.output_file_id, done.error_file_id):
            with pytest.raises(openai.NotFoundError):
                await client.files.content(file_id)
            with pytest.raises(openai.NotFoundError):
                await client.files.retrieve(file_id)
            with pytest.raises(openai.NotFoundError):
                await client.files.delete(file_id)
        assert [f async for f in client.files.list()] == []
    assert done.output_file_id in fake.files  # the stranger's delete never reached it
    async with sdk(gateway, owner) as client:
        assert (await client.files.delete(done.output_file_id)).deleted
        await client.batches.retrieve(batch.id)  # a deleted result file stays deleted
        with pytest.raises(openai.NotFoundError):
            await client.files.content(done.output_file_id)
    await gateway.stop()


def batch_reads(upstream: FakeUpstream, batch_id: str) -> int:
    return sum(r.target.endswith(f"/batches/{batch_id}") for r in upstream.requests)


async def test_the_list_refreshes_and_bills_a_completed_batch_once(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    """A batch seen completed only through the list is billed, once, and its output
    file is its owner's; a billed batch is not asked of its upstream again."""
    gateway = await start(nursery, upstream, fake, "sqlite://:memory:")
    key = await new_key(gateway)
    async with sdk(gateway, key) as client:
        uploaded = await upload(client)
        running, done = [await create_batch(client, uploaded.id) for _ in range(2)]
        fake.finish(done.id, {"input_tokens": 1000, "output_tokens": 400}, ANSWER)
        listed = {b.id: b async for b in client.batches.list()}
        assert listed[done.id].status == "completed"
        assert listed[running.id].status == "validating"
        [record] = await gateway.records.wait_for(1)
        assert record.response_id == done.id and record.key_hash is not None
        assert record.cost == pytest.approx(1000 * 7.5e-08 + 400 * 3e-07)
        output = listed[done.id].output_file_id
        assert output is not None
        assert (await client.files.content(output)).content == ANSWER

        reads = batch_reads(upstream, done.id)
        assert {b.id: b.status async for b in client.batches.list()} == {
            running.id: "validating",
            done.id: "completed",
        }
        await client.batches.retrieve(done.id)
        assert batch_reads(upstream, done.id) == reads + 1  # the retrieve's; not the list's
        assert batch_reads(upstream, running.id) == 2  # the list asks for one still running
    assert len(gateway.records.records) == 1
    await gateway.stop()


async def test_a_batch_created_completed(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    """An upstream that answers the create already completed: its output file is the
    owner's at once, and the list bills it (once)."""
    gateway = await start(nursery, upstream, fake, "sqlite://:memory:")
    fake.at_once = ANSWER
    owner, stranger = await new_key(gateway), await new_key(gateway)
    async with sdk(gateway, owner) as client:
        uploaded = await upload(client)
        batch = await create_batch(client, uploaded.id)
        assert batch.status == "completed" and batch.output_file_id is not None
        assert (await client.files.content(batch.output_file_id)).content == ANSWER
        for _ in range(2):
            assert [b.status async for b in client.batches.list()] == ["completed"]
    async with sdk(gateway, stranger) as client:
        with pytest.raises(openai.NotFoundError):
            await client.files.content(batch.output_file_id)
    [record] = await gateway.records.wait_for(1)
    assert (record.response_id, record.prompt_tokens, record.completion_tokens) == (batch.id, 10, 4)
    assert len(gateway.records.records) == 1
    await gateway.stop()


async def test_a_failed_refresh_lists_the_batch_as_last_seen(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    """The list does not fail for one upstream that does: the batch is listed as last
    seen, unbilled, and refreshed (and billed) by the next list."""
    gateway = await start(nursery, upstream, fake, "sqlite://:memory:")
    async with sdk(gateway) as client:
        uploaded = await upload(client)
        batch = await create_batch(client, uploaded.id)
        fake.finish(batch.id, {"input_tokens": 10, "output_tokens": 4})
        down = JSONReply({"error": {"message": "overloaded"}}, status=503)
        upstream.handler = lambda request: down if "/batches/" in request.target else fake(request)
        assert [b.status async for b in client.batches.list()] == ["validating"]
        assert gateway.records.records == []
        upstream.handler = fake
        assert [b.status async for b in client.batches.list()] == ["completed"]
    [record] = await gateway.records.wait_for(1)
    assert record.response_id == batch.id
    await gateway.stop()

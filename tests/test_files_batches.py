"""Files and batches through the gateway: the OpenAI SDK against a fake OpenAI Files and
Batch API on a real socket (shapes from OpenAI's API reference); routing by the batch
file's `model` or `target_model_names`, ownership (another key's ids are 404), and a
batch's cost recorded once, when it is first seen ended (completed, or failed, expired
or cancelled for the part it ran), at the batch price."""

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
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from test_metrics import scrape
from test_tracing import _attributes, received_spans

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
        # A batch's usage, when a cancel is to end it at once (cancelled, partly run).
        self.cancelled_at_once: dict[str, int] | None = None

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
        if rest[0] not in self.batches:
            return JSONReply({"error": {"message": "No such batch"}}, status=404)
        batch = self.batches[rest[0]]
        if rest[1:] == ["cancel"]:
            batch["status"] = "cancelling"
            if self.cancelled_at_once is not None:
                self.end(rest[0], "cancelled", self.cancelled_at_once, completed=1)
        return JSONReply(batch)

    def finish(
        self, batch_id: str, usage: dict[str, int] | None, output: bytes = b"", errors: bytes = b""
    ) -> None:
        self.end(batch_id, "completed", usage, output, errors)

    def end(
        self,
        batch_id: str,
        status: str,
        usage: dict[str, int] | None,
        output: bytes = b"",
        errors: bytes = b"",
        *,
        completed: int = 2,
        total: int = 2,
    ) -> None:
        """End the batch in `status`, `completed` of its `total` requests run (their
        answers in `output`, the others' errors in `errors`), as OpenAI's batch object
        tells it: `request_counts`, and the result files by id."""
        batch = self.batches[batch_id]
        batch["status"] = status
        batch["request_counts"] = {
            "total": total,
            "completed": completed,
            "failed": total - completed,
        }
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
    nursery: trio.Nursery,
    upstream: FakeUpstream,
    fake: FakeBatchAPI,
    database_url: str,
    **settings: Any,
) -> RunningGateway:
    """The gateway, its `gpt-batch` group on the fake; `settings` are general_settings'."""
    upstream.handler = fake
    params = {"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}
    config = deployment_config("gpt-batch", params)
    config["general_settings"] = {"database_url": database_url, **settings}
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


def answered(*usages: tuple[int, int]) -> bytes:
    """An output file: one answer per request run, each with its usage."""
    lines = [
        {
            "custom_id": f"request-{i}",
            "response": {
                "status_code": 200,
                "body": {"usage": {"prompt_tokens": given, "completion_tokens": made}},
            },
        }
        for i, (given, made) in enumerate(usages)
    ]
    return b"\n".join(orjson.dumps(line) for line in lines) + b"\n"


EXPIRED = b'{"custom_id": "request-2", "error": {"code": "batch_expired", "message": "expired"}}\n'


async def test_an_ended_batch_is_billed_once_for_what_it_completed(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    """A batch that ends failed, expired or cancelled is billed for the requests it ran
    (OpenAI keeps their answers in its output file), at the batch price, once: whether a
    retrieve, the list or the cancel itself first sees it ended. One that ran nothing
    writes no spend row, and is no more asked of its upstream."""
    gateway = await start(nursery, upstream, fake, "sqlite://:memory:")
    async with gateway.client() as admin:
        key = (await admin.post("/key/generate", json={})).json()["key"]
    async with sdk(gateway, key) as client:
        uploaded = await client.files.create(
            file=("in.jsonl", batch_file("gpt-batch", count=3)), purpose="batch"
        )
        cancelled, expired, failed, cut_short = [
            await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            for _ in range(4)
        ]
        # Cancelled: partial results in its output file, no `usage`; seen by a retrieve.
        assert (await client.batches.cancel(cancelled.id)).status == "cancelling"
        assert gateway.records.records == []
        fake.end(cancelled.id, "cancelled", None, answered((10, 5)), completed=1, total=3)
        assert (await client.batches.retrieve(cancelled.id)).status == "cancelled"
        [first] = await gateway.records.wait_for(1)
        assert (first.response_id, first.prompt_tokens, first.completion_tokens) == (
            cancelled.id, 10, 5,
        )  # fmt: skip
        assert first.cost == pytest.approx(10 * 7.5e-08 + 5 * 3e-07)
        assert first.key_hash is not None
        # Expired, with its upstream's `usage`; failed, having run nothing: both seen by
        # the list.
        fake.end(expired.id, "expired", {"input_tokens": 300, "output_tokens": 120},
                 answered((150, 60), (150, 60)), EXPIRED, completed=2, total=3)  # fmt: skip
        fake.end(failed.id, "failed", None, completed=0, total=3)
        statuses = {b.id: b.status async for b in client.batches.list()}
        assert statuses[expired.id] == "expired" and statuses[failed.id] == "failed"
        [_, second] = await gateway.records.wait_for(2)
        assert (second.response_id, second.prompt_tokens, second.completion_tokens) == (
            expired.id, 300, 120,
        )  # fmt: skip
        # A cancel that answers the batch already cancelled bills it there.
        fake.cancelled_at_once = {"input_tokens": 40, "output_tokens": 8}
        assert (await client.batches.cancel(cut_short.id)).status == "cancelled"
        [*_, third] = await gateway.records.wait_for(3)
        assert (third.response_id, third.prompt_tokens) == (cut_short.id, 40)

        # Seen again, by every route: billed once each, and nothing ended is asked of its
        # upstream by the list any more.
        reads = {b: batch_reads(upstream, b) for b in (cancelled.id, expired.id, failed.id)}
        for batch in (cancelled, expired, failed, cut_short):
            await client.batches.retrieve(batch.id)
        assert {b.id async for b in client.batches.list()} == {
            cancelled.id, expired.id, failed.id, cut_short.id,
        }  # fmt: skip
        assert {b: batch_reads(upstream, b) for b in reads} == {b: n + 1 for b, n in reads.items()}
    assert len(gateway.records.records) == 3
    assert await gateway.gateway.ledger.flush()
    async with gateway.client() as admin:
        info = (await admin.get("/key/info", params={"key": key})).json()["info"]
    assert info["spend"] == pytest.approx(sum(r.cost for r in gateway.records.records))
    await gateway.stop()


async def test_files_and_batches_are_counted_and_traced(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI, receiver: FakeUpstream
) -> None:
    """Every request is in LiteLLM's metrics by its route's pattern (never an id) and
    status, and a span with a child per upstream call; a batch seen ended is one LLM call
    of the key that made it, with its tokens and spend, whoever looked."""
    upstream.handler = fake
    params = {"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}
    config = deployment_config("gpt-batch", params)
    config["model_list"][0]["model_info"] = {"id": "batch-1"}
    gateway = await start_gateway(nursery, config)
    async with gateway.client() as admin:
        await admin.post("/team/new", json={"team_id": "t1", "team_alias": "Team One"})
        made = await admin.post("/key/generate", json={"team_id": "t1", "key_alias": "maker"})
        owner, owner_hash = made.json()["key"], made.json()["token"]
        teammate = (await admin.post("/key/generate", json={"team_id": "t1"})).json()["key"]
    async with sdk(gateway, owner) as client:
        uploaded = await client.files.create(
            file=("in.jsonl", batch_file("gpt-batch")), purpose="batch"
        )
        assert [f.id async for f in client.files.list()] == [uploaded.id]
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_nobody")
    with pytest.raises(openai.AuthenticationError):
        await sdk(gateway, "sk-wrong").files.list()
    fake.finish(batch.id, {"input_tokens": 1000, "output_tokens": 400})
    async with sdk(gateway, teammate) as client:  # the teammate sees it ended
        assert (await client.batches.retrieve(batch.id)).status == "completed"
    [record] = await gateway.records.wait_for(1)
    scraped = await scrape(gateway.url)
    await gateway.stop()  # flushes the spans

    owner_labels = {
        "hashed_api_key": owner_hash,
        "api_key_alias": "maker",
        "team_alias": "Team One",
    }
    total = "litellm_proxy_total_requests_metric_total"
    for route, calls in [
        ("/v1/files", 2),
        ("/v1/batches", 1),
        ("/v1/batches/<batch_id>", 1),
    ]:
        assert scraped.value(total, route=route, status_code="200") == calls, route
    assert scraped.value(total, route="/v1/files", requested_model="gpt-batch", **owner_labels) == 1
    failed = "litellm_proxy_failed_requests_metric_total"
    assert scraped.value(failed, route="/v1/batches/<batch_id>", exception_status="404") == 1
    assert scraped.value(
        failed, route="/v1/files", exception_status="401", exception_class="AuthenticationFailed"
    ) == 1  # fmt: skip
    latency = "litellm_request_total_latency_metric_count"
    assert scraped.value(latency) == scraped.value(total) == 6
    # The one spend row: its owner's, not the teammate's who saw the batch end.
    assert scraped.value("litellm_requests_metric_total") == 1
    assert scraped.value("litellm_requests_metric_total", **owner_labels) == 1
    assert scraped.value("litellm_spend_metric_total", **owner_labels) == pytest.approx(record.cost)
    assert scraped.value("litellm_input_tokens_metric_total", model_id="batch-1") == 1000
    assert scraped.value("litellm_output_tokens_metric_total", model_id="batch-1") == 400
    # Upstream calls: upload, create, retrieve.
    assert scraped.value("litellm_deployment_success_responses_total", model_id="batch-1") == 3
    assert uploaded.id not in scraped.text and batch.id not in scraped.text

    spans = received_spans(receiver)
    servers = {s.name: s for s in spans if s.kind == Span.SPAN_KIND_SERVER}
    assert set(servers) == {
        "create_file gpt-batch", "list_files", "create_batch gpt-batch", "retrieve_batch",
        "retrieve_batch gpt-batch",
    }  # fmt: skip
    billed = _attributes(servers["retrieve_batch gpt-batch"])
    assert (billed["gen_ai.usage.input_tokens"], billed["gen_ai.usage.output_tokens"]) == (
        1000,
        400,
    )
    assert billed["trigate.cost"] == pytest.approx(record.cost)
    assert billed["http.route"] == "/v1/batches/<batch_id>"
    assert servers["retrieve_batch"].status.code == Status.STATUS_CODE_ERROR  # the 404
    clients = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    parents = {s.span_id: s for s in servers.values()}
    assert sorted(parents[s.parent_span_id].name for s in clients) == [
        "create_batch gpt-batch", "create_file gpt-batch", "retrieve_batch gpt-batch",
    ]  # fmt: skip
    assert all(_attributes(s)["trigate.deployment"] == "batch-1" for s in clients)
    # Each upstream call carried its own span's context.
    sent = {r.headers["traceparent"].split("-")[2] for r in upstream.requests}
    assert sent == {s.span_id.hex() for s in clients}


async def test_an_upload_over_the_size_cap_is_counted_as_its_413(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    """An error Quart raises itself (the body cap) is counted by its status and class, as
    the client is answered."""
    upstream.handler = fake
    params = {"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}
    config = deployment_config("gpt-batch", params)
    config["general_settings"] = {"max_request_size_mb": 0.001}
    gateway = await start_gateway(nursery, config)
    with pytest.raises(openai.APIStatusError) as refused:
        await sdk(gateway).files.create(
            file=("in.jsonl", batch_file("gpt-batch", 50)), purpose="batch"
        )
    assert refused.value.status_code == 413
    scraped = await scrape(gateway.url)
    await gateway.stop()
    assert scraped.value(
        "litellm_proxy_failed_requests_metric_total",
        route="/v1/files",
        exception_status="413",
        exception_class="BodyTooLarge",
    ) == 1  # fmt: skip
    assert fake.files == {}


async def test_a_batch_is_refused_while_a_guardrail_applies_to_the_key(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    """A batch's requests sit in a file no guardrail reads: while a guardrail applies to
    the key (its own, here), the batch is refused (403) and the upstream never asked."""
    upstream.handler = fake
    params = {"model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": UPSTREAM_KEY}
    guardrail = {
        "guardrail_name": "cf",
        "litellm_params": {
            "guardrail": "litellm_content_filter",
            "mode": "pre_call",
            "default_on": False,
            "blocked_words": [{"keyword": "forbidden", "action": "BLOCK"}],
        },
    }
    config = {**deployment_config("gpt-batch", params), "guardrails": [guardrail]}
    gateway = await start_gateway(nursery, config)
    guarded = await new_key(gateway, models=["gpt-batch"], guardrails=["cf"])
    free = await new_key(gateway, models=["gpt-batch"])
    async with sdk(gateway, guarded) as client:
        uploaded = await upload(client)
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await create_batch(client, uploaded.id)
    assert refused.value.code == "closed_by_hooks"
    assert not any(request.target.endswith("/batches") for request in upstream.requests)
    async with sdk(gateway, free) as client:
        assert (await create_batch(client, (await upload(client)).id)).status == "validating"
    await gateway.stop()

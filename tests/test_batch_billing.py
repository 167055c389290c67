"""A batch's bill cannot fail a request nor be lost: the OpenAI SDK against a fake OpenAI
Files and Batch API on a real socket (shapes from OpenAI's API reference; a batch that
reports no `usage`, as Azure's). A bill that fails is left for a later look; the output
file is summed as a stream, however large; a batch's result file is not deleted before
its batch is billed; a batch its upstream no longer knows is settled, not asked again;
batches older versions saw end unbilled are settled by the upgrade, not billed by it."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import trio
from fakes import FakeUpstream, ReceivedRequest, Reply, StreamReply
from helpers import sdk
from test_files_batches import (
    FakeBatchAPI,
    answered,
    batch_reads,
    create_batch,
    fake,
    start,
    upload,
)
from test_metrics import scrape

from trigate.store.backends import Cursor, connect
from trigate.store.migrations import MIGRATIONS, SETTLED_UNBILLED, UNBILLED

__all__ = ["fake"]  # the fixture, shared with test_files_batches

FAILURES = "trigate_batch_billing_failures_total"
# The whole-answer cap of the gateway these tests start: 10 KiB.
CAP_MB = 10 / 1024


def broken_off(fake: FakeBatchAPI, file_id: str) -> Any:
    """The fake, but the content of `file_id` breaks off after its first kilobyte."""

    def handler(request: ReceivedRequest) -> Reply:
        if request.target.partition("?")[0].endswith(f"/files/{file_id}/content"):
            head = fake.contents[file_id][:1024]
            return StreamReply([head], content_type="application/octet-stream", cut_off=True)
        return fake(request)

    return handler


async def test_a_failed_bill_fails_no_request_and_keeps_the_output_file(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    """A batch without `usage` whose output file (larger than any whole answer the
    gateway holds) breaks off mid-read: retrieves and lists answer, unbilled, the
    failure counted; the output file cannot be deleted (409) while the bill cannot be
    made; once it can, the delete bills the batch first, summed from all its lines."""
    gateway = await start(
        nursery, upstream, fake, "sqlite://:memory:", max_upstream_response_size_mb=CAP_MB
    )
    usages = [(100 + i, 10 + i % 7) for i in range(300)]
    output = answered(*usages)
    assert len(output) > CAP_MB * 1024 * 1024 * 3
    async with sdk(gateway) as client:
        batch = await create_batch(client, (await upload(client)).id)
        fake.finish(batch.id, None, output)
        out = fake.batches[batch.id]["output_file_id"]
        upstream.handler = broken_off(fake, out)

        assert (await client.batches.retrieve(batch.id)).status == "completed"
        assert [b.status async for b in client.batches.list()] == ["completed"]
        assert gateway.records.records == []
        scraped = await scrape(gateway.url)
        assert scraped.value(FAILURES, outcome="retried_later") == 2
        assert scraped.value(FAILURES, outcome="settled_unbilled") == 0

        with pytest.raises(openai.ConflictError) as refused:
            await client.files.delete(out)
        assert refused.value.code == "batch_not_billed"
        assert batch.id in refused.value.message and "not billed" in refused.value.message
        assert out in fake.files

        upstream.handler = fake
        # The relay is not capped either: the whole file, as the upstream sent it.
        assert (await client.files.content(out)).content == output
        assert (await client.files.delete(out)).deleted
        assert out not in fake.files
    [record] = await gateway.records.wait_for(1)
    assert (record.response_id, record.prompt_tokens, record.completion_tokens) == (
        batch.id, sum(u[0] for u in usages), sum(u[1] for u in usages),
    )  # fmt: skip
    async with sdk(gateway) as client:  # billed once: seen again, nothing more
        await client.batches.retrieve(batch.id)
        assert [b.status async for b in client.batches.list()] == ["completed"]
    assert len(gateway.records.records) == 1
    await gateway.stop()


async def test_a_result_file_of_a_running_batch_is_kept(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    """An upstream that names an error file before its batch has ended: the file is
    not deleted until the batch is billed, and the 409 says the batch's state."""
    gateway = await start(nursery, upstream, fake, "sqlite://:memory:")
    async with sdk(gateway) as client:
        batch = await create_batch(client, (await upload(client)).id)
        fake.end(batch.id, "in_progress", None, errors=b'{"custom_id": "request-0"}\n')
        errors = (await client.batches.retrieve(batch.id)).error_file_id
        assert errors is not None
        with pytest.raises(openai.ConflictError) as refused:
            await client.files.delete(errors)
        assert "`in_progress`" in refused.value.message
        # An uploaded file is no batch's result: deleted at once.
        uploaded = await upload(client)
        assert (await client.files.delete(uploaded.id)).deleted
        fake.finish(batch.id, {"input_tokens": 30, "output_tokens": 6}, answered((30, 6)))
        assert (await client.files.delete(errors)).deleted
    [record] = await gateway.records.wait_for(1)
    assert (record.response_id, record.prompt_tokens) == (batch.id, 30)
    await gateway.stop()


async def test_a_batch_its_upstream_no_longer_knows_is_asked_once(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI
) -> None:
    """A 404 from the batch's upstream settles it unbilled (counted): the list shows it
    as last seen and asks about it no more; a retrieve still gets the upstream's 404."""
    gateway = await start(nursery, upstream, fake, "sqlite://:memory:")
    async with sdk(gateway) as client:
        batch = await create_batch(client, (await upload(client)).id)
        del fake.batches[batch.id]
        assert [b.status async for b in client.batches.list()] == ["validating"]
        assert [b.status async for b in client.batches.list()] == ["validating"]
        assert batch_reads(upstream, batch.id) == 1
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve(batch.id)
    scraped = await scrape(gateway.url)
    assert scraped.value(FAILURES, reason="batch_not_found", outcome="settled_unbilled") == 1
    row = await gateway.gateway.store.managed("batch", batch.id, None)
    assert row is not None and row["billed"] == SETTLED_UNBILLED
    assert gateway.records.records == []
    await gateway.stop()


def _as_before_the_upgrade(ended: dict[str, str]) -> Any:
    """Make the database one an older version left: no `batch_id` column, the latest
    migration not run, and batches it saw end (`ended`: id to state) saved so, unbilled."""

    def work(cursor: Cursor) -> None:
        for batch_id, status in ended.items():
            cursor.execute(
                "UPDATE trigate_managed_objects SET object = ?, billed = ? "
                "WHERE kind = 'batch' AND object_id = ?",
                [f'{{"id":"{batch_id}","object":"batch","status":"{status}"}}', UNBILLED, batch_id],
            )
        cursor.execute("ALTER TABLE trigate_managed_objects DROP COLUMN batch_id")
        cursor.execute("DELETE FROM trigate_schema WHERE version = ?", [len(MIGRATIONS)])

    return work


async def test_batches_ended_before_the_upgrade_are_settled_not_billed(
    nursery: trio.Nursery, upstream: FakeUpstream, fake: FakeBatchAPI, database_url: str
) -> None:
    """Batches an older version saw end failed or cancelled (which it did not bill) are
    settled by the migration: the first list after the upgrade neither asks about them
    nor bills them at today's prices. One it saw running, which ended since, is billed."""
    gateway = await start(nursery, upstream, fake, database_url)
    async with sdk(gateway) as client:
        uploaded = await upload(client)
        failed, cancelled, running = [await create_batch(client, uploaded.id) for _ in range(3)]
    await gateway.stop()
    for old, status in ((failed, "failed"), (cancelled, "cancelled")):
        fake.end(old.id, status, {"input_tokens": 50, "output_tokens": 5}, completed=1)
    fake.finish(running.id, {"input_tokens": 70, "output_tokens": 7})
    backend = connect(database_url)
    try:
        ended = {failed.id: "failed", cancelled.id: "cancelled"}
        await trio.to_thread.run_sync(backend.transaction, _as_before_the_upgrade(ended))
    finally:
        backend.close()
    reads = {b.id: batch_reads(upstream, b.id) for b in (failed, cancelled)}

    gateway = await start(nursery, upstream, fake, database_url)
    async with sdk(gateway) as client:
        statuses = {b.id: b.status async for b in client.batches.list()}
    assert statuses == {failed.id: "failed", cancelled.id: "cancelled", running.id: "completed"}
    assert {b: batch_reads(upstream, b) for b in reads} == reads
    [record] = await gateway.records.wait_for(1)
    assert (record.response_id, record.prompt_tokens) == (running.id, 70)
    for old_id in reads:
        row = await gateway.gateway.store.managed("batch", old_id, None)
        assert row is not None and row["billed"] == SETTLED_UNBILLED
    await gateway.stop()

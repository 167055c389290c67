"""Billing a batch: once, for what it completed, the first time it is seen ended.

A batch ends `completed`, `failed`, `expired` or `cancelled`, and in every one of these
it may have run some of its requests: a cancelled batch keeps its partial results in its
output file, an expired one the answers it made before its window closed (OpenAI's batch
object names them by `output_file_id` and counts them in `request_counts`). Each is
billed the first time a request of the gateway sees it ended (a retrieve, a cancel, or
the list's refresh): its tokens, from the batch's `usage` or, where the upstream gives
none, summed from its output file, at the table's batch prices (else half the list
price, OpenAI's batch discount), as one spend row of its owner's with the batch id as
`response_id`. A batch that completed nothing writes no row, but is marked billed all
the same, so that nothing asks its upstream about it again. The claim on the store
(`claim_billing`) makes the bill one across a whole fleet.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import trio

from trigate.auth import key_hash_of_owner
from trigate.exchanges import Exchange
from trigate.gateway import Gateway
from trigate.metrics import ANONYMOUS, CallerLabels
from trigate.router.deployments import Deployment
from trigate.spend import RequestRecord
from trigate.spend.prices import TokenCounts, batch_cost
from trigate.store import Row

BATCH = "batch"
# A batch's states after which it changes no more: each is billed for what it completed.
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


async def bill_once(
    gateway: Gateway, exchange: Exchange, row: Row, deployment: Deployment, batch: dict[str, Any]
) -> RequestRecord | None:
    """Bill `batch` (its latest state, as its upstream answered) if it has ended and was
    not billed yet; the spend row written (and counted, as its owner's LLM call, by the
    request's `exchange`), or None when none was (not ended, billed already, by this
    process or another, or nothing completed)."""
    if batch.get("status") not in ENDED or row["billed"]:
        return None
    counts = _reported_tokens(batch)
    if counts is None:
        async with exchange.attempt(deployment):
            counts = await _output_tokens(deployment, batch.get("output_file_id"))
    if not await gateway.store.claim_billing(BATCH, row["object_id"]):
        return None  # another request (or worker) billed it first
    if counts == TokenCounts() and not _completed_requests(batch):
        return None
    record = _record(row, deployment, batch, counts)
    with trio.CancelScope(shield=True):
        await gateway.record(record)
        exchange.billed(record, await owner_labels(gateway, row), deployment)
    return record


async def owner_labels(gateway: Gateway, row: Row) -> CallerLabels:
    """The metric labels of the key that made a file or batch, as its own requests are
    labelled (`CallerLabels.of`): its team's alias and its user's email read as they
    are now."""
    key_hash = key_hash_of_owner(row["owner"])
    if key_hash is None:  # the master key, or a caller without a key
        return ANONYMOUS
    team = await gateway.auth.row("teams", row["team_id"]) if row["team_id"] else None
    user = await gateway.auth.row("users", row["user_id"]) if row["user_id"] else None
    labels = CallerLabels(
        key_hash,
        row["key_alias"] or "",
        row["team_id"] or "",
        (team or {}).get("team_alias") or "",
        row["user_id"] or "",
        (user or {}).get("user_email") or "",
    )
    return gateway.telemetry.interned(labels)


def _record(
    row: Row, deployment: Deployment, batch: dict[str, Any], counts: TokenCounts
) -> RequestRecord:
    now = time.time()
    created = batch.get("created_at")
    started = float(created) if isinstance(created, int | float) else row["created_at"]
    return RequestRecord(
        request_id=uuid.uuid4().hex,
        key_identity=row["key_identity"],
        key_hash=key_hash_of_owner(row["owner"]),
        key_alias=row["key_alias"],
        team_id=row["team_id"],
        user_id=row["user_id"],
        organization_id=row["organization_id"],
        model_group=row["model_group"],
        deployment=row["deployment_id"],
        model=deployment.params.model,
        status=200,
        stream=False,
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        usage_source="upstream",
        cost=batch_cost(deployment.price, counts),
        start_time=started,
        end_time=now,
        latency_ms=round((now - started) * 1000, 3),
        ttft_ms=None,
        cancelled_by_client=False,
        response_id=row["object_id"],
    )


def _completed_requests(batch: dict[str, Any]) -> int:
    counts = batch.get("request_counts")
    completed = counts.get("completed") if isinstance(counts, dict) else None
    return completed if isinstance(completed, int) and completed > 0 else 0


def _reported_tokens(batch: dict[str, Any]) -> TokenCounts | None:
    usage = batch.get("usage")
    if not isinstance(usage, dict):
        return None
    given, made = usage.get("input_tokens"), usage.get("output_tokens")
    if isinstance(given, int) and isinstance(made, int):
        return TokenCounts(given, made)
    return None


async def _output_tokens(deployment: Deployment, output_file_id: Any) -> TokenCounts:
    """The tokens of a batch's answers, summed from its output file's lines (the answers
    of the requests it completed: those that failed are in its error file)."""
    prompt = completion = 0
    batches = deployment.abilities.batches
    if not isinstance(output_file_id, str) or not output_file_id or batches is None:
        return TokenCounts()
    response = await batches.file_content(output_file_id)
    try:
        buffer = b""
        async for piece in response.aiter_bytes():
            buffer += piece
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                given, made = _line_tokens(line)
                prompt, completion = prompt + given, completion + made
        given, made = _line_tokens(buffer)
    finally:
        await response.aclose()
    return TokenCounts(prompt + given, completion + made)


def _line_tokens(line: bytes) -> tuple[int, int]:
    try:
        answer = orjson.loads(line) if line.strip() else None
    except orjson.JSONDecodeError:
        return 0, 0
    response = answer.get("response") if isinstance(answer, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    given = usage.get("prompt_tokens", usage.get("input_tokens"))
    made = usage.get("completion_tokens", usage.get("output_tokens"))
    return (given if isinstance(given, int) else 0), (made if isinstance(made, int) else 0)

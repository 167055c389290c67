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

import logging
import time
import uuid
from typing import Any

import httpx
import orjson
import trio

from trigate.auth import key_hash_of_owner
from trigate.errors import Failure, UpstreamError
from trigate.exchanges import Exchange
from trigate.gateway import Gateway
from trigate.metrics import ANONYMOUS, CallerLabels
from trigate.providers.base import translate_transport_error
from trigate.router.deployments import Deployment
from trigate.spend import RequestRecord
from trigate.spend.prices import TokenCounts, batch_cost
from trigate.store import Row, StoreUnavailable

logger = logging.getLogger("trigate")

BATCH = "batch"
# A batch's states after which it changes no more: each is billed for what it completed.
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


async def bill_once(
    gateway: Gateway, exchange: Exchange, row: Row, deployment: Deployment, batch: dict[str, Any]
) -> RequestRecord | None:
    """Bill `batch` (its latest state, as its upstream answered) if it has ended and was
    not billed yet; the spend row written (and counted, as its owner's LLM call, by the
    request's `exchange`), or None when none was (not ended, billed already, by this
    process or another, nothing completed, or the bill failed).

    A failure of the bill never fails the request that saw the batch end: its upstream
    call succeeded, and the batch is already saved ended. It is logged and counted, and
    the batch stays unbilled, for the next retrieve, cancel or list to bill; one whose
    output file its upstream no longer has (404) can never be billed, and is settled
    unbilled, so that nothing asks about it again."""
    if batch.get("status") not in ENDED or row["billed"]:
        return None
    try:
        return await _bill(gateway, exchange, row, deployment, batch)
    except UpstreamError as error:
        gone = error.kind is Failure.NOT_FOUND
        await _failed(gateway, row, str(error.kind), settle=gone)
    except StoreUnavailable:
        await _failed(gateway, row, "store", settle=False)
    except Exception:
        logger.exception("batches: billing %s failed unexpectedly", row["object_id"])
        await _failed(gateway, row, "internal", settle=False)
    return None


async def settle_unbilled(gateway: Gateway, row: Row, reason: str) -> None:
    """Settle a batch its upstream no longer knows without a bill, logged and counted:
    no later look could bill it, so none asks its upstream about it again."""
    await _failed(gateway, row, reason, settle=True)


async def _failed(gateway: Gateway, row: Row, reason: str, *, settle: bool) -> None:
    gateway.telemetry.metrics.batch_billing_failed(reason, settle)
    if not settle:
        logger.warning(
            "batches: billing %s failed (%s); left unbilled for a later look",
            row["object_id"], reason,
        )  # fmt: skip
        return
    logger.error(
        "batches: %s is settled unbilled: its upstream no longer has it (%s)",
        row["object_id"], reason,
    )  # fmt: skip
    try:
        await gateway.store.settle_unbilled(BATCH, row["object_id"])
    except StoreUnavailable:  # the next look settles it
        logger.warning("batches: settling %s failed (store unavailable)", row["object_id"])


async def _bill(
    gateway: Gateway, exchange: Exchange, row: Row, deployment: Deployment, batch: dict[str, Any]
) -> RequestRecord | None:
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
    of the requests it completed: those that failed are in its error file), read as a
    stream: the file may be far larger than a whole answer the gateway would hold."""
    batches = deployment.abilities.batches
    if not isinstance(output_file_id, str) or not output_file_id or batches is None:
        return TokenCounts()
    response = await batches.file_content(output_file_id)
    try:
        return await _summed(response)
    except httpx.HTTPError as error:  # a read broken off, a read timed out
        raise translate_transport_error(error) from error
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()


async def _summed(response: httpx.Response) -> TokenCounts:
    """The usage of a JSONL answer's lines, one line held at a time."""
    prompt = completion = 0
    rest = b""
    async for piece in response.aiter_bytes():
        *lines, rest = (rest + piece).split(b"\n")
        for line in lines:
            given, made = _line_tokens(line)
            prompt, completion = prompt + given, completion + made
    given, made = _line_tokens(rest)
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

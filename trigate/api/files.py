"""OpenAI's Files and Batch APIs through the gateway, for `openai/` and `azure/` deployments,
as LiteLLM's proxy serves them: `/v1/files` (upload, list, retrieve, content, delete)
and `/v1/batches` (create, retrieve, list, cancel), each also without `/v1`.

A file goes to a deployment of the model group that `target_model_names` names (LiteLLM's
form field), or, for a batch file, the group its requests' `model` names; each
request's `model` is rewritten to that deployment's upstream model, as LiteLLM's
managed files do. The key's model access applies. A batch runs where its input file
is. Who uploaded or created each id is kept (`trigate_managed_objects`): another key,
outside the owner's team, gets a 404 for it, as for an id that does not exist.

A batch is billed once, for what it completed, when it is first seen ended (completed,
failed, expired or cancelled) by a retrieve, a cancel or the list's refresh of one not
yet billed: trigate.api.batch_billing; a bill that fails fails no request, and is made
by a later look. The output and error files a batch names are its owner's (and its
team's) as soon as it names them: the upstream made them, so no upload recorded them.
Neither is deleted through the gateway before its batch is billed: the delete bills the
batch first, and answers 409 if it cannot, since the output file may be what the bill
is summed from. A batch its upstream answers 404 for is settled unbilled, and not asked
about again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio

from trigate.api.batch_billing import BATCH, ENDED, bill_once, settle_unbilled
from trigate.api.jsonio import json_body, json_response
from trigate.api.observed import observed
from trigate.api.pipeline import check_access
from trigate.auth import Caller, owner_of
from trigate.errors import (
    Failure,
    GatewayError,
    InvalidRequest,
    NotFound,
    UpstreamError,
    echoed,
)
from trigate.exchanges import Exchange
from trigate.forms import UploadedFile, parse_form
from trigate.gateway import Gateway
from trigate.providers import Batches, Completion
from trigate.router.deployments import Deployment
from trigate.store import ResponseViewer, Row, StoreUnavailable

logger = logging.getLogger("trigate")

FILE = "file"
DEFAULT_PAGE, MAX_PAGE = 20, 10_000
# The batch file fields that name files the upstream made for the batch's owner.
RESULT_FILES = ("output_file_id", "error_file_id")
# How many of a list's batches are refreshed from their upstreams at once.
REFRESHES_AT_ONCE = 8
# Failures worth trying the group's next deployment for.
_NEXT_DEPLOYMENT = frozenset(
    {Failure.RATE_LIMIT, Failure.TIMEOUT, Failure.SERVER, Failure.CONNECTION, Failure.AUTH}
)


def register(app: QuartTrio, gateway: Gateway) -> None:
    """The files' and batches' routes, each observed (trigate.api.observed)."""

    @app.post("/v1/files")
    @app.post("/files")
    @observed(gateway, "create_file")
    async def upload_file(exchange: Exchange) -> Response:
        caller = await _caller(gateway, exchange)
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        form = parse_form(raw, {"content-type": request.headers.get("content-type", "")})
        upload = form.get("file")
        if not isinstance(upload, UploadedFile):
            raise InvalidRequest("`file` is required: the file to upload.", param="file")
        purpose = form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise InvalidRequest("`purpose` is required.", param="purpose")
        requested = _target(form.pop("target_model_names", None), upload, purpose)
        deployments = _routable(gateway, exchange, caller, requested)

        async def attempt(deployment: Deployment, batches: Batches) -> Completion:
            sent = dict(form)
            if purpose == "batch":
                sent["file"] = _retargeted(upload, deployment.upstream_model)
            return await batches.upload_file(sent)

        deployment, answer = await _first_answer(exchange, deployments, attempt)
        await _save(gateway, caller, FILE, deployment, answer.body)
        return json_response(answer.body)

    @app.get("/v1/files")
    @app.get("/files")
    @observed(gateway, "list_files")
    async def list_files(exchange: Exchange) -> Response:
        caller = await _caller(gateway, exchange)
        rows = await _listed(gateway, caller, FILE)
        purpose = request.args.get("purpose")
        data = [row["object"] for row in rows if purpose in (None, row["object"].get("purpose"))]
        return json_response({"object": "list", "data": data, "has_more": False})

    @app.get("/v1/files/<file_id>")
    @app.get("/files/<file_id>")
    @observed(gateway, "retrieve_file")
    async def retrieve_file(exchange: Exchange, file_id: str) -> Response:
        _, deployment, batches = await _owned(gateway, exchange, FILE, file_id)
        async with exchange.attempt(deployment):
            answer = await batches.retrieve_file(file_id)
        return json_response(answer.body)

    @app.get("/v1/files/<file_id>/content")
    @app.get("/files/<file_id>/content")
    @observed(gateway, "file_content")
    async def file_content(exchange: Exchange, file_id: str) -> Response:
        _, deployment, batches = await _owned(gateway, exchange, FILE, file_id)
        async with exchange.attempt(deployment):
            upstream = await batches.file_content(file_id)
        media_type = upstream.headers.get("content-type", "application/octet-stream")
        return Response(_relayed(upstream), content_type=media_type)

    @app.delete("/v1/files/<file_id>")
    @app.delete("/files/<file_id>")
    @observed(gateway, "delete_file")
    async def delete_file(exchange: Exchange, file_id: str) -> Response:
        row, deployment, batches = await _owned(gateway, exchange, FILE, file_id)
        if row["batch_id"] is not None:
            await _billed_before_deleting(gateway, exchange, file_id, row["batch_id"])
        async with exchange.attempt(deployment):
            answer = await batches.delete_file(file_id)
        await gateway.store.delete_managed(FILE, file_id)
        return json_response(answer.body)

    @app.post("/v1/batches")
    @app.post("/batches")
    @observed(gateway, "create_batch")
    async def create_batch(exchange: Exchange) -> Response:
        caller = await _caller(gateway, exchange)
        body = await json_body()
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequest("`input_file_id` is required.", param="input_file_id")
        row, deployment, batches = await _owned(gateway, exchange, FILE, file_id, caller)
        if not caller.is_master:
            covering = gateway.groups.access.covering
            check_access(caller, row["model_group"], row["model_group"], covering)
        if (hooks := gateway.live.hooks) is not None:
            hooks.refuse_unread(caller, row["model_group"], "A batch (its requests in a file)")
        if not caller.is_master:
            await _admitted(gateway, caller)
        sent = {name: value for name, value in body.items() if name != "model"}
        async with exchange.attempt(deployment):
            answer = await batches.create_batch(sent)
        await _save(gateway, caller, BATCH, deployment, answer.body)
        return json_response(answer.body)

    @app.get("/v1/batches")
    @app.get("/batches")
    @observed(gateway, "list_batches")
    async def list_batches(exchange: Exchange) -> Response:
        caller = await _caller(gateway, exchange)
        rows = await _listed(gateway, caller, BATCH)
        data = await _refreshed(gateway, exchange, rows)
        return json_response({"object": "list", "data": data, "has_more": False})

    @app.get("/v1/batches/<batch_id>")
    @app.get("/batches/<batch_id>")
    @observed(gateway, "retrieve_batch")
    async def retrieve_batch(exchange: Exchange, batch_id: str) -> Response:
        return await _asked(gateway, exchange, batch_id, lambda b: b.retrieve_batch(batch_id))

    @app.post("/v1/batches/<batch_id>/cancel")
    @app.post("/batches/<batch_id>/cancel")
    @observed(gateway, "cancel_batch")
    async def cancel_batch(exchange: Exchange, batch_id: str) -> Response:
        return await _asked(gateway, exchange, batch_id, lambda b: b.cancel_batch(batch_id))


async def _asked(
    gateway: Gateway,
    exchange: Exchange,
    batch_id: str,
    ask: Callable[[Batches], Awaitable[Completion]],
) -> Response:
    """A batch's upstream asked (retrieve, cancel), and the batch settled by its answer."""
    row, deployment, batches = await _owned(gateway, exchange, BATCH, batch_id)
    try:
        async with exchange.attempt(deployment):
            answer = await ask(batches)
    except UpstreamError as error:
        await _maybe_gone(gateway, row, error)
        raise
    await _settle(gateway, exchange, row, deployment, answer.body)
    return json_response(answer.body)


async def _maybe_gone(gateway: Gateway, row: Row, error: UpstreamError) -> None:
    """A batch not yet billed that its upstream answers 404 for is settled unbilled: no
    later look could bill it, and the list would ask about it on every page."""
    if error.kind is Failure.NOT_FOUND and not row["billed"]:
        await settle_unbilled(gateway, row, "batch_not_found")


async def _billed_before_deleting(
    gateway: Gateway, exchange: Exchange, file_id: str, batch_id: str
) -> None:
    """Bill the batch that made a result file before the file is deleted: the bill of
    a batch whose upstream gives no `usage` (Azure) is summed from its output file, and
    once that is gone it never could be. A batch still unbilled after this look (not
    ended, its bill failed, its upstream not answering) keeps the file: a 409 saying why."""
    row = await gateway.store.managed(BATCH, batch_id, None)
    deployment = None if row is None else _deployment(gateway, row)
    if row is None or row["billed"] or deployment is None or deployment.abilities.batches is None:
        return  # settled, or no longer anything this gateway could bill
    try:
        async with exchange.attempt(deployment):
            answer = await deployment.abilities.batches.retrieve_batch(batch_id)
    except UpstreamError as error:
        await _maybe_gone(gateway, row, error)
        if error.kind is Failure.NOT_FOUND:
            return
        why = f"its upstream could not be asked about it ({error.kind})"
    else:
        await _settle(gateway, exchange, row, deployment, answer.body)
        settled = await gateway.store.managed(BATCH, batch_id, None)
        if settled is None or settled["billed"]:
            return
        status = answer.body.get("status")
        ended = status in ENDED
        why = "its bill could not be made now" if ended else f"it is `{echoed(str(status))}`"
    raise InvalidRequest(
        f"File `{echoed(file_id)}` is a result of batch `{echoed(batch_id)}`, which is not "
        f"billed yet: {why}. The file can be deleted once the batch is billed; try again "
        "later.",
        status=409,
        code="batch_not_billed",
    )


async def _caller(gateway: Gateway, exchange: Exchange) -> Caller:
    caller = await gateway.auth.authenticate(request.headers)
    exchange.identify(caller)
    return caller


def _target(given: Any, upload: UploadedFile, purpose: str) -> str:
    """The model group a file goes to: LiteLLM's `target_model_names`, else, for a batch
    file, the one `model` its requests name."""
    if isinstance(given, str) and given.strip():
        names = [name.strip() for name in given.split(",") if name.strip()]
        if len(names) > 1:
            raise InvalidRequest(
                "`target_model_names` names more than one model group; this gateway puts a "
                "file on one.",
                param="target_model_names",
            )
        return names[0]
    if purpose == "batch":
        models = {_request_model(line) for line in upload.data.splitlines() if line.strip()}
        if len(models) == 1 and (model := models.pop()) is not None:
            return model
    raise InvalidRequest(
        "Name the model group the file is for: `target_model_names`, or one `model` in "
        "every request of a batch file.",
        param="target_model_names",
    )


def _request_model(line: bytes) -> str | None:
    try:
        request_line = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    body = request_line.get("body") if isinstance(request_line, dict) else None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model else None


def _retargeted(upload: UploadedFile, model: str) -> UploadedFile:
    """A batch file with each request's `model` replaced by the deployment's upstream one;
    a line that is not a request object goes as it came, for the upstream to judge."""
    lines = []
    for line in upload.data.splitlines():
        try:
            request_line = orjson.loads(line) if line.strip() else None
        except orjson.JSONDecodeError:
            request_line = None
        body = request_line.get("body") if isinstance(request_line, dict) else None
        if isinstance(body, dict):
            body["model"] = model
            line = orjson.dumps(request_line)
        lines.append(line)
    return UploadedFile(upload.filename, upload.content_type, b"\n".join(lines) + b"\n")


def _routable(
    gateway: Gateway, exchange: Exchange, caller: Caller, requested: str
) -> list[tuple[Deployment, Batches]]:
    """The group's deployments that serve files and batches, after the key's model access."""
    group = caller.model_group(requested)
    deployments = gateway.groups.deployments(group)  # a 404 for an unknown group
    exchange.concerns(group)
    if not caller.is_master:
        check_access(caller, requested, group, gateway.groups.access.covering)
    served = [(d, d.abilities.batches) for d in deployments if d.abilities.batches is not None]
    if not served:
        raise InvalidRequest(
            f"No deployment of `{echoed(group)}` serves files and batches "
            "(`openai/` and `azure/` ones do).",
            code="unsupported_operation",
        )
    return served


async def _first_answer(
    exchange: Exchange, deployments: list[tuple[Deployment, Batches]], attempt: Any
) -> tuple[Deployment, Completion]:
    """The first deployment's answer, trying the next on a failure another may not have."""
    for index, (deployment, batches) in enumerate(deployments):
        try:
            async with exchange.attempt(deployment):
                answer = await attempt(deployment, batches)
        except UpstreamError as error:
            if error.kind not in _NEXT_DEPLOYMENT or index == len(deployments) - 1:
                raise
            logger.warning(
                "files: deployment %s failed (%s); trying the next", deployment.id, error.kind
            )
        else:
            exchange.concerns(deployment.model_group, deployment)
            return deployment, answer
    raise AssertionError("no deployments")  # `_routable` gives at least one


async def _save(
    gateway: Gateway, caller: Caller, kind: str, deployment: Deployment, answer: dict[str, Any]
) -> None:
    object_id = answer.get("id")
    if not isinstance(object_id, str) or not object_id:
        raise UpstreamError(f"The upstream's {kind} has no id.")
    row = {
        "kind": kind,
        "object_id": object_id,
        "owner": owner_of(caller),
        "team_id": caller.team_id,
        "key_identity": caller.identity,
        "key_alias": caller.key_alias,
        "user_id": caller.user_id,
        "organization_id": caller.organization_id,
        "model_group": deployment.model_group,
        "deployment_id": deployment.id,
        "object": answer,
        "created_at": time.time(),
    }
    if kind == BATCH:  # one that answers already finished names its result files
        await _register_results(gateway, {**row, "object": {}}, answer)
    await gateway.store.save_managed(row)


def _viewer(caller: Caller) -> ResponseViewer | None:
    return None if caller.is_master else ResponseViewer(owner_of(caller), caller.team_id)


async def _owned(
    gateway: Gateway, exchange: Exchange, kind: str, object_id: str, caller: Caller | None = None
) -> tuple[Row, Deployment, Batches]:
    """The file or batch the caller may use (its key's or its team's), the deployment
    that holds it and that deployment's ability; a 404 for anyone else's, as for one
    that is not."""
    if caller is None:
        caller = await _caller(gateway, exchange)
    row = await gateway.store.managed(kind, object_id, _viewer(caller))
    if row is None:
        raise NotFound(f"No {kind} with id `{echoed(object_id)}` exists.", code=f"{kind}_not_found")
    deployment = _deployment(gateway, row)
    if deployment is None or deployment.abilities.batches is None:
        raise NotFound(
            f"The deployment that holds {kind} `{echoed(object_id)}` is no longer served.",
            code=f"{kind}_not_found",
        )
    exchange.concerns(row["model_group"], deployment)
    return row, deployment, deployment.abilities.batches


def _deployment(gateway: Gateway, row: Row) -> Deployment | None:
    try:
        deployments = gateway.groups.deployments(row["model_group"])
    except GatewayError:  # the group is no longer served
        return None
    return next((d for d in deployments if d.id == row["deployment_id"]), None)


async def _listed(gateway: Gateway, caller: Caller, kind: str) -> list[Row]:
    limit = request.args.get("limit", type=int) or DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"`limit` must be 1 to {MAX_PAGE}.", param="limit")
    return await gateway.store.list_managed(kind, _viewer(caller), limit, request.args.get("after"))


async def _admitted(gateway: Gateway, caller: Caller) -> None:
    """The key's budgets and rate limits, as a model request's: a key over its budget
    starts no batch (its cost is known only when it completes)."""

    async def nothing() -> int:
        return 0

    async def free() -> float:
        return 0.0

    admission = await gateway.limits.admit(caller, nothing, free)
    await admission.settle(0, 0.0)


async def _refreshed(gateway: Gateway, exchange: Exchange, rows: list[Row]) -> list[dict[str, Any]]:
    """The listed batches, each not yet billed asked of its upstream and settled as a
    retrieve settles it, a few at a time; one whose upstream fails, or whose deployment
    is no longer served, is listed as last seen (and one its upstream no longer knows
    is settled, not asked again). A billed batch has ended: its state changes no more."""
    data = [row["object"] for row in rows]
    limiter = trio.CapacityLimiter(REFRESHES_AT_ONCE)

    async def refresh(index: int, row: Row) -> None:
        deployment = _deployment(gateway, row)
        if deployment is None or deployment.abilities.batches is None:
            return
        async with limiter:
            try:
                async with exchange.attempt(deployment):
                    answer = await deployment.abilities.batches.retrieve_batch(row["object_id"])
                await _settle(gateway, exchange, row, deployment, answer.body)
            except UpstreamError as error:
                logger.warning(
                    "batches: refreshing %s failed (%s); listed as last seen",
                    row["object_id"],
                    error.kind,
                )
                await _maybe_gone(gateway, row, error)
                return
            except StoreUnavailable:  # listed as last seen; the next list settles it
                return
        data[index] = answer.body

    async with trio.open_nursery() as nursery:
        for index, row in enumerate(rows):
            if not row["billed"]:
                nursery.start_soon(refresh, index, row)
    return data


async def _settle(
    gateway: Gateway, exchange: Exchange, row: Row, deployment: Deployment, batch: dict[str, Any]
) -> None:
    """Keep the batch's latest state, its result files its owner's; bill it once, the
    first time it is seen ended."""
    await _register_results(gateway, row, batch)
    await gateway.store.save_managed({**row, "object": batch})
    await bill_once(gateway, exchange, row, deployment, batch)


async def _register_results(gateway: Gateway, row: Row, batch: dict[str, Any]) -> None:
    """Record the output and error files a batch names as its owner's, on its deployment,
    and as the batch's (which keeps them from deletion until it is billed), the first
    time it names each (before the batch is saved naming them, so that a failure between
    the two is made good on the next look). An id already recorded keeps its record: one
    its owner deleted stays deleted, another's stays theirs."""
    for field in RESULT_FILES:
        file_id = batch.get(field)
        if not isinstance(file_id, str) or not file_id or row["object"].get(field) == file_id:
            continue
        if await gateway.store.managed(FILE, file_id, None) is not None:
            continue
        described = {"id": file_id, "object": "file", "purpose": "batch_output"}
        await gateway.store.save_managed(
            {
                **row,
                "kind": FILE,
                "object_id": file_id,
                "batch_id": row["object_id"],
                "object": described,
                "created_at": time.time(),
            }
        )


async def _relayed(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """A file's content as the upstream sends it, never held whole."""
    try:
        async for piece in upstream.aiter_raw():
            yield piece
    finally:
        with trio.CancelScope(shield=True):
            await upstream.aclose()

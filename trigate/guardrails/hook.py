"""The guardrails as one of the pipeline's hooks (`trigate.hooks`): it finds the
request's guardrails before routing and keeps their run on the request, and each later
hook point asks that run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson

from trigate.guardrails.config import Mode
from trigate.guardrails.runner import APPLIED_HEADER, RUN_ATTRIBUTE, GuardrailRun, GuardrailSet
from trigate.hooks import BaseHook, HookedRequest
from trigate.spend import RequestRecord
from trigate.usage import Usage


class GuardrailHook(BaseHook):
    def __init__(self, guardrails: GuardrailSet) -> None:
        self.guardrails = guardrails

    def __repr__(self) -> str:
        return f"guardrails({', '.join(self.guardrails.guardrails)})"

    def applies(self, request: HookedRequest) -> bool:
        """Whether the request meets any guardrail (`default_on`, its own, its key's or
        its team's)."""
        caller = request.caller
        requested = getattr(request, "requested_guardrails", None) or ()
        return bool(self.guardrails.selected(requested, caller.key, caller.team))

    async def before_route(self, request: HookedRequest) -> dict[str, Any] | None:
        caller = request.caller
        requested = getattr(request, "requested_guardrails", None) or ()
        chosen = self.guardrails.selected(requested, caller.key, caller.team)
        if not chosen:
            return None
        telemetry = getattr(request, "telemetry", None)
        span = getattr(telemetry, "span", None)
        observer = self.guardrails.observer
        # Who asked is read only for a guardrail given a `Step` (most are given none).
        run = GuardrailRun(chosen, observer, request.model_group, span, partial(_asker, request))
        setattr(request, RUN_ATTRIBUTE, run)
        request.context.headers[APPLIED_HEADER] = run.header
        if run.runs(Mode.PRE_CALL):
            # The client's own request is read only where a guardrail may mask it.
            await run.pre_call(request.body, _native(request))
        if run.runs(Mode.LOGGING_ONLY):  # (a coroutine that does nothing still costs)
            await run.log_request(request.body)
        return None

    def beside_route(self, request: HookedRequest) -> Any:
        run = _run(request)
        if run is None or not run.runs(Mode.DURING_CALL):
            return None
        body, native = request.body, _native(request)

        async def during_call() -> None:
            await run.during_call(body, native)

        return during_call

    def watches_stream(self, request: HookedRequest) -> bool:
        run = _run(request)
        return run is not None and run.watches_stream

    async def on_chunk(self, request: HookedRequest, chunk: Any) -> Any:
        run = _run(request)
        return chunk if run is None else await run.on_chunk(chunk)

    async def on_stream_end(self, request: HookedRequest) -> list[Any]:
        run = _run(request)
        return [] if run is None else await run.on_stream_end()

    async def after_answer(
        self, request: HookedRequest, answer: dict[str, Any], usage: Usage
    ) -> bool:
        run = _run(request)
        if run is None or not answer:  # a stream's was checked as it went
            return False
        return await run.post_call(answer)

    def personalises(self, request: HookedRequest) -> bool:
        """A run that unmasks answers each caller with what it masked of its own request."""
        run = _run(request)
        return run is not None and run.unmasks

    def redacted(self, request: HookedRequest, record: RequestRecord) -> RequestRecord:
        run = _run(request)
        return record if run is None else redact_record(run, record, request)


def _asker(request: HookedRequest) -> dict[str, Any]:
    """Who asked, by LiteLLM's names: what a guardrail service is told of the request."""
    caller = request.caller
    return {
        "user_api_key_hash": caller.key_hash,
        "user_api_key_alias": caller.key_alias,
        "user_api_key_user_id": caller.user_id,
        "user_api_key_team_id": caller.team_id,
        "user_api_key_end_user_id": caller.end_user_id,
        "user_api_key_org_id": caller.organization_id,
        "litellm_call_id": request.context.request_id,
    }


def _native(request: HookedRequest) -> dict[str, Any] | None:
    """The request in the client's own API, where the surface offers it (a Responses
    request a deployment speaking that API is sent): masked alike with `body`, so such a
    deployment may still be sent it (`Exchange.native_request`)."""
    offered = getattr(request, "native_request", None)
    native: dict[str, Any] | None = offered() if offered is not None else None
    return native


def _run(request: HookedRequest) -> GuardrailRun | None:
    run: GuardrailRun | None = getattr(request, RUN_ATTRIBUTE, None)
    return run


def redact_record(run: GuardrailRun, record: RequestRecord, request: Any = None) -> RequestRecord:
    """The record as it may be stored and exported: each text a `logging_only`
    guardrail found masked in every field (the messages and answers a logging callback
    may carry included), with the run's `guardrail_information` in its metadata as
    LiteLLM logs it. The request's span is masked the same way before it is exported."""
    metadata = dict(record.metadata or {})
    metadata["guardrail_information"] = run.information
    record = dataclasses.replace(record, metadata=metadata)
    redactions = _with_json_forms(run.redactions)
    if not redactions:
        return record
    changed = {
        f.name: _masked(getattr(record, f.name), redactions) for f in dataclasses.fields(record)
    }
    span = getattr(getattr(request, "telemetry", None), "span", None)
    attributes = getattr(span, "attributes", None)
    if isinstance(attributes, dict):
        attributes.update(_masked(attributes, redactions))
    return dataclasses.replace(record, **changed)


def _with_json_forms(redactions: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each (original, mask) pair, and the pair as it reads inside a JSON string (the
    span's `gen_ai.input.messages` is one), where that differs; longest first, so that a
    text inside another is masked as part of it."""
    pairs = set(redactions)
    for original, mask in redactions:
        escaped = orjson.dumps(original).decode()[1:-1]
        if escaped != original:
            pairs.add((escaped, orjson.dumps(mask).decode()[1:-1]))
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def _masked(value: Any, redactions: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for original, mask in redactions:
            if original in value:
                value = value.replace(original, mask)
        return value
    if isinstance(value, dict):
        return {key: _masked(item, redactions) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked(item, redactions) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # The record's export details (`RecordDetails`): the messages and the answer
        # a logging callback sends.
        fields = dataclasses.fields(value)
        return dataclasses.replace(
            value, **{f.name: _masked(getattr(value, f.name), redactions) for f in fields}
        )
    return value

"""The record a model call leaves is made positionally (`Call._record`, on every request):
`RequestRecord` must keep `RECORD_FIELDS` first and in that order, and the call must pass
each field's own value in its place, or every spend row would silently hold values in the
wrong columns. mypy cannot tell two fields of one type apart (prompt and completion
tokens, start and end times), so the call's arguments are read here, field by field."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import trigate.api.pipeline
from trigate.spend import RequestRecord
from trigate.spend.records import RECORD_FIELDS

# What `Call._record` passes for each field, as its source reads.
PASSED = {
    "request_id": "context.request_id",
    "key_identity": "caller.identity",
    "key_hash": "caller.key_hash",
    "key_alias": "caller.key_alias",
    "team_id": "caller.team_id",
    "user_id": "caller.user_id",
    "model_group": "self.progress.model_group",
    "deployment": "deployment.id if deployment else None",
    "model": "deployment.params.model if deployment else None",
    "status": "status",
    "stream": "self.stream",
    "prompt_tokens": "usage.prompt_tokens",
    "completion_tokens": "usage.completion_tokens",
    "usage_source": "usage.source",
    "cost": "cost",
    "start_time": "end - elapsed",
    "end_time": "end",
    "latency_ms": "round(elapsed * 1000, 3)",
    "ttft_ms": "round(self.ttft * 1000, 3) if self.ttft is not None else None",
    "cancelled_by_client": "cancelled",
    "error": "secrets.redact(error.message) if error else None",
    "client_request_id": "context.client_request_id",
    "response_id": "context.response_id",
    "end_user": "caller.end_user_id",
    "organization_id": "caller.organization_id",
}


def test_the_fields_a_call_passes_by_position_come_first_in_that_order() -> None:
    names = [field.name for field in dataclasses.fields(RequestRecord)]
    assert names[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    assert list(PASSED) == list(RECORD_FIELDS)


def test_the_call_passes_each_field_its_own_value() -> None:
    source = Path(trigate.api.pipeline.__file__).read_text()
    [call] = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "RequestRecord"
    ]
    assert not call.keywords
    passed = dict(zip(RECORD_FIELDS, map(ast.unparse, call.args), strict=True))
    assert passed == PASSED

"""LiteLLM's `StandardLoggingPayload`, made from a request's record.

Tools written against LiteLLM's callbacks read this shape (its `litellm/types/utils.py`
TypedDict and the proxy's "StandardLoggingPayload Specification" page), so every sink
sends it, or is made from it: every field LiteLLM's type names is present, those
trigate has nothing for as LiteLLM leaves them (None, an empty list or dict).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from trigate.spend import RecordDetails, RequestRecord

# What LiteLLM's `turn_off_message_logging` puts in place of messages and answers.
REDACTED = "redacted-by-litellm"
# LiteLLM's proxy names its calls by the async SDK call that served them.
CALL_TYPES = {
    "completion": "acompletion",
    "text_completion": "atext_completion",
    "embeddings": "aembedding",
}


def standard_logging_payload(record: RequestRecord, *, redact: bool = False) -> dict[str, Any]:
    """The record as LiteLLM's `StandardLoggingPayload`; `redact` leaves messages and
    answers out (LiteLLM's `turn_off_message_logging`). Made once per record: sinks read
    it, never change it."""
    details = record.details
    if details is None:
        record.details = details = RecordDetails("completion")
    elif details.payload is not None and details.payload[0] is redact:
        return details.payload[1]
    payload = _payload(record, details, redact)
    details.payload = (redact, payload)
    return payload


def _payload(record: RequestRecord, details: RecordDetails, redact: bool) -> dict[str, Any]:
    failed = record.status >= 400
    status = "failure" if failed else "success"
    model = record.model or record.model_group
    if details.provider and model.startswith(details.provider + "/"):
        model = model[len(details.provider) + 1 :]  # LiteLLM's: the name the provider knows
    latency = record.latency_ms / 1000
    completion_start = record.start_time + (
        record.ttft_ms / 1000 if record.ttft_ms is not None else latency
    )
    total = record.prompt_tokens + record.completion_tokens
    messages, response = details.messages, details.response
    if redact:
        messages = REDACTED if messages is not None else None
        response = REDACTED if response is not None else None
    return {
        "id": record.request_id,
        "trace_id": record.session_id or record.request_id,
        "call_type": CALL_TYPES.get(details.call_type, details.call_type),
        "stream": record.stream,
        "response_cost": record.cost,
        "cost_breakdown": None,
        "response_cost_failure_debug_info": None,
        "status": status,
        "status_fields": {"llm_api_status": status, "guardrail_status": "not_run"},
        "custom_llm_provider": details.provider,
        "total_tokens": total,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "startTime": record.start_time,
        "endTime": record.end_time,
        "completionStartTime": completion_start,
        "response_time": (completion_start - record.start_time) if record.stream else latency,
        "model_map_information": {"model_map_key": model, "model_map_value": None},
        "model": model,
        "model_id": record.deployment,
        "model_group": record.model_group,
        "api_base": details.api_base or "",
        "metadata": _metadata(record, details),
        "cache_hit": None,
        "cache_key": None,
        "saved_cache_cost": 0.0,
        "request_tags": list(record.request_tags or ()),
        "end_user": record.end_user,
        "requester_ip_address": None,
        "messages": messages,
        "response": response,
        "error_str": record.error if failed else None,
        "error_information": _error_information(record, details) if failed else None,
        "model_parameters": details.model_parameters or {},
        "hidden_params": {
            "model_id": record.deployment,
            "cache_key": None,
            "api_base": details.api_base,
            "response_cost": str(record.cost),
            "litellm_overhead_time_ms": None,
            "additional_headers": None,
            "batch_models": None,
            "litellm_model_name": record.model,
            "usage_object": _usage(record),
        },
        "guardrail_information": None,
        "standard_built_in_tools_params": None,
    }


def _metadata(record: RequestRecord, details: RecordDetails) -> dict[str, Any]:
    """LiteLLM's `StandardLoggingMetadata`: who asked, and what they asked to be logged."""
    return {
        "user_api_key_hash": record.key_hash,
        "user_api_key_alias": record.key_alias,
        "user_api_key_spend": None,
        "user_api_key_max_budget": None,
        "user_api_key_budget_reset_at": None,
        "user_api_key_org_id": record.organization_id,
        "user_api_key_team_id": record.team_id,
        "user_api_key_user_id": record.user_id,
        "user_api_key_user_email": details.user_email,
        "user_api_key_team_alias": details.team_alias,
        "user_api_key_end_user_id": record.end_user,
        "user_api_key_request_route": details.route,
        "user_api_key_auth_metadata": None,
        "spend_logs_metadata": (record.metadata or {}).get("spend_logs_metadata"),
        "requester_ip_address": None,
        "requester_metadata": record.metadata or {},
        "requester_custom_headers": None,
        "prompt_management_metadata": None,
        "mcp_tool_call_metadata": None,
        "vector_store_request_metadata": None,
        "applied_guardrails": None,
        "usage_object": _usage(record),
        "cold_storage_object_key": None,
    }


def _usage(record: RequestRecord) -> dict[str, int]:
    return {
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.prompt_tokens + record.completion_tokens,
    }


def _error_information(record: RequestRecord, details: RecordDetails) -> dict[str, Any]:
    return {
        "error_code": str(record.status),
        "error_class": details.error_class,
        "llm_provider": details.provider,
        "traceback": None,
        "error_message": record.error,
    }


def iso_time(timestamp: float) -> str:
    """A wall-clock time as ISO 8601 in UTC, as Langfuse and Datadog read times."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")

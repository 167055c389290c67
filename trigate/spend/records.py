"""The record every request leaves behind.

Records are written from `finally` blocks under a shield, so a request that
fails or is cancelled by its client is still accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# The fields a model call's record is made with, in order: the pipeline passes them by
# position (`Call._record`, on every request), which costs a fraction of keywords, so
# `RequestRecord` keeps them first and in this order; a new field goes after them, with a
# default (tests/test_request_record.py holds the order and what the call passes each).
RECORD_FIELDS = (
    "request_id", "key_identity", "key_hash", "key_alias", "team_id", "user_id",
    "model_group", "deployment", "model", "status", "stream", "prompt_tokens",
    "completion_tokens", "usage_source", "cost", "start_time", "end_time", "latency_ms",
    "ttft_ms", "cancelled_by_client", "error", "client_request_id", "response_id",
    "end_user", "organization_id",
)  # fmt: skip


@dataclass(slots=True)
class RequestRecord:
    # The gateway's own id for the request; a client's x-request-id is `client_request_id`.
    request_id: str
    # Who asked, never the key itself: "master" or the key hash's first 16 hex digits.
    key_identity: str
    key_hash: str | None
    key_alias: str | None
    team_id: str | None
    user_id: str | None
    model_group: str
    deployment: str | None
    model: str | None
    status: int
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    usage_source: str
    cost: float
    start_time: float
    end_time: float
    latency_ms: float
    ttft_ms: float | None
    cancelled_by_client: bool
    error: str | None = None
    client_request_id: str | None = None
    # The id the client's answer carried (chatcmpl-..., msg_..., resp_...), if any.
    response_id: str | None = None
    # LiteLLM's end user (customer): the request's `user`, billed its cost.
    end_user: str | None = None
    # The organization of the key's team, billed its cost.
    organization_id: str | None = None
    # What the client asked to be logged with the request (LiteLLM's `metadata`, `tags`,
    # `litellm_session_id`), from `trigate.api.litellm_request`.
    metadata: dict[str, Any] | None = None
    request_tags: list[str] | None = None
    session_id: str | None = None
    # The response cache's (trigate.cache): whether the answer came from it at no cost
    # (a hit, or a share of an identical request's call), and its key (LiteLLM's names).
    cache_hit: bool = False
    cache_key: str | None = None
    # What only export sinks read, never stored: set by the record stage when a sink is
    # on (`trigate.export`), None otherwise.
    details: RecordDetails | None = None


@dataclass(slots=True)
class RecordDetails:
    """A request's part of LiteLLM's `StandardLoggingPayload` that its spend row does not
    hold. A guardrail that masks a record for logging masks `messages` and `response`
    here: sinks read the record only once it would be stored."""

    call_type: str
    messages: Any = None
    response: Any = None
    model_parameters: dict[str, Any] | None = None
    provider: str | None = None
    api_base: str | None = None
    error_class: str | None = None
    team_alias: str | None = None
    user_email: str | None = None
    route: str | None = None
    # The key's and team's LiteLLM `logging` callbacks (metadata.logging), key's first.
    logging: list[dict[str, Any]] | None = None
    # The payload once made, and whether it was redacted (trigate.export.payload): every
    # sink of the record shares it.
    payload: tuple[bool, dict[str, Any]] | None = None


class RecordSink(Protocol):
    async def write(self, record: RequestRecord) -> None: ...

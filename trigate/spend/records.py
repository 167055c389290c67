"""The record every request leaves behind, and where records go.

Records are written from `finally` blocks under a shield, so a request that
fails or is cancelled by its client is still accounted for. For now they are
structured log lines; the key store's spend log takes them later.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Protocol

import orjson

logger = logging.getLogger("trigate.usage")


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    # Who asked, never the key itself: "master" or a key's hash prefix.
    key_identity: str
    model_group: str
    deployment: str | None
    status: int
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    usage_source: str
    latency_ms: float
    ttft_ms: float | None
    cancelled_by_client: bool
    error: str | None = None


class RecordSink(Protocol):
    async def write(self, record: RequestRecord) -> None: ...


class LogRecordSink:
    """Writes each record as one JSON log line on the `trigate.usage` logger."""

    async def write(self, record: RequestRecord) -> None:
        logger.info(orjson.dumps(asdict(record)).decode())

"""LiteLLM's `generic_api` callback: batches of `StandardLoggingPayload` POSTed to any
HTTP endpoint, with the headers the config gives.

Configured as LiteLLM configures it: `GENERIC_LOGGER_ENDPOINT` and
`GENERIC_LOGGER_HEADERS` (`k=v,k2=v2`) for the name `generic_api`, or a
`callback_settings.<name>` entry with `callback_type: generic_api`, `endpoint`,
`headers`, `event_types` (`llm_api_success`, `llm_api_failure`) and `log_format`
(`json_array`, the default: one JSON array per batch; `ndjson`: one line per row;
`single`: one POST per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson

from trigate.export.http import parse_headers, post
from trigate.export.payload import standard_logging_payload
from trigate.spend import RequestRecord

LOG_FORMATS = ("json_array", "ndjson", "single")


class GenericAPI:
    """One generic_api receiver."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        endpoint: str,
        headers: Mapping[str, str],
        *,
        log_format: str = "json_array",
        redact: bool = False,
    ) -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        self._client = client
        self._endpoint = endpoint
        self._headers = {"content-type": "application/json", **headers}
        self._format = log_format
        self._redact = redact

    @classmethod
    def from_settings(
        cls,
        client: httpx.AsyncClient,
        settings: Mapping[str, Any],
        environ: Mapping[str, str],
        *,
        redact: bool,
    ) -> GenericAPI:
        endpoint = settings.get("endpoint") or environ.get("GENERIC_LOGGER_ENDPOINT")
        if not endpoint:
            raise ValueError("generic_api needs an endpoint (or GENERIC_LOGGER_ENDPOINT)")
        headers = settings.get("headers")
        if headers is None:
            headers = parse_headers(environ.get("GENERIC_LOGGER_HEADERS"))
        if not isinstance(headers, Mapping):
            raise ValueError("generic_api headers must be a mapping")  # noqa: TRY004 (a config error)
        log_format = str(settings.get("log_format") or "json_array")
        named = {str(name): str(value) for name, value in headers.items()}
        return cls(client, str(endpoint), named, log_format=log_format, redact=redact)

    async def send(self, batch: Sequence[RequestRecord]) -> None:
        payloads = [standard_logging_payload(record, redact=self._redact) for record in batch]
        if self._format == "single":
            for payload in payloads:
                await post(self._client, self._endpoint, orjson.dumps(payload), self._headers)
            return
        if self._format == "ndjson":
            body = b"\n".join(orjson.dumps(payload) for payload in payloads)
            headers = {**self._headers, "content-type": "application/x-ndjson"}
            await post(self._client, self._endpoint, body, headers)
            return
        await post(self._client, self._endpoint, orjson.dumps(payloads), self._headers)

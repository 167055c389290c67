"""LiteLLM's `datadog` callback: each row a log in Datadog's logs intake (HTTP API v2),
its message the `StandardLoggingPayload` as JSON, gzipped batches.

`DD_API_KEY` and `DD_SITE` (`us5.datadoghq.com`) as LiteLLM reads them; the intake is
`https://http-intake.logs.<DD_SITE>/api/v2/logs`, or `<DD_BASE_URL>/api/v2/logs`.
`DD_SOURCE`, `DD_SERVICE`, `DD_ENV`, `DD_VERSION` and `HOSTNAME` label each log.
"""

from __future__ import annotations

import gzip
import socket
from collections.abc import Mapping, Sequence

import httpx
import orjson

from trigate.errors import secrets
from trigate.export.http import post
from trigate.export.payload import standard_logging_payload
from trigate.spend import RequestRecord


class Datadog:
    def __init__(
        self, client: httpx.AsyncClient, environ: Mapping[str, str], *, redact: bool
    ) -> None:
        api_key = environ.get("DD_API_KEY")
        site = environ.get("DD_SITE")
        base = environ.get("DD_BASE_URL")
        if not api_key or not (site or base):
            raise ValueError("datadog needs DD_API_KEY and DD_SITE (or DD_BASE_URL)")
        secrets.add(api_key)
        self._client = client
        root = base.rstrip("/") if base else f"https://http-intake.logs.{site}"
        self._url = root + "/api/v2/logs"
        self._headers = {
            "DD-API-KEY": api_key,
            "content-type": "application/json",
            "content-encoding": "gzip",
        }
        self._source = environ.get("DD_SOURCE", "litellm")
        self._service = environ.get("DD_SERVICE", "litellm-server")
        self._hostname = environ.get("HOSTNAME") or socket.gethostname()
        tags = {
            "env": environ.get("DD_ENV", "unknown"),
            "service": self._service,
            "version": environ.get("DD_VERSION", "unknown"),
            "HOSTNAME": self._hostname,
        }
        self._tags = ",".join(f"{name}:{value}" for name, value in tags.items())
        self._redact = redact

    async def send(self, batch: Sequence[RequestRecord]) -> None:
        logs = []
        for record in batch:
            payload = standard_logging_payload(record, redact=self._redact)
            logs.append(
                {
                    "ddsource": self._source,
                    "ddtags": self._tags,
                    "hostname": self._hostname,
                    "message": orjson.dumps(payload).decode(),
                    "service": self._service,
                    "status": "info" if payload["status"] == "success" else "error",
                }
            )
        # The fastest level: JSON logs shrink well at any, and the sender's CPU is the cost.
        body = gzip.compress(orjson.dumps(logs), compresslevel=1)
        await post(self._client, self._url, body, self._headers)

"""LiteLLM's `s3` callback: one JSON object per request, its `StandardLoggingPayload`,
under LiteLLM's key layout: `<s3_path>/<YYYY-MM-DD>/time-<HH-MM-SS-ffffff>_<id>.json`
(the request's start, in UTC).

Configured by `litellm_settings.s3_callback_params` (`s3_bucket_name`, `s3_region_name`,
`s3_aws_access_key_id`, `s3_aws_secret_access_key`, `s3_aws_session_token`,
`s3_endpoint_url`, `s3_path`), each falling back to the usual AWS variables. Each PUT is
signed with botocore's SigV4 for S3 and sent on the export client: S3 has no batch
PUT, so a batch is its objects one after another (a batch sent again writes the same
keys again, which is harmless).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from trigate.errors import secrets
from trigate.export.http import post
from trigate.export.payload import standard_logging_payload
from trigate.spend import RequestRecord


def object_key(path: str | None, start_time: float, request_id: str) -> str:
    """LiteLLM's key for a request's object (its `get_s3_object_key` and logging id)."""
    start = datetime.fromtimestamp(start_time, UTC)
    name = f"time-{start.strftime('%H-%M-%S-%f')}_{request_id}".replace("/", "_")
    prefix = path.rstrip("/") + "/" if path else ""
    return f"{prefix}{start.strftime('%Y-%m-%d')}/{name}.json"


class S3:
    def __init__(
        self,
        client: httpx.AsyncClient,
        params: Mapping[str, Any],
        environ: Mapping[str, str],
        *,
        redact: bool,
    ) -> None:
        bucket = params.get("s3_bucket_name") or environ.get("S3_BUCKET_NAME")
        if not bucket:
            raise ValueError("s3 needs s3_callback_params.s3_bucket_name")
        access = params.get("s3_aws_access_key_id") or environ.get("AWS_ACCESS_KEY_ID")
        secret = params.get("s3_aws_secret_access_key") or environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            raise ValueError("s3 needs s3_aws_access_key_id and s3_aws_secret_access_key")
        token = params.get("s3_aws_session_token") or environ.get("AWS_SESSION_TOKEN")
        secrets.extend([secret, token])
        region = (
            params.get("s3_region_name")
            or environ.get("AWS_REGION")
            or environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        endpoint = params.get("s3_endpoint_url")
        if endpoint:  # an S3-compatible store: path-style addressing
            self._base = f"{str(endpoint).rstrip('/')}/{bucket}/"
        else:
            self._base = f"https://{bucket}.s3.{region}.amazonaws.com/"
        self._path = params.get("s3_path")
        self._signer = S3SigV4Auth(Credentials(str(access), str(secret), token), "s3", region)
        self._client = client
        self._redact = redact

    async def send(self, batch: Sequence[RequestRecord]) -> None:
        for record in batch:
            payload = standard_logging_payload(record, redact=self._redact)
            key = object_key(self._path, record.start_time, record.request_id)
            url = self._base + quote(key, safe="/-_.~")
            body = orjson.dumps(payload)
            request = AWSRequest(
                method="PUT", url=url, data=body, headers={"content-type": "application/json"}
            )
            self._signer.add_auth(request)
            await post(self._client, url, body, dict(request.headers.items()), method="PUT")

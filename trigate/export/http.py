"""What the HTTP sinks share: one POST, its answer read as a sink's success or failure."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from trigate.errors import secrets
from trigate.export.outbox import SinkError

# Answers worth sending the same batch again for: the receiver may take it later.
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


async def post(
    client: httpx.AsyncClient,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    *,
    method: str = "POST",
) -> None:
    """Send `content`; a refused or unreachable receiver is a `SinkError` (retried unless
    its status says sending again cannot help). The URL is named without its query,
    which may carry a credential."""
    where = url.split("?", 1)[0]
    try:
        response = await client.request(method, url, content=content, headers=dict(headers))
    except httpx.HTTPError as error:
        raise SinkError(f"{where}: {type(error).__name__}") from None
    if response.status_code >= 300:
        detail = secrets.redact(response.text[:200])
        raise SinkError(
            f"{where}: HTTP {response.status_code} {detail}",
            retry=response.status_code in RETRYABLE,
        )


def parse_headers(raw: str | None) -> dict[str, str]:
    """LiteLLM's `k=v,k2=v2` header lists (GENERIC_LOGGER_HEADERS)."""
    pairs = (item.partition("=") for item in (raw or "").split(","))
    return {name.strip(): value.strip() for name, _, value in pairs if name.strip()}

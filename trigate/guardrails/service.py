"""A guardrail's HTTP service: JSON in, JSON out, and anything else its failure.

An answer that is not a 2xx, not JSON, or not the shape the guardrail reads is a
`GuardrailFailed`, which the runner turns into a block unless the guardrail is
`fail_open`: a guardrail never passes a request because its service answered garbage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

from trigate.errors import secrets
from trigate.guardrails.base import GuardrailFailed
from trigate.guardrails.config import ConfigProblem
from trigate.tls import client_context
from trigate.transport import HTTP11Transport

# A guardrail service's answer is small; a larger one is garbage.
MAX_ANSWER_BYTES = 4 * 1024 * 1024

Sign = Callable[[str, dict[str, str], bytes], dict[str, str]]


class Service:
    """One guardrail's connections to its service (the runner bounds each call)."""

    def __init__(self, name: str, api_key: str | None = None) -> None:
        self._name = name
        self._transport = HTTP11Transport(
            max_connections=100, ssl_context=client_context(), max_response_bytes=MAX_ANSWER_BYTES
        )
        secrets.add(api_key)

    async def post(
        self,
        url: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        sign: Sign | None = None,
    ) -> Any:
        content = orjson.dumps(payload)
        head = {"content-type": "application/json", **(headers or {})}
        if sign is not None:
            head = sign(url, head, content)
        request = httpx.Request("POST", url, headers=head, content=content)
        try:
            response = await self._transport.handle_async_request(request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        except httpx.HTTPError as error:
            raise GuardrailFailed(f"{self._name}: {type(error).__name__}") from error
        if not 200 <= response.status_code < 300:
            raise GuardrailFailed(f"{self._name} answered HTTP {response.status_code}")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise GuardrailFailed(f"{self._name} answered what is not JSON") from None

    async def aclose(self) -> None:
        await self._transport.aclose()


def need(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """`value` if it is of `kind`; else the service's answer cannot be read."""
    if not isinstance(value, kind):
        raise GuardrailFailed(f"the guardrail service's answer has no {what}")
    return value


def base_url(api_base: str | None, default: str | None, name: str, setting: str) -> str:
    url = api_base or default
    if not url:
        raise ConfigProblem(f"guardrails `{name}`: `{setting}` is required")
    return url.rstrip("/")

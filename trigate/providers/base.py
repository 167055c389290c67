"""What every provider module offers the gateway, and the helpers they share.

A provider adapter is built once per deployment, so URLs, headers and
timeouts are computed at start-up rather than on every request. Adapters speak
OpenAI's shapes to the rest of the gateway: a non-stream call returns a
`Completion`, a stream call returns a `ChunkStream` of OpenAI chunk dicts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import orjson

from trigate.errors import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
    from_upstream_status,
)

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

# How much of an upstream's error body is worth reading and quoting.
ERROR_BODY_LIMIT = 64 * 1024
ERROR_MESSAGE_LIMIT = 1000


@dataclass(slots=True)
class Completion:
    """A finished chat completion in OpenAI's shape."""

    body: dict[str, Any]
    # The upstream's own bytes, relayed untouched when nothing needed changing.
    raw: bytes | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        usage = self.body.get("usage")
        return usage if isinstance(usage, dict) else None


class ChunkStream(Protocol):
    """An open upstream stream, read as OpenAI `chat.completion.chunk` dicts.

    Iterating ends at the upstream's end of stream; `aclose` releases the
    connection and must be called however the reading ended.
    """

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    """One deployment's adapter to its upstream."""

    async def complete(self, body: dict[str, Any]) -> Completion: ...

    async def open_stream(self, body: dict[str, Any]) -> ChunkStream: ...


class ProviderFactory(Protocol):
    def __call__(
        self, params: LiteLLMParams, http: httpx.AsyncClient, counter: TokenCounter
    ) -> Provider: ...


def timeout_for(params: LiteLLMParams) -> httpx.Timeout:
    """The deployment's `timeout` bounds each read; connecting gets at most 10 s of it."""
    return httpx.Timeout(params.timeout, connect=min(params.timeout, 10.0))


def translate_transport_error(error: httpx.HTTPError) -> UpstreamError:
    if isinstance(error, httpx.TimeoutException):
        return UpstreamTimeout(f"The upstream did not answer in time ({type(error).__name__}).")
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return UpstreamUnreachable("The upstream could not be reached.")
    return UpstreamError(f"The upstream connection failed ({type(error).__name__}).")


async def error_from_response(response: httpx.Response) -> UpstreamError:
    """Read (a bounded part of) an error response and turn it into the client's error."""
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= ERROR_BODY_LIMIT:
            break
    message, code = _error_details(body)
    message = message or f"The upstream answered {response.status_code}."
    return from_upstream_status(response.status_code, message, response.headers, code)


def _error_details(body: bytes) -> tuple[str, str | None]:
    """The message and machine-readable code of an OpenAI-style error body."""
    text = body[:ERROR_MESSAGE_LIMIT].decode("utf-8", "replace").strip()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text, None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code") or error.get("type")
        return (
            message[:ERROR_MESSAGE_LIMIT] if isinstance(message, str) else text,
            code if isinstance(code, str) else None,
        )
    if isinstance(error, str):
        return error[:ERROR_MESSAGE_LIMIT], None
    return text, None

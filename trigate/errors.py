"""Errors a client can see, always in OpenAI's envelope.

Every failure the gateway reports is a `GatewayError`: it knows its HTTP status
and how to render itself as `{"error": {"message", "type", "param", "code"}}`,
so that the OpenAI SDK maps it to the right exception class.  Messages pass
through `redact` because upstream errors sometimes echo credentials back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson

# Upstreams echo keys back in messages such as "Incorrect API key provided: sk-abc...".
_KEY_PATTERN = re.compile(r"\b(?:sk|pk|rk|key)-[A-Za-z0-9_\-]{6,}")


class Secrets:
    """The credentials this process knows of, scrubbed from anything a client or log sees."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self._values.add(value)

    def extend(self, values: Iterable[str | None]) -> None:
        for value in values:
            self.add(value)

    def redact(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, "[redacted]")
        return _KEY_PATTERN.sub("[redacted]", text)


secrets = Secrets()


class GatewayError(Exception):
    """An error with an HTTP status, rendered in OpenAI's error envelope."""

    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": secrets.redact(self.message),
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.to_dict())


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or is not served by this gateway.",
            param="model",
        )


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(GatewayError):
    """The upstream answered with an error, or broke off."""

    status = 502
    type = "api_error"
    code = "upstream_error"
    upstream_status: int | None = None


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def from_upstream_status(status: int, message: str, headers: dict[str, str]) -> UpstreamError:
    """Map an upstream's error status onto what the gateway's client should see.

    Client errors (bad parameters, rate limits) keep their status so that the
    client can act on them. The deployment's credentials being refused is the
    gateway's problem, not the client's, so 401/403 become 502, as do 5xx.
    """
    error = UpstreamError(message)
    if status in _TYPE_BY_STATUS:
        error.status = status
        error.type = _TYPE_BY_STATUS[status]
        error.code = "rate_limit_exceeded" if status == 429 else None
    if status == 429:
        error.headers = {
            name: value
            for name, value in headers.items()
            if name in ("retry-after", "retry-after-ms")
        }
    error.upstream_status = status
    return error

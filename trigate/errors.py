"""Errors a client can see, always in OpenAI's envelope.

Every failure the gateway reports is a `GatewayError`: it knows its HTTP status
and how to render itself as `{"error": {"message", "type", "param", "code"}}`,
so that the OpenAI SDK maps it to the right exception class.  Messages pass
through `redact` because upstream errors sometimes echo credentials back.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import time
from collections.abc import Iterable, Mapping
from enum import StrEnum

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


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self) -> None:
        super().__init__("The request body is larger than this gateway accepts.")


class Failure(StrEnum):
    """What went wrong upstream, as far as retries, cooldowns and fallbacks care."""

    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    SERVER = "server"
    CONNECTION = "connection"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    CONTEXT_WINDOW = "context_window"
    CONTENT_POLICY = "content_policy"


class UpstreamError(GatewayError):
    """The upstream answered with an error, or broke off."""

    status = 502
    type = "api_error"
    code: str | None = "upstream_error"
    kind = Failure.SERVER
    upstream_status: int | None = None
    # Seconds the upstream asked us to wait, from `retry-after-ms` or `retry-after`.
    retry_after: float | None = None


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
    kind = Failure.TIMEOUT


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"
    kind = Failure.CONNECTION


class NoDeploymentAvailable(GatewayError):
    """Every deployment of a model group is cooling down or at its cap."""

    status = 429
    type = "rate_limit_error"
    code = "no_deployment_available"


_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}
_CONTEXT_WORDS = re.compile(
    r"context length|context window|maximum context|too many (?:input )?tokens|prompt is too long"
    r"|input is too long|exceeds the context",
    re.IGNORECASE,
)
_POLICY_CODES = {"content_filter", "content_policy_violation", "content_policy"}
_POLICY_WORDS = re.compile(
    r"content management policy|content[_ ]filter|content policy|safety system", re.IGNORECASE
)


# What a client sees of each kind: (status, type, code); None keeps the upstream's own.
# Server failures, not listed, stay 502. An upstream refusing the deployment's credentials
# is a 401, as LiteLLM answers, with a code and message that say it was the upstream's.
_CLIENT_VIEW: dict[Failure, tuple[int | None, str, str | None]] = {
    Failure.AUTH: (401, "authentication_error", "upstream_authentication_error"),
    Failure.RATE_LIMIT: (429, "rate_limit_error", "rate_limit_exceeded"),
    Failure.TIMEOUT: (504, "timeout_error", "upstream_timeout"),
    Failure.CONTEXT_WINDOW: (400, "invalid_request_error", "context_length_exceeded"),
    Failure.CONTENT_POLICY: (400, "invalid_request_error", "content_policy_violation"),
    Failure.BAD_REQUEST: (None, "invalid_request_error", None),
    Failure.NOT_FOUND: (404, "invalid_request_error", None),
}


def from_upstream_status(
    status: int, message: str, headers: Mapping[str, str], code: str | None = None
) -> UpstreamError:
    """Map an upstream's error status onto what the gateway's client should see.

    Client errors (bad parameters, rate limits) keep their status so that the
    client can act on them. The deployment's credentials being refused is the
    gateway's problem, not the client's: 401/403 become 401 `upstream_authentication_error`.
    """
    error = UpstreamError(message)
    error.upstream_status = status
    error.kind = _classify(status, message, code)
    if error.kind in _CLIENT_VIEW:
        view_status, error.type, view_code = _CLIENT_VIEW[error.kind]
        error.status = view_status or status
        error.code = view_code or code
    if error.kind is Failure.AUTH:
        error.message = f"The upstream refused this deployment's credentials: {message}"
    if status in (503, 529):
        # Overloaded (Anthropic's 529) or unavailable: a 503, which clients retry later.
        error.status, error.code = 503, "upstream_overloaded"
    if error.kind is Failure.RATE_LIMIT:
        error.retry_after = retry_after_seconds(headers)
        error.headers = {k: v for k, v in headers.items() if k in ("retry-after", "retry-after-ms")}
    return error


def _classify(status: int, message: str, code: str | None) -> Failure:
    if status == 429:
        return Failure.RATE_LIMIT
    if status == 408:
        return Failure.TIMEOUT
    if status in (401, 403):
        return Failure.AUTH
    if status == 404:
        return Failure.NOT_FOUND
    if 400 <= status < 500:
        if code in _CONTEXT_CODES or _CONTEXT_WORDS.search(message):
            return Failure.CONTEXT_WINDOW
        if code in _POLICY_CODES or _POLICY_WORDS.search(message):
            return Failure.CONTENT_POLICY
        return Failure.BAD_REQUEST
    return Failure.SERVER


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` (OpenAI's), else `retry-after` in seconds or as an HTTP date."""
    if value := headers.get("retry-after-ms"):
        with contextlib.suppress(ValueError):
            return max(float(value) / 1000, 0.0)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)

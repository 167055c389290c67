"""Errors a client can see, always in OpenAI's envelope.

    GatewayError                    (500 api_error)
    + InvalidRequest                (400 invalid_request_error)
    + AuthenticationFailed          (401 authentication_error)
    + NotFound                      (404)
    | + ModelNotFound
    + MethodNotAllowed              (405)
    + RequestTimeout                (408)
    + BodyTooLarge                  (413)
    + NoDeploymentAvailable         (429 rate_limit_error)
    + UpstreamError                 (status, type and code by its `Failure` kind)
      + UpstreamTimeout             (kind TIMEOUT: 504)
      + UpstreamUnreachable         (kind CONNECTION: 502)

Every failure the gateway reports is a `GatewayError`: it knows its HTTP status
and how to render itself as `{"error": {"message", "type", "param", "code"}}`,
so that the OpenAI SDK maps it to the right exception class.  Messages pass
through `redact` because upstream errors sometimes echo credentials back.

An error is built whole and never changed afterwards: the router retries, cools
and falls back by an `UpstreamError`'s kind, and the client sees its status, so
the two must come from one place. An `UpstreamError`'s status, type and code
follow from its kind by one table, `_CLIENT_VIEW`; a caller passes a status or
code only where the kind alone does not say it (an upstream's own 422, say).
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import re
import time
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import ClassVar, NamedTuple

import orjson

# Upstreams echo keys back in messages such as "Incorrect API key provided: sk-abc...".
_KEY_PATTERN = re.compile(r"\b(?:sk|pk|rk|key)-[A-Za-z0-9_\-]{6,}")


# What may stand next to a credential inside one word of text (a model name's `/`
# included). A credential is redacted where it stands alone (between spaces, quotes,
# `=`, `&`, `:`...), not inside a longer word: the placeholder keys local servers take
# (`fake`, `none`, `EMPTY`) turned model names such as `openai/fake-4` into
# `openai/[redacted]-4`. Anything shaped like an API key (`sk-...`) goes wherever it is.
_WORD_CHARACTER = r"[A-Za-z0-9_\-/]"


class Secrets:
    """The credentials this process knows of, scrubbed from anything a client or log sees."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        # All of them as one pattern, longest first; made again after one is added.
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4 and value not in self._values:
            self._values.add(value)
            self._pattern = None

    def extend(self, values: Iterable[str | None]) -> None:
        for value in values:
            self.add(value)

    def known(self, value: str) -> bool:
        """Whether `value` is, whole, one of the credentials: admin answers redact such a
        field without touching text that merely contains a short placeholder key."""
        return value in self._values

    def redact(self, text: str) -> str:
        """`text` with each credential that stands alone in it, and anything shaped like
        an API key (`sk-...`), replaced by `[redacted]`."""
        if self._values:
            text = self._standing_alone().sub("[redacted]", text)
        return _KEY_PATTERN.sub("[redacted]", text)

    def _standing_alone(self) -> re.Pattern[str]:
        if self._pattern is None:
            longest_first = sorted(self._values, key=len, reverse=True)
            alternatives = "|".join(re.escape(value) for value in longest_first)
            self._pattern = re.compile(
                rf"(?<!{_WORD_CHARACTER})(?:{alternatives})(?!{_WORD_CHARACTER})"
            )
        return self._pattern


secrets = Secrets()


class GatewayError(Exception):
    """An error with an HTTP status, rendered in OpenAI's error envelope. Its class gives
    the defaults of `status`, `type` and `code`; the constructor may override them, and
    nothing may after it."""

    status = 500
    type = "api_error"
    code: str | None = None
    message: str
    param: str | None
    headers: Mapping[str, str]

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        given = {"code": code, "status": status, "type": type}
        self.__dict__.update(
            {name: value for name, value in given.items() if value is not None},
            message=message,
            param=param,
            headers=headers or {},
        )

    def __setattr__(self, name: str, value: object) -> None:
        if name in _FIELDS:
            raise AttributeError(f"{type(self).__name__}.{name} is set only by its constructor")
        super().__setattr__(name, value)

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


# What a GatewayError is built with; `__setattr__` refuses to change any of them.
_FIELDS = frozenset(
    {
        *("message", "param", "code", "status", "type", "headers"),
        *("kind", "upstream_status", "retry_after"),  # an UpstreamError's
    }
)


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


# How much of a name the client chose an error message repeats: enough to recognise it,
# never so much that a 100 kB name makes a 100 kB error.
MAX_ECHOED_NAME = 128


def echoed(name: str) -> str:
    """A client-chosen name as an error message repeats it: cut to MAX_ECHOED_NAME."""
    if len(name) <= MAX_ECHOED_NAME:
        return name
    return f"{name[:MAX_ECHOED_NAME]}... ({len(name)} characters)"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{echoed(model)}` does not exist or is not served by this gateway.",
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
    """The upstream answered with an error, or broke off, or could not be asked: its
    `kind` decides retries, cooldowns and fallbacks, and, by `_CLIENT_VIEW`, the status,
    type and code the client sees, unless `status` or `code` says otherwise."""

    kind: Failure
    # The status the upstream answered with; None when it did not answer one.
    upstream_status: int | None
    # Seconds the upstream asked us to wait, from `retry-after-ms` or `retry-after`.
    retry_after: float | None
    # A failure a client asked for (LiteLLM's `mock_*`): never held against a deployment.
    simulated: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        kind: Failure = Failure.SERVER,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        upstream_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        view = _CLIENT_VIEW[kind]
        super().__init__(
            message,
            param=param,
            code=code or view.code,
            status=status or view.status,
            type=view.type,
            headers=headers,
        )
        self.__dict__.update(kind=kind, upstream_status=upstream_status, retry_after=retry_after)


class UpstreamTimeout(UpstreamError):
    """The upstream took longer than the deployment allows."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind=Failure.TIMEOUT)


class UpstreamUnreachable(UpstreamError):
    """No connection to the upstream could be made."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind=Failure.CONNECTION)


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


class ClientView(NamedTuple):
    """What a client sees of a failure: its status, error type and code."""

    status: int
    type: str
    code: str | None


# What a client sees of each kind. An upstream refusing the deployment's credentials is a
# 401, as LiteLLM answers, with a code and message that say it was the upstream's. A bad
# request keeps the upstream's own status and code when it gave them.
_CLIENT_VIEW: Mapping[Failure, ClientView] = {
    Failure.SERVER: ClientView(502, "api_error", "upstream_error"),
    Failure.CONNECTION: ClientView(502, "api_error", "upstream_unreachable"),
    Failure.TIMEOUT: ClientView(504, "timeout_error", "upstream_timeout"),
    Failure.AUTH: ClientView(401, "authentication_error", "upstream_authentication_error"),
    Failure.RATE_LIMIT: ClientView(429, "rate_limit_error", "rate_limit_exceeded"),
    Failure.CONTEXT_WINDOW: ClientView(400, "invalid_request_error", "context_length_exceeded"),
    Failure.CONTENT_POLICY: ClientView(400, "invalid_request_error", "content_policy_violation"),
    Failure.BAD_REQUEST: ClientView(400, "invalid_request_error", None),
    Failure.NOT_FOUND: ClientView(404, "invalid_request_error", None),
}


def from_upstream_status(
    status: int,
    message: str,
    headers: Mapping[str, str],
    code: str | None = None,
    *,
    retry_after: float | None = None,
) -> UpstreamError:
    """Map an upstream's error status onto what the gateway's client should see.

    Client errors (bad parameters, rate limits) keep their meaning so that the client
    can act on them; a bad request keeps the upstream's own status and code. The
    deployment's credentials being refused (401/403) is a 401 that says so; 5xx are 502,
    except an overloaded or unavailable upstream (503, Anthropic's 529), a 503 that
    clients retry later. `retry_after` is a wait the upstream gave elsewhere than in
    `headers` (Gemini's body).
    """
    kind = _classify(status, message, code)
    if kind is Failure.AUTH:
        message = f"The upstream refused this deployment's credentials: {message}"
    client_status, client_code = None, None
    if kind in (Failure.BAD_REQUEST, Failure.NOT_FOUND):
        client_status, client_code = status if kind is Failure.BAD_REQUEST else None, code
    elif status in (503, 529):
        client_status, client_code = 503, "upstream_overloaded"
    wait, kept = (
        _rate_limit_wait(headers, retry_after) if kind is Failure.RATE_LIMIT else (None, {})
    )
    return UpstreamError(
        message,
        kind=kind,
        status=client_status,
        code=client_code,
        headers=kept,
        upstream_status=status,
        retry_after=wait,
    )


def _rate_limit_wait(
    headers: Mapping[str, str], given: float | None
) -> tuple[float | None, dict[str, str]]:
    """How long a rate limit lasts, by the upstream's headers, else `given`, and the
    Retry-After headers that tell the client the same."""
    kept = {k: v for k, v in headers.items() if k in ("retry-after", "retry-after-ms")}
    wait = retry_after_seconds(headers)
    if wait is None and given is not None:
        wait, kept = given, {**kept, "retry-after": str(math.ceil(given))}
    return wait, kept


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

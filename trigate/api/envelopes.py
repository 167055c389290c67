"""The error envelopes a client may expect, each rendered in exactly one place.

An OpenAI client reads `{"error": {"message", "type", "param", "code"}}`; an Anthropic
client (the anthropic SDK, Claude Code) reads `{"type": "error", "error": {"type",
"message"}}` and picks its exception class by the type; a Google client (google-genai,
on the `/gemini` and Vertex pass-through routes) reads `{"error": {"code", "message",
"status"}}`, its status one of Google's canonical codes. Every error of a model route,
whoever raises it (authentication, a codec, a hook, the router, the ambiguous-credential
check in front of every route), is rendered by its route's `Envelope`, so each body
passes the same secret redaction and carries the same status and headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from trigate.errors import GatewayError, secrets

JSON_HEADERS: Mapping[str, str] = MappingProxyType({"content-type": "application/json"})
# Anthropic's error types by status, so its SDK raises the matching exception class.
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_body(error: GatewayError) -> dict[str, Any]:
    """Anthropic's error envelope, typed by status as Anthropic types its own."""
    kind = ANTHROPIC_ERROR_TYPES.get(error.status)
    if kind is None:
        kind = "invalid_request_error" if error.status < 500 else "api_error"
    return {"type": "error", "error": {"type": kind, "message": secrets.redact(error.message)}}


# Google's canonical codes by HTTP status (google.rpc.Code's mapping).
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def google_error_body(error: GatewayError) -> dict[str, Any]:
    """Google's error envelope (the Gemini and Vertex APIs'), its status by HTTP status;
    the gateway's own code is the `reason` of an `ErrorInfo` detail, as Google names its."""
    status = GOOGLE_STATUSES.get(error.status)
    if status is None:
        status = "INVALID_ARGUMENT" if error.status < 500 else "INTERNAL"
    body: dict[str, Any] = {
        "code": error.status,
        "message": secrets.redact(error.message),
        "status": status,
    }
    if error.code:
        info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": error.code,
                "domain": "trigate"}  # fmt: skip
        body["details"] = [info]
    return {"error": body}


@dataclass(frozen=True, slots=True)
class Envelope:
    """How one API's clients expect an error: `render` gives the body's bytes."""

    name: str
    anthropic: bool = False
    google: bool = False

    def render(self, error: GatewayError) -> bytes:
        if self.anthropic:
            return orjson.dumps(anthropic_error_body(error))
        if self.google:
            return orjson.dumps(google_error_body(error))
        return error.body()

    def headers(self, error: GatewayError) -> dict[str, str]:
        return {**JSON_HEADERS, **error.headers}


OPENAI = Envelope("openai")
ANTHROPIC = Envelope("anthropic", anthropic=True)
GOOGLE = Envelope("google", google=True)

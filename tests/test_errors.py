"""Errors are built whole: what the router acts on and what the client sees come from one
constructor, and nothing changes them afterwards."""

from __future__ import annotations

import pytest

from trigate.errors import (
    Failure,
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
    from_upstream_status,
)


def test_a_built_error_cannot_be_changed() -> None:
    error = UpstreamError("x", kind=Failure.BAD_REQUEST)
    for name, value in (("status", 400), ("kind", Failure.SERVER), ("retry_after", 1.0)):
        with pytest.raises(AttributeError):
            setattr(error, name, value)
    with pytest.raises(AttributeError):
        GatewayError("x").code = "y"


@pytest.mark.parametrize(
    ("kind", "status", "kind_of_error", "code"),
    [
        (Failure.SERVER, 502, "api_error", "upstream_error"),
        (Failure.BAD_REQUEST, 400, "invalid_request_error", None),
        (Failure.CONTEXT_WINDOW, 400, "invalid_request_error", "context_length_exceeded"),
        (Failure.AUTH, 401, "authentication_error", "upstream_authentication_error"),
        (Failure.RATE_LIMIT, 429, "rate_limit_error", "rate_limit_exceeded"),
    ],
)
def test_the_kind_gives_what_the_client_sees(
    kind: Failure, status: int, kind_of_error: str, code: str | None
) -> None:
    error = UpstreamError("x", kind=kind)
    assert (error.status, error.type, error.code) == (status, kind_of_error, code)


def test_a_timeout_is_a_504_of_its_kind() -> None:
    error = UpstreamTimeout("slow")
    assert (error.kind, error.status, error.type) == (Failure.TIMEOUT, 504, "timeout_error")


def test_an_upstream_bad_request_keeps_its_status_and_code() -> None:
    error = from_upstream_status(422, "bad field", {}, "invalid_value")
    assert (error.kind, error.status, error.code) == (Failure.BAD_REQUEST, 422, "invalid_value")
    assert error.upstream_status == 422


def test_a_rate_limit_waits_by_its_headers_else_by_what_the_body_said() -> None:
    by_header = from_upstream_status(429, "slow down", {"retry-after": "7"}, retry_after=30.0)
    assert by_header.retry_after == 7.0 and by_header.headers == {"retry-after": "7"}
    by_body = from_upstream_status(429, "slow down", {}, retry_after=2.5)
    assert by_body.retry_after == 2.5 and by_body.headers == {"retry-after": "3"}
    overloaded = from_upstream_status(529, "Overloaded", {"retry-after": "7"})
    assert (overloaded.status, overloaded.code, overloaded.retry_after) == (
        503,
        "upstream_overloaded",
        None,
    )

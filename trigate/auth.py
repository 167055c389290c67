"""Who is calling: the credential a request carries, checked in constant time.

Clients send `Authorization: Bearer KEY` (the OpenAI SDK) or `x-api-key: KEY`
(the Anthropic SDK). Virtual keys come later; today the master key is the
only key, and it passes every check.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from trigate.errors import AuthenticationFailed

MASTER_IDENTITY = "master"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller; `identity` is safe to log, the key is never kept."""

    identity: str
    is_master: bool


def generate_master_key() -> str:
    """A fresh key in LiteLLM's `sk-` format, 256 bits of randomness."""
    return "sk-" + secrets.token_urlsafe(32)


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


class Authenticator:
    def __init__(self, master_key: str) -> None:
        self._master = master_key.encode()

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        key = presented_key(headers)
        if key is None:
            raise AuthenticationFailed(
                "No API key provided. Send `Authorization: Bearer <key>` or `x-api-key: <key>`."
            )
        if hmac.compare_digest(key.encode(), self._master):
            return Caller(MASTER_IDENTITY, is_master=True)
        raise AuthenticationFailed("The API key provided is not valid.")

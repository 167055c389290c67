"""Credentials at rest: a deployment added through the admin API keeps its secrets in
the store sealed, never as given, so that a database dump or backup holds no upstream
key. LiteLLM encrypts them too, with `LITELLM_SALT_KEY`; trigate reads that variable
(or `TRIGATE_SALT_KEY`) and, as LiteLLM does, falls back to the master key. Rotating
the master key without a salt key leaves stored secrets unreadable: such deployments
are then not served, and say why, rather than sending garbage upstream.

AES-256-GCM, a fresh nonce per value; an `os.environ/NAME` reference is no secret and
stays as it is.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SECRET_PARAMS", "SealError", "Sealer"]

PREFIX = "sealed:v1:"
SALT_KEY_VARIABLES = ("TRIGATE_SALT_KEY", "LITELLM_SALT_KEY")
# The `litellm_params` that hold credentials.
SECRET_PARAMS = frozenset(
    {"api_key", "azure_ad_token", "aws_secret_access_key", "aws_session_token", "aws_access_key_id"}
)
_NONCE_BYTES = 12


class SealError(Exception):
    """A sealed value that this gateway's key cannot open."""


class Sealer:
    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(hashlib.sha256(b"trigate-seal\0" + secret.encode()).digest())

    @classmethod
    def from_environ(cls, master_key: str, environ: Mapping[str, str] = os.environ) -> Sealer:
        salt = next((environ[name] for name in SALT_KEY_VARIABLES if environ.get(name)), None)
        return cls(salt or master_key)

    def seal(self, value: str) -> str:
        if value.startswith((PREFIX, "os.environ/")):
            return value
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode(), None)
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def unseal(self, value: str) -> str:
        if not value.startswith(PREFIX):
            return value
        try:
            raw = base64.urlsafe_b64decode(value.removeprefix(PREFIX))
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], None).decode()
        except (InvalidTag, ValueError):
            raise SealError(
                "a stored secret was sealed with another key: set LITELLM_SALT_KEY (or "
                "TRIGATE_SALT_KEY) to the key it was sealed with"
            ) from None

    def seal_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._apply(self.seal, k, v) for k, v in params.items()}

    def unseal_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._apply(self.unseal, k, v) for k, v in params.items()}

    @staticmethod
    def _apply(change: Any, name: str, value: Any) -> Any:
        return change(value) if name in SECRET_PARAMS and isinstance(value, str) else value

"""A fake Google OAuth token server and a service account pointing at it, for Vertex AI.

The service account's key is real (RSA, made once per test run), so google-auth signs a
real JWT assertion; the token server checks the grant it receives is that flow's
(`urn:ietf:params:oauth:grant-type:jwt-bearer`) before handing out a numbered token."""

from __future__ import annotations

import functools
import urllib.parse
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fakes import FakeUpstream, JSONReply, ReceivedRequest, Reply

PROJECT = "acme-prod"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@functools.cache
def _private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def service_account(tokens: FakeUpstream, project: str = PROJECT) -> dict[str, Any]:
    """A service account key JSON, as the Cloud console downloads it, whose token URI is
    the fake token server."""
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0123456789abcdef",
        "private_key": _private_key(),
        "client_email": f"gateway@{project}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": f"http://127.0.0.1:{tokens.port}/token",
    }


class TokenServer:
    """Answers service-account token requests with `ya29.token-N`, lasting `expires_in`."""

    def __init__(self, upstream: FakeUpstream, expires_in: int = 3600) -> None:
        self.upstream = upstream
        self.expires_in = expires_in
        self.refuse = False
        upstream.handler = self.handle

    @property
    def issued(self) -> int:
        return len(self.upstream.requests)

    def handle(self, request: ReceivedRequest) -> Reply:
        form = urllib.parse.parse_qs(request.body.decode())
        if request.target != "/token" or form.get("grant_type") != [JWT_GRANT]:
            return JSONReply({"error": "unsupported_grant_type"}, status=400)
        if self.refuse or not form.get("assertion"):
            return JSONReply(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                status=400,
            )
        token = f"ya29.token-{self.issued}"
        return JSONReply(
            {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

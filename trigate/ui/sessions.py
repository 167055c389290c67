"""The web UI's sessions: signed, expiring tokens in an HttpOnly, SameSite cookie.

A session is a JWT (HS256) the gateway signs with a key derived from its master key,
so every worker of a fleet reads every other's sessions, and changing the master key
ends them all. It names who signed in (a user id, or the password admin, who acts as
the master key does) and carries the session's CSRF token, which every form and htmx
request of the UI must send back (`check_csrf`).

The UI calls the admin API with the session token as its bearer credential
(`trigate.ui.admin_client`): `SessionTokens` is the `TokenVerifier` that turns it back
into a caller, with the user's role as the store holds it now, so the UI can do
exactly what its user's role may do through the API, and nothing more.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from trigate.auth import Authenticator, Caller
from trigate.errors import AuthenticationFailed
from trigate.roles import Role

COOKIE = "trigate_ui_session"
ISSUER = "trigate-ui"
# A working day; signing in again is one click with SSO.
SESSION_SECONDS = 8 * 3600
# The password admin's identity: it acts as the master key does (LiteLLM's UI admin).
ADMIN_IDENTITY = "ui:admin"


class CsrfFailed(AuthenticationFailed):
    """A form or htmx request without its session's CSRF token."""

    status = 403
    type = "permission_error"
    code = "csrf_failed"


class AdminsOnly(AuthenticationFailed):
    """A non-admin's session under `ui_access_mode: admin_only`."""

    status = 403
    type = "permission_error"
    code = "ui_admins_only"


@dataclass(frozen=True, slots=True)
class Session:
    """Who signed in: `user_id`, or None for the password admin."""

    user_id: str | None
    csrf: str
    expires: int
    token: str

    @property
    def is_admin_login(self) -> bool:
        return self.user_id is None


class Sessions:
    """Signs and reads session tokens; a `TokenVerifier` for the admin API."""

    def __init__(
        self, master_key: str, seconds: int = SESSION_SECONDS, *, admin_only: bool = False
    ) -> None:
        derived = hmac.new(master_key.encode(), b"trigate ui session v1", hashlib.sha256)
        self._key = OctKey.import_key(derived.digest())
        self.seconds = seconds
        # LiteLLM's `ui_access_mode: admin_only`: a session is then an admin's or nothing.
        self.admin_only = admin_only

    def sign(self, user_id: str | None) -> Session:
        """A fresh session (and CSRF token) for `user_id`, or the password admin."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": ISSUER,
            "sub": user_id if user_id is not None else ADMIN_IDENTITY,
            "adm": user_id is None,
            "csrf": secrets.token_urlsafe(24),
            "iat": now,
            "exp": now + self.seconds,
        }
        token = jwt.encode({"alg": "HS256"}, claims, self._key)
        return Session(user_id, claims["csrf"], claims["exp"], token)

    def read(self, token: str | None) -> Session | None:
        """The session `token` is, if its signature holds and it has not expired."""
        if not token:
            return None
        try:
            decoded = jwt.decode(token, self._key, algorithms=["HS256"])
            _CLAIMS.validate(decoded.claims)
        except (JoseError, ValueError):
            return None
        claims = decoded.claims
        user_id = None if claims.get("adm") else str(claims["sub"])
        return Session(user_id, str(claims["csrf"]), int(claims["exp"]), token)

    def sign_value(self, value: bytes, seconds: int) -> str:
        """`value`, signed to come back within `seconds` (the SSO redirect's state). Its
        audience is not a session's, so it can never be read as one."""
        claims = {"iss": ISSUER, "aud": _VALUE_AUDIENCE, "val": value.decode(),
                  "exp": int(time.time()) + seconds}  # fmt: skip
        return jwt.encode({"alg": "HS256"}, claims, self._key)

    def unsign_value(self, token: str | None) -> bytes | None:
        if not token:
            return None
        try:
            decoded = jwt.decode(token, self._key, algorithms=["HS256"])
            _VALUE_CLAIMS.validate(decoded.claims)
        except (JoseError, ValueError):
            return None
        return str(decoded.claims["val"]).encode()

    async def caller(self, token: str, auth: Authenticator) -> Caller | None:
        """`TokenVerifier`: a session's caller, for the admin calls the UI makes."""
        if unverified_issuer(token) != ISSUER:
            return None
        session = self.read(token)
        if session is None:
            raise AuthenticationFailed("The session has expired; sign in again.", code="expired")
        if session.user_id is None:
            return Caller(ADMIN_IDENTITY, is_master=True)
        caller = await auth.identified(f"ui:{session.user_id[:32]}", session.user_id, None)
        if caller.user is None:
            raise AuthenticationFailed("This user no longer exists.", code="user_not_found")
        if self.admin_only and caller.role not in (Role.PROXY_ADMIN, Role.PROXY_ADMIN_VIEWER):
            # The token is a bearer credential: closing only the pages would leave it open.
            raise AdminsOnly("This gateway's UI sessions are open to admins only (ui_access_mode).")
        return caller


_CLAIMS = jwt.JWTClaimsRegistry(
    iss={"essential": True, "value": ISSUER},
    aud={"essential": True, "value": ISSUER},
    exp={"essential": True},
    sub={"essential": True},
    csrf={"essential": True},
)


_VALUE_AUDIENCE = "trigate-ui-value"
_VALUE_CLAIMS = jwt.JWTClaimsRegistry(
    iss={"essential": True, "value": ISSUER},
    aud={"essential": True, "value": _VALUE_AUDIENCE},
    exp={"essential": True},
    val={"essential": True},
)


def unverified_issuer(token: str) -> str | None:
    """A JWT's `iss` before its signature is checked: only to pick its verifier."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def check_csrf(session: Session, sent: str | None) -> None:
    """Every state-changing UI request sends its session's CSRF token (a form's hidden
    `csrf_token`, or htmx's `X-CSRF-Token` header)."""
    if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise CsrfFailed("The form's CSRF token is missing or wrong; reload the page.")

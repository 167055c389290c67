"""The web UI's sessions: signed, expiring tokens in an HttpOnly, SameSite cookie.

A session is a JWT (HS256) the gateway signs with a key derived from its master key,
so every worker of a fleet reads every other's sessions, and changing the master key
ends them all. It names who signed in (a user id, or the password admin, who acts as
the master key does) and carries the session's CSRF token, which every form and htmx
request of the UI must send back (`check_csrf`).

A session also carries its identity's epoch when it was signed (`SessionEpochs`, kept
in the store): signing out moves the epoch on, which ends every session of that
identity in every worker (within `CACHE_TTL` in a worker that cannot hear the fleet's
change feed). The password admin's sessions also carry a mark of `UI_USERNAME` and
`UI_PASSWORD`, so changing the password ends them.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from trigate.auth import CACHE_TTL, MAX_CACHED, Authenticator, Caller
from trigate.changes import Changes
from trigate.clock import wall_time
from trigate.errors import AuthenticationFailed
from trigate.roles import Role
from trigate.store import Store

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
    # Its identity's epoch when it was signed (`SessionEpochs`).
    epoch: int = 0

    @property
    def is_admin_login(self) -> bool:
        return self.user_id is None

    @property
    def identity(self) -> str:
        """Whose sessions it is one of: its user's, or the password admin's."""
        return f"user:{self.user_id}" if self.user_id is not None else ADMIN_IDENTITY


# The kind of change announced to the fleet when an identity signs out.
EPOCHS = "ui_session_epochs"


class SessionEpochs:
    """Each identity's session epoch: in the store, read through a cache of `CACHE_TTL`
    seconds (as keys are), dropped at once in every worker a sign-out is told to."""

    def __init__(self, store: Callable[[], Store], changes: Changes) -> None:
        self._store = store
        self._changes = changes
        self._cache: dict[str, tuple[int, float]] = {}
        changes.listen((EPOCHS,), self._drop, self._cache.clear)

    async def current(self, identity: str) -> int:
        now = wall_time()
        hit = self._cache.get(identity)
        if hit is not None and hit[1] > now:
            return hit[0]
        epoch = await self._store().session_epoch(identity)
        self._remember(identity, epoch, now)
        return epoch

    async def end(self, identity: str) -> None:
        """Every session `identity` holds ends, here at once and fleet-wide when told."""
        epoch = await self._store().end_sessions(identity)
        self._remember(identity, epoch, wall_time())
        self._changes.announce(EPOCHS, identity)

    def _remember(self, identity: str, epoch: int, now: float) -> None:
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[identity] = (epoch, now + CACHE_TTL)

    def _drop(self, kind: str, identity: str) -> None:
        self._cache.pop(identity, None)


class Sessions:
    """Signs and reads session tokens; a `TokenVerifier` for the admin API. Without
    `epochs` (a `Sessions` made only to sign a token), every epoch is 0."""

    def __init__(
        self,
        master_key: str,
        seconds: int = SESSION_SECONDS,
        *,
        admin_only: bool = False,
        admin_login: tuple[str, str] | None = None,
        epochs: SessionEpochs | None = None,
    ) -> None:
        derived = hmac.new(master_key.encode(), b"trigate ui session v1", hashlib.sha256)
        self._key = OctKey.import_key(derived.digest())
        self.seconds = seconds
        # LiteLLM's `ui_access_mode: admin_only`: a session is then an admin's or nothing.
        self.admin_only = admin_only
        # The password admin's username and password (default: LiteLLM's, `admin` and
        # the master key), marked in its sessions: a new password ends them.
        username, password = admin_login or ("admin", master_key)
        login = f"{username}\0{password}".encode()
        self._admin_mark = hmac.new(derived.digest(), login, hashlib.sha256).hexdigest()[:32]
        self.epochs = epochs

    async def start(self, user_id: str | None) -> Session:
        """A new session for `user_id` (or the password admin), in its current epoch."""
        unsigned = Session(user_id, "", 0, "")
        return self.sign(user_id, await self._epoch(unsigned.identity))

    async def end(self, session: Session) -> None:
        """Sign out: this session, and every other of its identity, ends."""
        if self.epochs is not None:
            await self.epochs.end(session.identity)

    async def is_current(self, session: Session) -> bool:
        """Whether no sign-out has ended `session` since it was signed."""
        return session.epoch == await self._epoch(session.identity)

    async def _epoch(self, identity: str) -> int:
        return await self.epochs.current(identity) if self.epochs is not None else 0

    def sign(self, user_id: str | None, epoch: int = 0) -> Session:
        """A fresh session (and CSRF token) for `user_id`, or the password admin, in
        `epoch` (`start` signs one in its identity's current epoch)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": ISSUER,
            "sub": user_id if user_id is not None else ADMIN_IDENTITY,
            "adm": user_id is None,
            "csrf": secrets.token_urlsafe(24),
            "iat": now,
            "exp": now + self.seconds,
            "ep": epoch,
        }
        if user_id is None:
            claims["pwd"] = self._admin_mark
        token = jwt.encode({"alg": "HS256"}, claims, self._key)
        return Session(user_id, claims["csrf"], claims["exp"], token, epoch)

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
        if user_id is None and not hmac.compare_digest(
            str(claims.get("pwd", "")).encode(), self._admin_mark.encode()
        ):
            return None  # signed in with a password that has changed since
        epoch = claims.get("ep", 0)
        if not isinstance(epoch, int):
            return None
        return Session(user_id, str(claims["csrf"]), int(claims["exp"]), token, epoch)

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
        if not await self.is_current(session):
            raise AuthenticationFailed("The session was signed out; sign in again.", code="ended")
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

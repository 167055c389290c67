"""Who is calling: the master key, or a virtual key with its team and user.

Clients send `Authorization: Bearer KEY` (the OpenAI SDK) or `x-api-key: KEY`
(the Anthropic SDK). Keys are stored only as SHA-256 hashes. Lookups come
from an in-process cache with a short TTL, so the request path touches the
database at most once per key every few seconds; the process that changes a
key drops it from its cache at once, and with Redis tells every other worker
of the fleet to drop it too (trigate/changes.py).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Protocol

import trio

from trigate.changes import Changes
from trigate.clock import wall_time
from trigate.errors import AuthenticationFailed
from trigate.roles import Role, role_of
from trigate.store import (
    MASTER_OWNER,
    MEMBERS,
    OWNER_KINDS,
    Row,
    Store,
    StoreUnavailable,
    member_ident,
)

logger = logging.getLogger("trigate")

MASTER_IDENTITY = "master"
# How a caller without a key (a JWT's or a UI session's user) owns what it stores.
USER_OWNER_PREFIX = "user:"
KEY_PREFIX = "sk-"
# How stale a cached key, team or user may be; LiteLLM users expect changes within seconds.
CACHE_TTL = 5.0
# Unknown keys are remembered briefly, so a flood of bad keys cannot flood the database.
NEGATIVE_TTL = 1.0
MAX_CACHED = 100_000
# A key check must never stall a request for long: a slower lookup counts as an outage.
LOOKUP_TIMEOUT = 2.0
# After a failed lookup the database is left alone this long, not asked again per request.
OUTAGE_MEMORY = 5.0


@dataclass(slots=True)
class Caller:
    """An authenticated caller. `identity` is safe to log; the key itself is never kept."""

    identity: str
    is_master: bool
    key_hash: str | None = None
    key: Row | None = None
    team: Row | None = None
    user: Row | None = None
    # The organization of the key's team (LiteLLM's): its models and limits bind the key.
    organization: Row | None = None
    # The request's end user (LiteLLM's customer), set per request by `trigate.end_users`:
    # its id as the request named it, and its row when one is configured.
    end_user_id: str | None = None
    end_user: Row | None = None

    @property
    def organization_id(self) -> str | None:
        return self.team.get("organization_id") if self.team else None

    # The key's user's membership of the key's team (its limits in the team), if any.
    member: Row | None = None
    # A role a verified token grants beyond its user's (a JWT's admin scope,
    # `trigate.jwt_auth`); None for keys, whose role is their user's.
    granted_role: Role | None = None

    @property
    def role(self) -> Role | None:
        """The caller's LiteLLM role (trigate/roles.py): read only by admin routes."""
        if self.granted_role is not None:
            return self.granted_role
        return role_of(self.is_master, self.user)

    @property
    def key_alias(self) -> str | None:
        return self.key.get("key_alias") if self.key else None

    @property
    def team_id(self) -> str | None:
        """The key's team; without a key (a verified token), the token's team."""
        if self.key is not None:
            return self.key.get("team_id")
        return self.team.get("team_id") if self.team else None

    @property
    def user_id(self) -> str | None:
        """The key's user; without a key (a verified token), the token's user."""
        if self.key is not None:
            return self.key.get("user_id")
        return self.user.get("user_id") if self.user else None

    @property
    def owner(self) -> str | None:
        """Who owns the files, batches, stored responses and key-scoped cache entries
        this caller makes, and may read them back: a key's hash; the master key's
        `MASTER_OWNER`; a caller without a key (a verified token's or a UI session's), its
        user, as `user:{user_id}`, never the master's. None for a keyless caller with no
        user, which owns nothing (`owner_of` refuses it)."""
        if self.key_hash is not None:
            return self.key_hash
        if self.is_master:
            return MASTER_OWNER
        user_id = self.user_id
        return USER_OWNER_PREFIX + user_id if user_id is not None else None

    def model_group(self, requested: str) -> str:
        """The model group a request naming `requested` goes to: the key's team's
        `model_aliases` (LiteLLM's) may map the name to another group."""
        aliases = self.team.get("model_aliases") if self.team else None
        return aliases.get(requested, requested) if aliases else requested


class NoOwner(AuthenticationFailed):
    """A caller with neither a key nor a user: nothing it stored could be told apart
    from another's, so it stores and reads nothing."""

    status = 403
    type = "permission_error"
    code = "no_owner"


def owner_of(caller: Caller) -> str:
    """`caller.owner`, or `NoOwner`."""
    owner = caller.owner
    if owner is None:
        raise NoOwner("This token names no user or key that could own stored files or results.")
    return owner


def key_hash_of_owner(owner: str) -> str | None:
    """The key hash an owner is (what spend is billed to), None for the master's or a
    user's."""
    if owner == MASTER_OWNER or owner.startswith(USER_OWNER_PREFIX):
        return None
    return owner


def generate_key() -> str:
    """A fresh key in LiteLLM's `sk-` format, with 256 bits of randomness."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_name(key: str) -> str:
    """How a key is shown after creation: enough to recognise it, never enough to use it."""
    return f"{key[:3]}...{key[-4:]}"


class HeaderSource(Protocol):
    """Where a key is read from: a dict of lower-case names, or Quart's `Headers`."""

    def get(self, key: str, /) -> str | None: ...


def presented_key(headers: HeaderSource) -> str | None:
    # LiteLLM's own header names the gateway's key whatever else is sent, as in LiteLLM:
    # clients use it to keep `Authorization` for an upstream's key.
    litellm_key = headers.get("x-litellm-api-key")
    if litellm_key and litellm_key.strip():
        return litellm_key.strip()
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


def looks_like_jwt(token: str) -> bool:
    """A bearer token in a JWT's compact form (three dot-separated parts), never a key:
    keys are `sk-` and URL-safe characters, with no dots."""
    return not token.startswith(KEY_PREFIX) and token.count(".") == 2


class TokenVerifier(Protocol):
    """A verifier of bearer tokens that are not keys: JWTs from an identity provider
    (`trigate.jwt_auth`) and the web UI's own sessions (`trigate.ui.sessions`)."""

    async def caller(self, token: str, auth: Authenticator) -> Caller | None:
        """The caller `token` names, or None when the token is another verifier's (its
        issuer is not this one's). Raises `AuthenticationFailed` for a token of this
        verifier's that fails its checks (signature, expiry, audience)."""
        ...


class Authenticator:
    def __init__(
        self, master_key: str, store: Store | None = None, changes: Changes | None = None
    ) -> None:
        """With `changes`, a row this process changes is announced to the fleet, and
        rows other processes change are dropped from the cache as they announce them."""
        self._master = master_key.encode()
        self._store = store
        self._cache: dict[tuple[str, str], tuple[Row | None, float]] = {}
        self._outage_until = -float("inf")
        self._changes = changes
        # Tried in order for a bearer token in a JWT's form; empty unless JWT auth or the
        # UI is on, so a key pays nothing for them.
        self.verifiers: list[TokenVerifier] = []
        if changes is not None:
            changes.listen((*OWNER_KINDS, MEMBERS), self._drop, self._cache.clear)

    async def authenticate(self, headers: HeaderSource) -> Caller:
        key = presented_key(headers)
        if key is None:
            raise AuthenticationFailed(
                "No API key provided. Send `Authorization: Bearer <key>` or `x-api-key: <key>`"
                " (or LiteLLM's `x-litellm-api-key: <key>`)."
            )
        if hmac.compare_digest(key.encode(), self._master):
            return Caller(MASTER_IDENTITY, is_master=True)
        if self.verifiers and looks_like_jwt(key):
            for verifier in self.verifiers:
                caller = await verifier.caller(key, self)
                if caller is not None:
                    return caller
            raise AuthenticationFailed("The token provided is not valid.", code="invalid_token")
        return await self._virtual_key(hash_key(key))

    async def identified(
        self,
        identity: str,
        user_id: str | None,
        team_id: str | None,
        granted_role: Role | None = None,
    ) -> Caller:
        """A caller without a key, named by a verified token: its user's and team's rows
        (and the team's organization's, and the user's membership of the team) bind it
        as a key's do, and a blocked or missing team refuses it as it refuses a key."""
        team = await self._cached("teams", team_id) if team_id else None
        if team_id and team is None:
            raise AuthenticationFailed(f"No team `{team_id}` exists.", code="team_not_found")
        if team is not None and team["blocked"]:
            raise AuthenticationFailed("This team has been blocked.", code="team_blocked")
        user = await self._cached("users", user_id) if user_id else None
        organization = await self._organization(team) if team is not None else None
        member = None
        if team_id and user_id:
            member = await self._cached(MEMBERS, member_ident(team_id, user_id))
        return Caller(
            identity, False, team=team, user=user, organization=organization, member=member,
            granted_role=granted_role,
        )  # fmt: skip

    async def row(self, kind: str, key: str) -> Row | None:
        """A key's, team's, user's, membership's, customer's or organization's row, from
        the cache (and the fleet-wide invalidation) requests read them through."""
        return await self._cached(kind, key)

    def forget(self, kind: str, key: str) -> None:
        """A row was written: drop it from the cache, so this process sees the change at
        once, and (with Redis) every other worker of the fleet within moments. The store
        calls this on each write of a key, team or user (`Store.watch`)."""
        self._drop(kind, key)
        if self._changes is not None:
            self._changes.announce(kind, key)

    def _drop(self, kind: str, key: str) -> None:
        self._cache.pop((kind, key), None)

    async def _virtual_key(self, token_hash: str) -> Caller:
        row = await self._cached("keys", token_hash)
        if row is None:
            raise AuthenticationFailed("The API key provided is not valid.")
        if row["blocked"]:
            raise AuthenticationFailed("This API key has been blocked.", code="key_blocked")
        if row["expires"] is not None and row["expires"] <= wall_time():
            raise AuthenticationFailed("This API key has expired.", code="key_expired")
        team = await self._cached("teams", row["team_id"]) if row["team_id"] else None
        if row["team_id"] and team is None:
            # Without its team's row the key would escape the team's models and limits.
            raise AuthenticationFailed("This API key's team no longer exists.", code="team_deleted")
        if team is not None and team["blocked"]:
            raise AuthenticationFailed("This API key's team has been blocked.", code="team_blocked")
        user = await self._cached("users", row["user_id"]) if row["user_id"] else None
        organization = await self._organization(team) if team is not None else None
        member = None
        if team is not None and row["user_id"]:
            member = await self._cached(MEMBERS, member_ident(row["team_id"], row["user_id"]))
        return Caller(
            token_hash[:16], False, token_hash, row, team, user,
            organization=organization, member=member,
        )  # fmt: skip

    async def _organization(self, team: Row) -> Row | None:
        """The team's organization, whose models and limits bind the team's keys."""
        organization_id = team.get("organization_id")
        if not organization_id:
            return None
        organization = await self._cached("organizations", organization_id)
        if organization is None:
            # Without its organization's row the key would escape the organization's limits.
            raise AuthenticationFailed(
                "This API key's organization no longer exists.", code="organization_deleted"
            )
        if organization["blocked"]:
            raise AuthenticationFailed(
                "This API key's organization has been blocked.", code="organization_blocked"
            )
        return organization

    async def _cached(self, kind: str, key: str) -> Row | None:
        now = wall_time()
        hit = self._cache.get((kind, key))
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            row = await self._lookup(kind, key, now)
        except StoreUnavailable:
            if hit is not None:
                return hit[0]  # the last good lookup, for as long as the outage lasts
            raise
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
        self._cache[kind, key] = (row, now + (CACHE_TTL if row is not None else NEGATIVE_TTL))
        return row

    async def _lookup(self, kind: str, key: str, now: float) -> Row | None:
        if self._store is None:
            return None
        if now < self._outage_until:
            raise _unavailable()
        failure: Exception | None = None
        with trio.move_on_after(LOOKUP_TIMEOUT):
            try:
                if kind == MEMBERS:
                    return await self._store.member(key)
                return await self._store.get(kind, key)
            except Exception as error:  # any store failure is an outage to ride out
                failure = error
        self._outage_until = wall_time() + OUTAGE_MEMORY
        logger.warning(
            "key store unreachable (%s); serving cached keys for %g s before asking again",
            failure or f"no answer within {LOOKUP_TIMEOUT:g} s",
            OUTAGE_MEMORY,
        )
        raise _unavailable()


def _unavailable() -> StoreUnavailable:
    return StoreUnavailable(
        "The gateway cannot reach its database to check this API key. Try again shortly."
    )

"""LiteLLM's JWT auth (`general_settings.enable_jwt_auth` with `litellm_jwtauth`):
bearer tokens from an identity provider, callers beside virtual keys.

A token is verified against the provider's JWKS (`JWT_PUBLIC_KEY_URL`): its signature
by an asymmetric algorithm only (never `none` or an HMAC, whose "key" would be the
public one), its expiry and not-before, its audience (`JWT_AUDIENCE`, or its issuer's
entry in `issuers`; one is required, unlike LiteLLM) and its issuer (when `issuers`
names them). The key set is cached for `public_key_ttl` seconds; a token naming a key
id the cached set does not hold fetches it again at once (the provider has rotated its
keys), at most once every `JWKS_REFETCH_SECONDS`, so a flood of made-up key ids cannot
flood the provider.

The claims `litellm_jwtauth` names make the caller: its user (`user_id_jwt_field`,
made on first use with `user_id_upsert`, with LiteLLM's `default_internal_user_params`
as SSO sign-in makes one: trigate.new_users), its team (`team_id_jwt_field`, or the first
existing team of `team_ids_jwt_field`), and proxy-admin power for a token holding
`admin_jwt_scope`. The caller is bound as a key would be by its user's and team's
rows: their models, budgets and rate limits apply, and its spend is billed to them
(`trigate.auth.Authenticator.identified`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx
import trio
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from trigate.auth import Authenticator, Caller
from trigate.clock import wall_time
from trigate.config import JwtAuthSettings
from trigate.errors import AuthenticationFailed
from trigate.new_users import new_user_row
from trigate.roles import Role
from trigate.store import Row, Store

logger = logging.getLogger("trigate")

# Asymmetric algorithms only: see the module's docstring.
ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]
# An unknown key id fetches the key set again at most this often.
JWKS_REFETCH_SECONDS = 30.0
JWKS_TIMEOUT = 10.0
# Clock skew allowed on `exp` and `nbf`.
LEEWAY_SECONDS = 30


class InvalidToken(AuthenticationFailed):
    code = "invalid_token"


class JwksCache:
    """The provider's key set, fetched on demand and kept `ttl` seconds."""

    def __init__(self, url: str, ttl: float, client: httpx.AsyncClient | None = None) -> None:
        self._url = url
        self._ttl = ttl
        self._client = client
        self._keys: KeySet | None = None
        self._fetched_at = -float("inf")
        self._lock = trio.Lock()

    async def keys(self, kid: str | None) -> KeySet:
        """The key set, fetched again when it is stale, or when it lacks `kid` and was
        not fetched within `JWKS_REFETCH_SECONDS`."""
        now = trio.current_time()
        keys = self._keys
        stale = keys is None or now - self._fetched_at > self._ttl
        missing = keys is not None and kid is not None and not _holds(keys, kid)
        if stale or (missing and now - self._fetched_at > JWKS_REFETCH_SECONDS):
            async with self._lock:
                if self._fetched_at < now:  # no other task fetched it meanwhile
                    await self._fetch()
        assert self._keys is not None
        return self._keys

    async def _fetch(self) -> None:
        try:
            response = await self._get(self._url)
            response.raise_for_status()
            found = response.json()
            if isinstance(found, dict) and "keys" not in found and found.get("jwks_uri"):
                # An OpenID discovery document: the key set is where it says.
                response = await self._get(str(found["jwks_uri"]))
                response.raise_for_status()
                found = response.json()
            keys = KeySet.import_key_set(found)
        except (httpx.HTTPError, ValueError, JoseError) as error:
            if self._keys is None:
                raise InvalidToken(
                    "The identity provider's keys could not be fetched to verify the token."
                ) from None
            # Keep verifying with the keys last fetched while the provider is away.
            logger.warning(
                "JWKS fetch from %s failed (%s); keeping the last keys", self._url, error
            )
            self._fetched_at = trio.current_time()
            return
        self._keys = keys
        self._fetched_at = trio.current_time()

    async def _get(self, url: str) -> httpx.Response:
        if self._client is not None:
            return await self._client.get(url)
        async with httpx.AsyncClient(timeout=JWKS_TIMEOUT) as client:
            return await client.get(url)


def _holds(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


class JwtVerifier:
    """The `TokenVerifier` for identity providers' JWTs."""

    def __init__(
        self,
        settings: JwtAuthSettings,
        store: Store,
        new_user: Mapping[str, Any],
        client: httpx.AsyncClient | None = None,
    ) -> None:
        assert settings.public_key_url is not None  # checked when the config was read
        self.settings = settings
        self._store = store
        # LiteLLM's `default_internal_user_params`, checked (trigate.new_users).
        self._new_user = new_user
        self._jwks = JwksCache(settings.public_key_url, settings.public_key_ttl, client)

    async def caller(self, token: str, auth: Authenticator) -> Caller | None:
        claims = await self.verified_claims(token)
        return await self._caller_of(claims, auth)

    async def verified_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError):
            raise InvalidToken("The token is not a well-formed JWT.") from None
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken(f"Tokens signed with `{header.get('alg')}` are not accepted.")
        kid = header.get("kid")
        keys = await self._jwks.keys(kid if isinstance(kid, str) else None)
        try:
            decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
        except (JoseError, ValueError):
            raise InvalidToken("The token's signature does not verify.") from None
        claims = dict(decoded.claims)
        try:
            self._registry(claims).validate(claims)
        except JoseError as error:
            raise InvalidToken(f"The token was refused: {error.description or error}.") from None
        return claims

    def _registry(self, claims: dict[str, Any]) -> jwt.JWTClaimsRegistry:
        """Expiry always; issuer and audience as configured (an issuer's own audience
        before `JWT_AUDIENCE`)."""
        options: dict[str, Any] = {"exp": {"essential": True}}
        audience = self.settings.audience
        if self.settings.issuer:
            options["iss"] = {"essential": True, "value": self.settings.issuer}
        if self.settings.issuers:
            issuer = next((i for i in self.settings.issuers if i.issuer == claims.get("iss")), None)
            if issuer is None:
                raise InvalidToken("The token's issuer is not one this gateway trusts.")
            options["iss"] = {"essential": True, "value": issuer.issuer}
            audience = issuer.audience or audience
        if not audience:  # start-up refuses such a config: fail closed all the same
            raise InvalidToken("No audience is configured to check the token's against.")
        options["aud"] = {"essential": True, "value": audience}
        return jwt.JWTClaimsRegistry(leeway=LEEWAY_SECONDS, **options)

    async def _caller_of(self, claims: dict[str, Any], auth: Authenticator) -> Caller:
        s = self.settings
        email = _text(claim(claims, s.user_email_jwt_field))
        if s.user_allowed_email_domain and not (email or "").endswith(
            "@" + s.user_allowed_email_domain
        ):
            raise InvalidToken("The token's email is not in the allowed domain.")
        if s.user_roles_jwt_field and s.user_allowed_roles is not None:
            roles = _names(claim(claims, s.user_roles_jwt_field))
            if not roles & set(s.user_allowed_roles):
                raise InvalidToken("The token holds none of the allowed roles.")
        granted = self._mapped_role(claims)
        if s.admin_jwt_scope in _names(claims.get("scope", claims.get("scp"))):
            granted = Role.PROXY_ADMIN
        user_id = _text(claim(claims, s.user_id_jwt_field))
        if user_id is not None:
            await self._user(auth, user_id, email)
        team_id = await self._team(auth, claims)
        if user_id is None and team_id is None and granted is None:
            raise InvalidToken("The token names no user or team this gateway knows.")
        identity = f"jwt:{(user_id or team_id or 'admin')[:32]}"
        return await auth.identified(identity, user_id, team_id, granted)

    def _mapped_role(self, claims: dict[str, Any]) -> Role | None:
        """The LiteLLM role the first mapped role of the token grants (`role_mappings`);
        with `enforce_rbac`, a token with none is refused."""
        s = self.settings
        held = _names(claim(claims, s.roles_jwt_field)) if s.roles_jwt_field else set()
        role = next((Role(m.internal_role) for m in s.role_mappings if m.role in held), None)
        if role is None and s.enforce_rbac:
            raise InvalidToken("The token holds no role this gateway maps.")
        return role

    async def _user(self, auth: Authenticator, user_id: str, email: str | None) -> Row:
        """The token's user, read through the authenticator's cache as a key's is; made
        with LiteLLM's `default_internal_user_params` when `user_id_upsert` allows, as
        LiteLLM's `get_user_object` makes it (and as SSO sign-in does here)."""
        row = await auth.row("users", user_id)
        if row is not None:
            return row
        if not self.settings.user_id_upsert:
            raise InvalidToken(f"No user `{user_id}` exists (set user_id_upsert to make it).")
        row = new_user_row(self._new_user, user_id, email, wall_time())
        await self._store.insert("users", row)
        auth.forget("users", user_id)
        return row

    async def _team(self, auth: Authenticator, claims: dict[str, Any]) -> str | None:
        s = self.settings
        if (team_id := _text(claim(claims, s.team_id_jwt_field))) is not None:
            if s.team_id_upsert and await auth.row("teams", team_id) is None:
                now = wall_time()
                await self._store.insert("teams", {"team_id": team_id, "models": [],
                    "metadata": {}, "created_at": now, "updated_at": now})  # fmt: skip
                auth.forget("teams", team_id)
            return team_id
        for candidate in _listed(claim(claims, s.team_ids_jwt_field)):
            if await auth.row("teams", candidate) is not None:
                return candidate
        return None


def claim(claims: dict[str, Any], path: str | None) -> Any:
    """A claim by LiteLLM's dotted path (`resource_access.client.roles`)."""
    if not path:
        return None
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _names(value: Any) -> set[str]:
    """A scope or role claim: a list, or a space-separated string."""
    if isinstance(value, str):
        return set(value.split())
    return set(_listed(value))

"""OpenID Connect sign-in for the UI, with any provider, and no cap on its users.

LiteLLM's variables configure it: `GENERIC_CLIENT_ID`, `GENERIC_CLIENT_SECRET`,
`GENERIC_AUTHORIZATION_ENDPOINT`, `GENERIC_TOKEN_ENDPOINT`, `GENERIC_USERINFO_ENDPOINT`,
`GENERIC_SCOPE`, `GENERIC_USER_ID_ATTRIBUTE`, `GENERIC_USER_EMAIL_ATTRIBUTE`,
`GENERIC_USER_ROLE_ATTRIBUTE`; or `GOOGLE_CLIENT_ID`/`GOOGLE_CLIENT_SECRET`, or
`MICROSOFT_CLIENT_ID`/`MICROSOFT_CLIENT_SECRET`/`MICROSOFT_TENANT`, whose endpoints are
the providers' own. trigate adds discovery: with `GENERIC_DISCOVERY_URL` (an issuer's
`/.well-known/openid-configuration`), the endpoints are read from it, and the ID
token is verified against the issuer's JWKS (signature, issuer, audience, expiry,
nonce). Without discovery, the user's claims come from the userinfo endpoint, read
with the access token the token endpoint gave (LiteLLM's way).

The flow is the authorization code flow with PKCE (S256), a `state` and a `nonce`,
kept in a short-lived signed cookie between the redirect and the callback.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from trigate.errors import AuthenticationFailed

DEFAULT_SCOPE = "openid email profile"
GOOGLE_DISCOVERY = "https://accounts.google.com/.well-known/openid-configuration"
MICROSOFT_DISCOVERY = (
    "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
)
# LiteLLM's callback path, so a provider's registered redirect URI keeps working.
CALLBACK_PATH = "/sso/callback"
HTTP_TIMEOUT = 10.0


class SsoFailed(AuthenticationFailed):
    """The identity provider's answer could not be verified."""

    code = "sso_failed"


@dataclass(frozen=True, slots=True)
class Provider:
    """One OpenID provider, as configured."""

    name: str
    client_id: str
    client_secret: str = field(repr=False)
    discovery_url: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    scope: str = DEFAULT_SCOPE
    user_id_claim: str = "sub"
    email_claim: str = "email"
    role_claim: str | None = None
    teams_claim: str | None = None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Provider | None:
        """The provider the environment configures, if any: generic first."""
        if env.get("GENERIC_CLIENT_ID"):
            return cls(
                "generic",
                env["GENERIC_CLIENT_ID"],
                env.get("GENERIC_CLIENT_SECRET", ""),
                discovery_url=env.get("GENERIC_DISCOVERY_URL") or None,
                authorization_endpoint=env.get("GENERIC_AUTHORIZATION_ENDPOINT") or None,
                token_endpoint=env.get("GENERIC_TOKEN_ENDPOINT") or None,
                userinfo_endpoint=env.get("GENERIC_USERINFO_ENDPOINT") or None,
                scope=env.get("GENERIC_SCOPE") or DEFAULT_SCOPE,
                user_id_claim=env.get("GENERIC_USER_ID_ATTRIBUTE") or "sub",
                email_claim=env.get("GENERIC_USER_EMAIL_ATTRIBUTE") or "email",
                role_claim=env.get("GENERIC_USER_ROLE_ATTRIBUTE") or None,
                teams_claim=env.get("GENERIC_USER_TEAMS_ATTRIBUTE") or None,
            )
        if env.get("GOOGLE_CLIENT_ID"):
            return cls(
                "google",
                env["GOOGLE_CLIENT_ID"],
                env.get("GOOGLE_CLIENT_SECRET", ""),
                discovery_url=GOOGLE_DISCOVERY,
            )
        if env.get("MICROSOFT_CLIENT_ID"):
            tenant = env.get("MICROSOFT_TENANT") or "common"
            return cls(
                "microsoft",
                env["MICROSOFT_CLIENT_ID"],
                env.get("MICROSOFT_CLIENT_SECRET", ""),
                discovery_url=MICROSOFT_DISCOVERY.format(tenant=tenant),
                role_claim="roles",
            )
        return None


@dataclass(frozen=True, slots=True)
class Endpoints:
    authorization: str
    token: str
    userinfo: str | None
    issuer: str | None = None
    jwks_uri: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the callback must match: kept in a signed cookie during the redirect."""

    state: str
    nonce: str
    verifier: str
    next_path: str

    @classmethod
    def new(cls, next_path: str) -> Attempt:
        return cls(
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),
            next_path,
        )

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the provider says signed in."""

    user_id: str
    email: str | None
    role: str | None
    teams: list[str]


class OidcClient:
    """The relying party's side of the code flow for one provider."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._endpoints: Endpoints | None = None

    async def endpoints(self) -> Endpoints:
        """The provider's endpoints: configured, or discovered once."""
        if self._endpoints is not None:
            return self._endpoints
        p = self.provider
        found: dict[str, Any] = {}
        if p.discovery_url:
            found = await self._get_json(p.discovery_url)
        authorization = p.authorization_endpoint or found.get("authorization_endpoint")
        token = p.token_endpoint or found.get("token_endpoint")
        if not authorization or not token:
            raise SsoFailed(
                "SSO needs an authorization and a token endpoint: set GENERIC_DISCOVERY_URL "
                "or GENERIC_AUTHORIZATION_ENDPOINT and GENERIC_TOKEN_ENDPOINT."
            )
        self._endpoints = Endpoints(
            authorization,
            token,
            p.userinfo_endpoint or found.get("userinfo_endpoint"),
            found.get("issuer"),
            found.get("jwks_uri"),
        )
        return self._endpoints

    async def authorization_url(self, attempt: Attempt, redirect_uri: str) -> str:
        endpoints = await self.endpoints()
        query = {
            "response_type": "code",
            "client_id": self.provider.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.provider.scope,
            "state": attempt.state,
            "nonce": attempt.nonce,
            "code_challenge": attempt.challenge,
            "code_challenge_method": "S256",
        }
        separator = "&" if "?" in endpoints.authorization else "?"
        return endpoints.authorization + separator + urlencode(query)

    async def identity(self, attempt: Attempt, code: str, redirect_uri: str) -> Identity:
        """Exchange the code, then verify who signed in."""
        endpoints = await self.endpoints()
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
                response = await http.post(
                    endpoints.token,
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": redirect_uri,
                        "client_id": self.provider.client_id,
                        "client_secret": self.provider.client_secret,
                        "code_verifier": attempt.verifier,
                    },
                    headers={"accept": "application/json"},
                )
        except httpx.HTTPError as error:
            raise SsoFailed(f"The identity provider did not answer: {error}.") from None
        if response.status_code != 200:
            raise SsoFailed(f"The identity provider refused the code ({response.status_code}).")
        tokens = response.json()
        claims: dict[str, Any]
        if endpoints.jwks_uri and isinstance(tokens.get("id_token"), str):
            claims = await self._verified_id_token(tokens["id_token"], attempt, endpoints)
        elif endpoints.userinfo and isinstance(tokens.get("access_token"), str):
            claims = await self._get_json(
                endpoints.userinfo, {"authorization": f"Bearer {tokens['access_token']}"}
            )
        else:
            raise SsoFailed("The identity provider sent no verifiable identity.")
        return self._identity_of(claims)

    async def _verified_id_token(
        self, token: str, attempt: Attempt, endpoints: Endpoints
    ) -> dict[str, Any]:
        assert endpoints.jwks_uri is not None
        if not endpoints.issuer:
            raise SsoFailed("The provider's discovery document names no `issuer`.")
        keys = KeySet.import_key_set(await self._get_json(endpoints.jwks_uri))  # type: ignore[arg-type]
        try:
            decoded = jwt.decode(token, keys)
            registry = jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": endpoints.issuer},
                aud={"essential": True, "value": self.provider.client_id},
                exp={"essential": True},
                nonce={"essential": True, "value": attempt.nonce},
            )
            registry.validate(decoded.claims)
        except (JoseError, ValueError) as error:
            raise SsoFailed(f"The ID token failed its checks: {error}.") from None
        return dict(decoded.claims)

    def _identity_of(self, claims: dict[str, Any]) -> Identity:
        p = self.provider
        user_id = claims.get(p.user_id_claim) or claims.get("sub")
        if not isinstance(user_id, str) or not user_id:
            raise SsoFailed(f"The identity has no `{p.user_id_claim}` claim.")
        email = claims.get(p.email_claim)
        role = claims.get(p.role_claim) if p.role_claim else None
        if isinstance(role, list):
            role = role[0] if role else None
        teams = claims.get(p.teams_claim) if p.teams_claim else None
        return Identity(
            user_id,
            email if isinstance(email, str) else None,
            role if isinstance(role, str) else None,
            [t for t in teams if isinstance(t, str)] if isinstance(teams, list) else [],
        )

    async def _get_json(self, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
                response = await http.get(url, headers=headers)
            response.raise_for_status()
            found = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise SsoFailed(f"The identity provider's {url} did not answer: {error}.") from None
        if not isinstance(found, dict):
            raise SsoFailed(f"The identity provider's {url} answered no JSON object.")
        return found

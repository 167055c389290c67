"""JWT auth on the API (LiteLLM's `enable_jwt_auth` with `litellm_jwtauth`): tokens
signed by a test key set served as JWKS on a real socket, used through the OpenAI SDK
as a key would be. The token's claims name its user and team, whose limits bind it and
whose spend it is billed to; expired, wrong-audience, wrong-issuer, tampered and
badly signed tokens are refused; a rotated key set is fetched again."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import openai
import orjson
import pytest
import trio
import trio.testing
from fakes import FakeUpstream, JSONReply
from helpers import MASTER_KEY, RunningGateway, openai_config, sdk, start_gateway
from joserfc import jwt
from joserfc.jwk import ECKey, Key, KeySet, RSAKey
from openai.types.chat import ChatCompletionMessageParam

from trigate.config import ConfigError, parse_config
from trigate.jwt_auth import JWKS_REFETCH_SECONDS

ISSUER = "https://idp.example.test"
AUDIENCE = "trigate-api"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


class IdentityProvider:
    """A JWKS endpoint whose keys the test may rotate."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.published: list[Key] = [self.key]
        self.server = FakeUpstream(
            lambda request: JSONReply(KeySet(self.published).as_dict(private=False))
        )

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/jwks"

    def token(self, key: Any = None, alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
        signer = key or self.key
        return jwt.encode({"alg": alg, "kid": signer.kid or "none"}, body, signer)


def jwt_config(config: dict[str, Any], idp: IdentityProvider, **jwtauth: Any) -> dict[str, Any]:
    """`config` with JWT auth on, against `idp`'s key set and this test's audience."""
    config["environment_variables"] = {"JWT_PUBLIC_KEY_URL": idp.jwks_url, "JWT_AUDIENCE": AUDIENCE}
    config["general_settings"] = {"enable_jwt_auth": True, "litellm_jwtauth": jwtauth}
    return config


@pytest.fixture
async def idp(nursery: trio.Nursery) -> IdentityProvider:
    provider = IdentityProvider()
    await provider.server.start(nursery)
    return provider


@pytest.fixture
async def served(nursery: trio.Nursery, idp: IdentityProvider, upstream: FakeUpstream) -> Any:
    config = jwt_config(
        openai_config(upstream, model="openai/gpt-4o-mini"),
        idp,
        user_id_jwt_field="sub",
        team_ids_jwt_field="groups",
        issuers=[{"issuer": ISSUER}],
    )
    running = await start_gateway(nursery, config)
    async with running.client() as admin:
        for body in (
            {"team_id": "research", "max_budget": 5},
            {"team_id": "broke", "max_budget": 0},
        ):
            assert (await admin.post("/team/new", json=body)).status_code == 200
        made = await admin.post("/user/new", json={"user_id": "ada", "user_role": "internal_user"})
        assert made.status_code == 200
    yield running
    await running.stop()


async def chat(gateway: RunningGateway, token: str) -> Any:
    return await sdk(gateway, token).chat.completions.create(model="gpt-test", messages=MESSAGES)


async def test_a_token_is_billed_to_its_user_and_team_as_a_key_would_be(
    served: RunningGateway, idp: IdentityProvider
) -> None:
    token = idp.token(sub="ada", groups=["no-such-team", "research"])
    answer = await chat(served, token)
    assert answer.choices[0].message.content
    [record] = await served.records.wait_for(1)
    assert (record.user_id, record.team_id, record.key_hash) == ("ada", "research", None)
    assert record.cost > 0
    await served.gateway.ledger.flush()
    async with served.client() as admin:
        team = (await admin.get("/team/info", params={"team_id": "research"})).json()
        user = (await admin.get("/user/info", params={"user_id": "ada"})).json()
    assert team["team_info"]["spend"] == pytest.approx(record.cost)
    assert user["user_info"]["spend"] == pytest.approx(record.cost)


async def test_budgets_and_limits_bind_by_the_tokens_claims(
    served: RunningGateway, idp: IdentityProvider
) -> None:
    with pytest.raises(openai.BadRequestError, match="udget"):
        await chat(served, idp.token(sub="ada", groups=["broke"]))
    async with served.client() as admin:
        await admin.post("/user/update", json={"user_id": "ada", "models": ["other-model"]})
    with pytest.raises(openai.PermissionDeniedError, match="user may not use model"):
        await chat(served, idp.token(sub="ada", groups=["research"]))


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 120},
        {"aud": "someone-else"},
        {"iss": "https://evil.example.test"},
        {"sub": "nobody"},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "unknown-user"],
)
async def test_a_bad_token_is_refused(
    served: RunningGateway, idp: IdentityProvider, claims: dict[str, Any]
) -> None:
    token = idp.token(**{"sub": "ada", **claims})
    with pytest.raises(openai.AuthenticationError):
        await chat(served, token)


async def test_a_tampered_or_wrongly_signed_token_is_refused(
    served: RunningGateway, idp: IdentityProvider
) -> None:
    head, payload, signature = idp.token(sub="ada").split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "someone-with-more-power"
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    # Algorithm confusion: an HMAC whose secret is the provider's public key.
    confused = _segment({"alg": "HS256", "kid": "k1"}) + "." + payload
    mac = hmac.new(idp.key.as_pem(private=False), confused.encode(), hashlib.sha256).digest()
    for token in (
        f"{head}.{forged}.{signature}",
        idp.token(key=stranger, sub="ada"),  # the same key id, another key
        f"{confused}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}",
        _segment({"alg": "none", "kid": "k1"}) + f".{payload}.",
    ):
        with pytest.raises(openai.AuthenticationError):
            await chat(served, token)
    # The master key and virtual keys work as before beside JWTs.
    assert (await chat(served, MASTER_KEY)).choices


def _segment(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


async def test_a_rotated_key_set_is_fetched_again(
    served: RunningGateway, idp: IdentityProvider, still_clock: trio.testing.MockClock
) -> None:
    assert (await chat(served, idp.token(sub="ada"))).choices
    fetched = len(idp.server.requests)
    rotated = ECKey.generate_key("P-256", parameters={"kid": "k2"})
    idp.published = [rotated]
    new_token = idp.token(key=rotated, alg="ES256", sub="ada")
    # Just after a fetch, an unknown key id does not fetch again: made-up ids cannot
    # flood the provider.
    with pytest.raises(openai.AuthenticationError):
        await chat(served, new_token)
    assert len(idp.server.requests) == fetched
    still_clock.jump(JWKS_REFETCH_SECONDS + 1)
    assert (await chat(served, new_token)).choices
    assert len(idp.server.requests) == fetched + 1
    # The retired key is gone from the set: its tokens no longer verify.
    with pytest.raises(openai.AuthenticationError):
        await chat(served, idp.token(sub="ada"))


async def test_an_admin_scope_grants_the_admin_api_and_a_user_only_its_role(
    served: RunningGateway, idp: IdentityProvider
) -> None:
    admin = idp.token(sub="ada", scope="openid litellm_proxy_admin")
    user = idp.token(sub="ada")
    async with served.client(admin) as as_admin, served.client(user) as as_user:
        assert (await as_admin.post("/team/new", json={"team_id": "new"})).status_code == 200
        refused = await as_user.post("/team/new", json={"team_id": "other"})
        assert refused.status_code == 403
        made = await as_user.post("/key/generate", json={"key_alias": "ada-own"})
        assert made.status_code == 200 and made.json()["user_id"] == "ada"


@pytest.mark.parametrize(
    ("settings", "environ", "refusal"),
    [
        ({"enable_jwt_auth": True}, {}, "needs JWT_PUBLIC_KEY_URL"),
        (
            {"enable_jwt_auth": True, "litellm_jwtauth": {"team_allowed_routes": ["/x"]}},
            {"JWT_PUBLIC_KEY_URL": "http://127.0.0.1:9/jwks"},
            "trigate does not act on team_allowed_routes",
        ),
        # No audience: a token the provider signed for any of its apps would be let in.
        (
            {"enable_jwt_auth": True},
            {"JWT_PUBLIC_KEY_URL": "http://127.0.0.1:9/jwks"},
            "needs an audience: set JWT_AUDIENCE",
        ),
        (
            {
                "enable_jwt_auth": True,
                "litellm_jwtauth": {
                    "issuers": [{"issuer": ISSUER, "audience": AUDIENCE}, {"issuer": "b"}]
                },
            },
            {"JWT_PUBLIC_KEY_URL": "http://127.0.0.1:9/jwks"},
            "needs an audience",
        ),
    ],
)
def test_jwt_auth_that_cannot_be_honoured_stops_start_up(
    settings: dict[str, Any], environ: dict[str, str], refusal: str
) -> None:
    with pytest.raises(ConfigError, match=refusal):
        parse_config({"general_settings": settings}, environ)


@pytest.mark.parametrize(
    ("jwtauth", "environ"),
    [
        ({}, {"JWT_AUDIENCE": AUDIENCE}),
        ({"audience": AUDIENCE}, {}),
        ({"issuers": [{"issuer": ISSUER, "audience": AUDIENCE}]}, {}),
    ],
    ids=["JWT_AUDIENCE", "audience", "each-issuers-audience"],
)
def test_any_of_the_audience_settings_lets_jwt_auth_start(
    jwtauth: dict[str, Any], environ: dict[str, str]
) -> None:
    settings = {"enable_jwt_auth": True, "litellm_jwtauth": jwtauth}
    environ = {"JWT_PUBLIC_KEY_URL": "http://127.0.0.1:9/jwks", **environ}
    parsed = parse_config({"general_settings": settings}, environ)
    assert parsed.general_settings.enable_jwt_auth


async def test_upserts_and_role_mappings(
    nursery: trio.Nursery, idp: IdentityProvider, upstream: FakeUpstream
) -> None:
    config = openai_config(upstream)
    config["environment_variables"] = {"JWT_PUBLIC_KEY_URL": idp.jwks_url}
    config["general_settings"] = {
        "enable_jwt_auth": True,
        "litellm_jwtauth": {
            "user_id_jwt_field": "sub",
            "user_email_jwt_field": "email",
            "team_id_jwt_field": "client_id",
            "user_id_upsert": True,
            "team_id_upsert": True,
            "roles_jwt_field": "realm.roles",
            "role_mappings": [{"role": "llm-admins", "internal_role": "proxy_admin"}],
            "enforce_rbac": True,
            "audience": AUDIENCE,
            "issuer": ISSUER,
        },
    }
    running = await start_gateway(nursery, config)
    user = idp.token(sub="newbie", email="n@x.test", client_id="fresh", realm={"roles": ["x"]})
    # enforce_rbac: no mapped role, no entry.
    with pytest.raises(openai.AuthenticationError, match="no role"):
        await chat(running, user)
    admin = idp.token(sub="newbie", client_id="fresh", realm={"roles": ["llm-admins"]})
    assert (await chat(running, admin)).choices
    async with running.client(admin) as as_admin:
        assert (await as_admin.post("/team/new", json={"team_id": "by-jwt"})).status_code == 200
        made = (await as_admin.get("/user/info", params={"user_id": "newbie"})).json()
        team = (await as_admin.get("/team/info", params={"team_id": "fresh"})).json()
    assert made["user_info"]["user_id"] == "newbie" and team["team_id"] == "fresh"
    await running.stop()


def _upserting(idp: IdentityProvider, upstream: FakeUpstream, **litellm: Any) -> dict[str, Any]:
    config = jwt_config(
        openai_config(upstream),
        idp,
        user_id_jwt_field="sub",
        user_email_jwt_field="email",
        team_ids_jwt_field="groups",
        user_id_upsert=True,
        issuer=ISSUER,
    )
    config["litellm_settings"] = litellm
    config["model_list"].append(
        {"model_name": "other-model", "litellm_params": config["model_list"][0]["litellm_params"]}
    )
    return config


async def test_an_upserted_user_gets_the_default_internal_user_params(
    nursery: trio.Nursery, idp: IdentityProvider, upstream: FakeUpstream
) -> None:
    """LiteLLM's `get_user_object` makes a JWT's new user with
    `default_internal_user_params`: its models, budget and limits then bind the token."""
    defaults = {
        "user_role": "internal_user",
        "models": ["gpt-test"],
        "max_budget": 4.5,
        "budget_duration": "30d",
        "rpm_limit": 1,
    }
    running = await start_gateway(
        nursery, _upserting(idp, upstream, default_internal_user_params=defaults)
    )
    token = idp.token(sub="newbie", email="newbie@x.test")
    client = sdk(running, token)
    with pytest.raises(openai.PermissionDeniedError, match="user may not use model"):
        await client.chat.completions.create(model="other-model", messages=MESSAGES)
    assert (await chat(running, token)).choices
    with pytest.raises(openai.RateLimitError):  # the default rpm_limit, the user's own
        await chat(running, token)
    async with running.client() as admin:
        info = (await admin.get("/user/info", params={"user_id": "newbie"})).json()["user_info"]
    assert (info["models"], info["max_budget"], info["rpm_limit"], info["user_role"]) == (
        ["gpt-test"], 4.5, 1, "internal_user",
    )  # fmt: skip
    assert (info["user_email"], info["budget_duration"]) == ("newbie@x.test", "30d")
    assert info["budget_reset_at"] is not None
    await running.stop()


async def test_an_upserted_user_without_default_models_uses_its_teams(
    nursery: trio.Nursery, idp: IdentityProvider, upstream: FakeUpstream
) -> None:
    """Without `models` in the defaults, a new user gets LiteLLM's `no-default-models`,
    as SSO's does: no model on its own, its team's through a team."""
    running = await start_gateway(nursery, _upserting(idp, upstream))
    async with running.client() as admin:
        made = await admin.post("/team/new", json={"team_id": "research", "models": ["gpt-test"]})
        assert made.status_code == 200
    with pytest.raises(openai.PermissionDeniedError, match="no model outside a team"):
        await chat(running, idp.token(sub="loner"))
    assert (await chat(running, idp.token(sub="loner", groups=["research"]))).choices
    async with running.client() as admin:
        info = (await admin.get("/user/info", params={"user_id": "loner"})).json()["user_info"]
    assert info["models"] == ["no-default-models"] and info["user_role"] is None
    await running.stop()

"""The gateway's configuration: LiteLLM's `config.yaml` shape, validated once at start-up.

An existing LiteLLM proxy config must load unchanged, so keys trigate does not
act on are kept rather than rejected, each named at start-up, unless serving
without it would weaken security (litellm_keys.py), and `os.environ/NAME` values
are resolved wherever they appear. What the gateway needs to decide is validated
strictly, and the first problem stops start-up with one message naming the key and
what was expected.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
from collections.abc import Collection, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import orjson
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trigate.guardrails.config import parse_guardrails
from trigate.guardrails.types import KNOWN_TYPES
from trigate.litellm_keys import Findings, classify
from trigate.mcp_gateway.capacity import PER_KEY, PER_SERVER, SessionLimits
from trigate.mcp_gateway.servers import MCPServer
from trigate.mcp_gateway.servers import from_config as mcp_servers_from_config
from trigate.nesting import MAX_NESTING, deeper_than
from trigate.provider_names import PROVIDER_PREFIXES, REQUIRES_API_BASE
from trigate.router_settings import RouterSettings

ENV_PREFIX = "os.environ/"
DEFAULT_TIMEOUT = 600.0
DEFAULT_DATABASE_URL = "sqlite:///trigate.db"
WILDCARD = "*"

DEFAULT_CONFIG: dict[str, Any] = {
    "model_list": [{"model_name": "mock", "litellm_params": {"model": "mock/mock"}}],
}


class ConfigError(Exception):
    """The configuration cannot be served; the message names the offending key."""


def _scalar_text(value: Any) -> Any:
    """YAML reads an unquoted `2024-10-21` as a date and `1` as a number; a version or a
    header value is sent as its text, as LiteLLM sends it."""
    return str(value) if isinstance(value, int | float | datetime.date) else value


# Text that a config may also write as a YAML date or number.
Text = Annotated[str, BeforeValidator(_scalar_text)]


# What an HTTP header's name may be (RFC 9110's token), and the characters no header value
# or URL may hold: a CR or LF would end a header early, and any control character (or, in
# a header, any non-ASCII one) makes httpx refuse the request, so one stored value would
# fail every request to its deployment, or the start-up of every process.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
# Parameters sent as a header (or signed into one) to the upstream, checked as such.
_HEADER_PARAMS = (
    "api_key", "api_version", "azure_ad_token", "anthropic_version", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "aws_region_name",
)  # fmt: skip
_URL_PARAMS = ("api_base", "aws_bedrock_runtime_endpoint")


def _no_control(value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain control characters (such as CR or LF)")
    return value


def _header_value(value: str, what: str) -> str:
    _no_control(value, what)
    if not _HEADER_VALUE.fullmatch(value):
        raise ValueError(f"{what} must be printable ASCII, as an HTTP header value is sent")
    return value


def _upstream_url(value: str, what: str) -> str:
    """An `api_base`: an absolute http(s) URL httpx can send to, with nothing it would
    refuse at request time."""
    _no_control(value, what)
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        raise ValueError(f"{what} is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host")
    return value


class ProviderParams(BaseModel):
    """The `litellm_params` only some providers read, typed so that a value of the wrong
    type stops start-up naming its key rather than being ignored by the provider."""

    # Azure OpenAI: the data-plane `api-version`, and an Entra ID token instead of a key.
    api_version: Text | None = None
    azure_ad_token: str | None = Field(default=None, repr=False)
    # Anthropic: the `anthropic-version` header, and the `max_tokens` a request without
    # one is given (the Messages API requires it).
    anthropic_version: Text | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    # Bedrock: credentials, region and endpoint; unset ones fall back to AWS's variables.
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = Field(default=None, repr=False)
    aws_session_token: str | None = Field(default=None, repr=False)
    aws_region_name: str | None = None
    aws_bedrock_runtime_endpoint: str | None = None
    # Vertex AI: the Google Cloud project and region, and the credentials (a file's path or
    # the JSON itself; application default credentials without).
    vertex_project: str | None = None
    vertex_location: str | None = None
    vertex_credentials: str | dict[str, Any] | None = Field(default=None, repr=False)
    # Every provider but Bedrock: headers sent with each upstream request, overriding ours.
    extra_headers: dict[str, Text] | None = None


class LiteLLMParams(ProviderParams):
    """One deployment's `litellm_params`; unknown fields are kept for forward compatibility."""

    model_config = ConfigDict(extra="allow")

    model: str
    api_base: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0)
    stream_timeout: float | None = Field(default=None, gt=0)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    weight: float | None = Field(default=None, ge=0)
    order: int | None = None
    max_parallel_requests: int | None = Field(default=None, ge=1)
    input_cost_per_token: float | None = Field(default=None, ge=0)
    output_cost_per_token: float | None = Field(default=None, ge=0)
    # Per second of audio (transcriptions), over the price table's.
    input_cost_per_second: float | None = Field(default=None, ge=0)
    output_cost_per_second: float | None = Field(default=None, ge=0)
    tags: list[str] = Field(default_factory=list)
    mock_response: str | None = None
    mock_delay: float = Field(default=0.0, ge=0)
    mock_chunk_delay: float = Field(default=0.0, ge=0)

    @field_validator(*_HEADER_PARAMS)
    @classmethod
    def _header_safe(cls, value: str | None) -> str | None:
        return None if value is None else _header_value(value, "the value")

    @field_validator("model")
    @classmethod
    def _no_control_in_model(cls, model: str) -> str:
        return _no_control(model, "the model")

    @field_validator(*_URL_PARAMS)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _upstream_url(value, "the value")

    @field_validator("extra_headers")
    @classmethod
    def _headers(cls, headers: dict[str, str] | None) -> dict[str, str] | None:
        for name, value in (headers or {}).items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            _header_value(value, f"the value of header {name!r}")
        return headers

    @field_validator("model")
    @classmethod
    def _known_provider(cls, model: str, info: ValidationInfo) -> str:
        provider, _, name = model.partition("/")
        if WILDCARD in provider:
            return model  # a wildcard deployment's provider comes with each requested name
        listed = listed_providers().get(model) if not name and _written(info) else None
        if listed in PROVIDER_PREFIXES:
            # LiteLLM serves a bare name its model table knows (`gpt-4o`) by that
            # table's provider; so does trigate, under the provider's prefix. Only a
            # name the config wrote: one a client's request fills into a wildcard
            # deployment still needs its prefix, so no client picks a provider.
            return f"{listed}/{model}"
        if not name:
            raise ValueError(
                f"expected 'provider/model' with a provider prefix, got {model!r}; "
                f"known providers: {', '.join(sorted(PROVIDER_PREFIXES))}"
            )
        if provider not in PROVIDER_PREFIXES:
            raise ValueError(
                f"unknown provider prefix {provider!r}; known providers: "
                f"{', '.join(sorted(PROVIDER_PREFIXES))}"
            )
        return model

    @model_validator(mode="after")
    def _api_base_where_needed(self) -> LiteLLMParams:
        if self.provider in REQUIRES_API_BASE and not self.api_base:
            raise ValueError(f"api_base is required for `{self.provider}/` deployments")
        return self

    @property
    def provider(self) -> str:
        return self.model.partition("/")[0]

    @property
    def upstream_model(self) -> str:
        return self.model.partition("/")[2]


# The validation context of a deployment as the config (or the admin API) wrote it.
WRITTEN = {"written": True}


def _written(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and info.context.get("written") is True


@functools.cache
def listed_providers() -> dict[str, str]:
    """The provider of each bare model name in LiteLLM's model table, which trigate ships
    (trigate/data/model_prices.json): read once, and only for a bare name."""
    data = orjson.loads(resources.files("trigate.data").joinpath("model_prices.json").read_bytes())
    return {
        name: entry["litellm_provider"]
        for name, entry in data.items()
        if isinstance(entry, dict) and isinstance(entry.get("litellm_provider"), str)
    }


class ModelEntry(BaseModel):
    """One `model_list` entry: a deployment serving the alias `model_name`. A `*` in
    `model_name` makes it a wildcard deployment (LiteLLM's): it serves every requested
    name the pattern matches, each `*` of its `litellm_params.model` replaced by what the
    pattern's `*`s matched."""

    model_config = ConfigDict(extra="allow")

    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams
    model_info: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, raw: Any) -> Any:
        """What is stored, hashed into the deployment's id and shown back is nested no
        deeper than MAX_NESTING: orjson could not write a deeper value at all."""
        if isinstance(raw, dict):
            for name in ("litellm_params", "model_info"):
                if deeper_than(raw.get(name), MAX_NESTING):
                    raise ValueError(f"{name} is nested more than {MAX_NESTING} levels deep")
        return raw

    @model_validator(mode="after")
    def _wildcard_only_in_patterns(self) -> ModelEntry:
        if WILDCARD in self.litellm_params.model and not self.is_wildcard:
            raise ValueError(
                f"litellm_params.model {self.litellm_params.model!r} has a `*`, which only a "
                "wildcard deployment (a `*` in model_name) can fill"
            )
        return self

    @property
    def is_wildcard(self) -> bool:
        return WILDCARD in self.model_name


class GeneralSettings(BaseModel):
    """`general_settings`: the proxy's own settings."""

    model_config = ConfigDict(extra="allow")

    master_key: str | None = Field(default=None, repr=False)
    database_url: str | None = None
    max_request_size_mb: float = Field(default=32.0, gt=0)
    # Reading a request body; a stalled client must not pin a request forever.
    request_body_timeout: float = Field(default=60.0, gt=0)
    # Quart would cut every response at 60 s; deployment timeouts bound upstream work instead.
    response_timeout: float | None = Field(default=None, gt=0)
    # At shutdown, streams in flight may finish for this long before they are cut.
    graceful_timeout: float = Field(default=DEFAULT_TIMEOUT, ge=0)
    keep_alive_timeout: float = Field(default=75.0, gt=0)
    # Upstream connections per worker, idle ones included: one pool, kept alive.
    max_upstream_connections: int = Field(default=1000, ge=1)
    # The largest whole (non-streamed) upstream answer read; a larger one is a 502.
    max_upstream_response_size_mb: float = Field(default=32.0, gt=0)
    # Client connections per worker; when full, the longest idle one is closed for a new one.
    max_connections: int = Field(default=4096, ge=1)
    # LiteLLM's: send the client's `x-` headers and `anthropic-beta` on to every upstream.
    forward_client_headers_to_llm_api: bool = False
    # How long a stored Responses API response can be read or continued from.
    responses_retention_days: float = Field(default=30.0, gt=0)
    # LiteLLM's: `/metrics` shows every tenant's series and every upstream's address, so
    # with it set only the master key may read it. Read strictly (true/false, yes/no,
    # on/off, 1/0, as text too): a value that cannot be read stops start-up rather than
    # leaving `/metrics` open. LiteLLM documents it under `litellm_settings`, also read.
    require_auth_for_metrics_endpoint: bool = False
    # The only variables a deployment added through the admin API (`/model/new`) may
    # name as `os.environ/NAME`: the admin API is not access to the host, and any other
    # variable (the master key, the database URL, cloud credentials) could be sent to an
    # `api_base` of the admin's choosing. The config file itself may name any.
    admin_model_env_vars: list[str] = Field(default_factory=list)
    # How many upstream MCP sessions may be open at once, per worker: to each server
    # (unless its `max_concurrent_sessions` says), and for each key, across servers
    # (trigate/mcp_gateway/capacity.py). A stdio server's session is a process.
    mcp_max_concurrent_sessions: int = Field(default=PER_SERVER, ge=1)
    mcp_max_concurrent_sessions_per_key: int = Field(default=PER_KEY, ge=1)
    # LiteLLM's JWT auth (trigate.jwt_auth): bearer tokens from an identity provider,
    # verified against its JWKS (`JWT_PUBLIC_KEY_URL`), as callers beside keys.
    enable_jwt_auth: bool = False
    litellm_jwtauth: JwtAuthSettings = Field(default_factory=lambda: JwtAuthSettings())


class JwtIssuer(BaseModel):
    """One trusted issuer of `litellm_jwtauth.issuers` (LiteLLM's per-issuer entry)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str
    audience: str | None = None


class JwtRoleMapping(BaseModel):
    """A role the token's roles claim may hold, and the LiteLLM role it grants."""

    model_config = ConfigDict(extra="forbid")

    role: str
    internal_role: Literal[
        "proxy_admin", "proxy_admin_viewer", "org_admin", "internal_user",
        "internal_user_viewer", "team", "customer",
    ]  # fmt: skip


class JwtAuthSettings(BaseModel):
    """`general_settings.litellm_jwtauth`: which claims name a token's user, team and
    admin power. A key of LiteLLM's that trigate does not act on is refused (extra
    "forbid"): each restricts access (routes, roles, scopes), and a token must never
    get more than its owner configured."""

    model_config = ConfigDict(extra="forbid")

    # The scope (in `scope` or `scp`, a list or a space-separated string) that makes a
    # token a proxy admin's.
    admin_jwt_scope: str = "litellm_proxy_admin"
    user_id_jwt_field: str | None = None
    user_email_jwt_field: str | None = None
    team_id_jwt_field: str | None = None
    # A list claim of team ids: the first that names an existing team is the token's.
    team_ids_jwt_field: str | None = None
    # Make the token's user (team) on its first call, as LiteLLM's `*_upsert`.
    user_id_upsert: bool = False
    team_id_upsert: bool = False
    # A claim with the token's roles, mapped to LiteLLM's; with `enforce_rbac`, a token
    # holding no mapped role is refused.
    roles_jwt_field: str | None = None
    role_mappings: list[JwtRoleMapping] = Field(default_factory=list)
    enforce_rbac: bool = False
    # Only tokens whose email claim is in this domain are let in.
    user_allowed_email_domain: str | None = None
    # A claim with the token's roles, and the roles let in (LiteLLM's pair).
    user_roles_jwt_field: str | None = None
    user_allowed_roles: list[str] | None = None
    # How long the JWKS is kept before it is fetched again (an unknown `kid` fetches
    # it at once, at most once a `JWKS_REFETCH_SECONDS`).
    public_key_ttl: float = Field(default=600.0, gt=0)
    issuers: list[JwtIssuer] = Field(default_factory=list)
    # The JWKS (or the OpenID discovery document naming it), the audience and the
    # issuer: here, or LiteLLM's `JWT_PUBLIC_KEY_URL`, `JWT_AUDIENCE` (`parse_config`).
    public_key_url: str | None = None
    audience: str | None = None
    issuer: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _acted_on(cls, data: Any) -> Any:
        """Name LiteLLM's keys trigate does not act on (route and scope rules, org and
        end-user claims...) as what they are, rather than as unknown input."""
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"trigate does not act on {', '.join(unknown)}, and without it a token "
                    "could do more than the file means: remove it to start"
                )
        return data


_STRICT_BOOL = TypeAdapter(bool)


class GatewayConfig(BaseModel):
    """The whole file. `router_settings` and `litellm_settings` are accepted as they are."""

    model_config = ConfigDict(extra="allow")

    model_list: list[ModelEntry] = Field(default_factory=list)
    general_settings: GeneralSettings = Field(default_factory=GeneralSettings)
    router_settings: dict[str, Any] = Field(default_factory=dict)
    litellm_settings: dict[str, Any] = Field(default_factory=dict)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    # LiteLLM's `guardrails:` list, as written: checked where the gateway builds them
    # (`trigate.guardrails.registry`), which stops the start or a reload by name.
    guardrails: Any = None
    # LiteLLM's MCP servers, by name (trigate.mcp_gateway.servers); `mcp` is them parsed.
    mcp_servers: dict[str, Any] | None = None
    # The keys of the file as read that trigate does not act on (litellm_keys.py), named
    # in one warning line where the file is (re)loaded for serving.
    _litellm_keys: Findings = PrivateAttr(default_factory=Findings)

    @property
    def litellm_keys(self) -> Findings:
        return self._litellm_keys

    @model_validator(mode="after")
    def _metrics_auth_from_litellm_settings(self) -> GatewayConfig:
        """LiteLLM's documented place for `require_auth_for_metrics_endpoint`; set in
        either section, it holds (an open `/metrics` is never the result of a doubt)."""
        given = self.litellm_settings.get("require_auth_for_metrics_endpoint")
        if given is not None:
            try:
                required = _STRICT_BOOL.validate_python(given)
            except ValidationError:
                raise ValueError(
                    "litellm_settings.require_auth_for_metrics_endpoint: expected true or "
                    f"false, got {given!r}"
                ) from None
            if required:
                self.general_settings.require_auth_for_metrics_endpoint = True
        return self

    @functools.cached_property
    def router(self) -> RouterSettings:
        return RouterSettings.from_config(
            self.router_settings,
            self.litellm_settings,
            self.general_settings.model_extra or {},
        )

    @property
    def mcp_limits(self) -> SessionLimits:
        """The bounds on open upstream MCP sessions (trigate/mcp_gateway/capacity.py)."""
        settings = self.general_settings
        return SessionLimits(
            settings.mcp_max_concurrent_sessions, settings.mcp_max_concurrent_sessions_per_key
        )

    @functools.cached_property
    def mcp(self) -> dict[str, MCPServer]:
        """The file's MCP servers, by name."""
        return mcp_servers_from_config(self.mcp_servers)

    @property
    def database_url(self) -> str:
        return self.general_settings.database_url or DEFAULT_DATABASE_URL

    @property
    def max_request_bytes(self) -> int:
        return int(self.general_settings.max_request_size_mb * 1024 * 1024)

    @property
    def max_upstream_response_bytes(self) -> int:
        return int(self.general_settings.max_upstream_response_size_mb * 1024 * 1024)


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> GatewayConfig:
    """Read, resolve and validate a config file; `None` gives the built-in mock default."""
    raw = _read_yaml(Path(path)) if path else DEFAULT_CONFIG
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return parse_config(raw, environ)


def _jwt_environment(config: GatewayConfig, environ: Mapping[str, str]) -> None:
    """LiteLLM's `JWT_PUBLIC_KEY_URL` and `JWT_AUDIENCE` (the environment or the file's
    `environment_variables`). JWT auth without a key set to verify against stops
    start-up: it would let no token in, or, worse, be mistaken for working. So does JWT
    auth without an audience (LiteLLM's is optional): every token the provider signs,
    for any of its apps, would be let in."""
    settings = config.general_settings
    jwt = settings.litellm_jwtauth
    jwt.public_key_url = jwt.public_key_url or environ.get("JWT_PUBLIC_KEY_URL") or None
    jwt.audience = jwt.audience or environ.get("JWT_AUDIENCE") or None
    if settings.enable_jwt_auth and not jwt.public_key_url:
        raise ConfigError(
            "general_settings.enable_jwt_auth needs JWT_PUBLIC_KEY_URL: the identity "
            "provider's JWKS endpoint, which tokens are verified against"
        )
    every_issuer_has_one = bool(jwt.issuers) and all(i.audience for i in jwt.issuers)
    if settings.enable_jwt_auth and not jwt.audience and not every_issuer_has_one:
        raise ConfigError(
            "general_settings.enable_jwt_auth needs an audience: set JWT_AUDIENCE (or "
            "litellm_jwtauth.audience, or an audience on each of litellm_jwtauth.issuers) "
            "to this gateway's client id, or tokens the identity provider signs for its "
            "other apps are let in"
        )


def parse_config(raw: dict[str, Any], environ: Mapping[str, str]) -> GatewayConfig:
    """Resolve `os.environ/` references in an already-parsed config, then validate it."""
    variables = raw.get("environment_variables") or {}
    if not isinstance(variables, dict):
        raise ConfigError("environment_variables: expected a mapping of names to values")
    resolved = _resolve_env(raw, {**{k: str(v) for k, v in variables.items()}, **environ}, "")
    # A key trigate cannot honour without weakening security stops it before anything else.
    findings = classify(resolved)
    if (refusal := findings.refusal()) is not None:
        raise ConfigError(refusal)
    try:  # a guardrail type, mode or setting trigate cannot run stops it by name
        parse_guardrails(resolved.get("guardrails"), KNOWN_TYPES)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for entry in resolved.get("model_list") or []:
        _lift_litellm_spellings(entry)
    _default_timeouts(resolved)
    _default_fallbacks(resolved)
    if redis_url := environ.get("TRIGATE_REDIS_URL"):
        router_settings = resolved.get("router_settings") or {}
        resolved["router_settings"] = {**router_settings, "redis_url": redis_url}
    try:
        config = GatewayConfig.model_validate(resolved, context=WRITTEN)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    try:
        config.router  # noqa: B018 - validated now, so a bad setting fails start-up
    except ValidationError as error:
        raise ConfigError(_describe(error, "router_settings")) from None
    try:
        config.mcp  # noqa: B018 - validated now, so a bad server fails start-up
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _jwt_environment(config, {**{k: str(v) for k, v in variables.items()}, **environ})
    if master_key := environ.get("TRIGATE_MASTER_KEY"):
        config.general_settings.master_key = master_key
    if database_url := environ.get("TRIGATE_DATABASE_URL"):
        config.general_settings.database_url = database_url
    config._litellm_keys = findings
    return config


# What LiteLLM also reads from a deployment's other parts, by where trigate reads it:
# `rpm`/`tpm` beside `litellm_params` (the Router reads either), and a price in
# `model_info` (LiteLLM's custom pricing takes either).
_LIFTED = {"": ("rpm", "tpm"), "model_info": ("input_cost_per_token", "output_cost_per_token")}


def _lift_litellm_spellings(entry: Any) -> None:
    """Copy into a deployment's `litellm_params` what LiteLLM also reads from elsewhere in
    the entry, where `litellm_params` sets none (its own value wins, as in LiteLLM)."""
    if not isinstance(entry, dict) or not isinstance(params := entry.get("litellm_params"), dict):
        return
    lifted = {}
    for part, keys in _LIFTED.items():
        source = entry.get(part) if part else entry
        if isinstance(source, dict):
            lifted.update({key: source[key] for key in keys if key in source})
    if lifted:
        entry["litellm_params"] = {**lifted, **params}


_TIMEOUT = TypeAdapter(Annotated[float, Field(gt=0)])

# LiteLLM's defaults for a deployment's `timeout` and `stream_timeout`, by precedence:
# the Router's own (`router_settings`), then the module's (`litellm_settings`).
_TIMEOUT_DEFAULTS = {
    "timeout": (("router_settings", "timeout"), ("litellm_settings", "request_timeout")),
    "stream_timeout": (("router_settings", "stream_timeout"),),
}


def _default_timeouts(resolved: dict[str, Any]) -> None:
    """Give each deployment that sets no `timeout` (`stream_timeout`) LiteLLM's default:
    `router_settings.timeout`, else `litellm_settings.request_timeout`
    (`router_settings.stream_timeout`), as LiteLLM's Router does."""
    defaults: dict[str, float] = {}
    for param, sources in _TIMEOUT_DEFAULTS.items():
        for section, key in sources:
            settings = resolved.get(section)
            given = settings.get(key) if isinstance(settings, dict) else None
            if given is None:
                continue
            try:
                defaults[param] = _TIMEOUT.validate_python(given)
            except ValidationError:
                raise ConfigError(
                    f"{section}.{key}: expected a number of seconds above 0, got {given!r}"
                ) from None
            break
    if not defaults:
        return
    for entry in resolved.get("model_list") or []:
        if isinstance(entry, dict) and isinstance(entry.get("litellm_params"), dict):
            entry["litellm_params"] = {**defaults, **entry["litellm_params"]}


_GROUP_NAMES = TypeAdapter(list[str])


def _default_fallbacks(resolved: dict[str, Any]) -> None:
    """LiteLLM's `default_fallbacks` (`router_settings`'s, else `litellm_settings`'s): the
    groups a request falls back to when its own group has no fallbacks, which trigate's
    `fallbacks` writes as the entry for `*`. Added where `fallbacks` is read from (see
    router_settings.py), unless that already has a `*` entry."""
    for section in ("router_settings", "litellm_settings"):
        settings = resolved.get(section)
        given = settings.get("default_fallbacks") if isinstance(settings, dict) else None
        if given:
            break
    else:
        return
    try:
        groups = _GROUP_NAMES.validate_python(given)
    except ValidationError:
        raise ConfigError(
            f"{section}.default_fallbacks: expected a list of model group names, got {given!r}"
        ) from None
    router, litellm = resolved.get("router_settings"), resolved.get("litellm_settings")
    if isinstance(router, dict) and "fallbacks" in router:
        target = router
    elif isinstance(litellm, dict) and "fallbacks" in litellm:
        target = litellm
    elif router is None or isinstance(router, dict):
        target = resolved["router_settings"] = {**(router or {}), "fallbacks": []}
    else:
        return  # not a mapping: validation names router_settings
    table = target.get("fallbacks")
    if isinstance(table, list) and not any(isinstance(e, dict) and "*" in e for e in table):
        target["fallbacks"] = [*table, {"*": groups}]


def parse_model_entry(
    raw: dict[str, Any], environ: Mapping[str, str], allowed_env: Collection[str]
) -> ModelEntry:
    """One `model_list` entry from the admin API (`/model/new`) or the store, resolved
    and validated as the config file's are, but naming only `allowed_env` variables
    (`general_settings.admin_model_env_vars`); `ConfigError` names the offending key."""
    for where, name in _env_references(raw, ""):
        if name not in allowed_env:
            raise ConfigError(
                f"{where}: os.environ/{name} is not allowed here; only the variables listed "
                "in general_settings.admin_model_env_vars may be named by an admin-added model"
            )
    resolved = _resolve_env(raw, environ, "")
    if (refusal := classify({"model_list": [resolved]}).refusal()) is not None:
        raise ConfigError(refusal)
    _lift_litellm_spellings(resolved)
    try:
        return ModelEntry.model_validate(resolved, context=WRITTEN)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None


def _resolve_env(value: Any, environ: Mapping[str, str], where: str) -> Any:
    """Replace every `os.environ/NAME` string, as LiteLLM does, failing on an unset NAME."""
    if isinstance(value, dict):
        return {k: _resolve_env(v, environ, _join(where, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        if name not in environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return environ[name]
    return value


def _env_references(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every `os.environ/NAME` in `value`, with where it is."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _env_references(v, _join(where, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _env_references(v, f"{where}[{i}]")
    elif isinstance(value, str) and value.startswith(ENV_PREFIX):
        yield where, value[len(ENV_PREFIX) :]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _describe(error: ValidationError, where: str = "") -> str:
    first = error.errors()[0]
    for part in first["loc"]:
        where = f"{where}[{part}]" if isinstance(part, int) else _join(where, str(part))
    message = first["msg"].removeprefix("Value error, ")
    return f"{where or 'config'}: {message}"

"""`router_settings`, with LiteLLM's names and defaults.

Older LiteLLM configs put `num_retries`, `fallbacks` and friends under
`litellm_settings`; those are read too, and `router_settings` wins.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

Strategy = Literal[
    "simple-shuffle",
    "least-busy",
    "latency-based-routing",
    "usage-based-routing",
    "usage-based-routing-v2",
    "cost-based-routing",
    "round-robin",
    "order",
]

# LiteLLM's retry_policy keys, by the failure kind each governs.
RETRY_POLICY_KEYS = {
    "RateLimitErrorRetries": "rate_limit",
    "TimeoutErrorRetries": "timeout",
    "InternalServerErrorRetries": "server",
    "BadRequestErrorRetries": "bad_request",
    "AuthenticationErrorRetries": "auth",
    "ContentPolicyViolationErrorRetries": "content_policy",
}

# Settings LiteLLM also accepts under litellm_settings.
_SHARED_KEYS = (
    "num_retries",
    "retry_after",
    "allowed_fails",
    "cooldown_time",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "max_fallbacks",
)

FallbackMap = list[dict[str, list[str]]]


class GroupAlias(BaseModel):
    """One `model_group_alias` entry: requests for the alias are served by `model`; a
    `hidden` alias works but is not listed by `GET /v1/models`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    hidden: bool = False


def _alias_entry(value: Any) -> Any:
    """LiteLLM writes an alias as the target's name, or as `{model, hidden}`."""
    return {"model": value} if isinstance(value, str) else value


class RouterSettings(BaseModel):
    model_config = ConfigDict(extra="allow")

    routing_strategy: Strategy = "simple-shuffle"
    routing_strategy_args: dict[str, Any] = Field(default_factory=dict)
    num_retries: int = Field(default=2, ge=0)
    # The shortest wait before a retry, in seconds; backoff grows from it.
    retry_after: float = Field(default=0.0, ge=0)
    retry_policy: dict[str, int] = Field(default_factory=dict)
    allowed_fails: int = Field(default=3, ge=0)
    cooldown_time: float = Field(default=5.0, ge=0)
    fallbacks: FallbackMap = Field(default_factory=list)
    context_window_fallbacks: FallbackMap = Field(default_factory=list)
    content_policy_fallbacks: FallbackMap = Field(default_factory=list)
    max_fallbacks: int = Field(default=5, ge=0)
    # Off unless set: start a second attempt if the first has no first byte after this long.
    hedge_after_ms: float | None = Field(default=None, gt=0)
    background_health_checks: bool = False
    health_check_interval: float = Field(default=300.0, gt=0)
    # Redis, shared by every worker of every instance (LiteLLM's keys); none: per process.
    redis_url: str | None = None
    redis_host: str | None = None
    redis_port: int = Field(default=6379, gt=0)
    redis_password: str | None = None
    # Every key trigate writes starts with this, so gateways can share one Redis.
    redis_key_prefix: str = "trigate:"
    # No request waits on Redis longer than this; past it, the local share of a limit applies.
    redis_timeout: float = Field(default=0.05, gt=0)
    model_group_alias: dict[str, Annotated[GroupAlias, BeforeValidator(_alias_entry)]] = Field(
        default_factory=dict
    )

    @classmethod
    def from_config(
        cls,
        router_settings: dict[str, Any],
        litellm_settings: dict[str, Any],
        general_settings: dict[str, Any],
    ) -> RouterSettings:
        merged = {k: litellm_settings[k] for k in _SHARED_KEYS if k in litellm_settings}
        for key in ("background_health_checks", "health_check_interval"):
            if key in general_settings:
                merged[key] = general_settings[key]
        return cls.model_validate({**merged, **router_settings})

    @property
    def redis(self) -> str | None:
        """The Redis URL, from `redis_url` or from host, port and password."""
        if self.redis_url:
            return self.redis_url
        if not self.redis_host:
            return None
        password = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{password}{self.redis_host}:{self.redis_port}/0"

    def retries_for(self, kind: str) -> int:
        for key, governed in RETRY_POLICY_KEYS.items():
            if governed == kind and key in self.retry_policy:
                return self.retry_policy[key]
        return self.num_retries

    def fallbacks_for(self, table: FallbackMap, group: str) -> list[str]:
        for entry in table:
            if group in entry:
                return list(entry[group])
        for entry in table:
            if "*" in entry:
                return list(entry["*"])
        return []

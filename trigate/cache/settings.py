"""The response cache's settings, read from LiteLLM's `litellm_settings.cache` and
`cache_params`, so that a LiteLLM config switches the same cache on.

`type` is LiteLLM's: `local` (this worker's memory) or `redis`; `redis` with
`default_in_memory_ttl` keeps a local copy in front of Redis for that long, as
LiteLLM's dual cache does. Every other type (the semantic ones, `s3`, `gcs`, `disk`)
is refused at start-up by name: a config that asks for one would otherwise run
without the cache it describes, and its operators would not know.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from trigate.cache.controls import header_safe
from trigate.config import ConfigError

logger = logging.getLogger("trigate")

CacheType = Literal["local", "redis"]
Scope = Literal["global", "team", "key"]
# LiteLLM's call type names, by the kind of answer trigate caches for them.
CALL_TYPES: dict[str, str] = {
    "completion": "completion", "acompletion": "completion",
    "text_completion": "text_completion", "atext_completion": "text_completion",
    "embedding": "embeddings", "aembedding": "embeddings",
    "responses": "responses", "aresponses": "responses",
    "anthropic_messages": "messages", "aanthropic_messages": "messages",
}  # fmt: skip
ALL_KINDS = frozenset(CALL_TYPES.values())
# LiteLLM's call types for endpoints trigate does not serve: accepted, and named once.
UNSERVED_CALL_TYPES = frozenset({
    "transcription", "atranscription", "rerank", "arerank", "speech", "aspeech",
    "image_generation", "aimage_generation", "moderation", "amoderation",
})  # fmt: skip
# The local cache's bounds unless `cache_params` says (trigate's own keys).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ENTRY_BYTES = 1024 * 1024
SUPPORTED_TYPES = ("local", "redis")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """What `cache_params` asked for, checked."""

    type: CacheType = "local"
    redis_url: str | None = None
    # Seconds an entry lives; None: until evicted (local) or for ever (Redis), as LiteLLM.
    ttl: float | None = None
    # With `redis`: seconds a local copy in front of Redis lives (None: no local front).
    in_memory_ttl: float | None = None
    namespace: str | None = None
    kinds: frozenset[str] = ALL_KINDS
    default_off: bool = False
    scope: Scope = "global"
    # Seconds a Redis command may take before it counts as a miss.
    timeout: float = 0.05
    max_bytes: int = DEFAULT_MAX_BYTES
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES


def cache_settings(
    litellm_settings: Mapping[str, Any], fleet_redis: str | None, redis_timeout: float
) -> CacheSettings | None:
    """The cache `litellm_settings` switch on, or None; a `ConfigError` names what it
    cannot serve. Redis is `cache_params`' own (`url`, or `host`/`port`/`password`),
    else LiteLLM's `REDIS_*` environment, else the fleet's (`router_settings`)."""
    if not litellm_settings.get("cache"):
        return None
    params = litellm_settings.get("cache_params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError("litellm_settings.cache_params must be a mapping")
    kind = params.get("type") or "local"
    if kind not in SUPPORTED_TYPES:
        raise ConfigError(
            f"litellm_settings.cache_params.type `{kind}` is not supported: trigate's "
            "response cache is `local` or `redis` (a semantic, object-store or disk cache "
            "would be silently missing); change the type or remove the cache"
        )
    ttl = _seconds(params, "ttl")
    in_memory_ttl = _seconds(params, "default_in_memory_ttl")
    if kind == "redis":
        ttl = ttl if ttl is not None else _seconds(params, "default_in_redis_ttl")
        url = _redis_url(params) or fleet_redis
        if url is None:
            raise ConfigError(
                "litellm_settings.cache_params.type `redis` needs a Redis: set its `url` "
                "(or `host`, `port`, `password`), REDIS_URL, or router_settings.redis_url"
            )
    else:
        url = None
        ttl = ttl if ttl is not None else in_memory_ttl
        in_memory_ttl = None
    mode = params.get("mode") or "default_on"
    if mode not in ("default_on", "default_off"):
        raise ConfigError("litellm_settings.cache_params.mode must be default_on or default_off")
    scope = params.get("scope") or "global"
    if scope not in ("global", "team", "key"):
        raise ConfigError("litellm_settings.cache_params.scope must be global, team or key")
    namespace = params.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not header_safe(namespace)):
        raise ConfigError(
            "litellm_settings.cache_params.namespace must be a string without control characters"
        )
    timeout = _seconds(params, "socket_timeout") or redis_timeout
    scopes: dict[str, Scope] = {"global": "global", "team": "team", "key": "key"}
    return CacheSettings(
        type="redis" if kind == "redis" else "local",
        redis_url=url,
        ttl=ttl,
        in_memory_ttl=in_memory_ttl,
        namespace=namespace or None,
        kinds=_kinds(params.get("supported_call_types")),
        default_off=mode == "default_off",
        scope=scopes[scope],
        timeout=timeout,
        max_bytes=_size(params, "max_bytes", DEFAULT_MAX_BYTES),
        max_entry_bytes=_size(params, "max_entry_bytes", DEFAULT_MAX_ENTRY_BYTES),
    )


def _seconds(params: Mapping[str, Any], name: str) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"litellm_settings.cache_params.{name} must be a positive number")
    return float(value)


def _size(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"litellm_settings.cache_params.{name} must be a positive integer")
    return value


def _kinds(names: Any) -> frozenset[str]:
    """The kinds of answer to cache: LiteLLM's call types, by what trigate serves."""
    if names is None:
        return ALL_KINDS
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError("litellm_settings.cache_params.supported_call_types must be a list")
    unknown = [n for n in names if n not in CALL_TYPES and n not in UNSERVED_CALL_TYPES]
    if unknown:
        raise ConfigError(
            "litellm_settings.cache_params.supported_call_types: unknown call types "
            + ", ".join(unknown)
        )
    unserved = [name for name in names if name in UNSERVED_CALL_TYPES]
    if unserved:
        logger.warning(
            "config: litellm_settings.cache_params.supported_call_types names calls trigate "
            "does not serve, so never caches: %s",
            ", ".join(unserved),
        )
    return frozenset(CALL_TYPES[name] for name in names if name in CALL_TYPES)


def _redis_url(params: Mapping[str, Any]) -> str | None:
    """LiteLLM's Redis settings: `url`, else `host`/`port`/`password`, else its
    environment (`REDIS_URL`, `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`)."""
    url = params.get("url") or params.get("redis_url")
    if url:
        return str(url)
    host = params.get("host") or os.environ.get("REDIS_HOST")
    if not host:
        return os.environ.get("REDIS_URL") or None
    port = params.get("port") or os.environ.get("REDIS_PORT") or 6379
    password = params.get("password") or os.environ.get("REDIS_PASSWORD")
    auth = f":{quote(str(password), safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/0"

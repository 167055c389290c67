"""A request's own cache controls, as LiteLLM reads them from the body: `cache: {...}`
(`no-cache`, `no-store`, `ttl`, `s-maxage`, `namespace`, `use-cache`) and the older
`caching: false` (or `true`, to opt in where `mode: default_off`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trigate.errors import InvalidRequest

_FLAGS = ("no-cache", "no-store", "use-cache")
_SECONDS = ("ttl", "s-maxage", "s-max-age")
KNOWN = frozenset({*_FLAGS, *_SECONDS, "namespace"})
# A namespace begins the key sent back in `x-litellm-cache-key`: a control character (a
# CR or LF above all) can be in no header's value.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def header_safe(namespace: str) -> bool:
    """Whether `namespace` can begin a header's value: no control character in it."""
    return _CONTROL.search(namespace) is None


@dataclass(frozen=True, slots=True)
class CacheControls:
    """What one request asked of the cache; the defaults ask nothing."""

    # `caching: false`: neither read nor written, nor shared with a call in flight.
    bypass: bool = False
    # `caching: true` or `use-cache: true`: cached even where `mode: default_off`.
    opted_in: bool = False
    # `no-cache`: not answered from the cache (nor joined to a call in flight).
    no_read: bool = False
    # `no-store`: the answer is not written.
    no_store: bool = False
    ttl: float | None = None
    # Only an entry younger than this many seconds answers.
    max_age: float | None = None
    namespace: str | None = None
    # Whether they came in LiteLLM's `cache` object (else `caching` alone).
    from_cache_field: bool = False

    @property
    def asks_for_cache(self) -> bool:
        """Whether they ask for what only a cache gives (a gateway without one refuses
        them); `no-cache`, `no-store`, `s-maxage` and `caching: false` ask nothing."""
        return self.opted_in or bool(self.ttl) or self.namespace is not None


NO_CONTROLS = CacheControls()


def read_controls(cache: Any, caching: Any) -> CacheControls:
    """The controls of LiteLLM's `cache` and `caching` fields (None when absent); a
    malformed one is the client's 400, naming it."""
    if caching is not None and not isinstance(caching, bool):
        raise InvalidRequest("`caching` must be a boolean.", param="caching")
    if cache is None:
        if caching is None:
            return NO_CONTROLS
        return CacheControls(bypass=not caching, opted_in=caching)
    if not isinstance(cache, dict):
        raise InvalidRequest("`cache` must be an object.", param="cache")
    unknown = sorted(str(name) for name in cache if name not in KNOWN)
    if unknown:
        raise InvalidRequest(
            f"`cache` has unknown controls: {', '.join(unknown)}; LiteLLM's are "
            + ", ".join(sorted(KNOWN)),
            param="cache",
        )
    for name in _FLAGS:
        if name in cache and not isinstance(cache[name], bool):
            raise InvalidRequest(f"`cache.{name}` must be a boolean.", param="cache")
    seconds = {name: _seconds(cache, name) for name in _SECONDS}
    namespace = cache.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or not namespace or not header_safe(namespace)
    ):
        raise InvalidRequest(
            "`cache.namespace` must be a non-empty string without control characters.",
            param="cache",
        )
    return CacheControls(
        bypass=caching is False,
        opted_in=bool(caching) or bool(cache.get("use-cache")),
        no_read=bool(cache.get("no-cache")),
        no_store=bool(cache.get("no-store")),
        ttl=seconds["ttl"],
        max_age=seconds["s-maxage"] if seconds["s-maxage"] is not None else seconds["s-max-age"],
        namespace=namespace,
        from_cache_field=True,
    )


def _seconds(cache: dict[str, Any], name: str) -> float | None:
    value = cache.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidRequest(f"`cache.{name}` must be a number of seconds.", param="cache")
    return float(value)

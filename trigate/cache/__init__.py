"""The response cache (issue 22): LiteLLM's `litellm_settings.cache`, with streamed
replay and request coalescing. It never imports `trigate.api`: the pipeline asks it
(`ResponseCache.lookup`) and tells it (`Ticket`) through small protocols."""

from trigate.cache.cache import (
    CACHE_KEY_HEADER,
    CACHE_STATE_HEADER,
    ResponseCache,
    Ticket,
)
from trigate.cache.controls import CacheControls, read_controls
from trigate.cache.entries import KeptCompletion, Replay
from trigate.cache.flight import Subscription
from trigate.cache.settings import CacheSettings, cache_settings

__all__ = [
    "CACHE_KEY_HEADER",
    "CACHE_STATE_HEADER",
    "CacheControls",
    "CacheSettings",
    "KeptCompletion",
    "Replay",
    "ResponseCache",
    "Subscription",
    "Ticket",
    "cache_settings",
    "read_controls",
]

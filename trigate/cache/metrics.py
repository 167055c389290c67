"""The cache's Prometheus counters, on the gateway's registry: LiteLLM's names for
hits and misses, trigate's own for the rest."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter(
            "litellm_cache_hits_metric", "Total number of LiteLLM cache hits", (),
            registry=registry,
        )  # fmt: skip
        self.misses = Counter(
            "litellm_cache_misses_metric", "Total number of LiteLLM cache misses", (),
            registry=registry,
        )  # fmt: skip
        self.cached_tokens = Counter(
            "litellm_cached_tokens_metric", "Total tokens served from the cache", (),
            registry=registry,
        )  # fmt: skip
        self.coalesced = Counter(
            "trigate_cache_coalesced",
            "Requests answered by an identical request's upstream call in flight", (),
            registry=registry,
        )  # fmt: skip
        self.unavailable = Counter(
            "trigate_cache_unavailable",
            "Cache reads and writes skipped because its Redis failed or did not answer in time",
            (), registry=registry,
        )  # fmt: skip
        self.not_stored = Counter(
            "trigate_cache_too_large",
            "Answers served but not cached because they exceed the entry size cap", (),
            registry=registry,
        )  # fmt: skip
        self.bytes = Gauge(
            "trigate_cache_bytes", "Bytes of answers held in this worker's memory cache", (),
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip

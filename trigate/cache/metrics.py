"""The cache's Prometheus counters, on the gateway's registry: LiteLLM's names for
hits and misses, trigate's own for the rest. Each is counted straight into its value
(`trigate.metrics.tally`), as the request path's own metrics are: `Counter.inc` checks,
per call, what is true of every count here (an unlabelled counter, an amount >= 0)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from trigate.metrics import Tally, tally


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits: Tally = tally(Counter(
            "litellm_cache_hits_metric", "Total number of LiteLLM cache hits", (),
            registry=registry,
        ))  # fmt: skip
        self.misses: Tally = tally(Counter(
            "litellm_cache_misses_metric", "Total number of LiteLLM cache misses", (),
            registry=registry,
        ))  # fmt: skip
        self.cached_tokens: Tally = tally(Counter(
            "litellm_cached_tokens_metric", "Total tokens served from the cache", (),
            registry=registry,
        ))  # fmt: skip
        self.coalesced: Tally = tally(Counter(
            "trigate_cache_coalesced",
            "Requests answered by an identical request's upstream call in flight", (),
            registry=registry,
        ))  # fmt: skip
        self.unavailable: Tally = tally(Counter(
            "trigate_cache_unavailable",
            "Cache reads and writes skipped because its Redis failed or did not answer in time",
            (), registry=registry,
        ))  # fmt: skip
        # Bounded labels: the codes `trigate.cache.refusals` names (else `other`), and
        # `read` or `write`.
        self.redis_errors = Counter(
            "trigate_cache_redis_errors",
            "Cache reads and writes Redis answered with an error reply, by its code "
            "(WRONGTYPE, LOADING, OOM, NOAUTH, ...): each a miss or a skipped write",
            ("code", "operation"), registry=registry,
        )  # fmt: skip
        self.not_stored: Tally = tally(Counter(
            "trigate_cache_too_large",
            "Answers served but not cached because they exceed the entry size cap", (),
            registry=registry,
        ))  # fmt: skip
        self.bytes = Gauge(
            "trigate_cache_bytes", "Bytes of answers held in this worker's memory cache", (),
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip

    def count_unavailable(self) -> None:
        """A read or write Redis failed or did not answer in time."""
        self.unavailable.inc(1)

    def count_redis_error(self, code: str, operation: str) -> None:
        """A read or write Redis refused with an error reply (rare: `labels` per call)."""
        self.redis_errors.labels(code, operation).inc()

"""Routing strategies: which of a model group's available deployments gets a request.

Each strategy sees only deployments that are available right now (not cooling,
under their caps), so none of them has to think about failure.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trigate.router.deployments import Deployment

# latency-based-routing picks at random among deployments within this fraction of the best.
DEFAULT_LATENCY_BUFFER = 0.0


class Pick:
    """The strategy of one router, with whatever memory it needs (round-robin's turn)."""

    def __init__(self, strategy: str, args: dict[str, object]) -> None:
        self._turns: dict[str, itertools.count[int]] = {}
        buffer = args.get("lowest_latency_buffer", DEFAULT_LATENCY_BUFFER)
        self._latency_buffer = float(buffer) if isinstance(buffer, int | float) else 0.0
        self._choose: Callable[[Sequence[Deployment], bool, float], Deployment] = {
            "simple-shuffle": self._shuffle,
            "order": self._shuffle,
            "least-busy": self._least_busy,
            "latency-based-routing": self._lowest_latency,
            "usage-based-routing": self._most_headroom,
            "usage-based-routing-v2": self._most_headroom,
            "cost-based-routing": self._cheapest,
            "round-robin": self._round_robin,
        }[strategy]

    def __call__(self, candidates: Sequence[Deployment], *, stream: bool, now: float) -> Deployment:
        if len(candidates) == 1:  # a group of one deployment: no tier or strategy to apply
            return candidates[0]
        candidates = _first_tier(candidates)
        if len(candidates) == 1:
            return candidates[0]
        return self._choose(candidates, stream, now)

    @staticmethod
    def _shuffle(candidates: Sequence[Deployment], stream: bool, now: float) -> Deployment:
        weights = [d.weight for d in candidates]
        if not any(weights):
            return random.choice(candidates)
        return random.choices(candidates, weights=weights)[0]

    @staticmethod
    def _least_busy(candidates: Sequence[Deployment], stream: bool, now: float) -> Deployment:
        fewest = min(d.state.busy for d in candidates)
        return random.choice([d for d in candidates if d.state.busy == fewest])

    def _lowest_latency(
        self, candidates: Sequence[Deployment], stream: bool, now: float
    ) -> Deployment:
        # A deployment never measured counts as fastest, so that it gets measured.
        def latency(d: Deployment) -> float:
            seen = (
                (d.state.ttft or d.state.latency) if stream else (d.state.latency or d.state.ttft)
            )
            return seen or 0.0

        best = min(latency(d) for d in candidates)
        near = [d for d in candidates if latency(d) <= best * (1 + self._latency_buffer)]
        return random.choice(near)

    @staticmethod
    def _most_headroom(candidates: Sequence[Deployment], stream: bool, now: float) -> Deployment:
        return max(candidates, key=lambda d: (d.headroom(now), random.random()))

    @staticmethod
    def _cheapest(candidates: Sequence[Deployment], stream: bool, now: float) -> Deployment:
        return min(candidates, key=lambda d: (d.price_per_token, random.random()))

    def _round_robin(
        self, candidates: Sequence[Deployment], stream: bool, now: float
    ) -> Deployment:
        group = candidates[0].model_group
        turn = next(self._turns.setdefault(group, itertools.count()))
        ordered = sorted(candidates, key=lambda d: d.id)
        return ordered[turn % len(ordered)]


def _first_tier(candidates: Sequence[Deployment]) -> Sequence[Deployment]:
    """`order` priority tiers: the lowest order present wins; unordered deployments come last."""
    orders = {d.order for d in candidates}
    if len(orders) <= 1:
        return candidates
    best = min(orders)
    return [d for d in candidates if d.order == best]

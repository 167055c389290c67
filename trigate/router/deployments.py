"""Deployments and the model groups they form.

Several `model_list` entries sharing one `model_name` form a model group;
clients name the group, and the router picks one of its deployments.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field

import httpx
import orjson

from trigate.config import GatewayConfig, LiteLLMParams, ModelEntry, ProviderParams
from trigate.errors import ModelNotFound
from trigate.providers import PROVIDERS, Abilities, Provider
from trigate.router.state import CircuitBreaker, DeploymentState
from trigate.spend.prices import ModelPrice, PriceTable, price_for
from trigate.tokens import TokenCounter


@dataclass(slots=True)
class Deployment:
    """One upstream model behind a model group, with its adapter and run-time state."""

    id: str
    model_group: str
    entry: ModelEntry
    provider: Provider = field(repr=False)
    state: DeploymentState = field(repr=False)
    # Per-token prices: the deployment's own, else the price table's; None when unknown.
    price: ModelPrice | None = None
    # What `provider` can do, found once here rather than on every request.
    abilities: Abilities = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.abilities = Abilities.of(self.provider, self.entry.model_info)

    @property
    def params(self) -> LiteLLMParams:
        return self.entry.litellm_params

    @property
    def upstream_model(self) -> str:
        return self.params.upstream_model

    @property
    def weight(self) -> float:
        """simple-shuffle's weight, as LiteLLM reads it: `weight`, else `rpm`, else `tpm`."""
        for value in (self.params.weight, self.params.rpm, self.params.tpm):
            if value is not None:
                return float(value)
        return 1.0

    @property
    def order(self) -> float:
        return math.inf if self.params.order is None else self.params.order

    @property
    def price_per_token(self) -> float:
        """Input plus output price, for cost-based routing; unpriced sorts last."""
        if self.price is None or self.price.input is None or self.price.output is None:
            return math.inf
        return self.price.input + self.price.output

    def available(self, now: float) -> bool:
        """Not cooling, and under every hard cap: rpm, tpm and max_parallel_requests (the
        fleet's counts against the whole cap, or this worker's against its share)."""
        params, state = self.params, self.state
        if not state.breaker.available(now):
            return False
        if params.max_parallel_requests is not None and (
            state.busy >= state.cap(params.max_parallel_requests)
        ):
            return False
        if params.rpm is not None and state.requests_used(now) >= state.cap(params.rpm):
            return False
        return params.tpm is None or state.tokens_used(now) < state.cap(params.tpm)

    def headroom(self, now: float) -> float:
        """The smallest remaining share of this minute's rpm and tpm; 1.0 when uncapped."""
        shares = [1.0]
        if self.params.rpm:
            shares.append(1 - self.state.requests_used(now) / self.params.rpm)
        if self.params.tpm:
            shares.append(1 - self.state.tokens_used(now) / self.params.tpm)
        return min(shares)


def deployment_id(entry: ModelEntry) -> str:
    """`model_info.id` when given, else a stable hash of the entry (secrets excluded)."""
    given = entry.model_info.get("id")
    if given:
        return str(given)
    # A provider's own params count only when given, as before they were typed fields,
    # so that typing them changed no deployment's id.
    unset = ProviderParams.model_fields.keys() - entry.litellm_params.model_fields_set
    params = entry.litellm_params.model_dump(exclude={"api_key", *unset}, mode="json")
    digest = hashlib.sha256(orjson.dumps([entry.model_name, params], option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:16]


class ModelGroups:
    """Every model group the gateway serves, by the alias clients send."""

    def __init__(self, deployments: list[Deployment]) -> None:
        self._groups: dict[str, list[Deployment]] = {}
        for deployment in deployments:
            self._groups.setdefault(deployment.model_group, []).append(deployment)

    @classmethod
    def build(
        cls,
        config: GatewayConfig,
        transport: httpx.AsyncBaseTransport,
        counter: TokenCounter,
        prices: PriceTable,
    ) -> ModelGroups:
        settings = config.router
        sizes = Counter(entry.model_name for entry in config.model_list)
        deployments = []
        for entry in config.model_list:
            params = entry.litellm_params
            provider = PROVIDERS[params.provider](params, transport, counter)
            breaker = CircuitBreaker(
                settings.allowed_fails,
                settings.cooldown_time,
                enabled=sizes[entry.model_name] > 1,
            )
            state = DeploymentState(breaker)
            price = price_for(
                params.provider,
                params.upstream_model,
                params.input_cost_per_token,
                params.output_cost_per_token,
                prices,
            )
            deployments.append(
                Deployment(deployment_id(entry), entry.model_name, entry, provider, state, price)
            )
        return cls(deployments)

    @property
    def names(self) -> list[str]:
        return list(self._groups)

    def deployments(self, group: str) -> list[Deployment]:
        try:
            return self._groups[group]
        except KeyError:
            raise ModelNotFound(group) from None

    def all(self) -> list[Deployment]:
        return [d for group in self._groups.values() for d in group]

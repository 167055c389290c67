"""Deployments and the model groups they form.

Several `model_list` entries sharing one `model_name` form a model group;
clients name the group, and the router picks one of its deployments.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from trigate.config import GatewayConfig, ModelEntry
from trigate.errors import ModelNotFound
from trigate.providers import PROVIDERS, Provider
from trigate.tokens import TokenCounter


@dataclass(slots=True)
class Deployment:
    """One upstream model behind a model group, with its provider adapter."""

    id: str
    model_group: str
    entry: ModelEntry
    provider: Provider = field(repr=False)

    @property
    def upstream_model(self) -> str:
        return self.entry.litellm_params.upstream_model

    @property
    def weight(self) -> float:
        """simple-shuffle's weight, as LiteLLM reads it: `weight`, else `rpm`, else `tpm`."""
        params = self.entry.litellm_params
        for value in (params.weight, params.rpm, params.tpm):
            if value is not None:
                return float(value)
        return 1.0


def deployment_id(entry: ModelEntry) -> str:
    """`model_info.id` when given, else a stable hash of the entry (secrets excluded)."""
    given = entry.model_info.get("id")
    if given:
        return str(given)
    params = entry.litellm_params.model_dump(exclude={"api_key"}, mode="json")
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
        cls, config: GatewayConfig, http: httpx.AsyncClient, counter: TokenCounter
    ) -> ModelGroups:
        deployments = []
        for entry in config.model_list:
            params = entry.litellm_params
            provider = PROVIDERS[params.provider](params, http, counter)
            deployments.append(Deployment(deployment_id(entry), entry.model_name, entry, provider))
        return cls(deployments)

    @property
    def names(self) -> list[str]:
        return list(self._groups)

    def deployments(self, group: str) -> list[Deployment]:
        try:
            return self._groups[group]
        except KeyError:
            raise ModelNotFound(group) from None

    def pick(self, group: str) -> Deployment:
        """A weighted random pick, LiteLLM's default `simple-shuffle`."""
        candidates = self.deployments(group)
        if len(candidates) == 1:
            return candidates[0]
        weights: list[Any] = [d.weight for d in candidates]
        if not any(weights):
            return random.choice(candidates)
        return random.choices(candidates, weights=weights)[0]

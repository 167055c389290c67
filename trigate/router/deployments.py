"""Deployments and the model groups they form.

Several `model_list` entries sharing one `model_name` form a model group;
clients name the group, and the router picks one of its deployments. Clients
may also name an alias of a group (`model_group_alias`), or any name a wildcard
deployment's pattern matches (`anthropic/*`), which gets deployments of its own,
made on first use with the upstream model the name asks for.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace

import httpx
import orjson
from pydantic import ValidationError

from trigate.config import WILDCARD, LiteLLMParams, ModelEntry, ProviderParams
from trigate.errors import InvalidRequest, ModelNotFound
from trigate.providers import PROVIDERS, Abilities, Provider
from trigate.router.access import AccessGroups
from trigate.router.state import CircuitBreaker, DeploymentState
from trigate.router_settings import GroupAlias, RouterSettings
from trigate.spend.prices import ModelPrice, PriceTable, price_for
from trigate.tokens import TokenCounter

# How many requested names that wildcard deployments matched are kept, with the
# deployments made for them; past it, the oldest is forgotten (and made again if asked).
MAX_MATCHED_NAMES = 1024


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
    # For a deployment a wildcard made for one matched name: the pattern's entry.
    pattern: ModelEntry | None = field(default=None, repr=False)
    # What `provider` can do, found once here rather than on every request.
    abilities: Abilities = field(init=False, repr=False)
    # The id and models metrics label it by: the pattern's for a wildcard's deployment,
    # so that names clients make up cannot multiply the series.
    label_id: str = field(init=False, repr=False)
    label_model: str = field(init=False, repr=False)
    label_litellm_model: str = field(init=False, repr=False)
    # `model_info`'s own `max_input_tokens`, which the router fits prompts to; found once.
    input_limit: int | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.abilities = Abilities.of(self.provider, self.entry.model_info)
        given = self.entry.model_info.get("max_input_tokens")
        self.input_limit = given if isinstance(given, int) else None
        labelled = self.pattern or self.entry
        self.label_id = deployment_id(labelled) if self.pattern else self.id
        self.label_model = labelled.litellm_params.upstream_model
        self.label_litellm_model = labelled.litellm_params.model

    @property
    def params(self) -> LiteLLMParams:
        return self.entry.litellm_params

    @property
    def upstream_model(self) -> str:
        return self.params.upstream_model

    @property
    def priced_model(self) -> str:
        """The name the price table knows this deployment by: `model_info.base_model`, as
        LiteLLM reads it (an Azure deployment's name is its owner's choice), else the
        upstream model."""
        return priced_model(self.entry)

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

    @property
    def max_input_tokens(self) -> int | None:
        """The context window: `model_info`'s, else the price table's; None if unknown."""
        return self._limit("max_input_tokens")

    @property
    def max_output_tokens(self) -> int | None:
        return self._limit("max_output_tokens")

    def _limit(self, name: str) -> int | None:
        given = self.entry.model_info.get(name)
        if isinstance(given, int):
            return given
        return getattr(self.price, name) if self.price is not None else None

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


def _pattern(model_name: str) -> re.Pattern[str]:
    """A wildcard `model_name` as a regex: each `*` matches anything, even nothing."""
    return re.compile("(.*)".join(re.escape(part) for part in model_name.split(WILDCARD)), re.S)


def _filled(model: str, matched: tuple[str, ...]) -> str:
    """A wildcard deployment's `litellm_params.model` for one requested name: its `*`s
    take what the pattern's matched, in order (the last match fills any left over)."""
    parts = model.split(WILDCARD)
    filled = [parts[0]]
    for index, part in enumerate(parts[1:]):
        filled += [matched[min(index, len(matched) - 1)] if matched else "", part]
    return "".join(filled)


@dataclass(frozen=True, slots=True)
class _Wildcard:
    """The deployments of one wildcard `model_name`, as the entries they are built from."""

    name: str
    regex: re.Pattern[str]
    entries: list[ModelEntry]

    @property
    def specificity(self) -> tuple[int, int]:
        """Most literal characters first, then fewest `*`s: `anthropic/claude-*` is tried
        before `anthropic/*`, and `*` last, as LiteLLM orders its patterns."""
        return -len(self.name.replace(WILDCARD, "")), self.name.count(WILDCARD)


class _Builder:
    """Makes deployments from entries: the provider adapter, its breaker and its prices."""

    def __init__(
        self,
        settings: RouterSettings,
        transport: httpx.AsyncBaseTransport,
        counter: TokenCounter,
        prices: PriceTable,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._counter = counter
        self._prices = prices

    def deployment(
        self,
        entry: ModelEntry,
        group_size: int,
        state: DeploymentState | None = None,
        pattern: ModelEntry | None = None,
    ) -> Deployment:
        """`state` carries a surviving deployment's cooldowns and load over a reload."""
        fails, cooldown = self._settings.allowed_fails, self._settings.cooldown_time
        params = entry.litellm_params
        provider = PROVIDERS[params.provider](params, self._transport, self._counter)
        # As in LiteLLM, a deployment alone in its group never cools: see CircuitBreaker.
        enabled = group_size > 1
        if state is None:
            state = DeploymentState(CircuitBreaker(fails, cooldown, enabled=enabled))
        else:
            state.breaker.reconfigure(fails, cooldown, enabled=enabled)
        price = price_for(
            params.provider,
            priced_model(entry),
            params.input_cost_per_token,
            params.output_cost_per_token,
            self._prices,
        )
        per_second = (params.input_cost_per_second, params.output_cost_per_second)
        if per_second != (None, None):
            base = price or ModelPrice()
            price = replace(
                base,
                per_second=_given(per_second[0], base.per_second),
                per_output_second=_given(per_second[1], base.per_output_second),
            )
        return Deployment(
            deployment_id(entry), entry.model_name, entry, provider, state, price, pattern
        )


def _given(configured: float | None, table: float | None) -> float | None:
    return table if configured is None else configured


def priced_model(entry: ModelEntry) -> str:
    """`Deployment.priced_model`, for an entry."""
    base = entry.model_info.get("base_model")
    return base if isinstance(base, str) and base else entry.litellm_params.upstream_model


class ModelGroups:
    """Every model group the gateway serves, by the name clients send: the groups of the
    model list, `model_group_alias`'s aliases of them, and names that wildcard
    deployments match, each served by deployments made for it on first use."""

    def __init__(
        self,
        deployments: list[Deployment],
        *,
        wildcards: list[_Wildcard] | None = None,
        aliases: dict[str, GroupAlias] | None = None,
        builder: _Builder | None = None,
    ) -> None:
        self._groups: dict[str, list[Deployment]] = {}
        for deployment in deployments:
            self._groups.setdefault(deployment.model_group, []).append(deployment)
        self._wildcards = sorted(wildcards or [], key=lambda w: w.specificity)
        self._aliases = aliases or {}
        self._builder = builder
        # Names a wildcard matched, and the deployments made for them; bounded, since
        # clients choose the names.
        self._matched: dict[str, list[Deployment]] = {}

    @classmethod
    def build(
        cls,
        entries: list[ModelEntry],
        settings: RouterSettings,
        transport: httpx.AsyncBaseTransport,
        counter: TokenCounter,
        prices: PriceTable,
        previous: ModelGroups | None = None,
    ) -> ModelGroups:
        """The groups of `entries`. Given the `previous` groups (a reload), a deployment
        whose id survives keeps its run-time state: its cooldown, load and latency."""
        builder = _Builder(settings, transport, counter, prices)
        kept = {d.id: d.state for d in previous.all()} if previous is not None else {}
        concrete = [entry for entry in entries if not entry.is_wildcard]
        sizes = Counter(entry.model_name for entry in concrete)
        deployments = [
            builder.deployment(entry, sizes[entry.model_name], kept.get(deployment_id(entry)))
            for entry in concrete
        ]
        wildcards: dict[str, list[ModelEntry]] = {}
        for entry in entries:
            if entry.is_wildcard:
                wildcards.setdefault(entry.model_name, []).append(entry)
        return cls(
            deployments,
            wildcards=[_Wildcard(name, _pattern(name), group) for name, group in wildcards.items()],
            aliases=settings.model_group_alias,
            builder=builder,
        )

    @property
    def names(self) -> list[str]:
        """The model list's own groups."""
        return list(self._groups)

    def listed(self) -> list[str]:
        """What `GET /v1/models` shows: the groups and the aliases not `hidden`."""
        aliases = [
            name
            for name, alias in self._aliases.items()
            if not alias.hidden and name not in self._groups and self.knows(alias.model)
        ]
        return [*self._groups, *aliases]

    def knows(self, group: str) -> bool:
        """Whether `group` names something served, without making anything for it."""
        if group in self._groups or group in self._matched:
            return True
        alias = self._aliases.get(group)
        if alias is not None:
            group = alias.model
        return group in self._groups or any(w.regex.fullmatch(group) for w in self._wildcards)

    def deployments(self, group: str) -> list[Deployment]:
        found = self._groups.get(group)
        if found is not None:
            return found
        alias = self._aliases.get(group)
        if alias is not None:
            found = self._groups.get(alias.model)
            return found if found is not None else self._wildcard_match(alias.model)
        return self._wildcard_match(group)

    def all(self) -> list[Deployment]:
        """Every deployment made so far: the model list's, and those wildcards made."""
        made = [*self._groups.values(), *self._matched.values()]
        return [d for group in made for d in group]

    def configured(self) -> list[tuple[ModelEntry, Deployment | None]]:
        """The model list's entries, each with its deployment; a wildcard deployment's
        entry, a pattern, has none."""
        concrete = [(d.entry, d) for group in self._groups.values() for d in group]
        patterns = [(entry, None) for w in self._wildcards for entry in w.entries]
        return [*concrete, *patterns]

    def wildcard_names(self) -> list[str]:
        return [w.name for w in self._wildcards]

    @functools.cached_property
    def access(self) -> AccessGroups:
        """LiteLLM's model access groups over this model list, made on first use."""
        return AccessGroups.of((entry for entry, _ in self.configured()), self.wildcard_names())

    def _wildcard_match(self, group: str) -> list[Deployment]:
        found = self._matched.get(group)
        if found is not None:
            return found
        for wildcard in self._wildcards:
            match = wildcard.regex.fullmatch(group)
            if match is not None and self._builder is not None:
                found = self._made_for(group, wildcard, match.groups())
                if len(self._matched) >= MAX_MATCHED_NAMES:
                    del self._matched[next(iter(self._matched))]
                self._matched[group] = found
                return found
        raise ModelNotFound(group)

    def _made_for(
        self, group: str, wildcard: _Wildcard, matched: tuple[str, ...]
    ) -> list[Deployment]:
        assert self._builder is not None
        made = []
        for entry in wildcard.entries:
            model = _filled(entry.litellm_params.model, matched)
            try:
                params = LiteLLMParams.model_validate(
                    {**entry.litellm_params.model_dump(exclude_unset=True), "model": model}
                )
            except ValidationError:
                raise InvalidRequest(
                    f"`{group}` matches the wildcard model `{wildcard.name}`, which routes it "
                    f"to `{model}`: that needs a known provider prefix, such as `openai/`.",
                    param="model",
                    code="model_not_found",
                ) from None
            concrete = entry.model_copy(update={"litellm_params": params})
            made.append(self._builder.deployment(concrete, len(wildcard.entries), pattern=entry))
        return made

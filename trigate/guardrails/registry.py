"""The guardrail types trigate runs, by LiteLLM's names, and the building of a config's
guardrails. A type by dotted path is a user's own class (`trigate.guardrails.custom`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trigate.guardrails import content_filter, custom, generic, presidio, services
from trigate.guardrails.base import Guardrail
from trigate.guardrails.config import GuardrailConfig, parse_guardrails
from trigate.guardrails.observe import Observer
from trigate.guardrails.runner import GuardrailSet
from trigate.metrics import Metrics

Build = Callable[[GuardrailConfig, services.Deployments], Guardrail]


def _alone(kind: Callable[[GuardrailConfig], Guardrail]) -> Build:
    """A type made from its config alone."""
    return lambda config, deployments: kind(config)


TYPES: dict[str, tuple[Build, frozenset[str]]] = {
    "litellm_content_filter": (_alone(content_filter.ContentFilter), content_filter.SETTINGS),
    "presidio": (_alone(presidio.Presidio), presidio.SETTINGS),
    "generic_guardrail_api": (_alone(generic.GenericGuardrailAPI), generic.SETTINGS),
    "lakera_v2": (_alone(services.LakeraV2), services.LAKERA_SETTINGS),
    "openai_moderation": (services.OpenAIModeration, services.MODERATION_SETTINGS),
    "bedrock": (_alone(services.BedrockGuardrail), services.BEDROCK_SETTINGS),
}


class _Settings(Mapping[str, frozenset[str]]):
    """Each type's settings; a dotted path (a user's class) reads whatever it is given."""

    def __getitem__(self, kind: str) -> frozenset[str]:
        if kind in TYPES:
            return TYPES[kind][1]
        if custom.is_dotted(kind):
            return custom.ANY_SETTINGS
        raise KeyError(kind)

    def __contains__(self, kind: object) -> bool:
        return isinstance(kind, str) and (kind in TYPES or custom.is_dotted(kind))

    def __iter__(self) -> Any:
        return iter([*TYPES, "<module.Class>"])

    def __len__(self) -> int:
        return len(TYPES) + 1


def guardrail_set(
    entries: Any, metrics: Metrics, deployments: services.Deployments
) -> GuardrailSet | None:
    """The `guardrails:` list checked and built; a ValueError names what is wrong with
    which guardrail, so that it stops the start (or a reload) by its name."""
    configs = parse_guardrails(entries, _Settings())
    if not configs:
        return None
    built = {config.name: build(config, deployments) for config in configs}
    return GuardrailSet(configs, built, Observer.of(metrics))


def build(config: GuardrailConfig, deployments: services.Deployments) -> Guardrail:
    if config.type in TYPES:
        return TYPES[config.type][0](config, deployments)
    return custom.load(config)

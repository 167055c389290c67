"""The guardrail types trigate runs, by LiteLLM's names, and the building of a config's
guardrails. A type by dotted path is a user's own class (`trigate.guardrails.custom`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trigate.guardrails import content_filter, custom, generic, presidio, services
from trigate.guardrails.base import Guardrail
from trigate.guardrails.config import GuardrailConfig, parse_guardrails
from trigate.guardrails.observe import Observer
from trigate.guardrails.runner import GuardrailSet
from trigate.guardrails.types import KNOWN_TYPES, SETTINGS
from trigate.metrics import Metrics

Build = Callable[[GuardrailConfig, services.Deployments], Guardrail]


def _alone(kind: Callable[[GuardrailConfig], Guardrail]) -> Build:
    """A type made from its config alone."""
    return lambda config, deployments: kind(config)


BUILDERS: dict[str, Build] = {
    "litellm_content_filter": _alone(content_filter.ContentFilter),
    "presidio": _alone(presidio.Presidio),
    "generic_guardrail_api": _alone(generic.GenericGuardrailAPI),
    "lakera_v2": _alone(services.LakeraV2),
    "openai_moderation": services.OpenAIModeration,
    "bedrock": _alone(services.BedrockGuardrail),
}
assert BUILDERS.keys() == SETTINGS.keys(), "each type is in both tables"


def guardrail_set(
    entries: Any, metrics: Metrics, deployments: services.Deployments
) -> GuardrailSet | None:
    """The `guardrails:` list checked and built; a ValueError names what is wrong with
    which guardrail, so that it stops the start (or a reload) by its name."""
    configs = parse_guardrails(entries, KNOWN_TYPES)
    if not configs:
        return None
    built = {config.name: build(config, deployments) for config in configs}
    return GuardrailSet(configs, built, Observer.of(metrics))


def build(config: GuardrailConfig, deployments: services.Deployments) -> Guardrail:
    if config.type in BUILDERS:
        return BUILDERS[config.type](config, deployments)
    return custom.load(config)

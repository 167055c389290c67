"""The guardrail types trigate runs, by LiteLLM's names, and the building of a config's
guardrails. A type by dotted path is a user's own class (`trigate.guardrails.custom`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trigate.guardrails import content_filter, custom
from trigate.guardrails.base import Guardrail
from trigate.guardrails.config import GuardrailConfig, parse_guardrails
from trigate.guardrails.observe import Observer
from trigate.guardrails.runner import GuardrailSet
from trigate.metrics import Metrics

Build = Callable[[GuardrailConfig], Guardrail]

TYPES: dict[str, tuple[Build, frozenset[str]]] = {
    "litellm_content_filter": (content_filter.ContentFilter, content_filter.SETTINGS),
}


def register(name: str, build: Build, settings: frozenset[str]) -> None:
    TYPES[name] = (build, settings)


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


def check_config(entries: Any) -> tuple[GuardrailConfig, ...]:
    """The `guardrails:` list checked and each guardrail built once, so that whatever is
    wrong with one stops the start by its name."""
    configs = parse_guardrails(entries, _Settings())
    for config in configs:
        build(config)
    return configs


def build(config: GuardrailConfig) -> Guardrail:
    if config.type in TYPES:
        return TYPES[config.type][0](config)
    return custom.load(config)


def guardrail_set(configs: tuple[GuardrailConfig, ...], metrics: Metrics) -> GuardrailSet | None:
    if not configs:
        return None
    return GuardrailSet(configs, {c.name: build(c) for c in configs}, Observer.of(metrics))

"""LiteLLM's `guardrails:` list, read and checked at start-up.

Each entry is `{guardrail_name, litellm_params: {guardrail, mode, default_on, api_key,
api_base, ...the type's own settings}, guardrail_info}`. A type trigate does not run, a
mode it does not know, or a setting a type does not read stops the start by name: a
guardrail that silently did less than its config says would fail open.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class ConfigProblem(ValueError):
    """What is wrong with a guardrail's config: it stops the start, or a reload."""


class Mode(enum.StrEnum):
    """When a guardrail runs (LiteLLM's `mode`, its `GuardrailEventHooks`)."""

    PRE_CALL = "pre_call"
    DURING_CALL = "during_call"
    POST_CALL = "post_call"
    LOGGING_ONLY = "logging_only"


# The settings every type reads (`trigate.guardrails` itself acts on them).
COMMON_SETTINGS = frozenset(
    {"guardrail", "mode", "default_on", "api_key", "api_base", "fail_open", "timeout",
     "stream_window"}
)  # fmt: skip
# What a type whose settings are its own business reads (a user's class): anything.
ANY_SETTINGS = frozenset({"*"})
# A post_call guardrail on a stream checks the answer each time this many characters
# more have arrived (and once at its end): the client gets nothing unchecked.
DEFAULT_STREAM_WINDOW = 256
# A guardrail that answers slower than this has failed (closed, unless `fail_open`).
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    """One entry of `guardrails:`, checked."""

    name: str
    type: str
    modes: frozenset[Mode]
    default_on: bool
    fail_open: bool
    timeout: float
    stream_window: int
    api_key: str | None
    api_base: str | None
    # The type's own settings (what is left of `litellm_params`).
    settings: Mapping[str, Any]
    # As the file gave it, for `/guardrails/list` (the api_key redacted there).
    raw: Mapping[str, Any] = field(repr=False)


# Each type's own settings, beside `COMMON_SETTINGS` (`trigate.guardrails.types`).
TypeSettings = Mapping[str, frozenset[str]]


def parse_guardrails(entries: Any, known: TypeSettings) -> tuple[GuardrailConfig, ...]:
    """The `guardrails:` list; a ValueError names the first entry that is wrong."""
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ConfigProblem("guardrails: expected a list of guardrails")
    parsed: list[GuardrailConfig] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        guardrail = _one(entry, index, known)
        if guardrail.name in names:
            raise ConfigProblem(f"guardrails: `{guardrail.name}` is named twice")
        names.add(guardrail.name)
        parsed.append(guardrail)
    return tuple(parsed)


def _one(entry: Any, index: int, known: TypeSettings) -> GuardrailConfig:
    where = f"guardrails[{index}]"
    if not isinstance(entry, dict):
        raise ConfigProblem(f"{where}: expected a mapping")
    name = entry.get("guardrail_name")
    if not isinstance(name, str) or not name:
        raise ConfigProblem(f"{where}: `guardrail_name` must be a non-empty string")
    where = f"guardrails `{name}`"
    params = entry.get("litellm_params")
    if not isinstance(params, dict):
        raise ConfigProblem(f"{where}: `litellm_params` must be a mapping")
    kind = params.get("guardrail")
    if not isinstance(kind, str) or kind not in known:
        raise ConfigProblem(
            f"{where}: trigate does not run guardrails of type `{kind}` (it runs "
            f"{', '.join(sorted(known))}); serving without it would fail open"
        )
    unread = sorted(set(params) - COMMON_SETTINGS - known[kind])
    if unread and known[kind] is not ANY_SETTINGS:
        raise ConfigProblem(
            f"{where}: trigate's `{kind}` does not read {', '.join(f'`{k}`' for k in unread)}; "
            "serving without them would do less than the config says"
        )
    settings = {k: v for k, v in params.items() if k not in COMMON_SETTINGS}
    return GuardrailConfig(
        name=name,
        type=kind,
        modes=_modes(params.get("mode"), where),
        default_on=_flag(params, "default_on", where),
        fail_open=_flag(params, "fail_open", where),
        timeout=_positive(params, "timeout", DEFAULT_TIMEOUT, where),
        stream_window=int(_positive(params, "stream_window", DEFAULT_STREAM_WINDOW, where)),
        api_key=_text(params, "api_key", where),
        api_base=_text(params, "api_base", where),
        settings=settings,
        raw=entry,
    )


def _modes(value: Any, where: str) -> frozenset[Mode]:
    values = value if isinstance(value, list) else [value]
    try:
        modes = frozenset(Mode(v) for v in values)
    except ValueError:
        raise ConfigProblem(
            f"{where}: `mode` must be one of {', '.join(m.value for m in Mode)}, or a list "
            f"of them; got {value!r}"
        ) from None
    if not modes:
        raise ConfigProblem(f"{where}: `mode` names no mode")
    return modes


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise ConfigProblem(f"{where}: `{key}` must be true or false")
    return value


def _positive(params: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigProblem(f"{where}: `{key}` must be a positive number")
    return float(value)


def _text(params: Mapping[str, Any], key: str, where: str) -> str | None:
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigProblem(f"{where}: `{key}` must be a string")
    return value


def names_in(value: Any, param: str, error: Callable[[str], Exception]) -> list[str]:
    """The guardrail names a request, key or team asks for: LiteLLM's list of names, or
    its mapping of names to dynamic parameters (the names only are read)."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error(f"`{param}` must be a list of guardrail names")
    return list(value)


def unknown(names: Sequence[str], configured: Mapping[str, GuardrailConfig]) -> list[str]:
    return [name for name in names if name not in configured]

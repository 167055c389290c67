"""A user's own guardrail class, named by dotted path as the type of a `guardrails:`
entry (`guardrail: my_guardrails.NoPasswords`), as LiteLLM loads its custom guardrails.

The class is either

- a `trigate.guardrails.Guardrail`: made with the entry's config, its async
  `check(texts, step)` answers a `Verdict` (pass, block, or the texts masked), on Trio;
- or LiteLLM's shape: a class made with `guardrail_name`, `event_hook`, `default_on`
  and the entry's own settings as keyword arguments, with an async
  `apply_guardrail(text, language, entities, request_data)` that returns the text (masked
  or not) or raises to block: an exception with an HTTP `status_code` (FastAPI's
  `HTTPException`, as LiteLLM's examples raise) or a `GuardrailBlocked` is a block;
  any other exception is the guardrail's failure, which blocks unless `fail_open`.
"""

from __future__ import annotations

import importlib
from typing import Any

from trigate.guardrails.base import Guardrail, GuardrailBlocked, Step, Verdict
from trigate.guardrails.config import ConfigProblem, GuardrailConfig


def load(config: GuardrailConfig) -> Guardrail:
    target = _import(config.type, config.name)
    if isinstance(target, type) and issubclass(target, Guardrail):
        return target(config)
    if hasattr(target, "apply_guardrail"):
        return LiteLLMGuardrail(config, target)
    raise ConfigProblem(
        f"guardrails `{config.name}`: `{config.type}` is neither a trigate Guardrail nor a "
        "class with LiteLLM's apply_guardrail"
    )


def _import(path: str, name: str) -> Any:
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigProblem(f"guardrails `{name}`: `{path}` cannot be loaded: {error}") from None


class LiteLLMGuardrail(Guardrail):
    """A LiteLLM `CustomGuardrail`-shaped class, asked text by text."""

    def __init__(self, config: GuardrailConfig, target: Any) -> None:
        super().__init__(config)
        modes = sorted(mode.value for mode in config.modes)
        try:
            self._instance = target(
                guardrail_name=config.name,
                event_hook=modes[0] if len(modes) == 1 else modes,
                default_on=config.default_on,
                **config.settings,
            )
        except TypeError as error:
            raise ConfigProblem(
                f"guardrails `{config.name}`: `{config.type}` cannot be made: {error}"
            ) from None

    async def check(self, texts: list[str], step: Step) -> Verdict:
        masked: list[str] = []
        data = {"model": step.model, "guardrail_mode": step.mode.value}
        for text in texts:
            try:
                result = await self._instance.apply_guardrail(
                    text=text, language=None, entities=None, request_data=data
                )
            except GuardrailBlocked:
                raise
            except Exception as error:
                status = getattr(error, "status_code", None)
                if isinstance(status, int) and 400 <= status < 500:
                    detail = getattr(error, "detail", None) or str(error)
                    raise GuardrailBlocked(str(detail)) from error
                raise
            if not isinstance(result, str):
                raise TypeError("apply_guardrail returned other than a string")
            masked.append(result)
        return Verdict(texts=masked if masked != texts else None)

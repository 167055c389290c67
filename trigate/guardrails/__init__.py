"""Guardrails: LiteLLM's `guardrails:` config run at the pipeline's hook points, on every
surface and on streams, failing closed. See README "Guardrails".

A user's own guardrail subclasses `Guardrail` (or has LiteLLM's `apply_guardrail`) and is
named by dotted path as its type (`trigate.guardrails.custom`).
"""

from trigate.guardrails.base import Guardrail, GuardrailBlocked, GuardrailFailed, Step, Verdict
from trigate.guardrails.config import GuardrailConfig, Mode

__all__ = [
    "Guardrail",
    "GuardrailBlocked",
    "GuardrailConfig",
    "GuardrailFailed",
    "Mode",
    "Step",
    "Verdict",
]

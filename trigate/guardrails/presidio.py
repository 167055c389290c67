"""LiteLLM's `presidio` guardrail: Microsoft Presidio's analyzer and anonymizer, by
their HTTP APIs (`POST /analyze`, `POST /anonymize`).

    litellm_params:
      guardrail: presidio
      mode: pre_call
      presidio_analyzer_api_base: http://analyzer:3000
      presidio_anonymizer_api_base: http://anonymizer:3000
      presidio_language: en
      pii_entities_config: {CREDIT_CARD: BLOCK, EMAIL_ADDRESS: MASK}
      presidio_score_thresholds: {ALL: 0.5}
      output_parse_pii: true

The analyzer finds the entities; one whose action is BLOCK blocks, the others are
masked by the anonymizer (`<EMAIL_ADDRESS>`). With `output_parse_pii`, each masked value
gets a placeholder of its own (`<EMAIL_ADDRESS_1>`) made here from the analyzer's spans,
and the answer's placeholders, tool calls included, are given back their values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trigate.guardrails.base import Guardrail, Step, Verdict
from trigate.guardrails.config import ConfigProblem, GuardrailConfig
from trigate.guardrails.masking import Span, apply
from trigate.guardrails.service import Service, base_url, need

ACTIONS = ("MASK", "BLOCK")


class Presidio(Guardrail):
    def __init__(self, config: GuardrailConfig) -> None:
        super().__init__(config)
        settings = config.settings
        name = config.name
        self._analyzer = base_url(
            settings.get("presidio_analyzer_api_base"), config.api_base, name,
            "presidio_analyzer_api_base",
        ) + "/analyze"  # fmt: skip
        self._anonymizer = (
            base_url(settings.get("presidio_anonymizer_api_base"), None, name,
                     "presidio_anonymizer_api_base") + "/anonymize"
        )  # fmt: skip
        self._language = str(settings.get("presidio_language") or "en")
        self._actions = _actions(settings.get("pii_entities_config"), name)
        self._thresholds = _thresholds(settings.get("presidio_score_thresholds"), name)
        self.unmasks = settings.get("output_parse_pii") is True
        self._service = Service(f"presidio `{name}`")

    async def check(self, texts: list[str], step: Step) -> Verdict:
        masked = list(texts)
        counts: dict[str, int] = {}
        for index, text in enumerate(texts):
            if not text.strip():
                continue
            found = await self._analyze(text)
            for result in found:
                counts[result["entity_type"]] = counts.get(result["entity_type"], 0) + 1
            blocking = sorted({r["entity_type"] for r in found if self._action(r) == "BLOCK"})
            if blocking:
                return Verdict(
                    blocked=f"PII detected: {', '.join(blocking)}", masked_entity_count=counts
                )
            if not found:
                continue
            if self.unmasks and step.reads_input:
                spans = [Span(r["start"], r["end"], r["entity_type"], "") for r in found]
                masked[index] = apply(text, spans, step.vault)
            else:
                masked[index] = await self._anonymize(text, found)
        changed = masked != texts
        return Verdict(
            texts=masked if changed else None,
            masked_entity_count=counts,
            response={"entities": counts},
        )

    async def _analyze(self, text: str) -> list[dict[str, Any]]:
        payload: dict[str, Any] = {"text": text, "language": self._language}
        if self._actions:
            payload["entities"] = sorted(self._actions)
        results = need(await self._service.post(self._analyzer, payload), list, "results")
        found = []
        for result in results:
            need(result, dict, "result")
            entity = need(result.get("entity_type"), str, "entity_type")
            start, end = result.get("start"), result.get("end")
            score = result.get("score", 1.0)
            if not (
                isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)
            ):
                need(None, int, "span in the text")
            if isinstance(score, int | float) and score < self._threshold(entity):
                continue
            if self._actions and entity not in self._actions:
                continue
            found.append({"entity_type": entity, "start": start, "end": end, "score": score})
        return found

    async def _anonymize(self, text: str, found: list[dict[str, Any]]) -> str:
        payload = {"text": text, "analyzer_results": found}
        answer = need(await self._service.post(self._anonymizer, payload), dict, "anonymized")
        result: str = need(answer.get("text"), str, "anonymized text")
        return result

    def _action(self, result: Mapping[str, Any]) -> str:
        return self._actions.get(result["entity_type"], "MASK")

    def _threshold(self, entity: str) -> float:
        return self._thresholds.get(entity, self._thresholds.get("ALL", 0.0))

    async def aclose(self) -> None:
        await self._service.aclose()


def _actions(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigProblem(f"guardrails `{name}`: `pii_entities_config` must be a mapping")
    actions = {str(entity): str(action).upper() for entity, action in value.items()}
    wrong = sorted(a for a in actions.values() if a not in ACTIONS)
    if wrong:
        raise ConfigProblem(f"guardrails `{name}`: actions {wrong} are not MASK or BLOCK")
    return actions


def _thresholds(value: Any, name: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    ):
        raise ConfigProblem(f"guardrails `{name}`: `presidio_score_thresholds` must map to numbers")
    return {str(entity): float(score) for entity, score in value.items()}

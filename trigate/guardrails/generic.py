"""LiteLLM's `generic_guardrail_api`: any service that implements LiteLLM's contract,
`POST {api_base}/beta/litellm_basic_guardrail_api` with the texts, answering
`{"action": "BLOCKED" | "NONE" | "GUARDRAIL_INTERVENED", "blocked_reason", "texts"}`."""

from __future__ import annotations

from trigate.guardrails.base import Guardrail, Step, Verdict
from trigate.guardrails.config import ConfigProblem, GuardrailConfig
from trigate.guardrails.service import Service, base_url, need

PATH = "/beta/litellm_basic_guardrail_api"


class GenericGuardrailAPI(Guardrail):
    def __init__(self, config: GuardrailConfig) -> None:
        super().__init__(config)
        self._url = base_url(config.api_base, None, config.name, "api_base") + PATH
        params = config.settings.get("additional_provider_specific_params") or {}
        if not isinstance(params, dict):
            raise ConfigProblem(
                f"guardrails `{config.name}`: `additional_provider_specific_params` must be a "
                "mapping"
            )
        self._params = params
        self._headers = {"x-api-key": config.api_key} if config.api_key else {}
        self._service = Service(f"generic guardrail `{config.name}`", config.api_key)

    async def check(self, texts: list[str], step: Step) -> Verdict:
        payload = {
            "texts": texts,
            "request_data": dict(step.request_data),
            "input_type": "request" if step.reads_input else "response",
            "litellm_call_id": step.request_data.get("litellm_call_id"),
            "additional_provider_specific_params": self._params,
        }
        answer = need(await self._service.post(self._url, payload, self._headers), dict, "action")
        action = answer.get("action")
        if action == "BLOCKED":
            reason = answer.get("blocked_reason")
            return Verdict(
                blocked=reason if isinstance(reason, str) else "blocked", response=action
            )
        if action == "NONE":
            return Verdict(response=action)
        if action == "GUARDRAIL_INTERVENED":
            changed = answer.get("texts")
            if changed is None:
                return Verdict(response=action)
            need(changed, list, "texts")
            if len(changed) != len(texts) or not all(isinstance(t, str) for t in changed):
                need(None, list, "texts, one for each text sent")
            return Verdict(texts=list(changed), response=action)
        need(None, str, "known action")
        return Verdict()

    async def aclose(self) -> None:
        await self._service.aclose()

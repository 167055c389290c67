"""LiteLLM's guardrails that are one call to a moderation service: `lakera_v2`
(Lakera Guard's `/v2/guard`), `openai_moderation` (OpenAI's `/moderations`, or a
deployment of the model list that serves it) and `bedrock` (Amazon Bedrock's
ApplyGuardrail, signed with SigV4 by botocore)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from botocore.credentials import Credentials

from trigate.errors import secrets
from trigate.guardrails.base import Guardrail, Step, Verdict
from trigate.guardrails.config import ConfigProblem, GuardrailConfig
from trigate.guardrails.service import Service, base_url, need
from trigate.providers.bedrock import SigV4

# A deployment of the model list, by its group: its litellm_params (api_base, api_key, model).
Deployments = Mapping[str, Any]


class LakeraV2(Guardrail):
    """Lakera Guard: the texts as a conversation; `flagged` blocks, or with
    `on_flagged: monitor` is only recorded."""

    def __init__(self, config: GuardrailConfig) -> None:
        super().__init__(config)
        settings = config.settings
        self._url = (
            base_url(config.api_base, "https://api.lakera.ai", config.name, "") + "/v2/guard"
        )
        key = config.api_key or os.environ.get("LAKERA_API_KEY")
        if not key:
            raise ConfigProblem(
                f"guardrails `{config.name}`: `api_key` (or LAKERA_API_KEY) is required"
            )
        self._headers = {"authorization": f"Bearer {key}"}
        self._options = {
            name: settings[name]
            for name in ("project_id", "payload", "breakdown", "metadata", "dev_info")
            if name in settings
        }
        self._monitor = settings.get("on_flagged", "block") == "monitor"
        self._service = Service(f"lakera `{config.name}`", key)

    async def check(self, texts: list[str], step: Step) -> Verdict:
        role = "user" if step.reads_input else "assistant"
        messages = [{"role": role, "content": text} for text in texts if text]
        answer = need(
            await self._service.post(
                self._url, {"messages": messages, **self._options}, self._headers
            ),
            dict,
            "verdict",
        )
        flagged = need(answer.get("flagged"), bool, "`flagged`")
        response = {"flagged": flagged, "breakdown": answer.get("breakdown")}
        if flagged and not self._monitor:
            return Verdict(blocked="Lakera Guard flagged the content", response=response)
        return Verdict(response=response)

    async def aclose(self) -> None:
        await self._service.aclose()


class OpenAIModeration(Guardrail):
    """OpenAI's moderation endpoint: a flagged result blocks, naming its categories. Its
    `model` may name a group of the model list, whose first deployment's endpoint and
    key are then used."""

    def __init__(self, config: GuardrailConfig, deployments: Deployments) -> None:
        super().__init__(config)
        model = str(config.settings.get("model") or "omni-moderation-latest")
        deployment = deployments.get(model)
        api_base, api_key = config.api_base, config.api_key
        if deployment is not None:
            api_base = api_base or deployment.api_base
            api_key = api_key or deployment.api_key
            model = deployment.model.split("/", 1)[-1]
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self._url = (
            base_url(api_base, "https://api.openai.com/v1", config.name, "") + "/moderations"
        )
        self._model = model
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._service = Service(f"openai_moderation `{config.name}`", api_key)

    async def check(self, texts: list[str], step: Step) -> Verdict:
        inputs = [text for text in texts if text]
        if not inputs:
            return Verdict()
        payload = {"model": self._model, "input": inputs}
        answer = need(await self._service.post(self._url, payload, self._headers), dict, "results")
        results = need(answer.get("results"), list, "results")
        flagged: set[str] = set()
        for result in results:
            need(result, dict, "result")
            if need(result.get("flagged"), bool, "`flagged`"):
                categories = result.get("categories") or {}
                flagged.update(name for name, hit in categories.items() if hit is True)
                flagged.add("flagged")
        if flagged:
            named = sorted(flagged - {"flagged"}) or ["flagged"]
            return Verdict(blocked=f"flagged by moderation: {', '.join(named)}",
                           response={"categories": named})  # fmt: skip
        return Verdict(response={"flagged": False})

    async def aclose(self) -> None:
        await self._service.aclose()


class BedrockGuardrail(Guardrail):
    """Bedrock's ApplyGuardrail: `GUARDRAIL_INTERVENED` blocks, or masks where the
    guardrail only anonymized and `mask_request_content` / `mask_response_content` say
    so (its outputs then replace the texts)."""

    def __init__(self, config: GuardrailConfig) -> None:
        super().__init__(config)
        settings, name = config.settings, config.name
        identifier = settings.get("guardrailIdentifier")
        version = settings.get("guardrailVersion")
        if not isinstance(identifier, str) or not isinstance(version, str | int):
            raise ConfigProblem(
                f"guardrails `{name}`: `guardrailIdentifier` and `guardrailVersion` are required"
            )
        region = str(settings.get("aws_region_name") or os.environ.get("AWS_REGION") or "")
        if not region:
            raise ConfigProblem(f"guardrails `{name}`: `aws_region_name` is required")
        default = f"https://bedrock-runtime.{region}.amazonaws.com"
        path = (
            f"/guardrail/{quote(identifier, safe='')}/version/{quote(str(version), safe='')}/apply"
        )
        self._url = base_url(config.api_base, default, name, "api_base") + path
        access = settings.get("aws_access_key_id") or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = settings.get("aws_secret_access_key") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        token = settings.get("aws_session_token") or os.environ.get("AWS_SESSION_TOKEN")
        if not access or not secret:
            raise ConfigProblem(f"guardrails `{name}`: AWS credentials are required")
        secrets.extend((secret, token))
        self._sign = SigV4(Credentials(access, secret, token), region)
        self._mask_input = settings.get("mask_request_content") is True
        self._mask_output = settings.get("mask_response_content") is True
        self._service = Service(f"bedrock `{name}`")

    async def check(self, texts: list[str], step: Step) -> Verdict:
        payload = {
            "source": "INPUT" if step.reads_input else "OUTPUT",
            "content": [{"text": {"text": text}} for text in texts],
        }
        answer = need(await self._service.post(self._url, payload, sign=self._sign), dict, "action")
        action = need(answer.get("action"), str, "action")
        if action == "NONE":
            return Verdict(response={"action": action})
        if action != "GUARDRAIL_INTERVENED":
            need(None, int, "known action")
        outputs = answer.get("outputs")
        masks = self._mask_input if step.reads_input else self._mask_output
        if masks and not _blocked(answer.get("assessments")) and isinstance(outputs, list):
            masked = [o.get("text") if isinstance(o, dict) else None for o in outputs]
            if len(masked) == len(texts) and all(isinstance(t, str) for t in masked):
                return Verdict(texts=[str(t) for t in masked], response={"action": action})
        return Verdict(blocked="the Bedrock guardrail intervened", response={"action": action})

    async def aclose(self) -> None:
        await self._service.aclose()


def _blocked(assessments: Any) -> bool:
    """Whether any policy's finding in Bedrock's assessments was BLOCKED (not only
    ANONYMIZED)."""
    found = False

    def walk(value: Any) -> None:
        nonlocal found
        if isinstance(value, dict):
            if value.get("action") == "BLOCKED":
                found = True
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(assessments)
    return found

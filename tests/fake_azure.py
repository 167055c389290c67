"""A fake Azure OpenAI: OpenAI's wire format with Azure's additions, the content filter's
results on answers and streams, and its errors for a filtered prompt."""

from __future__ import annotations

from typing import Any

import orjson
from fakes import FakeUpstream, chat_completion
from helpers import MOCK_DEPLOYMENT, UPSTREAM_KEY, deployment_config

DEPLOYMENT = "gpt4o-prod"
FILTER_RESULTS = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
# Azure's first stream chunk: no choices, only the prompt's filter results.
PROMPT_FILTER_CHUNK = (
    b"data: "
    + orjson.dumps(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [
                {"prompt_index": 0, "content_filter_results": FILTER_RESULTS}
            ],
        }
    )
    + b"\n\n"
)
FILTERED_PROMPT = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
        "content management policy. Please modify your prompt and retry.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                **FILTER_RESULTS,
                "violence": {"filtered": True, "severity": "high"},
            },
        },
    }
}


def azure_config(upstream: FakeUpstream, **params: Any) -> dict[str, Any]:
    router = params.pop("router", {})
    base = f"http://127.0.0.1:{upstream.port}"
    model = {"model": f"azure/{DEPLOYMENT}", "api_base": base, "api_key": UPSTREAM_KEY}
    return deployment_config(
        "azure-test", {**model, **params}, router=router, others=(MOCK_DEPLOYMENT,)
    )


def azure_completion(content: str | None, finish: str = "stop") -> dict[str, Any]:
    body = chat_completion(
        content or "", {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16}
    )
    body["choices"][0]["message"]["content"] = content
    body["choices"][0]["finish_reason"] = finish
    body["choices"][0]["content_filter_results"] = FILTER_RESULTS
    body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}]
    return body

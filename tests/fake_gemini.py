"""A fake Gemini API: answers (`GenerateContentResponse`), their SSE stream and Google's
error envelope, as the Gemini API sends them."""

from __future__ import annotations

from typing import Any

import orjson
from fakes import FakeUpstream, JSONReply, StreamReply
from helpers import MOCK_DEPLOYMENT, UPSTREAM_KEY, deployment_config

MODEL = "gemini-2.5-flash"


def gemini_config(upstream: FakeUpstream, **router: Any) -> dict[str, Any]:
    base = f"http://127.0.0.1:{upstream.port}"
    model = {"model": f"gemini/{MODEL}", "api_base": base, "api_key": UPSTREAM_KEY}
    return deployment_config("gemini-test", model, router=router, others=(MOCK_DEPLOYMENT,))


def answer(
    parts: list[dict[str, Any]], finish: str | None = "STOP", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A `GenerateContentResponse` as Gemini sends it (zero counts and index 0 left out)."""
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": MODEL,
        "responseId": "resp-1",
    }
    if usage is not None:
        body["usageMetadata"] = usage
    return body


def sse(*events: dict[str, Any]) -> StreamReply:
    return StreamReply([b"data: " + orjson.dumps(event) + b"\r\n\r\n" for event in events])


def gemini_error(status: int, code: str, message: str, **headers: str) -> JSONReply:
    return JSONReply(
        {"error": {"code": status, "message": message, "status": code}},
        status=status,
        headers=headers,
    )


BLOCKED = {
    "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
    "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
    "modelVersion": MODEL,
}

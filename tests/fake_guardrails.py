"""Fake guardrail services on real sockets (`FakeUpstream`), answering in the shapes
their docs give:

- Presidio's analyzer (`POST /analyze`: `{text, language, entities?}` → a list of
  `{entity_type, start, end, score, analysis_explanation, recognition_metadata}`) and
  anonymizer (`POST /anonymize`: `{text, analyzer_results, anonymizers?}` →
  `{text, items: [{start, end, entity_type, text, operator}]}`, each entity replaced by
  `<ENTITY_TYPE>`, Presidio's default `replace` operator);
- LiteLLM's generic guardrail API, Lakera Guard v2, OpenAI's moderations and Bedrock's
  ApplyGuardrail, each blocking text that holds a trigger word.
"""

from __future__ import annotations

import re
from typing import Any

from fakes import JSONReply, ReceivedRequest

_RECOGNIZERS = {
    "EMAIL_ADDRESS": (re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"), 1.0, "EmailRecognizer"),
    "PHONE_NUMBER": (re.compile(r"\+?\d[\d -]{8,}\d"), 0.75, "PhoneRecognizer"),
    "CREDIT_CARD": (re.compile(r"\b(?:\d[ -]?){15}\d\b"), 1.0, "CreditCardRecognizer"),
    "PERSON": (re.compile(r"\b(?:Ada Lovelace|Alan Turing)\b"), 0.85, "SpacyRecognizer"),
}


def presidio(request: ReceivedRequest) -> JSONReply:
    body = request.json
    if request.target == "/analyze":
        if body.get("language") != "en":
            language = body.get("language")
            message = f"No matching recognizers were found to serve the request for {language}"
            return JSONReply({"error": message}, status=500)
        wanted = body.get("entities")
        results = [
            {
                "entity_type": entity,
                "start": match.start(),
                "end": match.end(),
                "score": score,
                "analysis_explanation": None,
                "recognition_metadata": {
                    "recognizer_name": recognizer,
                    "recognizer_identifier": f"{recognizer}_1",
                },
            }
            for entity, (pattern, score, recognizer) in _RECOGNIZERS.items()
            if not wanted or entity in wanted
            for match in pattern.finditer(body["text"])
        ]
        return JSONReply(sorted(results, key=lambda r: r["start"]))
    if request.target == "/anonymize":
        text = body["text"]
        items = []
        for result in sorted(body["analyzer_results"], key=lambda r: r["start"], reverse=True):
            new = f"<{result['entity_type']}>"
            text = text[: result["start"]] + new + text[result["end"] :]
            items.append({"start": result["start"], "end": result["start"] + len(new),
                          "entity_type": result["entity_type"], "text": new,
                          "operator": "replace"})  # fmt: skip
        return JSONReply({"text": text, "items": items})
    return JSONReply({"error": "Not Found"}, status=404)


def generic(request: ReceivedRequest) -> JSONReply:
    body = request.json
    if request.target != "/beta/litellm_basic_guardrail_api":
        return JSONReply({"detail": "Not Found"}, status=404)
    if any("BLOCKME" in text for text in body["texts"]):
        return JSONReply({"action": "BLOCKED", "blocked_reason": "says BLOCKME"})
    if any("garbage" in text for text in body["texts"]):
        return JSONReply({"action": "MAYBE"})
    if any("secret" in text for text in body["texts"]):
        texts = [text.replace("secret", "[hidden]") for text in body["texts"]]
        return JSONReply({"action": "GUARDRAIL_INTERVENED", "texts": texts})
    return JSONReply({"action": "NONE"})


def lakera(request: ReceivedRequest) -> JSONReply:
    if request.target != "/v2/guard" or request.headers.get("authorization") != "Bearer lk-test":
        return JSONReply({"error": "unauthorized"}, status=401)
    flagged = any("ignore previous" in m["content"] for m in request.json["messages"])
    breakdown = [{"project_id": "p", "policy_id": "pol", "detector_id": "d",
                  "detector_type": "prompt_attack", "detected": flagged}]  # fmt: skip
    return JSONReply({"flagged": flagged, "breakdown": breakdown,
                      "metadata": {"request_uuid": "0f3b"}})  # fmt: skip


def moderation(request: ReceivedRequest) -> JSONReply:
    if not request.target.endswith("/moderations"):
        return JSONReply({"error": {"message": "no route"}}, status=404)
    inputs = request.json["input"]
    results = [{"flagged": "hurt" in text, "categories": {"violence": "hurt" in text,
                "harassment": False}, "category_scores": {"violence": 0.9 if "hurt" in text
                else 0.01, "harassment": 0.0}} for text in inputs]  # fmt: skip
    return JSONReply({"id": "modr-1", "model": request.json["model"], "results": results})


def bedrock(request: ReceivedRequest) -> JSONReply:
    if not request.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 "):
        return JSONReply({"message": "Missing Authentication Token"}, status=403)
    texts = [block["text"]["text"] for block in request.json["content"]]
    if any("weapon" in text for text in texts):
        assessments: list[dict[str, Any]] = [{"topicPolicy": {"topics": [
            {"name": "weapons", "type": "DENY", "action": "BLOCKED"}]}}]  # fmt: skip
        return JSONReply({"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": "Sorry."}],
                          "assessments": assessments})  # fmt: skip
    if any("@" in text for text in texts):
        masked = [{"text": re.sub(r"[\w.+-]+@[\w.-]+", "{EMAIL}", text)} for text in texts]
        assessments = [{"sensitiveInformationPolicy": {"piiEntities": [
            {"type": "EMAIL", "match": "x", "action": "ANONYMIZED"}]}}]  # fmt: skip
        return JSONReply({"action": "GUARDRAIL_INTERVENED", "outputs": masked,
                          "assessments": assessments})  # fmt: skip
    return JSONReply({"action": "NONE", "outputs": [], "assessments": []})

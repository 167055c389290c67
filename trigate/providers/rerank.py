"""Rerank, in the shape LiteLLM's `/v1/rerank` takes and answers (Cohere's).

A request names a `query` and its `documents` (texts, or objects), and optionally
`top_n`, `return_documents`, `max_tokens_per_doc` and `rank_fields`; the answer
lists `results` of `index` and `relevance_score` (with the `document` when asked),
best first, and `meta`. Cohere, vLLM (`hosted_vllm/`) and Jina speak this shape
themselves; Voyage says `top_k` and `data` instead, translated here.

Billing: Cohere bills searches (`meta.billed_units.search_units`), vLLM, Jina and
Voyage tokens (`usage.total_tokens`); either goes into the usage the gateway meters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trigate.providers.base import Completion, Rerank, UpstreamClient, read_json_object

# The request fields each upstream takes, beside `model`, `query` and `documents`.
COHERE_FIELDS = ("top_n", "max_tokens_per_doc", "rank_fields", "return_documents")
# Cohere's v2 API no longer takes `return_documents`: the gateway adds the documents.
COHERE_V2_FIELDS = ("top_n", "max_tokens_per_doc")


@dataclass(frozen=True, slots=True)
class RerankDialect:
    """How one upstream's rerank API differs from Cohere's."""

    path: str = "rerank"
    fields: tuple[str, ...] = COHERE_FIELDS
    # Voyage: `top_k` for `top_n`, and its results in `data`.
    voyage: bool = False


COHERE_V2 = RerankDialect("v2/rerank", COHERE_V2_FIELDS)
COMPATIBLE = RerankDialect()
VOYAGE = RerankDialect(fields=(), voyage=True)


class RerankClient(Rerank):
    """One deployment's rerank endpoint."""

    def __init__(self, upstream: UpstreamClient, model: str, dialect: RerankDialect) -> None:
        # Named apart: an adapter that reranks among other abilities is this class too.
        self._rerank_upstream = upstream
        self._rerank_model = model
        self._rerank_dialect = dialect

    async def rerank(self, body: dict[str, Any]) -> Completion:
        dialect = self._rerank_dialect
        payload = upstream_request(body, self._rerank_model, dialect)
        _, data = await read_json_object(await self._rerank_upstream.post(payload))
        answer = litellm_answer(data, body, dialect)
        return Completion(body=answer, native=True, native_usage=metered_usage(data))


def upstream_request(body: dict[str, Any], model: str, dialect: RerankDialect) -> dict[str, Any]:
    payload = {"model": model, "query": body["query"], "documents": body["documents"]}
    for field in dialect.fields:
        if body.get(field) is not None:
            payload[field] = body[field]
    if dialect.voyage:
        if body.get("top_n") is not None:
            payload["top_k"] = body["top_n"]
        if body.get("return_documents") is not None:
            payload["return_documents"] = body["return_documents"]
    return payload


def litellm_answer(
    data: dict[str, Any], body: dict[str, Any], dialect: RerankDialect
) -> dict[str, Any]:
    """LiteLLM's `RerankResponse`: results best first, each with its document when the
    client asked for documents (LiteLLM's default is to return them)."""
    items = data.get("data" if dialect.voyage else "results") or []
    documents = body["documents"]
    wanted = body.get("return_documents", True) is not False
    results = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("index"), int):
            continue
        result: dict[str, Any] = {
            "index": item["index"],
            "relevance_score": item.get("relevance_score"),
        }
        if wanted:
            result["document"] = _document(item, documents)
        results.append(result)
    meta = data.get("meta")
    if not isinstance(meta, dict):
        meta = {"billed_units": {}, "tokens": {"input_tokens": _total_tokens(data)}}
    return {"id": data.get("id") or "", "results": results, "meta": meta}


def _document(item: dict[str, Any], documents: list[Any]) -> Any:
    given = item.get("document")
    if isinstance(given, dict):
        return given
    if isinstance(given, str):
        return {"text": given}
    index = item["index"]
    original = documents[index] if 0 <= index < len(documents) else None
    return {"text": original} if isinstance(original, str) else original


def metered_usage(data: dict[str, Any]) -> dict[str, Any]:
    """The usage to bill, in OpenAI's words plus `search_units`."""
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    billed = (meta or {}).get("billed_units") or {}
    searches = billed.get("search_units") if isinstance(billed, dict) else None
    tokens = _total_tokens(data)
    return {
        "prompt_tokens": tokens,
        "completion_tokens": 0,
        "total_tokens": tokens,
        "search_units": int(searches) if isinstance(searches, int | float) else 0,
    }


def _total_tokens(data: dict[str, Any]) -> int:
    usage = data.get("usage")
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    if isinstance(total, int):
        return total
    meta = data.get("meta")
    tokens = meta.get("tokens") if isinstance(meta, dict) else None
    counted = tokens.get("input_tokens") if isinstance(tokens, dict) else None
    return int(counted) if isinstance(counted, int | float) else 0

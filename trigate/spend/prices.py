"""Per-token prices and context windows, and what a request cost.

The table is LiteLLM's public price map (`model_prices_and_context_window.json`),
filtered by `scripts/update_prices.py` and shipped as package data. Trigate is a
drop-in for LiteLLM's proxy, so it keys and reads the table the way LiteLLM does
and a request costs the same through either.

Billing must never fail a request: a model the table does not know costs 0 and
is reported once, on the `trigate.spend` logger, so the operator can price it
in the deployment's config.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Protocol, TypeVar

import orjson

logger = logging.getLogger("trigate.spend")

_T = TypeVar("_T")

DATA_PACKAGE = "trigate.data"
DATA_FILE = "model_prices.json"

# ModelPrice attribute -> the table's field.
_COST_FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
    "reasoning": "output_cost_per_reasoning_token",
    # Rerank is billed per search (Cohere's "search unit": a query over up to 100 documents).
    "query": "input_cost_per_query",
    # What is billed by the unit rather than the token (`unit_cost`, `image_cost`).
    "per_image": "input_cost_per_image",
    "per_pixel": "input_cost_per_pixel",
    "per_output_image": "output_cost_per_image",
    "image_input_token": "input_cost_per_image_token",
    "image_output_token": "output_cost_per_image_token",
    "per_character": "input_cost_per_character",
    "per_second": "input_cost_per_second",
    "per_output_second": "output_cost_per_second",
    # The Batch API's prices (`batch_cost`).
    "input_batches": "input_cost_per_token_batches",
    "output_batches": "output_cost_per_token_batches",
}

# The litellm_provider values whose entries may price a trigate provider. Without
# this a bare key such as "gpt-4o" could price some other host's model of the same
# name. Providers not listed accept only their own name.
_FAMILIES: dict[str, frozenset[str]] = {
    "openai": frozenset({"openai", "text-completion-openai"}),
    # Azure OpenAI bills the OpenAI list price for most models, and the table
    # lists far more of them under the bare OpenAI names than under "azure/".
    "azure": frozenset({"azure", "openai", "text-completion-openai"}),
    # Vertex AI's own prices (Claude and embeddings on Vertex are listed apart from Anthropic's
    # and Gemini's), then the table's bare Gemini names, which it lists as Vertex's.
    "vertex_ai": frozenset(
        {
            "vertex_ai",
            "vertex_ai-language-models",
            "vertex_ai-anthropic_models",
            "vertex_ai-embedding-models",
        }
    ),
    "cohere": frozenset({"cohere", "cohere_chat"}),
    "cohere_chat": frozenset({"cohere", "cohere_chat"}),
    "bedrock": frozenset({"bedrock", "bedrock_converse"}),
    "fireworks_ai": frozenset({"fireworks_ai", "fireworks_ai-embedding-models"}),
}

# OpenRouter passes its upstreams' list prices through unchanged. When the table
# has no "openrouter/..." entry, an OpenRouter model "vendor/name" is priced as
# `name` at the vendor's own provider.
_OPENROUTER_VENDORS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "gemini",
    "mistralai": "mistral",
    "x-ai": "xai",
    "deepseek": "deepseek",
}

# A price entry for one size (and quality) of image: "hd/1024-x-1024/dall-e-3".
_SIZED = re.compile(r"(?:^|/)\d+-x-\d+/")

# A dated snapshot name ("gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022").
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per token, and the model's context window; None where the table is silent."""

    input: float | None = None
    output: float | None = None
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None
    query: float | None = None
    per_image: float | None = None
    per_pixel: float | None = None
    per_output_image: float | None = None
    image_input_token: float | None = None
    image_output_token: float | None = None
    per_character: float | None = None
    per_second: float | None = None
    per_output_second: float | None = None
    input_batches: float | None = None
    output_batches: float | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None

    @property
    def priced(self) -> bool:
        """Whether there is any price at all; a context window alone bills nothing."""
        return (
            self.input is not None
            or self.output is not None
            or self.query is not None
            or self.per_character is not None
            or self.per_second is not None
            or self.per_image is not None
            or self.per_output_image is not None
            or self.per_pixel is not None
        )


class TokenUsage(Protocol):
    """The token counts a request is billed on, as OpenAI reports them.

    `cached_tokens` (OpenAI's `prompt_tokens_details.cached_tokens`) are part of
    `prompt_tokens`; `reasoning_tokens` (`completion_tokens_details.reasoning_tokens`)
    are part of `completion_tokens`. `cache_write_tokens` (Anthropic's
    `cache_creation_input_tokens`) are NOT part of `prompt_tokens`: they are billed
    on their own, at the cache-write price.
    """

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def search_units(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """A plain TokenUsage, for callers that have only the counts."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    search_units: int = 0


class PriceTable:
    """The price table, keyed as LiteLLM keys it.

    Keys are sometimes bare ("gpt-4o", "claude-3-5-sonnet-20241022",
    "anthropic.claude-3-5-sonnet-20241022-v2:0") and sometimes provider-prefixed
    ("gemini/gemini-1.5-pro", "groq/llama3-70b-8192", "azure/gpt-4o").
    """

    __slots__ = ("_entries", "_warned", "source")

    def __init__(self, entries: Mapping[str, Any], source: str = "") -> None:
        self.source = source
        self._entries: dict[str, tuple[str, ModelPrice]] = {
            key: (entry["litellm_provider"], _price_from(entry))
            for key, entry in entries.items()
            if isinstance(entry, Mapping) and isinstance(entry.get("litellm_provider"), str)
        }
        self._warned: set[tuple[str, str]] = set()

    @classmethod
    def from_json(cls, data: bytes | str) -> PriceTable:
        raw = orjson.loads(data)
        return cls(raw, source=str(raw.get("_source", "")))

    @classmethod
    def load(cls) -> PriceTable:
        """The table shipped with trigate. Blocking file I/O: run it in a thread."""
        data = resources.files(DATA_PACKAGE).joinpath(DATA_FILE).read_bytes()
        return cls.from_json(data)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """The price of `model` served by `provider` (trigate's prefix), or None.

        Tries "provider/model", then the bare "model", then the same with a
        trailing date stripped, accepting only entries of the provider's family.
        """
        allowed = _FAMILIES.get(provider, frozenset({provider}))
        for key in _candidate_keys(provider, model):
            found = self._entries.get(key)
            if found is not None and found[0] in allowed:
                return found[1]
        if provider == "openrouter":
            return self._openrouter_upstream(model)
        return None

    def models_of(self, provider: str) -> list[str]:
        """The models the table knows `provider` (trigate's prefix) to serve, by the name
        its deployments give them (without the prefix): what LiteLLM lists for a
        wildcard deployment such as `anthropic/*`. Another vendor's entries that only
        price the provider (OpenAI's, for `azure/`) are not its models."""
        family = {name for name in _FAMILIES.get(provider, ()) if name.startswith(provider)}
        family.add(provider)
        prefix = f"{provider}/"
        return [
            key.removeprefix(prefix)
            for key, (owner, _) in self._entries.items()
            if owner in family and not _SIZED.search(key)
        ]

    def image_price(self, provider: str, model: str, size: str, quality: str) -> ModelPrice | None:
        """The price of one image of `size` ("1024x1024") and `quality` from `model`, as
        LiteLLM keys it: "<quality>/<W>-x-<H>/<model>", then "<W>-x-<H>/<model>", each
        with the provider's prefix first; None where the table has neither."""
        sized = size.replace("x", "-x-")
        for key in (f"{quality}/{sized}/{model}", f"{sized}/{model}"):
            found = self.lookup(provider, key)
            if found is not None:
                return found
        return None

    def _openrouter_upstream(self, model: str) -> ModelPrice | None:
        vendor, _, name = model.partition("/")
        provider = _OPENROUTER_VENDORS.get(vendor)
        return self.lookup(provider, name) if provider and name else None

    def _warn_unpriced_once(self, provider: str, model: str) -> None:
        if (provider, model) in self._warned:
            return
        self._warned.add((provider, model))
        logger.warning(
            "no price for %s/%s: its requests are billed 0; set input_cost_per_token "
            "and output_cost_per_token in the deployment's litellm_params to price it",
            provider,
            model,
        )


def price_for(
    provider: str,
    model: str,
    input_cost_per_token: float | None,
    output_cost_per_token: float | None,
    table: PriceTable,
) -> ModelPrice | None:
    """A deployment's price: its configured prices over the table's.

    Configured input/output prices win (contracts and self-hosted models differ
    from list prices); cache, reasoning and context-window figures still come
    from the table. Warns once per model that ends up without any price.
    """
    found = table.lookup(provider, model)
    base = found or ModelPrice()
    price = replace(
        base,
        input=_first(input_cost_per_token, base.input),
        output=_first(output_cost_per_token, base.output),
    )
    if price.priced:
        return price
    table._warn_unpriced_once(provider, model)
    return found


def cost(price: ModelPrice | None, usage: TokenUsage) -> float:
    """What a request cost in USD; 0 for an unpriced model, never an exception.

    Cached prompt tokens are billed at the cache-read price and reasoning tokens
    at the reasoning price, each falling back to the plain input/output price.
    """
    if price is None:
        return 0.0
    prompt = _count(usage.prompt_tokens)
    completion = _count(usage.completion_tokens)
    cached = min(_count(usage.cached_tokens), prompt)
    reasoning = min(_count(usage.reasoning_tokens), completion)
    input_price = price.input or 0.0
    output_price = price.output or 0.0
    return (
        (prompt - cached) * input_price
        + cached * _first(price.cache_read, input_price)
        + _count(usage.cache_write_tokens) * _first(price.cache_write, input_price)
        + (completion - reasoning) * output_price
        + reasoning * _first(price.reasoning, output_price)
        + _count(usage.search_units) * (price.query or 0.0)
    )


def image_cost(price: ModelPrice, width: int, height: int, images: int) -> float:
    """`images` images of `width` by `height` at one size's price: per image where the
    table says so, else per pixel (DALL-E's entries), as LiteLLM reckons it."""
    if price.per_image is not None:
        return price.per_image * images
    if price.per_output_image is not None:
        return price.per_output_image * images
    return (price.per_pixel or 0.0) * width * height * images


# OpenAI's Batch API costs half its list price, where the table names no batch price.
BATCH_DISCOUNT = 0.5


def batch_cost(price: ModelPrice | None, usage: TokenUsage) -> float:
    """A batch's tokens at the table's batch prices, else at half the list prices."""
    if price is None:
        return 0.0
    prompt, completion = _count(usage.prompt_tokens), _count(usage.completion_tokens)
    given = _first(price.input_batches, (price.input or 0.0) * BATCH_DISCOUNT)
    made = _first(price.output_batches, (price.output or 0.0) * BATCH_DISCOUNT)
    return prompt * given + completion * made


def _candidate_keys(provider: str, model: str) -> Iterator[str]:
    names = _aliases(provider, model)
    for name in names:
        yield f"{provider}/{name}"
        yield name
    for name in names:
        undated = _DATE_SUFFIX.sub("", name)
        if undated != name:
            yield f"{provider}/{undated}"
            yield undated


def _aliases(provider: str, model: str) -> list[str]:
    """`model` and the other names LiteLLM's table may list it under, best first."""
    names = [model]
    if provider == "bedrock":
        # LiteLLM's route selectors: "bedrock/converse/<id>", "bedrock/invoke/<id>".
        names += [model.partition("/")[2] for p in ("converse/", "invoke/") if model.startswith(p)]
    elif provider == "azure" and "gpt-35" in model:
        names.append(model.replace("gpt-35", "gpt-3.5"))  # Azure's name for gpt-3.5
    elif provider == "anthropic" and "." in model:
        names.append(model.replace(".", "-"))  # "claude-sonnet-4.5", as OpenRouter spells it
    elif provider == "vertex_ai" and "@" in model:
        names.append(model.partition("@")[0])  # "claude-sonnet-4-5@20250929", a version pinned
    elif provider == "fireworks_ai" and not model.startswith("accounts/"):
        names.append(f"accounts/fireworks/models/{model}")
    return names


def _price_from(entry: Mapping[str, Any]) -> ModelPrice:
    costs = {attr: _float(entry.get(field)) for attr, field in _COST_FIELDS.items()}
    return ModelPrice(
        **costs,
        max_input_tokens=_int(entry.get("max_input_tokens")),
        max_output_tokens=_int(entry.get("max_output_tokens")),
    )


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _first(value: _T | None, fallback: _T) -> _T:
    return fallback if value is None else value

"""The price table: the shipped data, LiteLLM-style lookups, cost, overrides, the generator."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from trigate.spend.prices import (
    ModelPrice,
    PriceTable,
    TokenCounts,
    cost,
    price_for,
)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "update_prices.py"

# trigate provider -> the litellm_provider values its entries carry.
FAMILIES = {
    "openai": {"openai"},
    "anthropic": {"anthropic"},
    "gemini": {"gemini"},
    "azure": {"azure"},
    "bedrock": {"bedrock", "bedrock_converse"},
    "groq": {"groq"},
    "mistral": {"mistral"},
    "deepseek": {"deepseek"},
    "together_ai": {"together_ai"},
    "fireworks_ai": {"fireworks_ai"},
    "openrouter": {"openrouter"},
    "perplexity": {"perplexity"},
    "xai": {"xai"},
    "cerebras": {"cerebras"},
    "deepinfra": {"deepinfra"},
}


@pytest.fixture(scope="module")
def shipped() -> PriceTable:
    return PriceTable.load()


@pytest.fixture(scope="module")
def shipped_raw() -> dict[str, Any]:
    raw = resources.files("trigate.data").joinpath("model_prices.json").read_text()
    table: dict[str, Any] = json.loads(raw)
    return table


def entry(provider: str, input_cost: float | None = None, **fields: Any) -> dict[str, Any]:
    return {"litellm_provider": provider, "mode": "chat", "input_cost_per_token": input_cost} | {
        k: v for k, v in fields.items() if v is not None
    }


# -- the shipped table ---------------------------------------------------------------


def test_shipped_table_loads(shipped: PriceTable) -> None:
    assert len(shipped) > 1000
    assert shipped.source.startswith("LiteLLM ")


def test_shipped_file_is_small_sorted_and_one_entry_per_line(shipped_raw: dict[str, Any]) -> None:
    text = resources.files("trigate.data").joinpath("model_prices.json").read_text()
    assert len(text.encode()) < 1_000_000
    lines = text.splitlines()[1:-1]
    assert len(lines) == len(shipped_raw)
    keys = [json.loads("{" + line.rstrip(",") + "}").popitem()[0] for line in lines]
    assert keys[0] == "_source"
    assert keys[1:] == sorted(keys[1:])


@pytest.mark.parametrize("provider", sorted(FAMILIES))
def test_every_provider_family_has_a_priced_chat_model(
    provider: str, shipped: PriceTable, shipped_raw: dict[str, Any]
) -> None:
    keys = [
        key
        for key, e in shipped_raw.items()
        if isinstance(e, dict)
        and e["litellm_provider"] in FAMILIES[provider]
        and e["mode"] == "chat"
        and e.get("input_cost_per_token", 0) > 0
        and e.get("output_cost_per_token", 0) > 0
    ]
    if provider == "openrouter" and not keys:
        # LiteLLM's current map has no openrouter entries; lookups fall back to
        # the upstream vendor's list price, which OpenRouter passes through.
        keys = ["openrouter/openai/gpt-4o"]
    assert keys, f"no priced chat model for {provider}"
    # Every such entry is reachable the way a deployment names it: "provider/<model>".
    # (A few bare keys are shadowed by a "provider/" key of the same model that
    # LiteLLM prices differently, e.g. free experimental Gemini models.)
    prices = [shipped.lookup(provider, key.removeprefix(f"{provider}/")) for key in keys]
    assert None not in prices
    assert any(price.input and price.output for price in prices if price)


@pytest.mark.parametrize(
    ("provider", "model", "price_in", "price_out"),
    [
        ("openai", "gpt-4o", 2.5e-6, 1e-5),  # bare key
        ("openai", "gpt-4o-2099-01-01", 2.5e-6, 1e-5),  # unknown snapshot date
        ("azure", "gpt-4o", 2.5e-6, 1e-5),  # "azure/gpt-4o"
        ("openrouter", "openai/gpt-4o", 2.5e-6, 1e-5),
        ("bedrock", "anthropic.claude-3-5-sonnet-20241022-v2:0", 3e-6, 1.5e-5),
        ("bedrock", "converse/anthropic.claude-3-5-sonnet-20241022-v2:0", 3e-6, 1.5e-5),
    ],
)
def test_shipped_lookups(
    shipped: PriceTable, provider: str, model: str, price_in: float, price_out: float
) -> None:
    price = shipped.lookup(provider, model)
    assert price is not None
    assert (price.input, price.output) == (price_in, price_out)


def test_shipped_prefixed_keys(shipped: PriceTable, shipped_raw: dict[str, Any]) -> None:
    for key in ("gemini/gemini-2.5-flash", "deepseek/deepseek-chat", "xai/grok-4.3"):
        if key in shipped_raw:
            provider, _, model = key.partition("/")
            price = shipped.lookup(provider, model)
            assert price is not None
            assert price.input == shipped_raw[key]["input_cost_per_token"]


# -- lookup rules, on a synthetic table ----------------------------------------------


@pytest.fixture
def table() -> PriceTable:
    return PriceTable(
        {
            "_source": "synthetic",
            "gpt-4o": entry("openai", 2e-6, output_cost_per_token=8e-6),
            "gpt-4o-2024-05-13": entry("openai", 5e-6, output_cost_per_token=1.5e-5),
            "gpt-3.5-turbo": entry("openai", 5e-7, output_cost_per_token=1.5e-6),
            "azure/gpt-4o": entry("azure", 2.2e-6, output_cost_per_token=9e-6),
            "claude-x-1": entry("anthropic", 3e-6, output_cost_per_token=1.5e-5),
            "groq/llama3-70b-8192": entry("groq", 5.9e-7, output_cost_per_token=7.9e-7),
            "deepseek-chat": entry("deepseek", 1e-7),
            "deepseek/deepseek-chat": entry("deepseek", 2e-7),
            "anthropic.claude-y-v1:0": entry("bedrock_converse", 4e-6),
            "fireworks_ai/accounts/fireworks/models/llama-v3p1-8b": entry("fireworks_ai", 2e-7),
            "openrouter/meta-llama/llama-3-8b": entry("openrouter", 6e-8),
            "ctx-only": entry("openai", max_input_tokens=8192),
        }
    )


@pytest.mark.parametrize(
    ("provider", "model", "expected_input"),
    [
        ("openai", "gpt-4o", 2e-6),  # bare key
        ("groq", "llama3-70b-8192", 5.9e-7),  # "groq/" key
        ("deepseek", "deepseek-chat", 2e-7),  # the prefixed key wins over the bare one
        ("azure", "gpt-4o", 2.2e-6),  # "azure/" key
        ("azure", "gpt-3.5-turbo", 5e-7),  # the bare OpenAI name
        ("azure", "gpt-35-turbo", 5e-7),  # Azure's spelling
        ("openai", "gpt-4o-2024-05-13", 5e-6),  # an exact dated entry wins
        ("openai", "gpt-4o-2024-08-06", 2e-6),  # else the date is stripped
        ("anthropic", "claude-x-1-20250101", 3e-6),
        ("bedrock", "anthropic.claude-y-v1:0", 4e-6),
        ("bedrock", "converse/anthropic.claude-y-v1:0", 4e-6),
        ("fireworks_ai", "accounts/fireworks/models/llama-v3p1-8b", 2e-7),
        ("fireworks_ai", "llama-v3p1-8b", 2e-7),
        ("openrouter", "meta-llama/llama-3-8b", 6e-8),  # its own entry
        ("openrouter", "openai/gpt-4o", 2e-6),  # the upstream vendor's price
        ("openrouter", "anthropic/claude-x.1", 3e-6),  # OpenRouter's dotted spelling
    ],
)
def test_lookup(table: PriceTable, provider: str, model: str, expected_input: float) -> None:
    price = table.lookup(provider, model)
    assert price is not None
    assert price.input == expected_input


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("deepinfra", "gpt-4o"),  # a bare key of another provider's family
        ("groq", "gpt-4o"),
        ("openai", "llama3-70b-8192"),
        ("openai", "no-such-model"),
        ("openrouter", "unknown-vendor/gpt-4o"),
        ("mock", "gpt-4o"),
    ],
)
def test_lookup_misses(table: PriceTable, provider: str, model: str) -> None:
    assert table.lookup(provider, model) is None


# -- cost ----------------------------------------------------------------------------

FULL = ModelPrice(input=2e-6, output=8e-6, cache_read=5e-7, cache_write=2.5e-6, reasoning=1e-5)
USAGE = TokenCounts(
    prompt_tokens=1000,
    completion_tokens=500,
    cached_tokens=400,
    cache_write_tokens=200,
    reasoning_tokens=300,
)


def test_cost_with_cache_and_reasoning_prices() -> None:
    # 600 * 2e-6 + 400 * 5e-7 + 200 * 2.5e-6 + 200 * 8e-6 + 300 * 1e-5
    # = 0.0012 + 0.0002 + 0.0005 + 0.0016 + 0.003
    assert cost(FULL, USAGE) == pytest.approx(0.0065)


def test_cost_falls_back_to_input_and_output_prices() -> None:
    plain = ModelPrice(input=2e-6, output=8e-6)
    # (1000 + 200) * 2e-6 + 500 * 8e-6 = 0.0024 + 0.004
    assert cost(plain, USAGE) == pytest.approx(0.0064)


def test_cost_honours_free_cache_reads() -> None:
    free_cache = ModelPrice(input=2e-6, output=8e-6, cache_read=0.0)
    usage = TokenCounts(prompt_tokens=1000, cached_tokens=400)
    assert cost(free_cache, usage) == pytest.approx(600 * 2e-6)


def test_cost_of_plain_usage() -> None:
    assert cost(FULL, TokenCounts(prompt_tokens=10, completion_tokens=5)) == pytest.approx(
        10 * 2e-6 + 5 * 8e-6
    )


def test_cost_never_bills_more_cached_or_reasoning_tokens_than_there_are() -> None:
    usage = TokenCounts(
        prompt_tokens=100, completion_tokens=10, cached_tokens=500, reasoning_tokens=50
    )
    assert cost(FULL, usage) == pytest.approx(100 * 5e-7 + 10 * 1e-5)


def test_cost_on_the_shipped_table(shipped: PriceTable) -> None:
    price = shipped.lookup("openai", "gpt-4o")
    usage = TokenCounts(prompt_tokens=1000, completion_tokens=100, cached_tokens=400)
    # 600 * 2.5e-6 + 400 * 1.25e-6 + 100 * 1e-5
    assert cost(price, usage) == pytest.approx(0.003)


def test_cost_accepts_any_object_with_the_counts() -> None:
    class GatewayUsage:
        prompt_tokens = 10
        completion_tokens = 5
        cached_tokens = 0
        cache_write_tokens = 0
        reasoning_tokens = 0
        search_units = 0

    assert cost(FULL, GatewayUsage()) == pytest.approx(10 * 2e-6 + 5 * 8e-6)


# -- overrides and unpriced models ---------------------------------------------------


def test_configured_prices_override_the_table() -> None:
    table = PriceTable(
        {"m": entry("openai", 1e-6, output_cost_per_token=2e-6, cache_read_input_token_cost=1e-7)}
    )
    price = price_for("openai", "m", 3e-6, 4e-6, table)
    assert price == ModelPrice(input=3e-6, output=4e-6, cache_read=1e-7)
    only_input = price_for("openai", "m", 3e-6, None, table)
    assert only_input == ModelPrice(input=3e-6, output=2e-6, cache_read=1e-7)
    assert price_for("openai", "m", None, None, table) == table.lookup("openai", "m")


def test_configured_prices_price_an_unknown_model(table: PriceTable) -> None:
    assert price_for("openai", "my-finetune", 1e-6, 2e-6, table) == ModelPrice(
        input=1e-6, output=2e-6
    )


def test_unpriced_model_costs_zero_and_warns_once(
    table: PriceTable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trigate.spend")
    usage = TokenCounts(prompt_tokens=100, completion_tokens=100)
    for _ in range(3):
        price = price_for("openai", "no-such-model", None, None, table)
        assert price is None
        assert cost(price, usage) == 0.0
    warnings = [r for r in caplog.records if r.name == "trigate.spend"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "openai/no-such-model" in warnings[0].getMessage()


def test_each_unpriced_model_warns_once(
    table: PriceTable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trigate.spend")
    for model in ("a", "b", "a", "ctx-only", "ctx-only"):
        price_for("openai", model, None, None, table)
    assert len([r for r in caplog.records if r.name == "trigate.spend"]) == 3


def test_a_context_window_without_prices_bills_zero(table: PriceTable) -> None:
    price = price_for("openai", "ctx-only", None, None, table)
    assert price is not None
    assert price.max_input_tokens == 8192
    assert not price.priced
    assert cost(price, TokenCounts(prompt_tokens=100, completion_tokens=100)) == 0.0


# -- the generator -------------------------------------------------------------------

SYNTHETIC_SOURCE = {
    "sample_spec": {"litellm_provider": "one of ...", "mode": "one of ...", "max_tokens": "x"},
    "gpt-4o": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_tokens": 16384,
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
        "input_cost_per_token": 2.5e-6,
        "output_cost_per_token": 1e-5,
        "cache_read_input_token_cost": 1.25e-6,
        "input_cost_per_token_batches": 1.25e-6,
        "supports_vision": True,
        "source": "https://example.com",
    },
    "claude-x": {
        "litellm_provider": "anthropic",
        "mode": "chat",
        "input_cost_per_token": 3e-6,
        "output_cost_per_token": 1.5e-5,
        "cache_creation_input_token_cost": 3.75e-6,
        "output_cost_per_reasoning_token": 1.5e-5,
        "search_context_cost_per_query": {"low": 0.01},
    },
    "text-embedding-3-small": {
        "litellm_provider": "openai",
        "mode": "embedding",
        "input_cost_per_token": 2e-8,
        "output_cost_per_token": 0.0,
    },
    "ollama/llama2": {
        "litellm_provider": "ollama",
        "mode": "completion",
        "input_cost_per_token": 0,
        "max_input_tokens": "4096",
    },
    "hd/1024-x-1024/dall-e-3": {
        "litellm_provider": "openai",
        "mode": "image_generation",
        "input_cost_per_pixel": 7.6e-8,
        "output_cost_per_token": 0.0,
    },
    "sora-2": {"litellm_provider": "openai", "mode": "video_generation"},
    "cohere/command-r": {"litellm_provider": "cohere_chat", "mode": "chat"},
    "mistral-ocr": {"litellm_provider": "mistral", "mode": "ocr"},
    "fireworks-ai-default": {"litellm_provider": "fireworks_ai", "input_cost_per_token": 0.0},
}

EXPECTED_OUTPUT = {
    "_source": "LiteLLM 9.9.9 model_prices_and_context_window_backup.json, "
    "filtered by scripts/update_prices.py",
    "claude-x": {
        "litellm_provider": "anthropic",
        "mode": "chat",
        "input_cost_per_token": 3e-6,
        "output_cost_per_token": 1.5e-5,
        "cache_creation_input_token_cost": 3.75e-6,
        "output_cost_per_reasoning_token": 1.5e-5,
    },
    "cohere/command-r": {"litellm_provider": "cohere_chat", "mode": "chat"},
    "gpt-4o": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
        "input_cost_per_token": 2.5e-6,
        "output_cost_per_token": 1e-5,
        "cache_read_input_token_cost": 1.25e-6,
        "input_cost_per_token_batches": 1.25e-6,
    },
    "hd/1024-x-1024/dall-e-3": {
        "litellm_provider": "openai",
        "mode": "image_generation",
        "output_cost_per_token": 0.0,
        "input_cost_per_pixel": 7.6e-8,
    },
    "ollama/llama2": {
        "litellm_provider": "ollama",
        "mode": "completion",
        "input_cost_per_token": 0,
    },
    "text-embedding-3-small": {
        "litellm_provider": "openai",
        "mode": "embedding",
        "input_cost_per_token": 2e-8,
        "output_cost_per_token": 0.0,
    },
}


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def test_generator_filters_the_source(tmp_path: Path) -> None:
    # Laid out as in a wheel, so the version is read from the dist-info beside it.
    package = tmp_path / "site-packages" / "litellm"
    package.mkdir(parents=True)
    (tmp_path / "site-packages" / "litellm-9.9.9.dist-info").mkdir()
    source = package / "model_prices_and_context_window_backup.json"
    source.write_text(json.dumps(SYNTHETIC_SOURCE))
    out = tmp_path / "out" / "model_prices.json"

    result = run_script("--source", str(source), "--out", str(out))

    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert json.loads(text) == EXPECTED_OUTPUT
    assert list(json.loads(text)) == list(EXPECTED_OUTPUT)  # sorted, _source first
    assert len(text.splitlines()) == len(EXPECTED_OUTPUT) + 2  # one entry per line
    loaded = PriceTable.from_json(text)
    assert len(loaded) == 6
    image = loaded.image_price("openai", "dall-e-3", "1024x1024", "hd")
    assert image is not None and image.per_pixel == 7.6e-8
    assert "hd/1024-x-1024/dall-e-3" not in loaded.models_of("openai")
    assert loaded.lookup("anthropic", "claude-x") == ModelPrice(
        input=3e-6, output=1.5e-5, cache_write=3.75e-6, reasoning=1.5e-5
    )


def test_generator_is_deterministic_and_takes_a_version(tmp_path: Path) -> None:
    source = tmp_path / "prices.json"
    source.write_text(json.dumps(SYNTHETIC_SOURCE))
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for out in (first, second):
        result = run_script(
            "--source", str(source), "--out", str(out), "--litellm-version", "1.2.3"
        )
        assert result.returncode == 0, result.stderr
    assert first.read_bytes() == second.read_bytes()
    assert json.loads(first.read_text())["_source"].startswith("LiteLLM 1.2.3 prices.json")


@pytest.mark.skipif(
    importlib.util.find_spec("litellm") is not None, reason="litellm is installed here"
)
def test_generator_without_litellm_asks_for_a_source(tmp_path: Path) -> None:
    result = run_script("--out", str(tmp_path / "x.json"))
    assert result.returncode == 2
    assert "--source" in result.stderr
    assert not (tmp_path / "x.json").exists()

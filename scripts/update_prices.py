"""Regenerate trigate/data/model_prices.json from LiteLLM's price and context-window map.

LiteLLM maintains `model_prices_and_context_window.json`, the de facto public
table of per-token prices and context windows, and bundles a copy in its wheel.
Trigate is a drop-in for LiteLLM's proxy, so it bills with the same numbers and
the same keys. The full map is about 3 MB and covers providers, modes (images,
audio, rerank...) and fields trigate never uses, so this script keeps only:

* entries of providers trigate can route to,
* chat, completion and embedding modes, and the image, speech, transcription and
  moderation ones priced per image, character or second,
* the handful of fields the gateway reads.

The output is one entry per line, sorted by key, so a price update shows up as
a readable diff. Run it with no arguments in an environment where `litellm` is
installed, or point `--source` at any copy of the map:

    python scripts/update_prices.py --source path/to/model_prices_and_context_window.json

Standard library only, so it runs from any interpreter.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# litellm_provider values of the providers trigate routes to.
PROVIDERS = frozenset(
    {
        "openai",
        "text-completion-openai",
        "anthropic",
        "gemini",
        "vertex_ai",
        "vertex_ai-language-models",
        "vertex_ai-anthropic_models",
        "vertex_ai-embedding-models",
        "azure",
        "azure_ai",
        "bedrock",
        "bedrock_converse",
        "groq",
        "mistral",
        "deepseek",
        "together_ai",
        "fireworks_ai",
        "fireworks_ai-embedding-models",
        "openrouter",
        "perplexity",
        "xai",
        "cerebras",
        "deepinfra",
        "ollama",
        "cohere",
        "cohere_chat",
        "voyage",
        "jina_ai",
    }
)
MODES = frozenset(
    {
        "chat",
        "completion",
        "embedding",
        "rerank",
        # Priced per image, per character or per second (`trigate.spend.prices.UnitPrice`).
        "image_generation",
        "audio_speech",
        "audio_transcription",
        "moderation",
        # The Realtime API's models, priced per token (trigate.api.realtime).
        "realtime",
    }
)
# The fields trigate reads, in the order they are written.
TEXT_FIELDS = ("litellm_provider", "mode")
NUMBER_FIELDS = (
    "max_input_tokens",
    "max_output_tokens",
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
    # Rerank: billed per search (Cohere's "search unit"), not per token.
    "input_cost_per_query",
    "input_cost_per_image",
    "input_cost_per_pixel",
    "output_cost_per_image",
    "input_cost_per_image_token",
    "output_cost_per_image_token",
    "input_cost_per_character",
    "input_cost_per_second",
    "output_cost_per_second",
    "input_cost_per_token_batches",
    "output_cost_per_token_batches",
)
BUNDLED_NAME = "model_prices_and_context_window_backup.json"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "trigate" / "data" / "model_prices.json"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        source = args.source or _bundled_source()
    except LookupError as exc:
        print(f"update_prices: {exc}", file=sys.stderr)
        return 2
    raw = json.loads(source.read_text(encoding="utf-8"))
    entries = filter_entries(raw)
    version = args.litellm_version or _litellm_version(source)
    note = f"LiteLLM {version} {source.name}, filtered by scripts/update_prices.py"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(entries, note), encoding="utf-8")
    _summarise(entries, args.out)
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        help="a model_prices_and_context_window.json; default: the installed litellm's copy",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the table")
    parser.add_argument(
        "--litellm-version",
        help="version recorded in the _source note; default: inferred from the source's location",
    )
    return parser.parse_args(argv)


def _bundled_source() -> Path:
    """The copy of the map inside the installed litellm package, found without importing it.

    Importing litellm takes seconds and pulls in half of PyPI; locating its
    package folder is enough.
    """
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(
            "litellm is not installed in this interpreter; install it or pass "
            "--source PATH to a model_prices_and_context_window.json"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BUNDLED_NAME
        if path.is_file():
            return path
    raise LookupError(f"the installed litellm has no {BUNDLED_NAME}; pass --source PATH")


def _litellm_version(source: Path) -> str:
    """The version of the litellm distribution `source` belongs to, if it can be told."""
    if source.parent.name == "litellm":
        for info in sorted(source.parent.parent.glob("litellm-*.dist-info")):
            return info.name.removeprefix("litellm-").removesuffix(".dist-info")
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def filter_entries(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The entries trigate can use, reduced to the fields it reads, sorted by key."""
    kept = {}
    for key, entry in raw.items():
        if _wanted(entry):
            kept[key] = _slim(entry)
    return dict(sorted(kept.items()))


def _wanted(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("litellm_provider") in PROVIDERS
        and entry.get("mode") in MODES
    )


def _slim(entry: dict[str, Any]) -> dict[str, Any]:
    """Keep the known fields; drop absent ones and numbers that are not numbers."""
    slim = {field: entry[field] for field in TEXT_FIELDS}
    for field in NUMBER_FIELDS:
        value = entry.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            slim[field] = value
    return slim


def render(entries: dict[str, dict[str, Any]], note: str) -> str:
    """Valid JSON with one entry per line, so updates diff line by line."""
    lines = [f"{json.dumps('_source')}: {json.dumps(note)}"]
    for key, entry in entries.items():
        lines.append(f"{json.dumps(key)}: {json.dumps(entry, separators=(',', ':'))}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _summarise(entries: dict[str, dict[str, Any]], out: Path) -> None:
    counts = Counter(entry["litellm_provider"] for entry in entries.values())
    size_kb = out.stat().st_size / 1024
    print(f"wrote {len(entries)} entries ({size_kb:.0f} KiB) to {out}")
    for provider, count in sorted(counts.items()):
        print(f"  {provider}: {count}")


if __name__ == "__main__":
    sys.exit(main())

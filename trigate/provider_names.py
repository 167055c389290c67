"""The provider prefixes trigate serves, by name only.

Config validation needs to know every prefix (to refuse `opneai/gpt-4o` at start-up)
and which families have no public endpoint (so `api_base` is required), while the
provider adapters need the config's `LiteLLMParams`. Naming the prefixes here, in a
module that imports nothing of trigate, lets both read one list without the config
importing the adapters. `trigate.providers` builds its registry from these names, and
a test holds the two to each other.
"""

from __future__ import annotations

# Adapters of their own (trigate/providers/<name>.py).
NATIVE_PREFIXES = (
    "openai", "anthropic", "bedrock", "gemini", "vertex_ai", "azure", "cohere", "cohere_chat",
    "mock",
)  # fmt: skip
# LiteLLM's OpenAI-compatible families with a public endpoint (trigate/providers/compatible.py).
HOSTED_COMPATIBLE_PREFIXES = (
    "groq", "mistral", "deepseek", "together_ai", "fireworks_ai", "openrouter",
    "perplexity", "xai", "cerebras", "deepinfra", "ollama", "jina_ai", "voyage",
)  # fmt: skip
# OpenAI-compatible servers one runs oneself: no default address.
SELF_HOSTED_PREFIXES = ("hosted_vllm", "lm_studio")

PROVIDER_PREFIXES = frozenset(
    (*NATIVE_PREFIXES, *HOSTED_COMPATIBLE_PREFIXES, *SELF_HOSTED_PREFIXES)
)
# Families with no public endpoint: a deployment must name its `api_base`.
REQUIRES_API_BASE = frozenset({"azure", *SELF_HOSTED_PREFIXES})

"""The OpenAI-compatible families: LiteLLM's provider prefixes whose upstreams speak
OpenAI's chat completions, each with its own default base URL and quirks.

Adding a family is one line in `DIALECTS`. `stream_options` is off where the
upstream rejects it (Mistral and Perplexity refuse unknown fields; LiteLLM
sends it to neither, nor to Fireworks or Cerebras); those upstreams report
usage in their last chunk anyway, and where they do not, the gateway counts.
"""

from __future__ import annotations

from functools import partial

from trigate.providers.base import ProviderFactory
from trigate.providers.openai import Dialect, OpenAICompatible

DIALECTS: dict[str, Dialect] = {
    "groq": Dialect("https://api.groq.com/openai/v1"),
    "mistral": Dialect("https://api.mistral.ai/v1", stream_options=False),
    "deepseek": Dialect("https://api.deepseek.com/v1"),
    "together_ai": Dialect("https://api.together.xyz/v1"),
    "fireworks_ai": Dialect(
        "https://api.fireworks.ai/inference/v1",
        stream_options=False,
        model_namespace="accounts/fireworks/models/",
    ),
    "openrouter": Dialect("https://openrouter.ai/api/v1"),
    "perplexity": Dialect("https://api.perplexity.ai", stream_options=False),
    "xai": Dialect("https://api.x.ai/v1"),
    "cerebras": Dialect("https://api.cerebras.ai/v1", stream_options=False),
    "deepinfra": Dialect("https://api.deepinfra.com/v1/openai"),
    "ollama": Dialect("http://localhost:11434/v1"),
    # Self-hosted servers have no default address: the deployment names it.
    "hosted_vllm": Dialect(None),
    "lm_studio": Dialect(None),
}

COMPATIBLE: dict[str, ProviderFactory] = {
    prefix: partial(OpenAICompatible, dialect=dialect) for prefix, dialect in DIALECTS.items()
}

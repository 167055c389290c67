"""Provider adapters, one module per provider family, selected by the model prefix."""

from trigate.providers.anthropic import AnthropicMessages
from trigate.providers.azure import AzureOpenAI
from trigate.providers.base import (
    Abilities,
    ChunkStream,
    Completion,
    Embeddings,
    NativeEvent,
    NativeMessages,
    NativeResponses,
    Provider,
    ProviderFactory,
    TextCompletions,
)
from trigate.providers.bedrock import BedrockConverse
from trigate.providers.compatible import COMPATIBLE, DIALECTS
from trigate.providers.gemini import GeminiProvider
from trigate.providers.mock import MockProvider
from trigate.providers.openai import OpenAICompatible

PROVIDERS: dict[str, ProviderFactory] = {
    "openai": OpenAICompatible,
    "anthropic": AnthropicMessages,
    "bedrock": BedrockConverse,
    "gemini": GeminiProvider,
    "azure": AzureOpenAI,
    **COMPATIBLE,
    "mock": MockProvider,
}

# Families with no public endpoint: a deployment must name its `api_base`.
REQUIRES_API_BASE = frozenset(
    {"azure", *(prefix for prefix, dialect in DIALECTS.items() if dialect.api_base is None)}
)

__all__ = [
    "PROVIDERS",
    "REQUIRES_API_BASE",
    "Abilities",
    "ChunkStream",
    "Completion",
    "Embeddings",
    "NativeEvent",
    "NativeMessages",
    "NativeResponses",
    "Provider",
    "ProviderFactory",
    "TextCompletions",
]

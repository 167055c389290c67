"""Provider adapters, one module per provider family, selected by the model prefix."""

from trigate.provider_names import PROVIDER_PREFIXES, REQUIRES_API_BASE
from trigate.providers.anthropic import AnthropicMessages
from trigate.providers.azure import AzureOpenAI
from trigate.providers.base import (
    Abilities,
    Batches,
    ChunkStream,
    Completion,
    Embeddings,
    ImageEdits,
    Images,
    Moderations,
    NativeEvent,
    NativeMessages,
    NativeResponses,
    Provider,
    ProviderFactory,
    Realtime,
    RealtimeEndpoint,
    Rerank,
    Speech,
    TextCompletions,
    Transcriptions,
    passed_chunks,
)
from trigate.providers.bedrock import BedrockConverse
from trigate.providers.cohere import CohereProvider
from trigate.providers.compatible import COMPATIBLE
from trigate.providers.gemini import GeminiProvider
from trigate.providers.mock import MockProvider
from trigate.providers.openai import OpenAICompatible
from trigate.providers.vertex import vertex_ai

PROVIDERS: dict[str, ProviderFactory] = {
    "openai": OpenAICompatible,
    "anthropic": AnthropicMessages,
    "bedrock": BedrockConverse,
    "gemini": GeminiProvider,
    "vertex_ai": vertex_ai,
    "azure": AzureOpenAI,
    "cohere": CohereProvider,
    # LiteLLM's name for Cohere's chat models; one adapter serves both.
    "cohere_chat": CohereProvider,
    **COMPATIBLE,
    "mock": MockProvider,
}

# `PROVIDER_PREFIXES` names these keys for config validation, which must not import the
# adapters (they import the config); tests/test_provider_compatible.py holds the two equal.

__all__ = [
    "PROVIDERS",
    "PROVIDER_PREFIXES",
    "REQUIRES_API_BASE",
    "Abilities",
    "Batches",
    "ChunkStream",
    "Completion",
    "Embeddings",
    "ImageEdits",
    "Images",
    "Moderations",
    "NativeEvent",
    "NativeMessages",
    "NativeResponses",
    "Provider",
    "ProviderFactory",
    "Realtime",
    "RealtimeEndpoint",
    "Rerank",
    "Speech",
    "TextCompletions",
    "Transcriptions",
    "passed_chunks",
]

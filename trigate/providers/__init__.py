"""Provider adapters, one module per provider family, selected by the model prefix."""

from trigate.providers.anthropic import AnthropicMessages
from trigate.providers.azure import AzureOpenAI
from trigate.providers.base import ChunkStream, Completion, Provider, ProviderFactory
from trigate.providers.bedrock import BedrockConverse
from trigate.providers.compatible import COMPATIBLE
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

__all__ = ["PROVIDERS", "ChunkStream", "Completion", "Provider", "ProviderFactory"]

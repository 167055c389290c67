"""Provider adapters, one module per provider family, selected by the model prefix."""

from trigate.providers.base import ChunkStream, Completion, Provider, ProviderFactory
from trigate.providers.mock import MockProvider
from trigate.providers.openai import OpenAICompatible

PROVIDERS: dict[str, ProviderFactory] = {
    "openai": OpenAICompatible,
    "mock": MockProvider,
}

__all__ = ["PROVIDERS", "ChunkStream", "Completion", "Provider", "ProviderFactory"]

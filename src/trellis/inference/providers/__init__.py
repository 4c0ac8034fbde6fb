"""Provider adapters, one module per vendor, found through one registry.

Third-party packages add providers through the ``trellis.providers`` entry
point group: ``name = "package.module:ProviderClass"``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from trellis.errors import ConfigurationError
from trellis.inference.providers.base import EmbeddingResult, HttpProvider, Provider
from trellis.settings import Deployment, LocalModelSettings

__all__ = ["Provider", "HttpProvider", "EmbeddingResult", "build_provider", "BUILTIN_PROVIDERS"]

_OPENAI = "trellis.inference.providers.openai_compat:OpenAICompatibleProvider"

#: provider name in settings -> "module:Class"
BUILTIN_PROVIDERS: dict[str, str] = {
    "openai": _OPENAI,
    "openai-compatible": _OPENAI,
    "groq": _OPENAI,
    "together": _OPENAI,
    "vllm": _OPENAI,
    "ollama": _OPENAI,
    "llamacpp": _OPENAI,
    "anthropic": "trellis.inference.providers.anthropic:AnthropicProvider",
    "gemini": "trellis.inference.providers.gemini:GeminiProvider",
    "cohere": "trellis.inference.providers.cohere:CohereProvider",
    "local": "trellis.inference.local.provider:LocalEngineProvider",
    "local-embedder": "trellis.inference.local.embedder:LocalEmbedderProvider",
}


def _load(target: str) -> type[Provider]:
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigurationError(f"{target} is not a trellis Provider")
    return cls


def provider_class(name: str) -> type[Provider]:
    """The class serving provider ``name``: built-in first, then entry points."""
    if name in BUILTIN_PROVIDERS:
        return _load(BUILTIN_PROVIDERS[name])
    for entry in entry_points(group="trellis.providers"):
        if entry.name == name:
            return _load(entry.value)
    raise ConfigurationError(f"unknown provider {name!r}")


def build_provider(deployment: Deployment, local: LocalModelSettings | None = None) -> Provider:
    """The provider for ``deployment``; ``local`` configures the bundled chat model, which
    answers with a clear 503 when the ``local`` extra is not installed."""
    if deployment.provider == "local":
        from trellis.inference.local.availability import local_chat_provider

        return local_chat_provider(deployment, local)
    return provider_class(deployment.provider)(deployment)

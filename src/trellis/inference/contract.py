"""The provider contract: what the router calls, whatever answers behind it.

Hosted-API adapters (``inference/providers/``, with their HTTP plumbing in
``providers/base.py``) and the in-process models (``inference/local/``) both
implement :class:`Provider`; this module has no HTTP in it, so the local models and
the retrieval code that embeds with them need none of the hosted machinery.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from trellis.errors import UnsupportedFeatureError, UpstreamProtocolError
from trellis.schema import ChatChunk, ChatRequest, ChatResponse
from trellis.settings import Deployment

__all__ = ["Provider", "EmbeddingResult"]


@dataclass(slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int
    model: str


class Provider(ABC):
    """One deployment's connection to a model. Created once, shared by all requests."""

    #: The ``gen_ai.provider.name`` recorded on spans.
    system: ClassVar[str] = "unknown"
    #: Whether ``chat`` and ``embed`` stop by the ``deadline`` they are given, raising
    #: ``TimeoutError`` when it passes. The router then passes one instead of wrapping
    #: each attempt in a timeout scope of its own; providers that leave this False are
    #: called with ``deadline=None`` and bounded by the router.
    honours_deadline: ClassVar[bool] = False
    #: Whether ``chat`` takes OpenAI ``tools`` and answers with ``tool_calls`` (an agent
    #: step's ``tool_calling="auto"`` uses native calls only where every deployment does).
    tool_calling: ClassVar[bool] = True

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    @abstractmethod
    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResponse:
        """One non-streaming completion, done by ``deadline`` (event-loop time) when
        the provider ``honours_deadline``."""

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Completion chunks; the last carries ``usage`` when the provider reports it.

        The iterator ends normally only when the upstream marked the end of its stream;
        one that stops before raises (``stream_incomplete``), never a silent end."""
        raise UnsupportedFeatureError(
            f"{self.deployment.label} does not support streaming", code="streaming_unsupported"
        )

    async def embed(
        self, texts: list[str], *, dimensions: int | None = None, deadline: float | None = None
    ) -> EmbeddingResult:
        raise UnsupportedFeatureError(f"{self.deployment.label} does not make embeddings")

    async def probe(self) -> None:
        """A cheap call that fails when the deployment cannot serve (used by ``trellis doctor``)."""
        request = ChatRequest(
            model=self.deployment.model,
            messages=[{"role": "user", "content": "ping"}],  # type: ignore[list-item]
            max_tokens=1,
        )
        await self.chat(request)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately a no-op
        """Release connections or models."""

    @contextmanager
    def expecting(self, what: str) -> Iterator[None]:
        """Turn a vendor answer of the wrong shape into one clear ``UpstreamProtocolError``."""
        try:
            yield
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise self.unexpected(what, exc) from exc

    def unexpected(self, what: str, exc: BaseException) -> UpstreamProtocolError:
        """The error for an answer of the wrong shape (what ``expecting`` raises)."""
        return UpstreamProtocolError(
            f"{self.deployment.label} sent an unexpected {what}: {exc!r}", provider=self.system
        )

    def stream_incomplete(self, marker: str) -> UpstreamProtocolError:
        """The error for a stream that ended before the vendor's ``marker`` of its end
        (the connection closed mid-answer): what came is not an answer, so the caller
        gets an error, the trace fails and nothing is cached. Retryable like a dropped
        connection: the router retries only streams that sent no chunk yet."""
        return UpstreamProtocolError(
            f"{self.deployment.label} stream ended before {marker}",
            provider=self.system,
            code="stream_incomplete",
        )
